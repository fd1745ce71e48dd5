"""`cotprune score`: scorers against plain references, batching, shards, resume, bad input."""

import functools

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import GSM8K, run_cli, summary_of

from cotprune.core.models import ModelOptions, load_model
from cotprune.data.files import CHAIN_SCHEMA, read_table, write_table
from cotprune.data.layout import ChainLayout
from cotprune.scoring.score import ScoreOptions, score_batch

SCORERS = ["surprisal", "entropy", "attention"]


@functools.lru_cache(maxsize=2)
def eager_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def reference_scores(path, layout):
    """Float64 full-vocabulary log-softmax and eager attention, one chain at a time."""
    eager = eager_model(str(path))
    with torch.no_grad():
        out = eager(torch.tensor([layout.input_ids]), output_attentions=True)
    logp = torch.log_softmax(out.logits[0].double(), -1)
    cs, ce, as_, ae = layout.cot_start, layout.cot_end, layout.answer_start, layout.answer_end
    ids = layout.input_ids
    surprisal = [-float(logp[p - 1, ids[p]]) for p in range(cs, ce)]
    entropy = [-float((logp[p - 1].exp() * logp[p - 1]).sum()) for p in range(cs, ce)]
    full = torch.stack([a[0] for a in out.attentions]).double()
    attention = full[:, :, as_:ae, cs:ce].mean(dim=(0, 1, 2)).tolist()
    return {"surprisal": surprisal, "entropy": entropy, "attention": attention}


def assert_scores_close(got, ref, *, rel=1e-5, abs_=1e-4, att_abs=1e-6):
    assert got["surprisal"] == pytest.approx(ref["surprisal"], rel=rel, abs=abs_)
    assert got["entropy"] == pytest.approx(ref["entropy"], rel=rel, abs=abs_)
    assert got["attention"] == pytest.approx(ref["attention"], abs=att_abs)


@pytest.mark.parametrize("which", ["tiny_gpt2_model", "tiny_qwen_model"])
def test_score_batch_matches_float64_and_eager_reference(which, request):
    path = request.getfixturevalue(which)
    model, tok = load_model(ModelOptions(model=str(path), device="cpu"))
    cl = ChainLayout(tok)
    layouts = [cl.layout(f"Q{i}: 3 * {i}?", "Three times. " * (i + 1) + f"So {3 * i}.", str(3 * i))
               for i in range(4)]
    batched = score_batch(model, tok, layouts, SCORERS)
    for layout, got in zip(layouts, batched, strict=True):
        n = layout.cot_end - layout.cot_start
        assert all(len(got[s]) == n for s in SCORERS)
        assert_scores_close(got, reference_scores(path, layout))
        assert max(got["surprisal"]) > min(got["surprisal"])


@pytest.mark.parametrize("objective", ["reason-answer", "answer"])
def test_loo_matches_brute_force_deletion(objective, tiny_gpt2_model):
    from greedy_reference import full_objective

    model, tok = load_model(ModelOptions(model=str(tiny_gpt2_model), device="cpu"))
    cl = ChainLayout(tok)
    layouts = [cl.layout("Q?", "Two plus two is four, surely.", "4"),
               cl.layout("Why?", "Because 3 * 3 = 9.", "9")]
    got = score_batch(model, tok, layouts, ["loo"], objective=objective, batch_tokens=64)
    for layout, scores in zip(layouts, got, strict=True):
        prompt, cot = layout.input_ids[:layout.cot_start], layout.cot_ids
        answer = layout.input_ids[layout.answer_start:]

        def j(kept, prompt=prompt, answer=answer):
            start = len(prompt) if objective == "reason-answer" else len(prompt) + len(kept)
            return full_objective(model, [*prompt, *kept, *answer], start)

        ref = [j(cot[:t] + cot[t + 1:]) - j(cot) for t in range(len(cot))]
        assert scores["loo"] == pytest.approx(ref, abs=2e-3)


def write_chains(path, rows, schema=CHAIN_SCHEMA):
    write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


@pytest.fixture
def small_chains(tmp_path):
    """Five short chains with an extra column that must pass through."""
    rows = [{"id": f"c{i}", "question": f"What is {i} + {i + 1}?",
             "cot": f"First {i}. Then add {i + 1}. " * (1 + i % 3) + f"Total {2 * i + 1}.",
             "answer": str(2 * i + 1), "reference": str(2 * i + 1), "source": f"s{i}"}
            for i in range(5)]
    schema = CHAIN_SCHEMA.append(pa.field("source", pa.string()))
    return write_chains(tmp_path / "chains.parquet", rows, schema)


def score_cli(chains, out, model, *extra):
    return run_cli("score", chains, "-o", out, "--model", model, "--device", "cpu",
                   "--scorer", "surprisal,entropy,attention", *extra)


def test_cli_writes_the_scores_schema_and_summary(small_chains, tmp_path, tiny_qwen_model):
    out = tmp_path / "scores.parquet"
    code, stdout, stderr = score_cli(small_chains, out, tiny_qwen_model)
    assert code == 0, stderr
    summary = summary_of(stdout)
    assert summary["chains"] == 5 and summary["skipped"] == 0
    assert summary["tokens"] > 0 and summary["tokens_per_second"] > 0
    table = pq.read_table(out)
    assert table.column_names[:6] == ["id", "question", "cot", "answer", "reference", "source"]
    assert table.schema.field("input_ids").type == pa.list_(pa.int32())
    for s in SCORERS:
        assert table.schema.field(s).type == pa.list_(pa.float32())
    assert table.column("id").to_pylist() == [f"c{i}" for i in range(5)]
    assert table.column("source").to_pylist() == [f"s{i}" for i in range(5)]
    _, tok = load_model(ModelOptions(model=str(tiny_qwen_model), device="cpu"))
    for row in table.to_pylist():
        n = row["cot_end"] - row["cot_start"]
        assert all(len(row[s]) == n for s in SCORERS) and len(row["cot_tokens"]) == n
        assert "".join(row["cot_tokens"]) == row["cot"]
        assert row["input_ids"][row["cot_start"]:row["cot_end"]] == tok(
            row["cot"], add_special_tokens=False)["input_ids"]
    assert not (tmp_path / "scores.parquet.partial").exists()


def test_results_do_not_depend_on_batch_composition(small_chains, tmp_path, tiny_gpt2_model):
    one, big = tmp_path / "one.parquet", tmp_path / "big.parquet"
    assert score_cli(small_chains, one, tiny_gpt2_model, "--batch-tokens", "1")[0] == 0
    assert score_cli(small_chains, big, tiny_gpt2_model, "--batch-tokens", "100000")[0] == 0
    a, b = pq.read_table(one).to_pylist(), pq.read_table(big).to_pylist()
    for x, y in zip(a, b, strict=True):
        assert x["input_ids"] == y["input_ids"]
        for s in SCORERS:
            assert x[s] == pytest.approx(y[s], rel=1e-5, abs=1e-5)


def test_two_shards_equal_one_process(small_chains, tmp_path, tiny_qwen_model):
    single, parts = tmp_path / "single.parquet", tmp_path / "parts"
    assert score_cli(small_chains, single, tiny_qwen_model, "--batch-tokens", "64")[0] == 0
    for i in range(2):
        code, _, err = score_cli(small_chains, parts, tiny_qwen_model, "--shard", f"{i}/2")
        assert code == 0, err
    assert sorted(p.name for p in parts.iterdir()) == [
        "part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    a, b = read_table(single).to_pylist(), read_table(parts).to_pylist()
    assert [r["id"] for r in b] == [r["id"] for r in a]
    for x, y in zip(a, b, strict=True):
        for s in SCORERS:
            assert x[s] == pytest.approx(y[s], rel=1e-5, abs=1e-5)


def test_killed_run_resumes_to_the_same_result(small_chains, tmp_path, tiny_qwen_model,
                                               monkeypatch):
    from cotprune.data.files import StageOutput

    clean, out = tmp_path / "clean.parquet", tmp_path / "resumed.parquet"
    code, clean_stdout, _ = score_cli(small_chains, clean, tiny_qwen_model, "--batch-tokens", "1")
    assert code == 0
    real_write, calls = StageOutput.write, []

    def write_then_die(self, rows, order):
        real_write(self, rows, order)
        calls.append(len(rows))
        raise RuntimeError("simulated kill after the first chunk")

    monkeypatch.setattr(StageOutput, "write", write_then_die)
    assert score_cli(small_chains, out, tiny_qwen_model, "--batch-tokens", "1")[0] == 1
    monkeypatch.setattr(StageOutput, "write", real_write)
    assert not out.exists() and (tmp_path / "resumed.parquet.partial").exists()
    code, _, err = score_cli(small_chains, out, tiny_qwen_model, "--batch-tokens", "1")
    assert code == 2 and "--resume" in err  # leftover rows are never silently thrown away
    code, stdout, err = score_cli(small_chains, out, tiny_qwen_model, "--batch-tokens", "1",
                                  "--resume")
    assert code == 0, err
    assert summary_of(stdout)["chains"] == 5 and calls == [1]
    # only the unfinished chains were scored again
    assert summary_of(stdout)["tokens"] < summary_of(clean_stdout)["tokens"]
    assert pq.read_table(out).to_pylist() == pq.read_table(clean).to_pylist()


def test_long_chains_are_skipped_or_fail_with_strict(small_chains, tmp_path, tiny_qwen_model):
    _, tok = load_model(ModelOptions(model=str(tiny_qwen_model), device="cpu"))
    cl = ChainLayout(tok)
    fits = [r["id"] for r in pq.read_table(small_chains).to_pylist()
            if len(cl.layout(r["question"], r["cot"], r["answer"]).input_ids) <= 60]
    out = tmp_path / "s.parquet"
    code, stdout, err = score_cli(small_chains, out, tiny_qwen_model, "--max-length", "60")
    assert code == 0, err
    summary = summary_of(stdout)
    assert 0 < summary["skipped"] < 5 and summary["skipped"] == 5 - len(fits)
    assert pq.read_table(out).column("id").to_pylist() == fits
    strict = tmp_path / "strict.parquet"
    code, _, err = score_cli(small_chains, strict, tiny_qwen_model, "--max-length", "60",
                             "--strict")
    assert code == 2 and "over the limit" in err and "column 'cot'" in err
    assert not strict.exists() and not (tmp_path / "strict.parquet.partial").exists()


def _bad_chains(tmp_path, kind):
    good = {"id": "a", "question": "q", "cot": "c", "answer": "1", "reference": "1"}
    path = tmp_path / f"{kind}.parquet"
    if kind == "missing_column":
        return write_chains(path, [{"id": "a", "question": "q", "answer": "1"}],
                            pa.schema([CHAIN_SCHEMA.field(n) for n in ("id", "question",
                                                                         "answer")]))
    if kind == "null_cot":
        return write_chains(path, [good, {**good, "id": "b", "cot": None}])
    if kind == "duplicate_ids":
        return write_chains(path, [good, good])
    path.write_text("id,question\n1,2\n")
    return path


@pytest.mark.parametrize("kind,needle", [("missing_column", "column 'cot'"),
                                         ("null_cot", "row b"),
                                         ("duplicate_ids", "duplicate id"),
                                         ("not_parquet", "not a readable Parquet")])
def test_bad_chains_exit_2_without_output(kind, needle, tmp_path, tiny_gpt2_model):
    out = tmp_path / "out.parquet"
    code, _, err = score_cli(_bad_chains(tmp_path, kind), out, tiny_gpt2_model)
    assert code == 2 and needle in err
    assert not out.exists() and not (tmp_path / "out.parquet.partial").exists()


@pytest.mark.parametrize("args,needle", [
    (["--scorer", "perplexity"], "unknown scorer 'perplexity'"),
    (["--scorer", "significance"], "--significance-model"),
    (["--objective", "everything"], "--objective"),
    (["--model", "/nonexistent/model"], "does not exist"),
])
def test_bad_options_exit_2_without_output(args, needle, small_chains, tmp_path, tiny_gpt2_model):
    out = tmp_path / "out.parquet"
    code, _, err = run_cli("score", small_chains, "-o", out, "--model", tiny_gpt2_model,
                           "--device", "cpu", *args)
    assert code == 2 and needle in err, err
    assert not out.exists() and not (tmp_path / "out.parquet.partial").exists()


def test_options_validate_and_deduplicate():
    assert ScoreOptions(scorers=["entropy", "entropy", "surprisal"]).scorers == [
        "entropy", "surprisal"]
    with pytest.raises(Exception, match="--batch-tokens"):
        ScoreOptions(scorers=["entropy"], batch_tokens=0)


@pytest.mark.slow
def test_default_model_on_two_gsm8k_chains(default_model_cache, tmp_path):
    from cotprune.core.models import resolve_model_path
    from cotprune.data.importers import import_chains

    chains = write_chains(tmp_path / "gsm8k.parquet", import_chains(str(GSM8K), "gsm8k", limit=2))
    out = tmp_path / "scores.parquet"
    code, stdout, err = run_cli("score", chains, "-o", out, "--device", "cpu")
    assert code == 0, err
    assert summary_of(stdout)["chains"] == 2
    path = resolve_model_path("smollm2-135m")
    for row in pq.read_table(out).to_pylist():
        from cotprune.data.layout import Layout

        layout = Layout(row["input_ids"], row["cot_start"], row["cot_end"], row["answer_start"],
                        row["answer_end"])
        # float32 model against a float64 softmax of the same float32 logits
        assert_scores_close(row, reference_scores(path, layout), rel=1e-4, abs_=2e-3,
                            att_abs=1e-5)
