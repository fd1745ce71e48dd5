"""`generate`: a teacher writes chains; truncation, rejection sampling, resume."""

from __future__ import annotations

import re

import pyarrow as pa
from conftest import run_cli, summary_of

from cotprune.data.files import CHAIN_SCHEMA, read_table, write_table
from cotprune.training import generate_chains as gen_stage
from cotprune.training.sampling import Response

# --- on a tiny model -------------------------------------------------------------------------

def test_generate_real_model_marks_truncation(tiny_gpt2_model, chains_file, tmp_path):
    out = tmp_path / "gen.parquet"
    code, stdout, err = run_cli("generate", chains_file, "-o", out, "--model", tiny_gpt2_model,
                                "--samples", "2", "--temperature", "1.0",
                                "--max-new-tokens", "5", "--device", "cpu")
    assert code == 0, err
    t = read_table(out).to_pylist()
    assert len(t) == 12 and summary_of(stdout)["rows"] == 12
    assert [r["id"] for r in t[:2]] == ["arith-00000#0", "arith-00000#1"]
    for r in t:
        assert r["truncated"] == (r["generated_tokens"] == 5)  # random model: never stops early
        assert r["source_id"] == r["id"].split("#")[0]


def _fake_generate(script):
    """A generate_batch stand-in: `script(question_index, sample)` -> Response; records calls."""
    calls = []

    def fake(model, tokenizer, prompts, opts, stop_ids, *, seed=None):
        calls.append(len(prompts))
        out = []
        for p in prompts:
            text = tokenizer.decode(p)
            index = int(re.search(r"Q(\d+):", text).group(1))
            out.append([script(index, s) for s in range(opts.samples)])
        return out

    return fake, calls


def _questions(tmp_path, n=4):
    rows = [{"id": f"q{i}", "question": f"Q{i}: what is {i} + {i}?", "cot": "", "answer": "",
             "reference": str(2 * i)} for i in range(n)]
    path = tmp_path / "questions.parquet"
    write_table(pa.Table.from_pylist(rows, schema=CHAIN_SCHEMA), path)
    return path


def test_keep_correct_rejection_sampling(tiny_gpt2_model, tmp_path, monkeypatch):
    def script(i, s):
        if i == 0:  # first sample wrong, second right: keep the second
            return Response(f"think\nThe answer is {2 * i + (1 - s)}", 7, False)
        if i == 1:  # right but truncated, then right and complete
            return Response(f"think\nThe answer is {2 * i}", 9, s == 0)
        if i == 2:  # always wrong: the question is dropped
            return Response("think\nThe answer is 99", 7, False)
        return Response(f"{i}+{i}={2 * i}\nThe answer is {2 * i}", 5, False)

    fake, _ = _fake_generate(script)
    monkeypatch.setattr(gen_stage, "generate_batch", fake)
    out = tmp_path / "kept.parquet"
    code, stdout, err = run_cli("generate", _questions(tmp_path), "-o", out, "--model",
                                tiny_gpt2_model, "--samples", "3", "--keep-correct")
    assert code == 0, err
    rows = read_table(out).to_pylist()
    assert [(r["id"], r["sample"]) for r in rows] == [("q0", 1), ("q1", 1), ("q3", 0)]
    assert rows[2]["cot"] == "3+3=6" and rows[2]["answer"] == "6"
    assert all(r["correct"] and not r["truncated"] for r in rows)
    assert summary_of(stdout)["dropped_questions"] == 1


def test_keep_correct_needs_reference(tiny_gpt2_model, tmp_path):
    path = tmp_path / "q.parquet"
    write_table(pa.table({"id": ["a"], "question": ["x"]}), path)
    code, _, err = run_cli("generate", path, "-o", tmp_path / "o.parquet", "--model",
                           tiny_gpt2_model, "--keep-correct")
    assert code == 2 and "reference" in err
    assert not (tmp_path / "o.parquet").exists()


def test_generate_resume_skips_finished_batches(tiny_gpt2_model, tmp_path, monkeypatch):
    def script(i, s):
        return Response(f"step {s}\nThe answer is {2 * i}", 4, False)

    questions = _questions(tmp_path, n=4)
    fake, calls = _fake_generate(script)
    monkeypatch.setattr(gen_stage, "generate_batch", fake)
    whole = tmp_path / "whole.parquet"
    common = ["--model", tiny_gpt2_model, "--samples", "2", "--max-new-tokens", "4",
              "--batch-tokens", "60"]  # 1 question per batch
    assert run_cli("generate", questions, "-o", whole, *common)[0] == 0
    assert calls == [1, 1, 1, 1]

    def dying(*a, **k):
        if len(calls) == 6:  # two batches done, then the process "dies"
            raise RuntimeError("killed")
        return fake(*a, **k)

    monkeypatch.setattr(gen_stage, "generate_batch", dying)
    part = tmp_path / "part.parquet"
    assert run_cli("generate", questions, "-o", part, *common)[0] == 1
    assert not part.exists()
    code, _, err = run_cli("generate", questions, "-o", part, *common)
    assert code == 2 and "--resume" in err
    monkeypatch.setattr(gen_stage, "generate_batch", fake)
    assert run_cli("generate", questions, "-o", part, *common, "--resume")[0] == 0
    assert len(calls) == 8  # only the two unfinished batches ran again
    assert read_table(part).drop_columns([]).equals(read_table(whole))


