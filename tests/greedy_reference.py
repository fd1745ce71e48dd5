"""The published greedy algorithm, written plainly: every candidate is a full new sequence.

Used by the tests (and mirrored in bench/greedy.py) to hold the fast engine to its choices.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def full_objective(model, ids: list[int], start: int) -> float:
    """J from one full forward and a float64 log-softmax over the whole vocabulary."""
    logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return -float(sum(logp[t - 1, ids[t]] for t in range(start, len(ids))))


def reference_greedy(model, prompt, cot, answer, deletions, objective):
    """(deletion order as original indices, J after each deletion)."""
    positions = list(range(len(cot)))
    order, trace = [], []
    for _ in range(deletions):
        best = None
        for k in range(len(positions)):
            kept = [cot[i] for j, i in enumerate(positions) if j != k]
            start = len(prompt) if objective == "reason-answer" else len(prompt) + len(kept)
            j = full_objective(model, [*prompt, *kept, *answer], start)
            if best is None or j < best[0]:
                best = (j, k)
        order.append(positions.pop(best[1]))
        trace.append(best[0])
    return order, trace
