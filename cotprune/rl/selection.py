"""Which response tokens enter the policy-gradient loss, and with what weight.

- `nat_urs` / `nat_rpc` (NAT, arXiv 2603.06619) draw a subset S_i with known inclusion
  probabilities pi_it > 0 independent of the policy and return Horvitz-Thompson weights 1/pi,
  so the weighted loss is an unbiased estimate of the full-token loss. RPC keeps a random prefix,
  which lets the training forward and backward run on a shorter sequence.
- `entropy_mask` keeps the high-entropy "forking" tokens (arXiv 2506.01939): those whose entropy
  reaches the (1 - rho) quantile of the valid tokens in scope, across processes when
  torch.distributed is initialised. `entropy_topk_mask` is the per-micro-batch variant.

Masks and weights are [batch, max(lengths)] tensors over response positions (0-based).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def valid_mask(lengths: Sequence[int]) -> torch.Tensor:
    width = max(lengths, default=0)
    lens = torch.as_tensor(list(lengths), dtype=torch.long)
    return torch.arange(width)[None, :] < lens[:, None]


def nat_urs(lengths: Sequence[int], p: float, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random subset: each valid token kept independently with probability p (pi = p)."""
    if not 0 < p <= 1:
        raise ValueError("keep probability must be in (0, 1]")
    valid = valid_mask(lengths)
    mask = (torch.rand(valid.shape, generator=generator) < p) & valid
    return mask, mask.to(torch.float32) / p


def rpc_cuts(lengths: Sequence[int], a: float, generator: torch.Generator | None = None
             ) -> torch.Tensor:
    """Random prefix cut c_i, uniform on {ceil(a L_i), ..., L_i}: keep response tokens t <= c_i."""
    if not 0 <= a <= 1:
        raise ValueError("cut floor must be in [0, 1]")
    lens = torch.as_tensor(list(lengths), dtype=torch.float64)
    lo = torch.ceil(a * lens)
    u = torch.rand(len(lens), generator=generator, dtype=torch.float64)
    return torch.minimum(lens, lo + torch.floor(u * (lens - lo + 1))).long()


def rpc_inclusion(lens: torch.Tensor, a: float, width: int) -> torch.Tensor:
    """pi_t = P(c >= t) for t = 1..width, one row per length L in `lens` (float64): 1 up to
    ceil(a L), then (L - t + 1) / (L - ceil(a L) + 1); clamped into (0, 1] past L."""
    lo = torch.ceil(a * lens)[:, None]
    t = torch.arange(1, width + 1, dtype=torch.float64)[None, :]
    pi = (lens[:, None] - torch.maximum(t, lo) + 1) / (lens[:, None] - lo + 1)
    return pi.clamp(1e-12, 1.0)


def nat_rpc(lengths: Sequence[int], a: float = 0.0, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prefix cut: mask keeps each response's first c_i tokens, weights 1/pi on them."""
    cuts = rpc_cuts(lengths, a, generator)
    width = max(lengths, default=0)
    lens = torch.as_tensor(list(lengths), dtype=torch.float64)
    mask = torch.arange(width)[None, :] < cuts[:, None]
    weights = torch.where(mask, 1.0 / rpc_inclusion(lens, a, width),
                          torch.zeros((), dtype=torch.float64))
    return mask, weights.float()


def sorted_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolation quantile (as torch.quantile) by sorting, with no size limit."""
    v = torch.sort(values.reshape(-1).double()).values
    if v.numel() == 0:
        return torch.tensor(float("inf"), dtype=torch.float64)
    pos = q * (v.numel() - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, v.numel() - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def gather_values(values: torch.Tensor) -> torch.Tensor:
    """All processes' 1-D `values` concatenated (itself when torch.distributed is not in use)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    values = values.reshape(-1).float()
    size = torch.tensor([values.numel()], device=values.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    width = int(max(s.item() for s in sizes))
    padded = torch.zeros(width, device=values.device, dtype=values.dtype)
    padded[:values.numel()] = values
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)])


def entropy_threshold(entropy: torch.Tensor, valid: torch.Tensor, rho: float) -> torch.Tensor:
    """The (1 - rho) quantile of the valid entropies of every process (scope `step`)."""
    values = gather_values(entropy.detach()[valid.bool()].float())
    return sorted_quantile(values.cpu(), 1.0 - rho)


def entropy_mask(entropy: torch.Tensor, valid: torch.Tensor, rho: float = 0.2) -> torch.Tensor:
    """Keep the valid tokens whose entropy reaches the (1 - rho) quantile of those in scope."""
    if not 0 < rho <= 1:
        raise ValueError("rho must be in (0, 1]")
    threshold = entropy_threshold(entropy, valid, rho).to(entropy.device)
    return valid.bool() & (entropy.detach().double() >= threshold)


def entropy_topk_mask(entropy: torch.Tensor, valid: torch.Tensor, rho: float = 0.2
                      ) -> torch.Tensor:
    """Scope `micro` (the authors' code): the top ceil(rho N) valid tokens of this micro-batch."""
    valid = valid.bool()
    n = int(valid.sum())
    k = math.ceil(rho * n)
    mask = torch.zeros_like(valid)
    if k == 0:
        return mask
    scores = entropy.detach().double().masked_fill(~valid, float("-inf")).reshape(-1)
    mask.view(-1)[torch.topk(scores, k).indices] = True
    return mask
