"""bench/gpu.py (the GPU check) on a tiny config on the CPU, so that it cannot rot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def test_gpu_check_runs_every_part_on_a_tiny_cpu_config(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # restored afterwards
    monkeypatch.setenv("MASTER_PORT", "29571")
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    try:
        rows = bench.main(["--config", "tiny", "--device", "cpu", "--rows", "2", "--length",
                           "32", "--repeats", "1"])
    finally:  # the FSDP part made a one-process group; leave none behind
        if dist.is_initialized():
            dist.destroy_process_group()
    assert [r["part"] for r in rows] == ["distill-lora", "rl-update", "score-forward",
                                         "distill-full-fsdp"]
    assert all(r["tokens"] == 64 and r["tokens_per_s"] > 0 and r["mfu"] >= 0 for r in rows)


def test_gpu_greedy_check_runs_every_part_on_a_tiny_cpu_config(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))  # it imports bench/gpu.py
    spec = importlib.util.spec_from_file_location("bench_gpu_greedy",
                                                  BENCH.parent / "gpu_greedy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--config", "tiny", "--device", "cpu", "--chains", "3", "--prompt", "6",
                       "--cot", "10", "--answer", "3"])
    assert [r["part"] for r in rows] == ["greedy-exact", "greedy-fast", "greedy-fast-lockstep"]
    assert [r["chains"] for r in rows] == [1, 3, 3]
    assert all(r["tokens_run"] > 0 and r["tokens_per_s"] > 0 and r["mfu"] >= 0 for r in rows)
    fast, lockstep = rows[1:]
    # the same deletions, so about the same tokens (lockstep pads lanes), in fewer forwards
    assert lockstep["forwards"] < fast["forwards"]
