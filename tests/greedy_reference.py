"""The published greedy algorithm, written plainly: every candidate is a full new sequence.

Used by the tests (and mirrored in bench/greedy.py) to hold the fast engine to its choices.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def full_objectives(model, seqs: list[list[int]], start: int) -> list[float]:
    """J of equal-length sequences from one full forward and a float64 log-softmax."""
    ids = torch.tensor(seqs)
    keep = ids.shape[1] - start + 1  # logits only where J needs them (saves memory, not FLOPs)
    logits = model(ids, logits_to_keep=keep).logits[:, :-1].double()
    logp = torch.log_softmax(logits, -1)  # [:, r] predicts ids[:, start + r]
    return (-logp.gather(-1, ids[:, start:, None]).sum((1, 2))).tolist()


@torch.no_grad()
def per_target_nll(model, ids: list[int]) -> list[float]:
    """nll[t] = -log p(ids[t] | ids[:t]) from one full forward (nll[0] = 0: no target)."""
    x = torch.tensor([ids])
    logp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
    return [0.0, *(-logp.gather(-1, x[0, 1:, None])[:, 0]).tolist()]


def full_objective(model, ids: list[int], start: int) -> float:
    return full_objectives(model, [ids], start)[0]


def reference_greedy(model, prompt, cot, answer, deletions, objective):
    """(deletion order as original indices, J after each deletion)."""
    positions = list(range(len(cot)))
    order, trace = [], []
    for _ in range(deletions):
        seqs = [[*prompt, *[cot[i] for j, i in enumerate(positions) if j != k], *answer]
                for k in range(len(positions))]
        start = len(prompt) if objective == "reason-answer" else len(seqs[0]) - len(answer)
        # deleting either of two equal neighbours gives one sequence: one J, so the tie goes to
        # the lower index (two forwards of it could differ in the last float bit)
        unique = list(dict.fromkeys(map(tuple, seqs)))
        j_of = dict(zip(unique, full_objectives(model, [list(u) for u in unique], start),
                        strict=True))
        js = [j_of[tuple(seq)] for seq in seqs]
        best = min(range(len(js)), key=lambda k: (js[k], k))
        order.append(positions.pop(best))
        trace.append(js[best])
    return order, trace
