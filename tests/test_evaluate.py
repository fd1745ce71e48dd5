"""`eval`: grading, the split by truncation, shards."""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import run_cli, summary_of
from test_generate_chains import _fake_generate, _questions

from cotprune.data.files import read_table
from cotprune.training import generate_chains as gen_stage
from cotprune.training.sampling import (
    Response,
)


def test_eval_grades_and_splits_by_truncation(tiny_gpt2_model, tmp_path, monkeypatch):
    answers = {0: ("The answer is 0", False), 1: ("The answer is 2", False),
               2: ("I think the answer is 5", False), 3: ("3 + 3 = ", True)}

    def script(i, s):
        text, truncated = answers[i]
        return Response(text, 10 if truncated else 4, truncated)

    fake, _ = _fake_generate(script)
    monkeypatch.setattr(gen_stage, "generate_batch", fake)
    out = tmp_path / "eval.parquet"
    code, stdout, err = run_cli("eval", _questions(tmp_path), "-o", out, "--model",
                                tiny_gpt2_model, "--max-new-tokens", "10")
    assert code == 0, err
    s = summary_of(stdout)
    assert s["n"] == 4 and s["accuracy"] == 0.5 and s["mean_generated_tokens"] == 5.5
    assert s["truncated"] == {"n": 1, "accuracy": 0.0, "mean_generated_tokens": 10.0}
    assert s["complete"]["n"] == 3 and s["complete"]["accuracy"] == pytest.approx(2 / 3)
    rows = read_table(out)
    assert rows.schema.field("generated_tokens").type == pa.int32()
    assert rows.column("prediction").to_pylist() == ["0", "2", "5", "3"]
    assert rows.column("correct").to_pylist() == [True, True, False, False]


def test_eval_shards_concatenate_to_one_run(tiny_gpt2_model, chains_file, tmp_path):
    common = ["--model", tiny_gpt2_model, "--max-new-tokens", "3", "--device", "cpu"]
    assert run_cli("eval", chains_file, "-o", tmp_path / "one.parquet", *common)[0] == 0
    for i in range(2):
        code, _, err = run_cli("eval", chains_file, "-o", tmp_path / "parts", *common,
                               "--shard", f"{i}/2")
        assert code == 0, err
    one, parts = read_table(tmp_path / "one.parquet"), read_table(tmp_path / "parts")
    assert parts.to_pylist() == one.to_pylist()
