"""Greedy ranks as targets, rank metrics, and the small rank model that `predictor` trains.

Pure pieces, each testable alone:

- `greedy_ranks`: a token's index in the greedy `prune_order` divided by n; tokens the
  trajectory never deleted tie after all deleted ones. `spearman` (average ranks for ties),
  `keep_overlap`.
- `RankNet`: features standardised with the training mean/std (stored in the module), then a
  2-layer MLP or a linear map to one score; higher = deleted later.
- losses: pairwise logistic (RankNet) within each chain, or `mse` on the normalised rank.
- `train_ranknet`: full-batch AdamW over chains grouped by a pair budget; with validation chains
  it picks the epoch count on them, then refits on every chain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cotprune.errors import InputError
from cotprune.faults import fault_point

ARCHS = ("mlp", "linear")
LOSSES = ("pairwise", "mse")
PAIR_BUDGET = 4_000_000  # chains x n^2 pair entries per training mini-batch


# --- targets and metrics (pure) ------------------------------------------------------------------

def greedy_ranks(prune_order: Sequence[int], n: int) -> list[float]:
    """Normalised deletion rank of each CoT token; never-deleted tokens tie after all deleted."""
    d = len(prune_order)
    tied = (d + n - 1) / 2
    ranks = [tied / n] * n
    for k, i in enumerate(prune_order):
        ranks[i] = k / n
    return ranks


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 0..n-1 of `values`, ties sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    k = 0
    while k < len(order):
        j = k
        while j + 1 < len(order) and values[order[j + 1]] == values[order[k]]:
            j += 1
        for m in range(k, j + 1):
            ranks[order[m]] = (k + j) / 2
        k = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho with average ranks for ties; NaN when either side is constant."""
    ra, rb = average_ranks(list(a)), average_ranks(list(b))
    n = len(ra)
    if n < 2:
        return float("nan")
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else float("nan")


def mean_finite(values: Sequence[float]) -> float | None:
    good = [v for v in values if not math.isnan(v)]
    return round(sum(good) / len(good), 4) if good else None


def keep_overlap(scores: Sequence[float], greedy_kept: Sequence[int]) -> float:
    """|kept by score ∩ kept by greedy| / |kept|, keeping the highest-scored len(greedy_kept)."""
    keep = len(greedy_kept)
    if keep == 0:
        return 1.0
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))  # first deleted first
    ours = set(order[len(scores) - keep:])
    return len(ours & set(greedy_kept)) / keep


# --- the model -----------------------------------------------------------------------------------

class RankNet(torch.nn.Module):
    """Standardise features (stored mean/std), then a 2-layer MLP or a linear map to a score."""

    def __init__(self, n_features: int, arch: str = "mlp", hidden: int = 64):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        if arch == "mlp":
            self.net = torch.nn.Sequential(torch.nn.Linear(n_features, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, 1))
        else:
            self.net = torch.nn.Sequential(torch.nn.Linear(n_features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.feature_mean) / self.feature_std).squeeze(-1)


def pairwise_loss(scores: torch.Tensor, targets: torch.Tensor,
                  valid: torch.Tensor) -> torch.Tensor:
    """RankNet loss, per chain the mean of softplus(s_i - s_j) over pairs with y_i < y_j.

    scores, targets, valid: [chains, n] (padded). The result is the mean over chains with pairs.
    """
    before = (targets[:, :, None] < targets[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    terms = torch.nn.functional.softplus(scores[:, :, None] - scores[:, None, :])
    counts = before.sum((1, 2))
    per_chain = (terms * before).sum((1, 2)) / counts.clamp(min=1)
    has = counts > 0
    return per_chain[has].mean() if has.any() else scores.sum() * 0


def mse_loss(scores: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return ((scores - targets) ** 2 * valid).sum() / valid.sum().clamp(min=1)


def pad_chains(xs: Sequence[torch.Tensor], ys: Sequence[Sequence[float]]):
    """[chains, n_max, F] features, [chains, n_max] targets and validity mask."""
    width = max(len(y) for y in ys)
    x = torch.zeros(len(xs), width, xs[0].shape[1])
    y = torch.zeros(len(xs), width)
    valid = torch.zeros(len(xs), width, dtype=torch.bool)
    for c, (xc, yc) in enumerate(zip(xs, ys, strict=True)):
        x[c, :len(yc)] = xc
        y[c, :len(yc)] = torch.tensor(yc)
        valid[c, :len(yc)] = True
    return x, y, valid


def chain_batches(lengths: Sequence[int], budget: int = PAIR_BUDGET) -> list[list[int]]:
    """Chains grouped (longest first) so that chains x n_max^2 stays within the pair budget."""
    from cotprune.core.engine import plan_batches

    # plan_batches bounds rows x longest; feed it n^2 per chain against the pair budget.
    return plan_batches([max(n, 1) ** 2 for n in lengths], budget)


@dataclass
class FitOptions:
    """How `predictor fit` trains; validation names the flag."""

    arch: str = "mlp"
    loss: str = "pairwise"
    hidden: int = 64
    epochs: int = 300
    lr: float = 1e-2
    weight_decay: float = 1e-4
    seed: int = 0
    batch_tokens: int = 8192
    val_fraction: float = 0.1  # chains held out to pick the epoch count (none below 1 chain)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise InputError(f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.loss not in LOSSES:
            raise InputError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for flag, v in (("--hidden", self.hidden), ("--epochs", self.epochs)):
            if v < 1:
                raise InputError(f"{flag} must be >= 1, got {v}")
        if not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class FitResult:
    net: RankNet
    curve: list[float]  # training loss per epoch (of the final fit)
    epochs: int  # epochs of the final fit: chosen on the validation chains when there are some
    val_spearman: float | None  # best mean per-chain Spearman on the validation chains


EVAL_EVERY = 10  # epochs between validation checks


def mean_spearman(net: RankNet, xs: Sequence[torch.Tensor], ys: Sequence[Sequence[float]],
                  ) -> float | None:
    with torch.no_grad():
        return mean_finite([spearman(net(x).tolist(), y) for x, y in zip(xs, ys, strict=True)])


def validation_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) chain indices: a seeded random floor(fraction x n) are held out."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = math.floor(fraction * n)
    return sorted(order[k:]), sorted(order[:k])


def _fit(xs, ys, opts: FitOptions, epochs: int, val=None) -> tuple[RankNet, list[float], int,
                                                                     float | None]:
    """Train for `epochs`; with `val` (xs, ys) keep the weights of the best validation check."""
    torch.manual_seed(opts.seed)
    allx = torch.cat(list(xs))
    net = RankNet(allx.shape[1], opts.arch, opts.hidden)
    net.feature_mean.copy_(allx.mean(0))
    net.feature_std.copy_(allx.std(0, unbiased=False).clamp(min=1e-6))
    loss_fn = pairwise_loss if opts.loss == "pairwise" else mse_loss
    batches = [pad_chains([xs[i] for i in b], [ys[i] for i in b])
               for b in chain_batches([len(y) for y in ys])]
    optim = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    curve: list[float] = []
    best = (float("-inf"), epochs, None)
    for epoch in range(1, epochs + 1):
        total = 0.0
        for x, y, valid in batches:
            optim.zero_grad()
            loss = loss_fn(net(x), y, valid)
            loss.backward()
            optim.step()
            total += float(loss.detach()) * x.shape[0]
        curve.append(total / len(ys))
        fault_point("epoch")
        if val is not None and (epoch % EVAL_EVERY == 0 or epoch == epochs):
            rho = mean_spearman(net, *val)
            if rho is not None and rho > best[0]:
                best = (rho, epoch, {k: v.clone() for k, v in net.state_dict().items()})
    if best[2] is not None:
        net.load_state_dict(best[2])
    net.eval()
    return net, curve, best[1], (None if best[2] is None else best[0])


def train_ranknet(xs: Sequence[torch.Tensor], ys: Sequence[Sequence[float]],
                  opts: FitOptions) -> FitResult:
    """Fit a RankNet on per-chain feature matrices and rank targets.

    With validation chains (`opts.val_fraction`), the epoch count is the one whose weights had
    the best mean Spearman on them (checked every EVAL_EVERY epochs); the model is then refitted
    on all chains for that many epochs, so no labelled chain is wasted.
    """
    train, val = validation_split(len(ys), opts.val_fraction, opts.seed)
    if not val or not train:
        net, curve, epochs, _ = _fit(xs, ys, opts, opts.epochs)
        return FitResult(net, curve, epochs, None)
    _, _, epochs, rho = _fit([xs[i] for i in train], [ys[i] for i in train], opts, opts.epochs,
                             val=([xs[i] for i in val], [ys[i] for i in val]))
    net, curve, _, _ = _fit(xs, ys, opts, epochs)
    return FitResult(net, curve, epochs, rho)
