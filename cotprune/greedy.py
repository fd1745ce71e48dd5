"""Greedy likelihood-preserving pruning (arXiv 2601.03066).

At every step, try deleting each remaining CoT token and delete the one whose removal raises J
least (ties: the lower index). One trajectory serves every keep ratio: the first n - floor(r n)
deletions give ratio r.

Exact mode (the default) scores every remaining candidate at every step with `DeletionScorer`,
which gives the published algorithm's J values (to float tolerance) at a fraction of the cost.
Two approximate modes trade exactness for speed:
- `per_step=K`: delete the K best candidates of a step at once (K times fewer steps);
- `shortlist=M`: lazy greedy; only the M candidates whose deletion was cheapest when last
  scored, plus the neighbours of the last deletion (whose context changed most), are rescored.
  Before a candidate is first scored its estimate is its surprisal (free from the step's
  forward), so no step scores every candidate until the full refresh every `refresh_every`
  steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cotprune.deletion import ChainState, DeletionScorer
from cotprune.errors import InputError


@dataclass
class GreedyOptions:
    per_step: int = 1
    shortlist: int | None = None
    refresh_every: int = 10

    def __post_init__(self) -> None:
        if self.per_step < 1:
            raise InputError(f"--per-step must be >= 1, got {self.per_step}")
        if self.shortlist is not None and self.shortlist < 1:
            raise InputError(f"--shortlist must be >= 1, got {self.shortlist}")
        if self.refresh_every < 1:
            raise InputError(f"--refresh-every must be >= 1, got {self.refresh_every}")

    @property
    def exact(self) -> bool:
        return self.per_step == 1 and self.shortlist is None


@dataclass
class Trajectory:
    """Deletions so far: original CoT indices in order, and J after each deletion."""

    order: list[int] = field(default_factory=list)
    trace: list[float] = field(default_factory=list)


def _shortlist(estimates: dict[int, float], positions: list[int], allowed: list[int],
               last_deleted_at: int | None, size: int) -> list[int]:
    """Current indices of the `size` cheapest candidates by last estimate, plus neighbours."""
    ranked = sorted(allowed, key=lambda k: (estimates.get(positions[k], float("inf")), k))
    picked = set(ranked[:size])
    if last_deleted_at is not None:
        picked.update(k for k in (last_deleted_at - 1, last_deleted_at) if k in set(allowed))
    return sorted(picked)


def greedy_prune(scorer: DeletionScorer, prompt: list[int], cot: list[int], answer: list[int],
                 deletions: int, *, protected: frozenset[int] = frozenset(),
                 opts: GreedyOptions = GreedyOptions(), start: Trajectory | None = None,
                 on_step: Callable[[Trajectory], None] | None = None) -> Trajectory:
    """Run greedy deletion until `deletions` tokens are gone (or only protected ones remain).

    `start` continues an earlier trajectory (for --resume); `on_step` is called after each step.
    """
    traj = Trajectory(list(start.order), list(start.trace)) if start else Trajectory()
    deleted = set(traj.order)
    positions = [i for i in range(len(cot)) if i not in deleted]  # original index per current k
    estimates: dict[int, float] = {}
    pending: list[int] = []  # trace entries (per_step > 1) that wait for the next base pass
    last_at: int | None = None
    step = 0
    while len(traj.order) < deletions:
        state = ChainState(prompt, [cot[i] for i in positions], answer)
        allowed = [k for k, i in enumerate(positions) if i not in protected]
        full = opts.shortlist is None or (step > 0 and step % opts.refresh_every == 0)
        if not full and not estimates:  # first step of lazy greedy: surprisal as the estimate
            scorer.candidate_objectives(state, [])
            estimates = {positions[k]: v for k, v in enumerate(scorer.last_nll)}
        candidates = allowed if full else _shortlist(estimates, positions, allowed, last_at,
                                                     opts.shortlist)
        base_j, js = scorer.candidate_objectives(state, candidates)
        for t in pending:
            traj.trace[t] = base_j
        pending = []
        if not allowed:
            break
        for k, j in js.items():
            estimates[positions[k]] = j - base_j
        take = min(opts.per_step, deletions - len(traj.order))
        chosen = sorted(js, key=lambda k: (js[k], k))[:take]
        for k in chosen:
            traj.order.append(positions[k])
            traj.trace.append(js[k])
        if len(chosen) > 1:  # J after a multi-deletion is known only after the next base pass
            pending = list(range(len(traj.trace) - len(chosen), len(traj.trace)))
        for k in sorted(chosen, reverse=True):
            del positions[k]
        last_at = min(chosen)
        step += 1
        if on_step is not None and not pending:
            on_step(traj)
    if pending:
        state = ChainState(prompt, [cot[i] for i in positions], answer)
        base_j = scorer.chain_objective(state)
        for t in pending:
            traj.trace[t] = base_j
        if on_step is not None:
            on_step(traj)
    return traj


def kept_positions(n: int, order: list[int], keep: int) -> list[int]:
    """Original indices that survive when only `keep` of `n` tokens remain."""
    gone = set(order[:n - keep])
    return [i for i in range(n) if i not in gone]
