"""Golden values of the greedy engine on a tiny random model: what it chooses, the J it reports
and the work it counts, pinned exactly (the trace to float tolerance).

The engine's internals (rows, packs, bounds, kept KV) may be reshaped freely, but not one of
these may change: they are what `prune` writes and summarises. Where a change is meant to alter
the work (a new cut, another pack size), update the counters here and say why in the commit."""

import pytest

from cotprune.core.deletion import ChainState, DeletionScorer
from cotprune.core.models import ModelOptions, load_model
from cotprune.data.layout import ChainLayout
from cotprune.pruning.greedy import GreedyOptions, greedy_prune, kept_positions

COT = "First 12 minus 5 is 7. Then 7 times 2 is 14, check: 14/2=7."


@pytest.fixture(scope="module")
def chain(tiny_gpt2_model):
    model, tok = load_model(ModelOptions(model=str(tiny_gpt2_model), device="cpu",
                                         dtype="float32"))
    cl = ChainLayout(tok)
    return model, ChainState(cl.prompt_ids("What is it?"), cl.cot_ids(COT), cl.answer_ids("7"))


def later_first(cot: list[int]) -> list[float]:
    """A prior that ranks later tokens first for deletion."""
    return [-float(k) for k in range(len(cot))]


GOLDEN = {  # computed with the engine of commit c655ac4 (before the reshape)
    "exact": {
        "order": [1, 17, 13, 2, 11, 18, 0, 3, 15, 21, 7],
        "kept": [4, 5, 6, 8, 9, 10, 12, 14, 16, 19, 20],
        "trace": [291.335688, 279.963866, 268.66141, 257.418146, 246.233005,
                  235.230543, 224.318856, 213.284663, 202.248592, 191.207434, 180.225679],
        "counts": {"tokens_run": 2309, "forwards": 30, "projection_rows": 2327, "bound_rows": 829},
    },
    "exact-answer-small-batches": {
        "order": [1, 17, 6, 14, 2, 0, 7, 18, 11, 13, 15],
        "kept": [3, 4, 5, 8, 9, 10, 12, 16, 19, 20, 21],
        "trace": [65.455709, 65.410563, 65.350175, 65.287551, 65.159571,
                  65.054758, 65.034702, 65.136178, 65.206195, 65.146891, 64.995928],
        "counts": {"tokens_run": 2370, "forwards": 49, "projection_rows": 1132, "bound_rows": 0},
    },
    "per-step-2": {
        "order": [1, 13, 17, 2, 11, 3, 0, 7, 6, 15, 18],
        "kept": [4, 5, 8, 9, 10, 12, 14, 16, 19, 20, 21],
        "trace": [280.002357, 280.002357, 257.41815, 257.41815, 235.305883,
                  235.305883, 213.137229, 213.137229, 190.613256, 190.613256, 179.509911],
        "counts": {"tokens_run": 1596, "forwards": 23, "projection_rows": 1723, "bound_rows": 657},
    },
    "prior-shortlist-2": {
        "order": [20, 19, 21, 17, 16, 18, 15, 13, 12, 14, 11],
        "kept": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "trace": [292.006982, 281.224521, 269.984488, 258.632224, 247.915047,
                  237.458101, 226.668451, 215.335032, 204.588961, 193.408188, 182.31039],
        "counts": {"tokens_run": 180, "forwards": 17, "projection_rows": 199, "bound_rows": 0},
    },
    "shortlist-2": {
        "order": [1, 17, 13, 2, 11, 0, 3, 15, 18, 6, 7],
        "kept": [4, 5, 8, 9, 10, 12, 14, 16, 19, 20, 21],
        "trace": [291.33569, 279.963865, 268.661407, 257.418148, 246.233005,
                  235.266809, 224.08631, 213.16239, 202.248591, 191.437038, 179.509912],
        "counts": {"tokens_run": 885, "forwards": 20, "projection_rows": 895, "bound_rows": 0},
    },
    "shortlist-4-screen": {  # added with --screen (the --fast of session 15): exact's choices
        "order": [1, 17, 13, 2, 11, 18, 0, 3, 15, 21, 7],
        "kept": [4, 5, 6, 8, 9, 10, 12, 14, 16, 19, 20],
        "trace": [291.335693, 279.96387, 268.661408, 257.418153, 246.233007,
                  235.230543, 224.31886, 213.284659, 202.248593, 191.207435, 180.22568],
        "counts": {"tokens_run": 1001, "forwards": 22, "projection_rows": 1011, "bound_rows": 352},
    },
    "shortlist-2-self-term": {  # added with --self-term: exact's first 9 deletions
        "order": [1, 17, 13, 2, 11, 18, 0, 3, 15, 7, 6],
        "kept": [4, 5, 8, 9, 10, 12, 14, 16, 19, 20, 21],
        "trace": [291.33569, 279.963867, 268.661407, 257.418147, 246.233005,
                  235.23054, 224.318857, 213.284659, 202.248591, 191.291457, 179.509914],
        "counts": {"tokens_run": 878, "forwards": 20, "projection_rows": 888, "bound_rows": 0},
    },
}


def _run(chain, name):
    model, state = chain
    case = CASES[name]
    scorer = DeletionScorer(model, case["objective"], case["batch_tokens"])
    n = len(state.cot)
    traj = greedy_prune(scorer, state.prompt, state.cot, state.answer, n - n // 2,
                        opts=GreedyOptions(**case["opts"]), prior=case.get("prior"))
    return traj, scorer.counts(), kept_positions(n, traj.order, n // 2)


CASES = {
    "exact": dict(objective="reason-answer", batch_tokens=4096, opts={}),
    "exact-answer-small-batches": dict(objective="answer", batch_tokens=64, opts={}),
    "shortlist-2": dict(objective="reason-answer", batch_tokens=4096, opts={"shortlist": 2}),
    "shortlist-2-self-term": dict(objective="reason-answer", batch_tokens=4096,
                                  opts={"shortlist": 2, "self_term": True}),
    "shortlist-4-screen": dict(objective="reason-answer", batch_tokens=4096,
                               opts={"shortlist": 4, "self_term": True, "first_window": 16,
                                     "screen": 16}),
    "per-step-2": dict(objective="reason-answer", batch_tokens=4096, opts={"per_step": 2}),
    "prior-shortlist-2": dict(objective="reason-answer", batch_tokens=4096,
                              opts={"shortlist": 2}, prior=later_first),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_greedy_outputs_and_work_are_unchanged(chain, name):
    traj, counts, kept = _run(chain, name)
    golden = GOLDEN[name]
    assert traj.order == golden["order"]
    assert kept == golden["kept"]
    assert traj.trace == pytest.approx(golden["trace"], abs=1e-5)
    assert counts == golden["counts"]


# --- the same through `prune`: the summary's counters and the kept positions it writes ----

CHAINS = [
    {"id": "a", "question": "What is 3+4?", "cot": "We add 3 and 4 to get 7, so seven.",
     "answer": "7", "reference": "7"},
    {"id": "b", "question": "Tom has 5 pens and buys 2.", "cot": "He had 5. He buys 2, so "
     "5 + 2 = 7 pens now.", "answer": "7", "reference": "7"},
    {"id": "c", "question": "Half of 12?", "cot": "12 / 2 = 6. Check: 6 * 2 = 12.",
     "answer": "6", "reference": None},
]

PRUNE_GOLDEN = {  # args -> (summary counters, kept positions per chain at keep 0.5)
    ("--keep", "0.9,0.7,0.5"): (
        {"tokens_run": 2540, "forwards": 59, "projection_rows": 2568, "bound_rows": 564,
         "published_tokens": 7362, "published_ratio": 2.898},
        {"a": [0, 1, 4, 6, 7, 8], "b": [0, 3, 4, 6, 10, 11, 13, 15],
         "c": [2, 4, 5, 7, 8, 9, 10]}),
    ("--keep", "0.5", "--shortlist", "2"): (
        {"tokens_run": 1350, "forwards": 41, "projection_rows": 1371, "bound_rows": 0,
         "published_tokens": 7362, "published_ratio": 5.453},
        {"a": [0, 1, 4, 6, 7, 8], "b": [0, 3, 4, 6, 10, 11, 13, 15],
         "c": [2, 4, 5, 7, 8, 9, 10]}),
    ("--keep", "0.5", "--per-step", "2"): (
        {"tokens_run": 1733, "forwards": 48, "projection_rows": 1923, "bound_rows": 409,
         "published_tokens": 7362, "published_ratio": 4.248},
        {"a": [0, 1, 6, 7, 8, 10], "b": [0, 3, 4, 10, 11, 13, 15, 16],
         "c": [2, 4, 5, 7, 8, 9, 10]}),
}


@pytest.mark.parametrize("args", sorted(PRUNE_GOLDEN))
def test_prune_summary_counters_and_kept_positions_are_unchanged(tmp_path, tiny_gpt2_model,
                                                                   args):
    import pyarrow as pa
    from conftest import run_cli, summary_of

    from cotprune.data.files import CHAIN_SCHEMA, read_table, write_table

    chains, out = tmp_path / "chains.parquet", tmp_path / "out.parquet"
    write_table(pa.Table.from_pylist(CHAINS, schema=CHAIN_SCHEMA), chains)
    code, stdout, stderr = run_cli("prune", chains, "-o", out, "--model", tiny_gpt2_model,
                                   "--device", "cpu", "--dtype", "float32", *args)
    assert code == 0, stderr
    counters, kept = PRUNE_GOLDEN[args]
    summary = summary_of(stdout)
    assert {key: summary[key] for key in counters} == counters
    rows = read_table(out).to_pylist()
    assert {r["id"]: r["kept_positions"] for r in rows if r["keep_ratio"] == 0.5} == kept
