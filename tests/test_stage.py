"""The stage recipe (`core/stage.py`): what every command does alike.

- a bad model or a bad input file exits 2 and leaves nothing behind, for every command;
- `--resume` continues only the run it was interrupted from: other options, model or inputs
  exit 2 with a message naming what differs;
- every stage's manifest records the same facts (inputs with fingerprints, dtype used...).
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import run_cli

from cotprune.data.files import CHAIN_SCHEMA, StageOutput, read_manifest, read_table, write_table
from cotprune.data.synth import synth_arithmetic

MODEL_COMMANDS = {
    # command -> its arguments after the input file, without --model
    "score": ["score", "{input}", "-o", "{out}", "--scorer", "surprisal"],
    "prune": ["prune", "{input}", "-o", "{out}", "--method", "surprisal", "--keep", "0.5"],
    "generate": ["generate", "{input}", "-o", "{out}", "--max-new-tokens", "2"],
    "eval": ["eval", "{input}", "-o", "{out}", "--max-new-tokens", "2"],
    "distill": ["distill", "{input}", "-o", "{out}", "--max-steps", "1"],
    "rl": ["rl", "{input}", "-o", "{out}", "--max-steps", "1", "--max-new-tokens", "2",
           "--prompts-per-step", "1", "--samples", "2"],
}
NO_MODEL_COMMANDS = {
    "import": ["import", "{input}", "-o", "{out}", "--format", "parquet"],
    "show": ["show", "{input}"],
    "report": ["report", "{input}", "-o", "{out}"],
    "predictor eval": ["predictor", "eval", "{input}", "--predictor", "{input}"],
    # with a bad model in test_predictor.py: it needs greedy output to get that far
    "predictor fit": ["predictor", "fit", "{input}", "-o", "{out}", "--epochs", "1"],
}


def _chains(path, n=3):
    """`n` synthetic chains cut to their first words: short enough for greedy to be quick."""
    rows = [{**r, "cot": " ".join(r["cot"].split()[:8])} for r in synth_arithmetic(n, 0)]
    write_table(pa.Table.from_pylist(rows, schema=CHAIN_SCHEMA), path)
    return path


def _args(template, **values):
    return [a.format(**values) for a in template]


def _left_behind(folder, inputs):
    return sorted(p.name for p in folder.iterdir() if p.name not in inputs)


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
def test_a_bad_model_exits_2_and_leaves_nothing(command, tmp_path):
    chains = _chains(tmp_path / "chains.parquet")
    args = _args(MODEL_COMMANDS[command], input=chains, out=tmp_path / "out")
    code, _, err = run_cli(*args, "--model", "/no/such/model", "--device", "cpu")
    assert code == 2, err
    assert "/no/such/model" in err
    assert _left_behind(tmp_path, {"chains.parquet"}) == []


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS) + sorted(NO_MODEL_COMMANDS))
def test_a_bad_input_file_exits_2_and_leaves_nothing(command, tmp_path, tiny_gpt2_model):
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet at all")
    template = {**MODEL_COMMANDS, **NO_MODEL_COMMANDS}[command]
    args = _args(template, input=bad, out=tmp_path / "out")
    if command in MODEL_COMMANDS:
        args += ["--model", str(tiny_gpt2_model), "--device", "cpu"]
    code, _, err = run_cli(*args)
    assert code == 2, err
    assert "bad.parquet" in err
    assert _left_behind(tmp_path, {"bad.parquet"}) == []


# --- --resume refuses another run ------------------------------------------------------------

STAGES = {
    # stage -> (its arguments, an option whose change must be refused, the word naming it)
    "score": (["score", "--scorer", "surprisal"], ["--objective", "answer"], "objective"),
    "prune": (["prune", "--method", "surprisal", "--keep", "0.5"], ["--keep", "0.7"], "keep"),
    "prune greedy": (["prune", "--method", "greedy", "--keep", "0.5"], ["--per-step", "2"],
                     "greedy"),
    "generate": (["generate", "--max-new-tokens", "2"], ["--max-new-tokens", "3"],
                 "max_new_tokens"),
    "eval": (["eval", "--max-new-tokens", "2"], ["--max-new-tokens", "3"], "max_new_tokens"),
}


def _interrupt_at_finish(monkeypatch):
    """Make the next run die where a killed run would: rows written, result not assembled."""
    def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(StageOutput, "finish", killed)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_resume_refuses_other_options_and_continues_the_same(stage, tmp_path, tiny_gpt2_model,
                                                             monkeypatch):
    head, change, named = STAGES[stage]
    chains = _chains(tmp_path / "chains.parquet")
    out = tmp_path / "out.parquet"
    common = [head[0], chains, "-o", out, *head[1:], "--model", tiny_gpt2_model,
              "--device", "cpu"]
    with monkeypatch.context() as m:
        _interrupt_at_finish(m)
        assert run_cli(*common)[0] == 130
    assert (tmp_path / "out.parquet.partial").exists()
    code, _, err = run_cli(*common, *change, "--resume")
    assert code == 2 and named in err and "--resume" in err, err
    code, _, err = run_cli(*common, "--resume")
    assert code == 0, err
    assert read_table(out).num_rows > 0


def test_resume_refuses_another_model_or_other_inputs(tmp_path, tiny_gpt2_model, tiny_qwen_model,
                                                      monkeypatch):
    chains = _chains(tmp_path / "chains.parquet")
    out = tmp_path / "out.parquet"
    common = ["--method", "surprisal", "--keep", "0.5", "--device", "cpu"]
    with monkeypatch.context() as m:
        _interrupt_at_finish(m)
        assert run_cli("prune", chains, "-o", out, "--model", tiny_gpt2_model, *common)[0] == 130
    code, _, err = run_cli("prune", chains, "-o", out, "--model", tiny_qwen_model, *common,
                           "--resume")
    assert code == 2 and "model" in err, err
    _chains(chains, n=4)  # the same path, other contents
    code, _, err = run_cli("prune", chains, "-o", out, "--model", tiny_gpt2_model, *common,
                           "--resume")
    assert code == 2 and "input files" in err, err


# --- one manifest ----------------------------------------------------------------------------

@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_records_the_same_manifest_facts(stage, tmp_path, tiny_gpt2_model):
    head, _, _ = STAGES[stage]
    chains = _chains(tmp_path / "chains.parquet")
    out = tmp_path / "out.parquet"
    code, _, err = run_cli(head[0], chains, "-o", out, *head[1:], "--model", tiny_gpt2_model,
                           "--device", "cpu")
    assert code == 0, err
    m = read_manifest(out)
    assert m["command"] == head[0] and m["model"] == str(tiny_gpt2_model)
    assert m["dtype"] == "float32" and m["device"] == "cpu"  # what was used, never "auto"
    assert m["tokenizer"] and "adapter" in m and m["cotprune_version"]
    assert [i["path"] for i in m["inputs"]] == [str(chains)] and len(m["inputs"][0]["sha256"]) == 64
    assert isinstance(m["options"], dict) and m["options"]


def test_summary_is_printed_by_rank_0_only(tmp_path, tiny_gpt2_model, monkeypatch):
    chains = _chains(tmp_path / "chains.parquet")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, stdout, err = run_cli("prune", chains, "-o", tmp_path / "parts", "--method", "random",
                                "--keep", "0.5", "--model", tiny_gpt2_model, "--device", "cpu")
    assert code == 0, err
    assert stdout == ""
    assert (tmp_path / "parts" / "part-00001-of-00002.parquet").exists()


@pytest.mark.parametrize("command, first, change, named", [
    ("distill", ["--max-steps", "1"], ["--lr", "0.1"], "option lr"),
    ("rl", ["--max-steps", "1", "--max-new-tokens", "2", "--prompts-per-step", "1",
            "--samples", "2"], ["--alpha", "0.5"], "option alpha"),
])
def test_training_resume_refuses_other_options(command, first, change, named, tmp_path,
                                               tiny_gpt2_model):
    """`distill` and `rl` keep their manifest in OUTDIR; --resume is checked against it."""
    chains = _chains(tmp_path / "chains.parquet")
    common = [command, chains, "-o", tmp_path / "out", *first, "--model", tiny_gpt2_model,
              "--device", "cpu"]
    code, _, err = run_cli(*common)
    assert code == 0, err
    code, _, err = run_cli(*common, *change, "--resume")
    assert code == 2 and named in err and "--resume" in err, err
    code, _, err = run_cli(*common, "--resume")
    assert code == 0, err
