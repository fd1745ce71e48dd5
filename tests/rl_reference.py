"""The three `--loss-type` aggregations written out as SPEC "RL formulas" states them.

    grpo    mean_i (1/|o_i|) sum_t w_it l_it
    dapo    sum_i sum_t w_it l_it / sum_i |o_i|
    dr_grpo sum_i sum_t w_it l_it / (G max_new_tokens)

`num_responses` (G) and `total_tokens` (sum_i |o_i|) default to those of the rows given; a
micro-batch or a stack of Monte Carlo replicates passes the step's. The product (`rl/update.py`)
multiplies each response's sum by `rl.loss.token_coefficients` instead; the tests hold those
coefficients, and the Horvitz-Thompson estimates, to this plain form.
"""

from __future__ import annotations

import torch


def reference_objective(terms: torch.Tensor, weights: torch.Tensor, lengths: list[int],
                        loss_type: str, *, max_new_tokens: int, num_responses: int | None = None,
                        total_tokens: int | None = None) -> float:
    """The objective (to maximise) of [B, T] `terms` with [B, T] `weights` (0 on padding)."""
    return float(objective_tensor(terms, weights, lengths, loss_type,
                                  max_new_tokens=max_new_tokens, num_responses=num_responses,
                                  total_tokens=total_tokens))


def objective_tensor(terms: torch.Tensor, weights: torch.Tensor, lengths: list[int],
                     loss_type: str, *, max_new_tokens: int, num_responses: int | None = None,
                     total_tokens: int | None = None) -> torch.Tensor:
    """`reference_objective` as a float64 tensor that keeps the gradient of `terms`."""
    sums = (terms.double() * weights.double()).sum(dim=1)
    g = len(lengths) if num_responses is None else num_responses
    if loss_type == "grpo":
        return sum((s / n for s, n in zip(sums, lengths, strict=True) if n > 0),
                   sums.new_zeros(())) / g
    if loss_type == "dapo":
        return sums.sum() / max(sum(lengths) if total_tokens is None else total_tokens, 1)
    if loss_type == "dr_grpo":
        return sums.sum() / (g * max_new_tokens)
    raise ValueError(f"unknown loss type {loss_type!r}")
