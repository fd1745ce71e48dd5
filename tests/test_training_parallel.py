"""Many processes equal one: 2 CPU processes (gloo, under torchrun) against 1, for `distill`
(DDP, and FSDP2 with --full) and for an `rl` policy update; and the process-group choices."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def torchrun(*args: str, port: int, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(TORCHRUN), "--nproc-per-node", "2", "--master-port", str(port),
                           *map(str, args)], capture_output=True, text=True, env=_env(),
                          timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_backend_follows_the_device_used(monkeypatch):
    from cotprune.training.parts.dist import backend_for, fsdp_requested, process_device

    assert backend_for("cpu") == "gloo" and backend_for("cuda") == "nccl"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with CUDA
    assert process_device("cpu", 2, 1).type == "cpu"  # --device cpu stays cpu: gloo
    assert process_device("auto", 2, 1) == torch.device("cuda", 1)  # one GPU per local rank
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # an accelerate FSDP config
    assert fsdp_requested(False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    assert not fsdp_requested(False) and fsdp_requested(True)


@pytest.mark.slow
def test_rl_command_under_torchrun(tiny_gpt2_model, tmp_path):
    """The whole `rl` loop on 2 CPU processes: DDP, slots split, rank 0 writes once."""
    from conftest import summary_of
    from test_rl_trainer import TINY, _prompts

    out = tmp_path / "rl"
    proc = torchrun("-m", "cotprune", "rl", _prompts(tmp_path), "-o", out, "--model",
                    tiny_gpt2_model, *TINY, "--device", "cpu", "--updates-per-step", "2",
                    port=29561)
    assert summary_of(proc.stdout)["steps"] == 2
    assert len(proc.stdout.strip().splitlines()) == 1  # one summary, from rank 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert json.loads((out / "manifest.json").read_text())["world_size"] == 2
    assert (out / "model" / "adapter_config.json").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["all", "entropy", "all-uneven"])
def test_rl_update_on_two_processes_equals_one(tiny_qwen_model, tmp_path, mode):
    script = REPO / "tests" / "dist_rl_step.py"
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    proc = subprocess.run([sys.executable, str(script), str(tiny_qwen_model), str(one), mode],
                          capture_output=True, text=True, env=_env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    torchrun(script, tiny_qwen_model, two, mode, port=29541 + len(mode))
    a, b = torch.load(one), torch.load(two)
    assert (a["world"], a["kind"], b["world"], b["kind"]) == (1, "none", 2, "ddp")
    for key in ("objective", "tokens_trained", "forward_tokens"):
        assert b["stats"][key] == pytest.approx(a["stats"][key], rel=1e-5, abs=1e-7), key
    for name, w in a["weights"].items():
        torch.testing.assert_close(b["weights"][name], w, rtol=1e-5, atol=1e-6)
    assert a["stats"]["tokens_trained"] > 0 and a["moved"] > 1e-3  # a real update


def _distill_args(data, model, *extra):
    return ["distill", str(data), "--model", str(model), "--max-steps", "2",
            "--batch-tokens", "300", "--lora-dropout", "0", "--device", "cpu", "--lr", "1e-2",
            *extra]


def _metrics(outdir: Path) -> list[dict]:
    return [json.loads(x) for x in (outdir / "metrics.jsonl").read_text().splitlines()]


def _weights(outdir: Path) -> dict:
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (outdir / "adapter_model.safetensors").exists() \
        else "model.safetensors"
    return load_file(outdir / name)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_distill_on_two_processes_equals_one(tiny_gpt2_model, tmp_path, parallel):
    """2 processes x 1 micro-batch = 1 process x --grad-accum 2: losses, gradient norms, weights.
    FSDP (`--fsdp`) with --full: the sharded run's gathered weights equal the 1-process run's."""
    from conftest import run_cli, summary_of
    from test_distill import _pruned_file

    data = _pruned_file(tmp_path / "pruned.parquet", n=4, ratios=(0.5,))
    extra = ["--full", "--fsdp"] if parallel == "fsdp" else []
    code, _, err = run_cli(*_distill_args(data, tiny_gpt2_model, "--grad-accum", "2",
                                          *extra[:1]), "-o", tmp_path / "one")
    assert code == 0, err
    proc = torchrun("-m", "cotprune", *_distill_args(data, tiny_gpt2_model, *extra,
                                                     "--save-every", "1"),
                    "-o", tmp_path / "two", port=29551 + (parallel == "fsdp"))
    summary = summary_of(proc.stdout)
    assert (summary["processes"], summary["parallel"]) == (2, parallel)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    for x, y in zip(one, two, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
        assert (y["tokens"], y["target_tokens"]) == (x["tokens"], x["target_tokens"])
    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)
    if parallel == "fsdp":  # sharded checkpoints: gathered on save, re-sharded on resume
        cut = tmp_path / "cut"
        shutil.copytree(tmp_path / "two", cut)
        shutil.rmtree(cut / "checkpoints" / "step-000002")
        torchrun("-m", "cotprune", *_distill_args(data, tiny_gpt2_model, *extra, "--resume",
                                                  "--save-every", "1"), "-o", cut, port=29553)
        resumed = _metrics(cut)
        assert [m["step"] for m in resumed] == [1, 2]
        assert resumed[1]["loss"] == pytest.approx(two[1]["loss"], rel=1e-6)
        wc = _weights(cut)
        for k in wa:
            torch.testing.assert_close(wc[k], wb[k], rtol=1e-6, atol=1e-7)
