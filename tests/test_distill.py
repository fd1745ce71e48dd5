"""`distill`: loss mask, packing, data order, schedule, resume, ratio conditioning, LoRA output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from conftest import run_cli, summary_of

from cotprune.data.files import CHAIN_SCHEMA, read_table, write_table
from cotprune.data.layout import ChainLayout
from cotprune.data.synth import synth_arithmetic
from cotprune.training.sampling import ratio_question
from cotprune.training.sft import (
    build_example,
)


def _pruned_file(path: Path, n: int = 4, ratios=(0.5, 0.9), seed: int = 1) -> Path:
    """A pruned-like file: synth chains, one row per ratio, CoT cut to about that ratio."""
    rows = []
    for chain in synth_arithmetic(n, seed):
        for r in ratios:
            words = chain["cot"].split(" ")
            rows.append({**chain, "cot": " ".join(words[:max(1, int(r * len(words)))]),
                         "keep_ratio": r})
    schema = pa.schema([*CHAIN_SCHEMA, pa.field("keep_ratio", pa.float32())])
    write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


# --- the command -----------------------------------------------------------------------------

def _metrics(outdir: Path) -> list[dict]:
    return [json.loads(x) for x in (outdir / "metrics.jsonl").read_text().splitlines()]


def test_resume_gives_the_same_losses(tiny_gpt2_model, tmp_path):
    data = _pruned_file(tmp_path / "pruned.parquet")
    args = ["distill", data, "--model", tiny_gpt2_model, "--max-steps", "4", "--lr", "5e-3",
            "--batch-tokens", "600", "--save-every", "2", "--lora-dropout", "0.1",
            "--device", "cpu"]
    whole = tmp_path / "whole"
    code, stdout, err = run_cli(*args, "-o", whole)
    assert code == 0, err
    assert summary_of(stdout)["steps"] == 4
    # an interruption after step 2's checkpoint: later checkpoint and outputs never written
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step-000004")
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        (cut / f).unlink()
    code, _, err = run_cli(*args, "-o", cut)
    assert code == 2 and "--resume" in err
    code, stdout, err = run_cli(*args, "-o", cut, "--resume")
    assert code == 0, err
    assert summary_of(stdout)["resumed_from"] == 2
    a, b = _metrics(whole), _metrics(cut)
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6, abs=1e-7)
        assert y["lr"] == pytest.approx(x["lr"])
    from safetensors.torch import load_file

    wa, wb = load_file(whole / "adapter_model.safetensors"), load_file(cut /
                                                                      "adapter_model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_adapter_continues_training_from_that_adapter(tiny_gpt2_model, tmp_path):
    """`--adapter A` trains A's LoRA weights on: with a vanishing learning rate the result is A
    (a fresh adapter would start from lora_B = 0), and the manifest names A."""
    from safetensors.torch import load_file

    data = _pruned_file(tmp_path / "pruned.parquet", n=2)
    common = ["--model", tiny_gpt2_model, "--max-steps", "1", "--device", "cpu"]
    first = tmp_path / "first"
    code, _, err = run_cli("distill", data, "-o", first, *common, "--lr", "5e-3")
    assert code == 0, err
    then = tmp_path / "then"
    code, _, err = run_cli("distill", data, "-o", then, *common, "--lr", "1e-12",
                           "--adapter", first, "--lora-r", "4")  # A's own rank applies
    assert code == 0, err
    wa, wb = load_file(first / "adapter_model.safetensors"), load_file(
        then / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    assert any(wa[k].abs().max() > 1e-4 for k in wa if "lora_B" in k)  # A is not a fresh init
    assert all(torch.allclose(wa[k], wb[k], atol=1e-8) for k in wa)
    assert json.loads((then / "distill.json").read_text())["adapter"] == str(first)
    code, _, err = run_cli("distill", data, "-o", tmp_path / "full", *common, "--full",
                           "--adapter", first)
    assert code == 2 and "--adapter" in err and not (tmp_path / "full").exists()


def test_ratio_conditioned_round_trip_through_eval(tiny_qwen_model, tmp_path, monkeypatch):
    from cotprune.training import generate_chains as gen_stage

    data = _pruned_file(tmp_path / "pruned.parquet", n=2, ratios=(0.5,))
    out = tmp_path / "student"
    code, _, err = run_cli("distill", data, "-o", out, "--model", tiny_qwen_model,
                           "--max-steps", "1", "--ratio-conditioned", "--device", "cpu")
    assert code == 0, err
    assert json.loads((out / "distill.json").read_text())["ratio_conditioned"] is True
    seen = []
    real = gen_stage.generate_batch
    from transformers import AutoModelForCausalLM

    base_q = AutoModelForCausalLM.from_pretrained(tiny_qwen_model).model.layers[0].self_attn \
        .q_proj.weight

    def spy(model, tokenizer, prompts, *a, **k):
        seen.extend(prompts)
        # the adapter was attached, and merged into the weights for generation
        q = model.model.layers[0].self_attn.q_proj
        assert not hasattr(model, "peft_config") and isinstance(q, torch.nn.Linear)
        assert not torch.allclose(q.weight, base_q)
        return real(model, tokenizer, prompts, *a, **k)

    monkeypatch.setattr(gen_stage, "generate_batch", spy)
    code, stdout, err = run_cli("eval", data, "-o", tmp_path / "eval.parquet", "--model",
                                tiny_qwen_model, "--adapter", out, "--keep", "0.5",
                                "--max-new-tokens", "2", "--device", "cpu")
    assert code == 0, err
    assert summary_of(stdout)["keep_ratio"] == 0.5
    from cotprune.core.models import load_tokenizer

    cl = ChainLayout(load_tokenizer(str(tiny_qwen_model)))
    questions = [c["question"] for c in synth_arithmetic(2, 1)]
    trained = [list(build_example(cl, q, "c", "a", keep_ratio=0.5).input_ids[
        :len(cl.prompt_ids(ratio_question(q, 0.5)))]) for q in questions]
    assert sorted(seen) == sorted(trained)


def test_ratio_conditioned_needs_keep_ratio(tiny_gpt2_model, chains_file, tmp_path):
    code, _, err = run_cli("distill", chains_file, "-o", tmp_path / "s", "--model",
                           tiny_gpt2_model, "--ratio-conditioned")
    assert code == 2 and "keep_ratio" in err
    assert not (tmp_path / "s").exists()


def test_bad_options_name_the_flag(tiny_gpt2_model, chains_file, tmp_path):
    code, _, err = run_cli("distill", chains_file, "-o", tmp_path / "s", "--model",
                           tiny_gpt2_model, "--packing", "zip")
    assert code == 2 and "--packing" in err


@pytest.mark.slow
def test_lora_on_default_model_lowers_loss_and_loads_with_peft(default_model_cache, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = _pruned_file(tmp_path / "pruned.parquet", n=2, ratios=(0.1,))  # ~200 tokens a step
    out = tmp_path / "student"
    code, stdout, err = run_cli("distill", data, "-o", out, "--max-steps", "3", "--lr", "2e-3",
                                "--warmup-ratio", "0", "--batch-tokens", "4096",
                                "--device", "cpu")
    assert code == 0, err
    s = summary_of(stdout)
    losses = [m["loss"] for m in _metrics(out)]
    assert s["final_loss"] < s["first_loss"] and losses[-1] < losses[0] * 0.9, losses
    from cotprune.core.models import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m"))
    ids = torch.tensor([[1, 2, 3, 4]])
    before = base(input_ids=ids).logits
    tuned = PeftModel.from_pretrained(base, out)
    assert not torch.allclose(tuned(input_ids=ids).logits, before)


@pytest.mark.slow
def test_two_cpu_processes_match_one_with_accumulation(tiny_gpt2_model, tmp_path):
    """DDP (gloo) over 2 processes gives the losses of 1 process with --grad-accum 2."""
    data = _pruned_file(tmp_path / "pruned.parquet", n=4, ratios=(0.5,))
    common = ["distill", str(data), "--model", str(tiny_gpt2_model), "--max-steps", "2",
              "--batch-tokens", "300", "--lora-dropout", "0", "--device", "cpu"]
    code, _, err = run_cli(*common, "-o", tmp_path / "one", "--grad-accum", "2")
    assert code == 0, err
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", "29533",
                           "-m", "cotprune", *common, "-o", str(tmp_path / "two")],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary_of(proc.stdout)["processes"] == 2
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], rel=1e-5)


def test_keep_ratio_picks_rows_of_a_multi_ratio_file(tiny_gpt2_model, tmp_path):
    """`--keep 0.5` trains on the 0.5 rows only; a ratio the file lacks is exit 2."""
    from cotprune.errors import InputError
    from cotprune.training.distill import rows_with_ratios

    pruned = _pruned_file(tmp_path / "p.parquet", n=3, ratios=(0.5, 0.9))
    table = read_table(pruned)
    picked = rows_with_ratios(table, (0.5,), "p")
    assert picked.num_rows == 3 and set(picked.column("keep_ratio").to_pylist()) == {0.5}
    assert rows_with_ratios(table, (0.5, 0.9), "p").num_rows == 6
    with pytest.raises(InputError, match="0.3"):
        rows_with_ratios(table, (0.3,), "p")
    code, stdout, err = run_cli("distill", pruned, "-o", tmp_path / "s", "--model",
                                tiny_gpt2_model, "--max-steps", "1", "--keep", "0.9")
    assert code == 0, err
    assert summary_of(stdout)["examples"] == 3
    code, _, err = run_cli("distill", pruned, "-o", tmp_path / "t", "--model",
                           tiny_gpt2_model, "--keep", "0.3")
    assert code == 2 and "keep_ratio" in err and not (tmp_path / "t").exists()


def _enospc(*_args, **_kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device (injected)")


@pytest.mark.parametrize("where", ["checkpoint", "final"])
def test_a_full_disk_while_saving_leaves_no_weights_that_look_complete(tiny_gpt2_model,
                                                                        tmp_path, monkeypatch,
                                                                        where):
    """ENOSPC inside torch.save (a checkpoint) or while the final adapter and tokenizer are
    written: exit 2 with the resume hint, no adapter at OUTDIR, and --resume then finishes."""
    import transformers

    data = _pruned_file(tmp_path / "pruned.parquet")
    out = tmp_path / "student"
    args = ["distill", data, "-o", out, "--model", tiny_gpt2_model, "--max-steps", "2",
            "--batch-tokens", "600", "--save-every", "1", "--device", "cpu"]
    with monkeypatch.context() as patch:
        if where == "checkpoint":
            patch.setattr(torch, "save", _enospc)
        else:  # the tokenizer is written after the weights: they must not be in place yet
            patch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", _enospc)
        code, _, err = run_cli(*args)
    assert code == 2 and "No space left" in err and "--resume" in err
    assert not (out / "adapter_model.safetensors").exists()
    code, stdout, err = run_cli(*args, "--resume")
    assert code == 0, err
    assert summary_of(stdout)["steps"] == 2 and (out / "adapter_model.safetensors").exists()
