"""The math and the pictures behind `cotprune report`: Pareto fronts, sampling, forking
tokens, token colours, PNG plots, the score-file section, and the page's CSS and script.

Nothing here reads files: the math is pure functions of numbers, tested on hand-made values.
Plots use matplotlib's object API on the Agg canvas (no display, no global
pyplot state), and PNGs are written without the "Software" text chunk so that the page holds no
URL at all, not even inside an image.
"""

from __future__ import annotations

import base64
import html
import io
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cotprune.errors import InputError

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
    for (u0, c0), (u1, c1) in pairwise(COLOUR_STOPS):
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
    ax.margins(x=0.12, y=0.08)
    ax.set_xlabel("mean generated tokens (fewer is better)")
    ax.set_ylabel("accuracy (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig, name)


def objective_plot(by_method: dict[str, tuple[list[float], list[float]]],
                   name: str = "pruned-objective.png") -> Png:
    """Mean J against keep ratio, one line per method."""
    fig = _figure(5.5, 3.6)
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
    fig = _figure(5.5, 3.6)
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


# --- score files ----------------------------------------------------------------------------

NOT_SCORES = {"objective_trace"}


def score_columns(table: pa.Table) -> list[str]:
    """The list<float> columns of a scores file (one value per CoT token)."""
    out = []
    for f in table.schema:
        if (pa.types.is_list(f.type) or pa.types.is_large_list(f.type)) \
                and pa.types.is_floating(f.type.value_type) and f.name not in NOT_SCORES:
            out.append(f.name)
    return out


def check_aligned(table: pa.Table, column: str, file: str) -> None:
    """A score column must have one value per CoT token in every row."""
    same = pc.equal(pc.list_value_length(table["cot_tokens"]),
                    pc.list_value_length(table[column])).to_pylist()
    for k, ok in enumerate(same):
        if ok is False:
            raise InputError("length differs from cot_tokens", file=file,
                             row=table["id"][k].as_py(), column=column)




def scores_section(t: pa.Table, name: str, index: int, pngs: list[Png]) -> str:
    """Histograms of every score column and the forking-token table of one scores file."""
    cols = score_columns(t)
    for c in cols:
        check_aligned(t, c, name)
    flat = {c: pc.list_flatten(t[c]).to_numpy(zero_copy_only=False).astype(np.float64)
            for c in cols}
    fork_html, marks = "", {}
    if "entropy" in flat:
        tokens = [str(x) for x in pc.list_flatten(t["cot_tokens"]).to_pylist()]
        threshold, rows = forking_tokens(tokens, flat["entropy"])
        marks["entropy"] = threshold
        body = "".join(f"<tr><td><code>{html.escape(visible(tok))}</code></td><td>{k}</td>"
                       f"<td>{n}</td><td>{k / n:.0%}</td><td>{h:.3f}</td></tr>"
                       for tok, k, n, h in rows)
        fork_html = f"""<h3>Forking tokens (highest entropy)</h3>
<p>Tokens whose entropy reaches the top {FORKING_RHO:.0%} of all CoT tokens
(entropy &ge; {threshold:.3f} nats), counted by text; the most frequent {len(rows)}.</p>
<table class="summary forking"><tr><th>token</th><th>forking count</th><th>occurrences</th>
<th>share forking</th><th>mean entropy when forking</th></tr>{body}</table>"""
    png = histogram_plot(flat, f"scores-{index}-histograms.png", marks)
    pngs.append(png)
    stats = "".join(
        f"<tr><th>{html.escape(c)}</th><td>{v.size}</td><td>{np.nanmean(v):.3f}</td>"
        f"<td>{np.nanmedian(v):.3f}</td><td>{np.nanmin(v):.3f}</td><td>{np.nanmax(v):.3f}</td></tr>"
        if v.size else f"<tr><th>{html.escape(c)}</th><td>0</td><td colspan=4>-</td></tr>"
        for c, v in flat.items())
    return f"""<section class="scores"><h2>Scores: {html.escape(name)}</h2>
<p>{t.num_rows} chains, {len(cols)} score columns over all CoT tokens.</p>
<figure><img src="{png.data_uri()}" alt="score histograms"><figcaption>Distribution of each
score over CoT tokens{"; dashed: the forking threshold" if marks else ""}.</figcaption></figure>
<table class="summary"><tr><th>score</th><th>tokens</th><th>mean</th><th>median</th><th>min</th>
<th>max</th></tr>{stats}</table>{fork_html}</section>"""


# --- page style and script ----------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#212529;margin:0;
background:#f8f9fa}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:19px;border-bottom:2px solid #dee2e6;
padding-bottom:4px;margin-top:32px}h3{font-size:15px;margin:20px 0 8px}h4{margin:0 0 6px;
font-size:14px;font-family:ui-monospace,monospace}
section{background:#fff;border:1px solid #e9ecef;border-radius:6px;padding:4px 18px 16px;
margin-top:18px}
table.summary{border-collapse:collapse;margin:8px 0;font-size:13px}
table.summary th,table.summary td{border:1px solid #dee2e6;padding:3px 9px;text-align:right}
table.summary th{background:#f1f3f5}table.summary td:first-child{text-align:left}
table#inputs td,table#inputs th{text-align:left}
tr.front td{background:#fff4e6;font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:16px}.figs figure{flex:1 1 440px;max-width:560px}
figure{margin:8px 0}
figure img{max-width:100%;border:1px solid #e9ecef}figcaption{font-size:12px;color:#6c757d}
.notes{background:#fff9db;border:1px solid #ffe066;border-radius:6px;padding:6px 14px}
.chain{border:1px solid #dee2e6;border-radius:6px;padding:8px 12px;margin:10px 0}
.q,.a{margin:4px 0;color:#495057}.run{margin:6px 0}
.run-head{font-size:12px;color:#495057;margin-bottom:2px}
.toks{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px;line-height:1.9;
white-space:pre-wrap;word-break:break-word}
.t{border-radius:2px;padding:1px 0}s.t{color:#868e96;text-decoration-color:#c92a2a;
text-decoration-thickness:1.5px;opacity:.6}
.legend{display:inline-block;width:140px;height:12px;vertical-align:middle;
border:1px solid #ced4da;border-radius:2px}
input#filter{font:inherit;padding:3px 6px;width:220px}
code{background:#f1f3f5;padding:0 3px;border-radius:3px}
"""

FILTER_JS = """
(function(){var box=document.getElementById('filter');if(!box)return;
box.addEventListener('input',function(){var q=box.value.toLowerCase(),n=0;
document.querySelectorAll('.chain').forEach(function(c){
var hit=c.getAttribute('data-id').toLowerCase().indexOf(q)>=0;
c.style.display=hit?'':'none';if(hit)n++;});
document.getElementById('shown').textContent=n;});})();
"""
