"""bench/greedy_set.py (issue 18's GSM8K set): its chain selection and its table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import SHARED

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # it imports bench/greedy.py
    spec = importlib.util.spec_from_file_location("bench_greedy_set", BENCH / "greedy_set.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "GSM8K", SHARED / "data" / "gsm8k" / "train.jsonl")
    yield module
    sys.modules.pop("greedy", None)


def test_set_takes_the_first_chain_of_each_length_bin_from_the_offset(bench, gpt2_tokenizer):
    from cotprune.data.layout import ChainLayout

    chains = bench.spread_set(ChainLayout(gpt2_tokenizer), 4, 60, 139, offset=100)
    lengths = [len(lay.cot_ids) for _, lay in chains]
    assert [(n - 60) // 20 for n in lengths] == [0, 1, 2, 3]  # one per bin, shortest first
    assert all(index >= 100 for index, _ in chains)
    first_of_bin0 = bench.spread_set(ChainLayout(gpt2_tokenizer), 1, 60, 79, offset=100)
    assert first_of_bin0[0][0] == chains[0][0]  # the first in file order


def record(chain, mode, tokens, j, published=1000, cot=10):
    return {"chain": chain, "mode": mode, "tokens_run": tokens, "J": j, "forwards": 2,
            "cpu_s": 1.0, "published_tokens": published, "cot_tokens": cot}


def test_table_compares_modes_on_the_chains_every_mode_finished(bench):
    records = [record(1, "exact", 100, 10.0), record(1, "shortlist=4", 20, 11.0),
               record(2, "exact", 300, 30.0), record(2, "shortlist=4", 50, 29.0),
               record(3, "exact", 999, 99.0)]  # chain 3: shortlist=4 has not finished it
    text = bench.table(records, ["exact", "shortlist=4"])
    assert text.startswith("2 chains")
    assert "| exact | 400 | 5.0x | 4 | 2 | 40.00 | +0.00% | - | - |" in text
    assert "| shortlist=4 | 70 | 28.6x | 4 | 2 | 40.00 | +0.00% | [" in text
    assert text.endswith("| +3.3% |")  # the median of the chains' gaps, +10% and -3.3%
    records.append(record(3, "shortlist=4", 100, 108.9))
    text = bench.table(records, ["exact", "shortlist=4"])
    assert "| shortlist=4 | 170 | 17.6x | 6 | 3 | 148.90 | +7.12% | [" in text
    assert text.endswith("| +10.0% |")  # of +10%, -3.3% and +10%
    assert bench.table([], ["exact"]) == "no chain finished by every mode yet"


def test_gap_interval_resamples_chains(bench):
    assert bench.gap_interval([10.0, 20.0], [10.0, 20.0]) == (0.0, 0.0)
    low, high = bench.gap_interval([10.0, 20.0, 40.0], [11.0, 22.0, 44.0])
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)
    exact, mode = [10.0, 20.0, 30.0, 40.0], [8.0, 24.0, 30.0, 44.0]  # -20%, +20%, 0%, +10%
    low, high = bench.gap_interval(exact, mode)
    point = sum(mode) / sum(exact) - 1
    assert -0.2 <= low < point < high <= 0.2


def test_mode_specs_name_greedy_options(bench):
    from cotprune.pruning.greedy import FAST, GreedyOptions

    assert bench.mode_options("exact") == GreedyOptions()
    assert bench.mode_options("fast") == FAST
    assert bench.mode_options("shortlist=4+self-term=1") == GreedyOptions(shortlist=4,
                                                                          self_term=True)
    assert bench.mode_options("per-step=2+shortlist=8+refresh-every=5") == GreedyOptions(
        per_step=2, shortlist=8, refresh_every=5)


def test_suffix_floor_counts_each_candidates_changed_suffix(bench):
    # prompt 4 (3 run: its last token runs with every row), CoT 3, answer 2: 3 + 3 + 2 = 8
    # first step, no deletion yet: candidates 0, 1, 2 run 4, 3, 2 targets
    assert bench.suffix_floor(4, [1, 2, 3], 2, [1]) == 8 + 9
    # second step, last deletion at 1: candidate 0 runs from there (2 + 2 - 1), 1 from itself
    assert bench.suffix_floor(4, [1, 2, 3], 2, [1, 0]) == 8 + 9 + 3 + 2
    # equal neighbours are one sequence: candidates 0 and 2 only
    assert bench.suffix_floor(4, [5, 5, 3], 2, [2]) == 8 + 4 + 2


def test_exact_greedy_runs_its_suffix_floor_without_cuts(bench, tiny_gpt2_model):
    """With no checkpoints (no branch and bound), exact mode runs every token of the floor, and
    more only by the padding of its lanes and batches."""
    from cotprune.core.deletion import ChainState, DeletionScorer
    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.layout import ChainLayout
    from cotprune.pruning.greedy import greedy_prune

    model, tok = load_model(ModelOptions(model=str(tiny_gpt2_model), device="cpu",
                                         dtype="float32"))
    cl = ChainLayout(tok)
    state = ChainState(cl.prompt_ids("What is it?"),
                       cl.cot_ids("12 minus 5 is 7, so 7 times 2 is 14."), cl.answer_ids("14"))
    scorer = DeletionScorer(model, "reason-answer", 4096, checkpoints=())
    n = len(state.cot)
    order = greedy_prune(scorer, state.prompt, state.cot, state.answer, n // 2).order
    floor = bench.suffix_floor(len(state.prompt), state.cot, len(state.answer), order)
    assert floor <= scorer.counts()["tokens_run"] <= 1.05 * floor


def test_floor_table_sums_published_floor_and_exact_tokens(bench):
    from types import SimpleNamespace

    lay = SimpleNamespace(cot_start=4, cot_ids=[1, 2, 3], input_ids=[0] * 9, answer_start=7)
    records = [{"chain": 5, "mode": "exact", "cot_tokens": 3, "published_tokens": 68,
                "tokens_run": 16, "order": [1]},
               {"chain": 5, "mode": "shortlist=4", "cot_tokens": 3, "published_tokens": 68,
                "tokens_run": 9, "order": [1]}]  # only exact is compared with the floor
    text = bench.floor_table(records, {5: lay})
    assert "| 5 | 3 | 68 | 17 | 16 | 0.94 | 4.0x | 4.2x |" in text  # floor: 8 + 9
    assert text.endswith("| all | | 68 | 17 | 16 | 0.94 | 4.0x | 4.2x |")
