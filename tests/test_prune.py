import math

import pyarrow as pa
import pytest
from conftest import run_cli, summary_of

from cotprune.core.models import load_tokenizer
from cotprune.data.files import CHAIN_SCHEMA, read_table, write_table
from cotprune.data.layout import decode

STATIC = ["surprisal", "entropy", "attention", "loo", "random"]


@pytest.fixture
def short_chains(tmp_path):
    rows = [
        {"id": "a", "question": "What is 3+4?", "cot": "We add 3 and 4 to get 7, so seven.",
         "answer": "7", "reference": "7", "extra": 1},
        {"id": "b", "question": "Tom has 5 pens and buys 2.", "cot": "He had 5. He buys 2, so "
         "5 + 2 = 7 pens now.", "answer": "7", "reference": "7", "extra": 2},
        {"id": "c", "question": "Half of 12?", "cot": "12 / 2 = 6. Check: 6 * 2 = 12.",
         "answer": "6", "reference": None, "extra": 3},
    ]
    schema = CHAIN_SCHEMA.append(pa.field("extra", pa.int64()))
    path = tmp_path / "chains.parquet"
    write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def prune(chains, out, model, *extra):
    code, stdout, stderr = run_cli("prune", chains, "-o", out, "--model", model,
                                   "--device", "cpu", *extra)
    assert code == 0, stderr
    return summary_of(stdout), read_table(out).to_pylist()


def test_greedy_rows_are_consistent(short_chains, tmp_path, tiny_gpt2_model):
    summary, rows = prune(short_chains, tmp_path / "g.parquet", tiny_gpt2_model,
                          "--keep", "0.9,0.7,0.5")
    assert summary["rows"] == len(rows) == 9
    tok = load_tokenizer(str(tiny_gpt2_model))
    for r in rows:
        n = r["original_tokens"]
        cot_ids = r["input_ids"][r["cot_start"]:r["cot_end"]]
        assert n == len(cot_ids)
        kept = r["kept_tokens"]
        assert kept == math.floor(r["keep_ratio"] * n + 1e-9) == len(r["kept_positions"])
        gone = set(r["prune_order"][:n - r["kept_tokens"]])
        assert r["kept_positions"] == [i for i in range(n) if i not in gone]
        assert len(r["objective_trace"]) == n - math.floor(0.5 * n + 1e-9)
        if r["kept_tokens"] < n:
            assert r["objective_nll"] == pytest.approx(
                r["objective_trace"][n - r["kept_tokens"] - 1], abs=1e-3)
        assert r["cot"] == decode(tok, [cot_ids[i] for i in r["kept_positions"]])
        assert r["extra"] in (1, 2, 3) and r["method"] == "greedy"  # pass-through


def test_static_methods_keep_matched_counts(short_chains, tmp_path, tiny_gpt2_model):
    for method in STATIC:
        _, rows = prune(short_chains, tmp_path / f"{method}.parquet", tiny_gpt2_model,
                        "--keep", "0.7,0.5", "--method", method)
        for r in rows:
            assert r["kept_tokens"] == math.floor(r["keep_ratio"] * r["original_tokens"] + 1e-9)
            assert len(r["kept_positions"]) == r["kept_tokens"]
            assert r["prune_order"] is None and r["method"] == method


def test_greedy_first_deletion_is_the_leave_one_out_minimum(short_chains, tmp_path,
                                                            tiny_gpt2_model):
    """What greedy guarantees: each step deletes the cheapest token, so after one deletion its
    J is the smallest J of any one-token deletion (the loo minimum), not that it beats every
    static method at every ratio."""
    from cotprune.core.deletion import ChainState, DeletionScorer
    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.layout import Layout

    _, rows = prune(short_chains, tmp_path / "g.parquet", tiny_gpt2_model, "--keep", "0.5")
    model, _ = load_model(ModelOptions(model=str(tiny_gpt2_model), device="cpu"))
    scorer = DeletionScorer(model, "reason-answer", 4096)
    for r in rows:
        layout = Layout(r["input_ids"], r["cot_start"], r["cot_end"], r["answer_start"],
                        r["answer_end"])
        state = ChainState.from_layout(layout)
        base = scorer.chain_objective(state)
        loo = scorer.loo_scores(state)
        assert r["objective_trace"][0] == pytest.approx(base + min(loo), abs=1e-4)
        assert loo[r["prune_order"][0]] == pytest.approx(min(loo), abs=1e-4)


def test_static_methods_use_the_score_columns_of_a_scores_file(short_chains, tmp_path,
                                                               tiny_gpt2_model):
    """A `score` output's columns decide the order, without scoring again."""
    code, _, err = run_cli("score", short_chains, "-o", tmp_path / "s.parquet", "--model",
                           tiny_gpt2_model, "--device", "cpu", "--scorer", "surprisal")
    assert code == 0, err
    scores = read_table(tmp_path / "s.parquet")
    # Replace the surprisal column by the token index: the order must follow it exactly.
    made_up = [[float(i) for i in range(len(s))] for s in scores.column("surprisal").to_pylist()]
    index = scores.schema.get_field_index("surprisal")
    scores = scores.set_column(index, scores.schema.field(index),
                               pa.array(made_up, scores.schema.field(index).type))
    write_table(scores, tmp_path / "made_up.parquet")
    _, rows = prune(tmp_path / "made_up.parquet", tmp_path / "p.parquet", tiny_gpt2_model,
                    "--keep", "0.5", "--method", "surprisal")
    for r in rows:
        n = r["original_tokens"]
        assert r["kept_positions"] == list(range(n - r["kept_tokens"], n))  # lowest go first


def test_per_step_saves_its_mid_chain_checkpoint(short_chains, tmp_path, tiny_gpt2_model,
                                                 monkeypatch):
    import cotprune.pruning.prune as prune_module

    saved = []
    real = prune_module.GreedyCheckpoint.save

    def spy(self, traj):
        saved.append((self.chain_id, len(traj.order)))
        real(self, traj)

    monkeypatch.setattr(prune_module.GreedyCheckpoint, "save", spy)
    prune(short_chains, tmp_path / "g.parquet", tiny_gpt2_model, "--keep", "0.3",
          "--per-step", "2")
    mid_chain = [k for c, k in saved if c == "b"][:-1]
    assert mid_chain and all(k % 2 == 0 for k in mid_chain)  # after whole steps of 2


def test_protect_digits_keeps_every_digit_token(short_chains, tmp_path, tiny_gpt2_model):
    _, rows = prune(short_chains, tmp_path / "p.parquet", tiny_gpt2_model, "--keep", "0.3",
                    "--protect", "digits", "--method", "surprisal")
    tok = load_tokenizer(str(tiny_gpt2_model))
    for r in rows:
        cot_ids = r["input_ids"][r["cot_start"]:r["cot_end"]]
        digits = {i for i, t in enumerate(cot_ids) if any(c.isdigit() for c in decode(tok, [t]))}
        assert digits and digits <= set(r["kept_positions"])


def test_killed_greedy_run_resumes_to_the_same_result(short_chains, tmp_path, tiny_gpt2_model,
                                                      monkeypatch):
    _, expected = prune(short_chains, tmp_path / "full.parquet", tiny_gpt2_model, "--keep", "0.5")
    import cotprune.pruning.prune as prune_module

    real = prune_module.GreedyCheckpoint.save
    calls = {"n": 0}

    def dying_save(self, traj):  # die in the middle of the second chain
        real(self, traj)
        calls["n"] += 1
        if self.chain_id == "b" and len(traj.order) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(prune_module.GreedyCheckpoint, "save", dying_save)
    out = tmp_path / "resumed.parquet"
    code, _, _ = run_cli("prune", short_chains, "-o", out, "--model", tiny_gpt2_model,
                         "--device", "cpu", "--keep", "0.5")
    assert code == 130 and not out.exists()
    assert (tmp_path / "resumed.parquet.partial" / "greedy-b.json").exists()
    code, _, stderr = run_cli("prune", short_chains, "-o", out, "--model", tiny_gpt2_model,
                              "--device", "cpu", "--keep", "0.5")
    assert code == 2 and "--resume" in stderr  # a leftover run is never thrown away silently
    monkeypatch.setattr(prune_module.GreedyCheckpoint, "save", real)
    _, rows = prune(short_chains, out, tiny_gpt2_model, "--keep", "0.5", "--resume")
    assert [r["prune_order"] for r in rows] == [r["prune_order"] for r in expected]
    assert [r["objective_nll"] for r in rows] == pytest.approx(
        [r["objective_nll"] for r in expected], abs=1e-4)


def test_two_shards_equal_one_process(short_chains, tmp_path, tiny_gpt2_model):
    _, single = prune(short_chains, tmp_path / "one.parquet", tiny_gpt2_model, "--keep", "0.5",
                      "--method", "loo")
    for i in range(2):
        prune(short_chains, tmp_path / "two", tiny_gpt2_model, "--keep", "0.5", "--method",
              "loo", "--shard", f"{i}/2")
    both = read_table(tmp_path / "two").to_pylist()
    assert [r["id"] for r in both] == [r["id"] for r in single]
    assert [r["kept_positions"] for r in both] == [r["kept_positions"] for r in single]


@pytest.mark.parametrize("args, named", [
    (["--keep", "1.5"], "--keep"), (["--keep", "abc"], "--keep"),
    (["--method", "magic"], "--method"),
    (["--objective", "everything"], "objective"), (["--protect", "(["], "--protect"),
    (["--method", "predicted"], "--predictor"), (["--per-step", "0"], "--per-step")])
def test_bad_options_exit_2_name_the_option_and_write_nothing(short_chains, tmp_path,
                                                              tiny_gpt2_model, args, named):
    out = tmp_path / "bad.parquet"
    code, _, stderr = run_cli("prune", short_chains, "-o", out, "--model", tiny_gpt2_model,
                              "--device", "cpu", *args)
    assert code == 2, stderr
    assert named in stderr
    assert not out.exists() and not (tmp_path / "bad.parquet.partial").exists()


def test_missing_model_exits_2(short_chains, tmp_path):
    out = tmp_path / "bad.parquet"
    code, _, stderr = run_cli("prune", short_chains, "-o", out, "--model", "/no/such/model")
    assert code == 2 and "/no/such/model" in stderr
    assert not out.exists() and not (tmp_path / "bad.parquet.partial").exists()


def test_greedy_summary_counts_the_work_run(short_chains, tmp_path, tiny_gpt2_model):
    """The summary's counters are the deletion scorer's own, summed over the chains, and the
    published algorithm's tokens follow from the chain lengths."""
    from cotprune.core.deletion import DeletionScorer
    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.layout import ChainLayout
    from cotprune.pruning.greedy import greedy_prune, published_tokens

    summary, _ = prune(short_chains, tmp_path / "g.parquet", tiny_gpt2_model, "--keep", "0.5")
    model, tokenizer = load_model(ModelOptions(model=str(tiny_gpt2_model), device="cpu"))
    layouter = ChainLayout(tokenizer)
    scorer = DeletionScorer(model, "reason-answer", 4096)
    published = 0
    for chain in read_table(short_chains).to_pylist():
        x = layouter.layout(chain["question"], chain["cot"], chain["answer"])
        n, answer = len(x.cot_ids), x.input_ids[x.answer_start:]
        greedy_prune(scorer, x.input_ids[:x.cot_start], x.cot_ids, answer, n - n // 2)
        published += published_tokens(x.cot_start, n, len(answer), n - n // 2)
    assert {key: summary[key] for key in scorer.counts()} == scorer.counts()
    assert summary["forwards"] > 0 and summary["projection_rows"] > 0
    assert summary["published_tokens"] == published
    assert summary["published_ratio"] == round(published / summary["tokens_run"], 3) > 1


def test_static_summary_has_no_scorer_counts(short_chains, tmp_path, tiny_gpt2_model):
    summary, _ = prune(short_chains, tmp_path / "s.parquet", tiny_gpt2_model,
                       "--method", "surprisal", "--keep", "0.5")
    assert summary["tokens_run"] is None and "published_tokens" not in summary


@pytest.mark.parametrize("mode", [[], ["--shortlist", "2"], ["--per-step", "2"], ["--fast"]],
                         ids=["exact", "shortlist", "per-step", "fast"])
def test_lockstep_prunes_as_one_chain_at_a_time_in_fewer_forwards(short_chains, tmp_path,
                                                                  tiny_gpt2_model, mode):
    """--lockstep runs the chains side by side: the same deletions, J equal up to float
    rounding (other batch shapes), in fewer forwards."""
    args = ["--keep", "0.7,0.3", *mode]
    alone, want = prune(short_chains, tmp_path / "alone.parquet", tiny_gpt2_model, *args)
    side, got = prune(short_chains, tmp_path / "side.parquet", tiny_gpt2_model, *args,
                      "--lockstep", "3")
    floats = ("objective_nll", "objective_trace")
    assert [{k: v for k, v in r.items() if k not in floats} for r in got] == \
        [{k: v for k, v in r.items() if k not in floats} for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["objective_nll"] == pytest.approx(w["objective_nll"], rel=1e-5)
        assert g["objective_trace"] == pytest.approx(w["objective_trace"], rel=1e-5)
    assert side["forwards"] < alone["forwards"]
    assert side["projection_rows"] == alone["projection_rows"]
    assert side["published_tokens"] == alone["published_tokens"]


def fast_flags() -> list[str]:
    """FAST spelled out as `prune` flags."""
    from cotprune.pruning.greedy import FAST

    flags = ["--per-step", str(FAST.per_step), "--refresh-every", str(FAST.refresh_every)]
    flags += ["--self-term"] if FAST.self_term else []
    flags += ["--first-window", str(FAST.first_window), "--screen", str(FAST.screen)]
    return flags + (["--shortlist", str(FAST.shortlist)] if FAST.shortlist else [])


def test_fast_is_its_preset_spelled_out(short_chains, tmp_path, tiny_gpt2_model):
    from cotprune.pruning.greedy import FAST

    assert not FAST.exact  # a preset of the approximate modes, not exact greedy
    _, fast = prune(short_chains, tmp_path / "fast.parquet", tiny_gpt2_model, "--keep", "0.5",
                    "--fast")
    _, spelled = prune(short_chains, tmp_path / "spelled.parquet", tiny_gpt2_model,
                       "--keep", "0.5", *fast_flags())
    assert [r["prune_order"] for r in fast] == [r["prune_order"] for r in spelled]
    assert [r["objective_trace"] for r in fast] == [r["objective_trace"] for r in spelled]


@pytest.mark.parametrize("extra,message", [
    (["--fast", "--shortlist", "8"], "--fast sets --shortlist itself"),
    (["--fast", "--per-step", "2"], "--fast sets --per-step itself"),
    (["--fast", "--method", "surprisal"], "are for --method greedy, not 'surprisal'"),
    (["--shortlist", "4", "--method", "random"], "are for --method greedy, not 'random'"),
    (["--self-term"], "--self-term corrects lazy greedy's stale costs: it needs --shortlist M"),
    (["--fast", "--self-term"], "--fast sets --self-term itself"),
    (["--first-window", "8"], "--first-window estimates lazy greedy's first costs: it needs "
                              "--shortlist M"),
    (["--shortlist", "2", "--first-window", "-1"], "--first-window must be >= 0, got -1"),
    (["--screen", "8"], "--screen narrows lazy greedy's rescoring: it needs --shortlist M"),
    (["--shortlist", "2", "--screen", "-1"], "--screen must be >= 0, got -1"),
    (["--fast", "--screen", "4"], "--fast sets --screen itself")],
    ids=["fast+shortlist", "fast+per-step", "fast-surprisal", "shortlist-random", "self-term",
         "fast+self-term", "first-window", "first-window-negative", "screen", "screen-negative",
         "fast+screen"])
def test_fast_refuses_what_contradicts_it(short_chains, tmp_path, tiny_gpt2_model, extra,
                                          message):
    out = tmp_path / "p.parquet"
    code, _, stderr = run_cli("prune", short_chains, "-o", out, "--model", tiny_gpt2_model,
                              "--device", "cpu", *extra)
    assert code == 2
    assert message in " ".join(stderr.split())  # rich may wrap the message
    assert not out.exists()
