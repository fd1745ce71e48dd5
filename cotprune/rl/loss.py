"""The policy-gradient objective (SPEC "RL formulas"), as small pure tensor functions.

    l_it = min(r_it A_i, clip(r_it, 1 - eps_low, 1 + eps_high) A_i) - beta KL_it,  r = pi / pi_old

and the three aggregations of `--loss-type` (grpo, dapo, dr_grpo). Each aggregation is a sum of
per-token terms times a per-token coefficient, so a step's objective can be accumulated over
micro-batches (and processes) exactly: pass the whole step's `num_responses` / `total_tokens`.
Horvitz-Thompson weights (1/pi on selected tokens, 0 elsewhere) multiply the terms; the
denominator stays that of the full-token loss, which keeps the estimate unbiased.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cotprune.errors import InputError

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || pi_ref) per token (as GRPO / TRL): e^d - d - 1, d = ref - logp."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def ppo_clip_term(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, *,
                  eps_low: float = 0.2, eps_high: float | None = None, beta: float = 0.0,
                  ref_logp: torch.Tensor | None = None) -> torch.Tensor:
    """l_it for every token; `advantages` broadcasts against `logp` (e.g. [B, 1] against [B, T])."""
    eps_high = eps_low if eps_high is None else eps_high
    ratio = torch.exp(logp - old_logp)
    term = torch.minimum(ratio * advantages,
                         torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages)
    if beta:
        if ref_logp is None:
            raise ValueError("beta > 0 needs reference log-probs")
        term = term - beta * kl_k3(logp, ref_logp)
    return term


def token_coefficients(lengths: Sequence[float] | torch.Tensor, loss_type: str, *,
                       max_new_tokens: int, num_responses: int | None = None,
                       total_tokens: float | None = None) -> torch.Tensor:
    """Per-response factor c_i so that the objective is sum_i c_i sum_t w_it l_it.

    grpo: 1 / (|o_i| N); dapo: 1 / sum_j |o_j|; dr_grpo: 1 / (N max_new_tokens), with N the
    number of responses in the step (all processes) and the token sum over the step too.
    """
    lengths = torch.as_tensor(lengths, dtype=torch.float64)
    n = len(lengths) if num_responses is None else num_responses
    if loss_type == "grpo":
        return torch.where(lengths > 0, 1.0 / (lengths.clamp(min=1) * n), torch.zeros_like(lengths))
    if loss_type == "dapo":
        total = float(lengths.sum()) if total_tokens is None else float(total_tokens)
        return torch.full_like(lengths, 1.0 / max(total, 1.0))
    if loss_type == "dr_grpo":
        return torch.full_like(lengths, 1.0 / (n * max_new_tokens))
    raise InputError(f"--loss-type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")

