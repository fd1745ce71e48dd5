"""metrics.jsonl (one JSON line per optimiser step, written by rank 0) and step timing."""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path, main: bool):
        self.path, self.main = Path(path), main

    def append(self, record: dict) -> None:
        if self.main:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate(self, last_step: int) -> None:
        """Drop lines of steps after the checkpoint a run resumes from (they are redone)."""
        if not self.main or not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= last_step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


def peak_memory_mb(device) -> float:
    """Peak CUDA memory allocated on a GPU, else the process's peak resident set size."""
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
