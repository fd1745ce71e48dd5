"""Processes: join the process group torchrun / accelerate set up, and wrap a module for data
parallelism (torch DDP, or FSDP2's `fully_shard`), one code path for `distill` and `rl`.

The backend follows the device the run actually uses (gloo for a CPU run even on a machine
with CUDA, nccl for CUDA), and a CUDA process is pinned to cuda:LOCAL_RANK before the group is
created, so NCCL never guesses. Collectives here are only ever called by every process the same
number of times.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: object = None  # torch.device the process trains on

    @property
    def main(self) -> bool:
        return self.rank == 0


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def env_world() -> tuple[int, int, int]:
    """(rank, world, local rank) from the launcher's environment (1 process without one)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def process_device(device_spec: str, world: int, local_rank: int):
    """The device of this process: `--device` resolved, one GPU per local rank when W > 1."""
    import torch

    from cotprune.core.models import resolve_device

    device = resolve_device(device_spec)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_spec: str) -> Dist:
    """Join the process group when launched with WORLD_SIZE > 1; the device is set first."""
    import torch
    import torch.distributed as dist

    rank, world, local = env_world()
    device = process_device(device_spec, world, local)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend_for(device.type), **kwargs)
    return Dist(rank, world, local, device)


def fsdp_requested(flag: bool) -> bool:
    """`--fsdp`, or an `accelerate launch` whose config chose FSDP (it exports
    ACCELERATE_USE_FSDP): accelerate only launches, the sharding is the same code either way."""
    return flag or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def _group():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and \
        dist.get_world_size() > 1 else None


def all_sum(value: float, device=None) -> float:
    """A number summed over all processes (float64 on the wire)."""
    import torch

    dist = _group()
    if dist is None:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def all_max(value: float, device=None) -> float:
    import torch

    dist = _group()
    if dist is None:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def barrier() -> None:
    dist = _group()
    if dist is not None:
        dist.barrier()


@dataclass
class Wrapped:
    """A module prepared for data parallelism.

    `train` is what forward/backward run through (DDP or the sharded module: it synchronises
    gradients); `plain` is for forwards without gradients (DDP's inner module, so that uneven
    numbers of such calls across processes cannot hang a collective; FSDP must go through the
    sharded module to gather its weights). `no_sync()` defers gradient synchronisation for
    accumulation: the last micro-batch of every process synchronises.
    """

    train: object
    plain: object
    kind: str = "none"  # none | ddp | fsdp

    def no_sync(self):
        import contextlib

        if self.kind == "ddp":
            return self.train.no_sync()
        if self.kind == "fsdp":
            return _fsdp_no_sync(self.train)
        return contextlib.nullcontext()


def _fsdp_no_sync(module):
    import contextlib

    @contextlib.contextmanager
    def ctx():
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)

    return ctx()


def wrap_data_parallel(module, d: Dist, *, fsdp: bool = False, layers=()) -> Wrapped:
    """DDP over the processes, or FSDP2 (`fully_shard` on each of `layers`, then the root).

    One process without `fsdp` returns the module as it is. DDP keeps buffers unsynchronised
    (they are equal by construction) so that forwards issue no collectives.
    """
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        if d.world == 1 and _group() is None:
            _single_process_group(d)
        for layer in layers:
            fully_shard(layer)
        fully_shard(module)
        return Wrapped(module, module, "fsdp")
    if d.world == 1:
        return Wrapped(module, module, "none")
    from torch.nn.parallel import DistributedDataParallel

    ids = [d.device.index if d.device.index is not None else d.local_rank] \
        if d.device.type == "cuda" else None
    return Wrapped(DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False),
                   module, "ddp")


def _single_process_group(d: Dist) -> None:
    """FSDP needs a process group even for one process (e.g. one GPU): a local one."""
    import socket

    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    dist.init_process_group(backend_for(d.device.type), rank=0, world_size=1)
