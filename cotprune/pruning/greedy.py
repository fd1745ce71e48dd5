"""Greedy likelihood-preserving pruning (arXiv 2601.03066).

At every step, try deleting each remaining CoT token and delete the one whose removal raises J
least (ties: the lower index). One trajectory serves every keep ratio: the first n - floor(r n)
deletions give ratio r.

Exact mode (the default) scores every remaining candidate at every step with `DeletionScorer`,
which gives the published algorithm's J values (to float tolerance) at a fraction of the cost.
Two approximate modes trade exactness for speed:
- `per_step=K`: delete the K best candidates of a step at once (K times fewer steps);
- `shortlist=M`: lazy greedy. The first step scores every candidate; later steps rescore the M
  candidates whose deletion was cheapest when last scored, plus the neighbours of the last
  deletion (whose context changed most). If a rescored candidate now costs more than some stale
  estimate, the next M cheapest stale ones are rescored too, until the best fresh cost is no worse
  than every stale estimate (Minoux's lazy evaluation). When deleting tokens only ever makes the
  remaining deletions costlier, this picks exactly what exact greedy picks; otherwise it is an
  approximation whose J gap bench/greedy.py measures. `refresh_every=R` rescores everything every
  R steps (0: never). Two refinements cost nothing or save work: `self_term` brings each stale
  cost's own-token term up to date (`corrected_stale`: deleting k removes k's own NLL, which the
  current chain's row gives for free), and `first_window=W` makes the full steps estimate each
  candidate from the W targets after its deletion (`DeletionScorer.window_estimates`), so only
  the candidates lazy evaluation rescores run to their end. `screen=W` does the same within
  the rescoring: each rescored candidate runs W targets, and only those that may be the best
  run on to their end (`finish_likeliest`); the others keep the estimate as their stale cost.
- `shortlist=M` with a `prior` (a fitted predictor's scores, `predictor.py`): greedy with a learned
  prior. Every step ranks the remaining candidates by the prior on the current chain (one
  forward) and scores only its M likeliest deletions, plus the neighbours of the last deletion,
  exactly; the best of those is deleted. No step scores every candidate, not even the first, so
  the cost per step is about M suffixes instead of n.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cotprune.core.deletion import ChainState, DeletionScorer
from cotprune.errors import InputError


@dataclass
class GreedyOptions:
    per_step: int = 1
    shortlist: int | None = None
    refresh_every: int = 0
    # lazy greedy: correct each stale cost by the change of its token's own NLL term since it was
    # scored (`corrected_stale`); that term is known for free from the current chain's row
    self_term: bool = False
    # lazy greedy: full steps estimate each candidate from the W targets after its deletion
    # (`DeletionScorer.window_estimates`) and rescore only the likeliest exactly (0: off)
    first_window: int = 0
    # lazy greedy: each rescored candidate first runs the W targets after its deletion; only the
    # likeliest run on to their end, the others keep an estimate (`finish_likeliest`; 0: off)
    screen: int = 0

    def __post_init__(self) -> None:
        if self.per_step < 1:
            raise InputError(f"--per-step must be >= 1, got {self.per_step}")
        if self.shortlist is not None and self.shortlist < 1:
            raise InputError(f"--shortlist must be >= 1, got {self.shortlist}")
        if self.refresh_every < 0:
            raise InputError(f"--refresh-every must be >= 0, got {self.refresh_every}")
        if self.first_window < 0:
            raise InputError(f"--first-window must be >= 0, got {self.first_window}")
        if self.first_window and self.shortlist is None:
            raise InputError("--first-window estimates lazy greedy's first costs: it needs "
                             "--shortlist M")
        if self.screen < 0:
            raise InputError(f"--screen must be >= 0, got {self.screen}")
        if self.screen and self.shortlist is None:
            raise InputError("--screen narrows lazy greedy's rescoring: it needs --shortlist M")
        if self.self_term and self.shortlist is None:
            raise InputError("--self-term corrects lazy greedy's stale costs: it needs "
                             "--shortlist M")

    @property
    def exact(self) -> bool:
        return self.per_step == 1 and self.shortlist is None


# `prune --fast`: the approximate mode recommended by bench/greedy_set.py (BENCHMARKS.md,
# "prune", session 15), chosen by a rule fixed in advance: the most tokens saved with a summed J
# within +1% of exact greedy's over the 16 GSM8K chains (64-242 CoT tokens). Lazy greedy with a
# shortlist of 4, the self term, a first window of 16 targets and a screen of 16 ran 177x fewer
# decoder tokens than the published algorithm (exact: 5.0x) at a summed J 1.0% *below* exact
# greedy's (95% bootstrap interval over chains -5.7% to +4.6%); on 10 held-out chains (61-168
# CoT tokens) 118x at -3.7% (-12.8% to +6.6%). J depends on greedy's path (per chain the gap
# ran from -29% to +26%), so check a mode against exact on a few of your own chains.
FAST = GreedyOptions(shortlist=4, self_term=True, first_window=16, screen=16)


def greedy_options(per_step: int = 1, shortlist: int | None = None, refresh_every: int = 0,
                   self_term: bool = False, first_window: int = 0, screen: int = 0, *,
                   fast: bool = False) -> GreedyOptions:
    """The greedy options of `prune`'s flags: `fast` is the FAST preset, which the settings
    it fixes may not be given beside."""
    if not fast:
        return GreedyOptions(per_step, shortlist, refresh_every, self_term, first_window, screen)
    given = [flag for flag, value, default in [("--per-step", per_step, 1),
                                               ("--shortlist", shortlist, None),
                                               ("--refresh-every", refresh_every, 0),
                                               ("--self-term", self_term, False),
                                               ("--first-window", first_window, 0),
                                               ("--screen", screen, 0)]
             if value != default]
    if given:
        raise InputError(f"--fast sets {', '.join(given)} itself: give one or the other")
    return FAST


@dataclass
class Trajectory:
    """Deletions so far: original CoT indices in order, and J after each deletion."""

    order: list[int] = field(default_factory=list)
    trace: list[float] = field(default_factory=list)
    # Lazy greedy (--shortlist) chooses from stale costs too: they, the last deletion's place and
    # the step count are saved with the order, so that a resumed run chooses exactly as an
    # uninterrupted one would (without them it rescored everything and chose differently).
    estimates: dict[int, float] = field(default_factory=dict)  # original index -> last cost
    last_at: int | None = None
    step: int = 0
    own_nll: dict[int, float] = field(default_factory=dict)  # original index -> its NLL then


def _run_of(cot: list[int], k: int) -> range:
    """The indices of the run of equal tokens around `k`."""
    lo, hi = k, k
    while lo > 0 and cot[lo - 1] == cot[k]:
        lo -= 1
    while hi + 1 < len(cot) and cot[hi + 1] == cot[k]:
        hi += 1
    return range(lo, hi + 1)


def lazy_step(scorer: DeletionScorer, state: ChainState, stale: dict[int, float],
              allowed: list[int], must: set[int], size: int,
              screen: int = 0) -> tuple[float, dict[int, float]]:
    """(J of the chain, fresh J per rescored candidate) for one lazy-greedy step.

    `stale` holds each candidate's last known cost J(without k) - J (by current index k). The
    `size` cheapest plus `must` are rescored first; then, while some stale cost is below the best
    fresh one, the next `size` cheapest stale candidates are rescored. With `screen=W` a rescored
    candidate's J is exact only where it may be the best; the others get an estimate from W
    targets (`DeletionScorer.candidate_objectives`).
    """
    ranked = sorted(allowed, key=lambda k: (stale.get(k, float("-inf")), k))
    todo = sorted(set(ranked[:size]) | (must & set(allowed)))
    fresh: dict[int, float] = {}
    allowed_set = set(allowed)
    while True:
        base_j, js = scorer.candidate_objectives(state, todo, screen=screen)
        fresh.update(js)
        # Deleting any token of a run of equal tokens gives the same chain: a fresh J holds for
        # the whole run, and the tie goes to its first token as in exact greedy. Without this
        # the index recorded depended on which of the run was rescored, so a resumed run (other
        # float rounding, so other rescoring rounds) could record another one.
        for k, j in js.items():
            for mate in _run_of(state.cot, k):
                if mate in allowed_set:
                    fresh.setdefault(mate, j)
        rest = [k for k in ranked if k not in fresh]
        best = min(fresh.values(), default=float("inf")) - base_j
        if not rest or stale.get(rest[0], float("-inf")) >= best:
            return base_j, fresh
        todo = sorted(rest[:size])


def corrected_stale(cost: float, own_then: float | None, own_now: float | None) -> float:
    """A stale deletion cost with its own term brought up to date.

    Deleting CoT token k costs J(S without k) - J(S) = -nll_S(k) + (what the targets after k
    lose), so when earlier deletions make token k itself likelier or less likely, its cost
    moves by minus that change of its own NLL, which the current chain's row tells for free.
    Only the effect on later targets stays stale. Without both NLLs the cost stays as it was.
    """
    if own_then is None or own_now is None:
        return cost
    return cost + own_then - own_now


def own_terms(scorer: DeletionScorer, state: ChainState) -> list[float]:
    """Each CoT token's own NLL in `state`: from the rows the scorer holds (after a step, the
    winner's row is the next chain), else from a run of the chain (the first step after a
    --resume, or after several deletions at once), so a resumed run corrects as an
    uninterrupted one does."""
    own = scorer.cot_nll(state)
    if own is None:
        scorer.chain_objective(state)
        own = scorer.cot_nll(state)
    return own


def prior_shortlist(scores: list[float], allowed: list[int], near: set[int],
                    size: int) -> list[int]:
    """The `size` candidates a prior ranks first for deletion (lowest score; ties: lower index),
    with the allowed ones of `near`, ascending."""
    ranked = sorted(allowed, key=lambda k: (scores[k], k))
    return sorted(set(ranked[:size]) | (near & set(allowed)))


def greedy_prune(scorer: DeletionScorer, prompt: list[int], cot: list[int], answer: list[int],
                 deletions: int, *, protected: frozenset[int] = frozenset(),
                 opts: GreedyOptions = GreedyOptions(), start: Trajectory | None = None,
                 on_step: Callable[[Trajectory], None] | None = None,
                 prior: Callable[[list[int]], list[float]] | None = None) -> Trajectory:
    """Run greedy deletion until `deletions` tokens are gone (or only protected ones remain).

    `start` continues an earlier trajectory (for --resume); `on_step` is called after each step.
    `prior(cot_ids)` scores the current CoT's tokens (lower: deleted sooner); with
    `opts.shortlist` it picks the candidates each step scores.
    """
    if prior is not None and opts.shortlist is None:
        raise InputError("greedy with a predictor prior needs --shortlist M")
    traj = Trajectory(list(start.order), list(start.trace), dict(start.estimates),
                      start.last_at, start.step, dict(start.own_nll)) if start else Trajectory()
    deleted = set(traj.order)
    positions = [i for i in range(len(cot)) if i not in deleted]  # original index per current k
    estimates = traj.estimates  # lazy greedy: last known cost per original index
    own_nll = traj.own_nll  # with opts.self_term: each token's own NLL when it was last scored
    pending: list[int] = []  # trace entries (per_step > 1) that wait for the next base pass
    last_at, step = traj.last_at, traj.step
    while len(traj.order) < deletions:
        state = ChainState(prompt, [cot[i] for i in positions], answer)
        allowed = [k for k, i in enumerate(positions) if i not in protected]
        full = (opts.shortlist is None or not estimates
                or (opts.refresh_every and step % opts.refresh_every == 0))
        near = set() if last_at is None else {last_at - 1, last_at}
        guessed: dict[int, float] = {}  # --first-window: estimated costs of this step
        if prior is not None:
            todo = prior_shortlist(prior([cot[i] for i in positions]), allowed, near,
                                   opts.shortlist)
            base_j, js = scorer.candidate_objectives(state, todo, best_of=opts.per_step)
        elif full and opts.first_window:  # lazy greedy: estimate everyone, rescore the best
            base_j, guesses = scorer.window_estimates(state, opts.first_window)
            guessed = {k: guesses[k] - base_j for k in allowed}
            base_j, js = lazy_step(scorer, state, guessed, allowed, near, opts.shortlist,
                                   opts.screen)
            estimates.update({positions[k]: cost for k, cost in guessed.items()})
        elif full:  # exact steps only need the per_step best; lazy greedy keeps every J
            best_of = opts.per_step if opts.shortlist is None else None
            base_j, js = scorer.candidate_objectives(state, allowed, best_of=best_of)
        else:
            own = own_terms(scorer, state) if opts.self_term else None
            stale = {k: corrected_stale(estimates[i], own_nll.get(i),
                                         None if own is None else own[k])
                     for k, i in enumerate(positions) if i in estimates}
            base_j, js = lazy_step(scorer, state, stale, allowed, near, opts.shortlist,
                                   opts.screen)
        for t in pending:
            traj.trace[t] = base_j
        if pending and on_step is not None:
            on_step(traj)  # the last step's J are known now: a --resume may go on from here
        pending = []
        if not allowed:
            break
        for k, j in js.items():
            estimates[positions[k]] = j - base_j
        if opts.self_term and opts.shortlist is not None:
            own = own_terms(scorer, state)  # held: the call just made scored this chain
            own_nll.update({positions[k]: own[k] for k in (guessed or js)})
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
        traj.last_at, traj.step = last_at, step
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


def published_tokens(prompt: int, n: int, answer: int, deletions: int) -> int:
    """Decoder input tokens the published algorithm runs to delete `deletions` of a chain's `n`
    CoT tokens: step k scores its n - k candidates, each as a whole new sequence of prompt +
    (n - k - 1) + answer tokens. The baseline every greedy cost is measured against."""
    return sum((n - k) * (prompt + n - k - 1 + answer) for k in range(min(deletions, n)))


def kept_positions(n: int, order: list[int], keep: int) -> list[int]:
    """Original indices that survive when only `keep` of `n` tokens remain."""
    gone = set(order[:n - keep])
    return [i for i in range(n) if i not in gone]
