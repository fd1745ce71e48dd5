"""Resumable checkpoints: ROOT/step-NNNNNN/state.pt, written atomically by rank 0.

A checkpoint holds the trainable weights, the optimiser, the options fingerprint (a resume with
other data or options is refused), the RNG states, the data position (the step: every data
order here is a pure function of the seed and the step) and whatever else the command adds.
It is written to a hidden temporary directory and renamed into place, so a kill leaves either
the old set or the new one, never a torn file. Sharded (FSDP) weights are gathered to full
tensors first, by every process, since that is a collective.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from cotprune.errors import InputError


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def trainable_state(model, *, sharded: bool = False) -> dict:
    """{name: full CPU tensor} of the parameters that train."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not sharded:
        params = dict(model.named_parameters())
        return {n: params[n].detach().cpu().clone() for n in names}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(model, options=_full_options())
    return {n: full[n] for n in names if n in full}


def optimizer_state(model, optimizer, *, sharded: bool = False) -> dict:
    if not sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options())


def rng_state() -> dict:
    import torch

    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if state.get("python") is not None:
        random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """The checkpoints of one run under `root`, the last `keep` of them kept."""

    def __init__(self, root: Path, *, fingerprint: str, keep: int = 2, main: bool = True):
        self.root, self.fingerprint, self.keep, self.main = Path(root), fingerprint, keep, main

    def done(self) -> list[Path]:
        return sorted(p for p in self.root.glob("step-*") if (p / "state.pt").exists())

    def latest(self) -> Path | None:
        done = self.done()
        return done[-1] if done else None

    def save(self, step: int, model, optimizer, *, sharded: bool = False,
             extra: dict | None = None) -> None:
        import torch

        trainable = trainable_state(model, sharded=sharded)  # every process: a collective
        optim = optimizer_state(model, optimizer, sharded=sharded)
        if not self.main:
            return
        target = self.root / f"step-{step:06d}"
        tmp = self.root / f".step-{step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save({"step": step, "position": {"step": step}, "fingerprint": self.fingerprint,
                    "trainable": trainable, "optimizer": optim, "rng": rng_state(),
                    "extra": extra or {}}, tmp / "state.pt")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        for old in self.done()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, path: Path, model, optimizer, *, sharded: bool = False) -> dict:
        """Restore weights, optimiser and RNG from `path`; returns step, position and extra."""
        import torch

        state = torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
        if state["fingerprint"] != self.fingerprint:
            raise InputError("the checkpoint was made with other data or options; resume with "
                             "the same command line", file=str(path))
        if sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, strict=False)
            set_model_state_dict(model, state["trainable"], options=options)
            set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
        else:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in state["trainable"].items():
                    params[name].copy_(value.to(params[name].device))
            optimizer.load_state_dict(state["optimizer"])
        set_rng_state(_rng_of(state))
        return {"step": int(state["step"]), "position": state.get("position",
                                                                   {"step": state["step"]}),
                "extra": state.get("extra", {})}


def _rng_of(state: dict) -> dict:
    """The RNG states, also from a checkpoint written before these parts (distill's own:
    rng_cpu / rng_cuda, no Python state), so a run interrupted then still resumes."""
    if "rng" in state:
        return state["rng"]
    return {"torch": state["rng_cpu"], "cuda": state.get("rng_cuda"), "python": None}
