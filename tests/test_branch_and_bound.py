"""Branch and bound over fake rows, held to a brute-force reference: every row run to its end
and made exact. The rows' NLL is drawn at random; a cut row holds lower bounds on its tail."""

import math
import random

import pytest
import torch

from cotprune.core.bounds import Bounded
from cotprune.core.branch_and_bound import (
    BOUND_MARGIN,
    checkpoint_stops,
    finish_likeliest,
    finish_rows,
    mth_smallest,
    seed_rows,
    settle,
)
from cotprune.core.rows import ScoredRow


class FakeRows:
    """Candidates with known true NLL per target; rows start cut at `first_stop` (their
    targets from `bounded_from` on holding only bounds) or finished but bounded."""

    def __init__(self, rng: random.Random, n: int, length: int, first_stop: int):
        self.length = length
        self.true = {k: torch.tensor([rng.expovariate(1.0) * (k % 3 + 1) / 3
                                      for _ in range(length)], dtype=torch.float64)
                     for k in range(n)}
        self.slack = {k: torch.tensor([rng.random() * 0.5 for _ in range(length)],
                                      dtype=torch.float64) for k in range(n)}
        self.runs: list[tuple[list[int], int | None]] = []
        self.resolved: list[int] = []
        self.rows = {}
        for k in range(n):
            finished = rng.random() < 0.2
            self.rows[k] = self._row(k, length if finished else first_stop, 2)

    def _bound(self, k: int, lo: int, hi: int) -> torch.Tensor:
        return (self.true[k][lo:hi] - self.slack[k][lo:hi]).clamp_min(0)

    def _row(self, k: int, to: int, bounded_from: int) -> ScoredRow:
        nll = torch.zeros(self.length, dtype=torch.float64)
        nll[:to] = self.true[k][:to]
        positions = list(range(bounded_from, to))
        nll[positions] = self._bound(k, bounded_from, to)
        bounded = Bounded(positions, torch.zeros(len(positions), 1)) if positions else None
        return ScoredRow(list(range(self.length)), nll, None, to, bounded)

    def advance(self, keys: list[int], stop: int | None) -> None:
        """Like the runner: new targets of a cut row are bounds, of a finishing row exact; the
        bounds a row held before stay until it is resolved."""
        self.runs.append((list(keys), stop))
        for k in keys:
            row = self.rows[k]
            assert not row.finished
            end = self.length if stop is None else stop
            assert end > row.scored_to
            old = row.bounded.positions if row.bounded else []
            new = list(range(row.scored_to, end)) if stop is not None else []
            nll = row.nll.clone()
            nll[row.scored_to:end] = self.true[k][row.scored_to:end]
            if new:
                nll[new] = self._bound(k, new[0], end)
            positions = old + new
            self.rows[k] = ScoredRow(row.ids, nll, None, end,
                                     Bounded(positions, torch.zeros(len(positions), 1))
                                     if positions else None)

    def resolve(self, rows: list[ScoredRow]) -> None:
        for row in rows:
            k = next(k for k, r in self.rows.items() if r is row)
            if row.bounded is not None:
                row.nll[row.bounded.positions] = self.true[k][row.bounded.positions]
                row.bounded = None
                self.resolved.append(k)

    @staticmethod
    def objective(row: ScoredRow) -> float:
        return float(row.nll.sum())

    def true_j(self, k: int) -> float:
        return float(self.true[k].sum())


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("best_of", [1, 2, 3])
def test_finish_rows_gives_the_best_exactly_and_bounds_the_rest(seed, best_of):
    rng = random.Random(seed)
    length = 14
    fake = FakeRows(rng, n=rng.randint(best_of, 9), length=length, first_stop=length - 6)
    candidates = sorted(fake.rows)
    chain_nll = torch.tensor([rng.random() for _ in range(length + 1)], dtype=torch.float64)
    finish_rows(fake.rows, candidates, best_of, [length - 6, length - 3], chain_nll,
                batch_tokens=rng.choice([1, 10, 1000]), seq_len=length + 1,
                advance=fake.advance, resolve=fake.resolve, objective=fake.objective)
    got = {k: fake.objective(fake.rows[k]) for k in candidates}
    true = {k: fake.true_j(k) for k in candidates}  # the brute-force reference
    best = sorted(true, key=lambda k: (true[k], k))[:best_of]
    worst = true[best[-1]]
    for k in best:  # the winners are finished and exact
        assert fake.rows[k].finished and fake.rows[k].bounded is None
        assert got[k] == pytest.approx(true[k], abs=1e-12)
    for k in candidates:  # every other value is a lower bound, exact or above the m-th best
        assert got[k] <= true[k] + 1e-12
        if got[k] < true[k] - 1e-12:
            assert got[k] > worst + BOUND_MARGIN - 1e-12
    assert sorted(got, key=lambda k: (got[k], k))[:best_of] == best


def test_finish_rows_cuts_rows_that_cannot_win():
    """One cheap row and many costly ones: the costly never run past their checkpoint."""
    rng = random.Random(0)
    fake = FakeRows(rng, n=8, length=14, first_stop=8)
    for k in fake.true:
        fake.true[k] = fake.true[k] + (0.0 if k == 5 else 10.0)
        fake.rows[k] = fake._row(k, 8, 2)
    finish_rows(fake.rows, list(range(8)), 1, [8, 11], torch.zeros(15, dtype=torch.float64),
                1000, 15, advance=fake.advance, resolve=fake.resolve,
                objective=fake.objective)
    ran = {k for keys, _ in fake.runs for k in keys}
    assert 5 in ran and fake.rows[5].finished
    assert len(ran) < 8  # some rows kept their bound at the first checkpoint


def test_settle_resolves_only_rows_that_may_be_among_the_best():
    rows = {}
    bound_of = {}
    for k, (value, bounded) in enumerate([(1.0, False), (0.9, True), (9.0, True), (0.5, True)]):
        nll = torch.tensor([value], dtype=torch.float64)
        rows[k] = ScoredRow([0], nll, None, 1, Bounded([0], torch.zeros(1, 1)) if bounded
                            else None)
        bound_of[k] = value
    resolved = []

    def resolve(todo):
        for row in todo:
            resolved.append(next(k for k, r in rows.items() if r is row))
            row.nll += 0.25  # the exact J lies above the bound
            row.bounded = None

    exact = settle(rows, list(rows), 2, bound_of, resolve, lambda row: float(row.nll.sum()))
    # with one exact J the lowest bound fills the second place; then 0.9 may still beat 1.0
    assert resolved == [3, 1]
    assert exact == [0.75, 1.0, 1.15]
    assert bound_of[2] == 9.0 and rows[2].bounded is not None


def test_checkpoint_stops_keeps_those_after_the_objective_starts():
    assert checkpoint_stops(20, 5, (8,)) == [12]
    assert checkpoint_stops(20, 5, (3, 8, 8)) == [12, 17]
    assert checkpoint_stops(20, 13, (8, 3)) == [17]  # 12 is before J's first target
    assert checkpoint_stops(20, 5, ()) == []


def test_mth_smallest_and_seed_rows():
    assert mth_smallest([1.0, 2.0], 2) == 2.0 and mth_smallest([1.0], 2) == math.inf
    likely = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 5.0, 5: 6.0}
    bound_of = {k: v - 0.5 for k, v in likely.items()} | {5: 0.1}
    # the SEED_ROWS likeliest, and any later row whose bound is below the best likely J
    assert seed_rows(list(likely), bound_of, likely.get, 1) == [0, 1, 2, 3, 5]
    assert seed_rows([], bound_of, likely.get, 1) == []


def test_finish_likeliest_finishes_rows_until_none_left_is_likelier_than_the_best():
    """Rows of 6 targets cut after 2; the chain pays 1.0 a target, so an unfinished row is
    estimated at its NLL so far plus 1.0 for each target of the chain still ahead (a row is one
    target shorter than the chain: its target t is the chain's t + 1)."""
    true = {0: [0.5, 0.5, 1.0, 1.0, 1.0, 1.0],  # likely 1.0 + 4 = 5.0, finishes at 5.0
            1: [0.2, 0.2, 3.0, 3.0, 3.0, 3.0],  # likely 0.4 + 4 = 4.4: runs first, ends 12.4
            2: [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # likely 6.0 > 5.0: keeps the estimate
            3: [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]}  # finished already: 0.6
    rows = {k: ScoredRow(list(range(6)), torch.tensor(v[:2] + [0.0] * 4, dtype=torch.float64),
                         None, 2) for k, v in true.items()}
    rows[3] = ScoredRow(list(range(6)), torch.tensor(true[3], dtype=torch.float64), None, 6)
    chain = torch.ones(7, dtype=torch.float64)
    advanced, resolved = [], []

    def advance(keys, stop):
        assert stop is None and len(keys) == 1
        advanced.append(keys[0])
        rows[keys[0]].nll = torch.tensor(true[keys[0]], dtype=torch.float64)
        rows[keys[0]].scored_to = 6

    def objective(row):
        return float(row.nll.sum())

    js = finish_likeliest(rows, [0, 1, 2, 3], chain, advance=advance, resolve=resolved.extend,
                          objective=objective)
    assert advanced == []  # the finished row (0.6) is likelier than every estimate
    assert js == pytest.approx({0: 5.0, 1: 4.4, 2: 6.0, 3: 0.6})
    del rows[3]
    js = finish_likeliest(rows, [0, 1, 2], chain, advance=advance, resolve=resolved.extend,
                          objective=objective)
    assert advanced == [1, 0]  # likeliest first; after 1 ends at 12.4, 0 may still win
    assert js == pytest.approx({0: 5.0, 1: 12.4, 2: 6.0})
    assert len(resolved) == 2
