"""The math and the pictures behind `cotprune report`: Pareto fronts, sampling, forking
tokens, token colours, PNG plots.

Everything here is a pure function of numbers (no file reading), so it can be tested on
hand-made values. Plots use matplotlib's object API on the Agg canvas (no display, no global
pyplot state), and PNGs are written without the "Software" text chunk so that the page holds no
URL at all, not even inside an image.
"""

from __future__ import annotations

import base64
import io
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FORKING_RHO = 0.2  # the 80/20 paper: the top 20% highest-entropy tokens are the forking ones

# --- Pareto front ------------------------------------------------------------------------------


def pareto_front(tokens: Sequence[float], accuracy: Sequence[float]) -> list[bool]:
    """Which runs no other run beats: fewer (or equal) tokens AND higher (or equal) accuracy,
    strictly better in at least one. Ties (identical points) are all on the front."""
    if len(tokens) != len(accuracy):
        raise ValueError("tokens and accuracy must have the same length")
    on_front = []
    for i, (t_i, a_i) in enumerate(zip(tokens, accuracy, strict=True)):
        dominated = any(
            t_j <= t_i and a_j >= a_i and (t_j < t_i or a_j > a_i)
            for j, (t_j, a_j) in enumerate(zip(tokens, accuracy, strict=True)) if j != i)
        on_front.append(not dominated)
    return on_front


# --- sampling and forking tokens ------------------------------------------------------------

def sample_ids(ids: list[str], max_chains: int, seed: int) -> list[str]:
    """All ids if few; else a seeded random sample, kept in file order."""
    if len(ids) <= max_chains:
        return list(ids)
    chosen = set(random.Random(seed).sample(ids, max_chains))
    return [i for i in ids if i in chosen]


def visible(token: str) -> str:
    """Whitespace made visible, so ' the' and 'the' read differently in a table."""
    return token.replace(" ", "\u2423").replace("\n", "\u23ce").replace("\t", "\u21e5")


def forking_tokens(tokens: list[str], entropy: np.ndarray, rho: float = FORKING_RHO,
                   top: int = 25) -> tuple[float, list[tuple[str, int, int, float]]]:
    """Tokens at or above the (1 - rho) entropy quantile, counted by text.

    Returns the threshold and up to `top` rows (token, forking count, all occurrences,
    mean entropy when forking), most frequent first.
    """
    entropy = np.asarray(entropy, dtype=np.float64)
    ok = np.isfinite(entropy)
    if not ok.any():
        return float("nan"), []
    threshold = float(np.quantile(entropy[ok], 1 - rho))
    forking = ok & (entropy >= threshold)
    occurrences = Counter(tokens)
    hits: dict[str, list[float]] = {}
    for tok, h in zip(np.asarray(tokens, dtype=object)[forking], entropy[forking], strict=True):
        hits.setdefault(tok, []).append(float(h))
    rows = [(tok, len(hs), occurrences[tok], float(np.mean(hs))) for tok, hs in hits.items()]
    rows.sort(key=lambda r: (-r[1], -r[3], r[0]))
    return threshold, rows[:top]


# --- token colours -----------------------------------------------------------------------------

# Pale blue (deleted first / low score) -> pale yellow -> orange (kept longest / high score).
COLOUR_STOPS = ((0.0, (0xdb, 0xe9, 0xf6)), (0.5, (0xfd, 0xe9, 0xa8)), (1.0, (0xf2, 0x8e, 0x5c)))


def colour_of(u: float) -> str:
    """The background colour for an importance in [0, 1] (clipped), as #rrggbb."""
    u = min(1.0, max(0.0, float(u))) if u == u else 0.0  # NaN -> 0
    for (u0, c0), (u1, c1) in zip(COLOUR_STOPS, COLOUR_STOPS[1:], strict=False):
        if u <= u1:
            w = (u - u0) / (u1 - u0)
            rgb = [round(a + w * (b - a)) for a, b in zip(c0, c1, strict=True)]
            return "#" + "".join(f"{v:02x}" for v in rgb)
    return "#" + "".join(f"{v:02x}" for v in COLOUR_STOPS[-1][1])


def css_gradient() -> str:
    """The same scale as a CSS gradient, for the legend bar."""
    stops = ", ".join(f"{colour_of(u)} {round(100 * u)}%" for u, _ in COLOUR_STOPS)
    return f"linear-gradient(to right, {stops})"


def deletion_ranks(prune_order: Sequence[int], n: int) -> list[int]:
    """Step at which greedy deletes each CoT position (0 = first); never-deleted tokens get
    len(prune_order), i.e. they outlast every deleted one."""
    ranks = [len(prune_order)] * n
    for step, pos in enumerate(prune_order):
        if 0 <= pos < n:
            ranks[pos] = step
    return ranks


def normalise(values: Sequence[float]) -> list[float]:
    """Min-max to [0, 1] within one chain (all equal -> 0.5); NaN stays NaN."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return [float("nan")] * len(arr)
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo <= 0:
        return [0.5 if np.isfinite(v) else float("nan") for v in arr]
    return [float((v - lo) / (hi - lo)) for v in arr]


# --- plots -------------------------------------------------------------------------------------

@dataclass
class Png:
    """One plot: its file name in the report directory and its bytes."""

    name: str
    data: bytes

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.data).decode("ascii")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig, name: str) -> Png:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return Png(name, buf.getvalue())


def pareto_plot(labels: Sequence[str], tokens: Sequence[float], accuracy: Sequence[float],
                front: Sequence[bool], name: str = "eval-pareto.png") -> Png:
    """Accuracy against mean generated tokens, one point per run, the front as a step line."""
    fig = _figure(7.5, 4.8)
    ax = fig.add_subplot()
    t, a, f = np.asarray(tokens, float), np.asarray(accuracy, float), np.asarray(front, bool)
    ax.scatter(t[~f], a[~f], s=40, color="#9aa5b1", label="dominated", zorder=3)
    ax.scatter(t[f], a[f], s=60, color="#d9480f", label="Pareto front", zorder=4)
    order = np.argsort(t[f], kind="stable")
    if f.any():
        ax.step(t[f][order], a[f][order], where="post", color="#d9480f", lw=1.2, alpha=0.6)
    for label, x, y in zip(labels, t, a, strict=True):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("mean generated tokens (fewer is better)")
    ax.set_ylabel("accuracy (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig, name)


def objective_plot(by_method: dict[str, tuple[list[float], list[float]]],
                   name: str = "pruned-objective.png") -> Png:
    """Mean J against keep ratio, one line per method."""
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    for method, (ratios, means) in sorted(by_method.items()):
        ax.plot(ratios, means, marker="o", label=method)
    ax.set_xlabel("keep ratio")
    ax.set_ylabel("mean J = NLL of kept CoT + answer (nats)")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig, name)


def trace_plot(traces: Sequence[Sequence[float]], lengths: Sequence[int],
               name: str = "pruned-greedy-trace.png") -> Png:
    """Greedy's J after each deletion against the fraction of CoT deleted, one line per chain."""
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    for trace, n in zip(traces, lengths, strict=True):
        if len(trace) and n:
            x = (np.arange(len(trace)) + 1) / n
            ax.plot(x, trace, color="#1c7ed6", alpha=0.35, lw=1)
    ax.set_xlabel("fraction of CoT tokens deleted")
    ax.set_ylabel("J after the deletion (nats)")
    ax.grid(alpha=0.3)
    return _png(fig, name)


def histogram_plot(columns: dict[str, np.ndarray], name: str,
                   marks: dict[str, float] | None = None) -> Png:
    """One histogram per score column over all CoT tokens; `marks` draws a vertical line."""
    names = list(columns)
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig = _figure(4.0 * cols, 3.0 * rows)
    for k, col in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        values = columns[col]
        values = values[np.isfinite(values)]
        ax.hist(values, bins=50, color="#4c6ef5", alpha=0.85)
        if marks and col in marks:
            ax.axvline(marks[col], color="#d9480f", ls="--", lw=1.2)
        ax.set_title(f"{col} (n={values.size})", fontsize=10)
        ax.set_ylabel("tokens")
        ax.grid(alpha=0.3)
    return _png(fig, name)
