"""`cotprune report`: one self-contained HTML page that shows what was pruned and what it cost.

Each input's kind is told from its columns (pruned, eval results, or scores); each kind adds a
section. The page is a single file: inline CSS, a few lines of inline JS for the chain filter,
and plots embedded as base64 PNG data URIs, so it opens offline and can be mailed around. The
PNGs are written beside it too. Every input is read and checked before anything is written,
and the directory is assembled under a temporary name and renamed into place, so bad input
leaves no output behind.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cotprune.console import log
from cotprune.data.files import (
    check_writable,
    read_manifest,
    read_table,
    require_columns,
    umask_mode,
    validate_chains,
)
from cotprune.errors import InputError
from cotprune.report.plots import (
    CSS,
    FILTER_JS,
    Png,
    colour_of,
    css_gradient,
    deletion_ranks,
    normalise,
    objective_plot,
    pareto_front,
    pareto_plot,
    sample_ids,
    score_columns,
    scores_section,
    trace_plot,
)

PRUNED_COLUMNS = ("keep_ratio", "kept_positions", "method", "objective_nll", "original_tokens",
                  "kept_tokens")
EVAL_COLUMNS = ("prediction", "correct", "generated_tokens", "truncated")
RATIO_TOL = 1e-4


@dataclass
class ReportOptions:
    """What the page shows; validation names the flag."""

    output: Path
    keep: float | None = None
    color_by: str = "greedy"
    tokenizer: str | None = None
    labels: list[str] = field(default_factory=list)
    max_chains: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_chains < 1:
            raise InputError(f"--max-chains must be at least 1, got {self.max_chains}")
        if self.keep is not None and not 0 <= self.keep <= 1:
            raise InputError(f"--keep must be in [0, 1], got {self.keep}")
        out = Path(self.output)
        check_writable(out)
        if out.exists() and (not out.is_dir() or
                             (any(out.iterdir()) and not (out / "index.html").exists())):
            raise InputError("-o exists and is not a report directory; choose a new path",
                             file=str(out))


@dataclass
class Input:
    path: Path
    kind: str
    table: pa.Table
    manifest: dict

    @property
    def name(self) -> str:
        return str(self.path)


# --- reading and telling kinds apart --------------------------------------------------------

def detect_kind(table: pa.Table, file: str) -> str:
    """'pruned', 'eval' or 'scores', from the columns (SPEC "Files"); else an InputError."""
    names = set(table.column_names)
    if set(PRUNED_COLUMNS) <= names:
        if "cot_tokens" not in names:
            require_columns(table, ["id", "input_ids", "cot_start", "cot_end"], file)
        require_columns(table, ["id"], file)
        return "pruned"
    if set(EVAL_COLUMNS) <= names:
        return "eval"
    if "cot_tokens" in names and score_columns(table):
        require_columns(table, ["id"], file)
        return "scores"
    raise InputError(
        "cannot tell what kind of file this is: expected a pruned file (columns "
        f"{', '.join(PRUNED_COLUMNS)}), eval results ({', '.join(EVAL_COLUMNS)}) or scores "
        "(cot_tokens plus list<float> score columns)", file=file)


def load_inputs(paths: list[Path]) -> list[Input]:
    if not paths:
        raise InputError("report needs at least one input file")
    inputs = []
    for p in paths:
        table = read_table(p)
        kind = detect_kind(table, str(p))
        validate_chains(table, str(p), need=["id"], unique_ids=False)  # rows, ids not null
        inputs.append(Input(Path(p), kind, table, read_manifest(p) or {}))
    return inputs


# --- pruned files ---------------------------------------------------------------------------

def objective_summary(tables: list[pa.Table]) -> dict[tuple[str, float], tuple[float, int]]:
    """(method, keep ratio) -> (mean J, number of rows) over all pruned inputs."""
    sums: dict[tuple[str, float], list[float]] = {}
    for t in tables:
        for m, r, j in zip(t["method"].to_pylist(), t["keep_ratio"].to_pylist(),
                           t["objective_nll"].to_pylist(), strict=True):
            if j is not None:
                sums.setdefault((str(m), round(float(r), 4)), []).append(float(j))
    return {k: (float(np.mean(v)), len(v)) for k, v in sums.items()}


def present_ratios(tables: list[pa.Table]) -> list[float]:
    ratios = set()
    for t in tables:
        ratios.update(round(float(r), 4) for r in pc.unique(t["keep_ratio"]).to_pylist()
                      if r is not None)
    return sorted(ratios)


def choose_ratio(ratios: list[float], keep: float | None) -> float:
    """--keep if the files hold it, else the smallest ratio present."""
    if keep is None:
        return ratios[0]
    for r in ratios:
        if abs(r - keep) < RATIO_TOL:
            return r
    raise InputError(f"--keep {keep}: the pruned files hold only the ratios "
                     f"{', '.join(map(str, ratios))}")



class TokenTexts:
    """Each CoT token's text: the `cot_tokens` column, else decoded with the run's tokenizer,
    else (when that cannot be loaded) the token ids, with a note on the page."""

    def __init__(self, override: str | None):
        self.override = override
        self.cache: dict[str, object] = {}
        self.notes: list[str] = []

    def tokenizer_for(self, inp: Input):
        names = [self.override] if self.override else [
            inp.manifest.get("model"), inp.manifest.get("tokenizer")]
        for name in [n for n in names if n]:
            if name not in self.cache:
                self.cache[name] = self._load(name)
            if self.cache[name] is not None:
                return self.cache[name]
        if not any(names):
            self.notes.append(f"{inp.name}: the manifest names no model and --tokenizer was not "
                              "given, so tokens are shown as ids.")
        return None

    def _load(self, name: str):
        from cotprune.core.models import load_tokenizer

        try:
            return load_tokenizer(name)
        except Exception as e:  # any failure: show ids instead, and say so
            log.warning("report: cannot load tokenizer %s (%s); showing token ids", name, e)
            self.notes.append(f"The tokenizer {name!r} could not be loaded ({e}); tokens are "
                              "shown as ids. Pass --tokenizer to decode them.")
            return None

    def texts(self, inp: Input, row: dict) -> list[str]:
        if row.get("cot_tokens") is not None:
            return [str(t) for t in row["cot_tokens"]]
        ids = row["input_ids"][row["cot_start"]:row["cot_end"]]
        tok = self.tokenizer_for(inp)
        if tok is None:
            return [f"[{i}]" for i in ids]
        from cotprune.data.layout import token_texts

        return token_texts(tok, ids)


def _rows_for(table: pa.Table, ids: list[str]) -> list[dict]:
    mask = pc.is_in(table["id"], value_set=pa.array(ids, pa.string()))
    return table.filter(mask).to_pylist()


def colour_values(rows: list[dict], score_rows: dict[str, dict], color_by: str, n: int,
                  chain_id: str) -> tuple[list[float] | None, list[str]]:
    """Per-token importance in [0, 1] and tooltips: greedy's deletion step, or a score."""
    if color_by == "greedy":
        greedy = next((r for r in rows if r.get("prune_order") is not None), None)
        if greedy is None:
            return None, [""] * n
        ranks = deletion_ranks(greedy["prune_order"], n)
        top = max(1, len(greedy["prune_order"]))
        tips = [f"deleted at greedy step {r + 1}" if r < len(greedy["prune_order"])
                else "never deleted by greedy" for r in ranks]
        return [min(r, top) / top for r in ranks], tips
    srow = score_rows.get(chain_id)
    if srow is None or srow.get(color_by) is None or len(srow[color_by]) != n:
        return None, [""] * n
    vals = [float("nan") if v is None else float(v) for v in srow[color_by]]
    return normalise(vals), [f"{color_by} = {v:.3g}" for v in vals]


def render_tokens(texts: list[str], kept: set[int], u: list[float] | None,
                  tips: list[str]) -> str:
    parts = []
    for i, text in enumerate(texts):
        style = f' style="background:{colour_of(u[i])}"' if u is not None else ""
        tip = html.escape(f"#{i} {tips[i]}".strip() + ("" if i in kept else " (deleted)"))
        tag = "span" if i in kept else "s"
        parts.append(f'<{tag} class="t"{style} title="{tip}">{html.escape(text)}</{tag}>')
    return "".join(parts)


def method_sort_key(row: dict) -> tuple:
    return (row["method"] != "greedy", str(row["method"]))


def pruned_section(inputs: list[Input], scores: list[Input], opts: ReportOptions,
                   texts: TokenTexts, pngs: list[Png], notes: list[str]) -> tuple[str, str]:
    """The J summary (table and plots) and the per-chain view, as two sections."""
    tables = [i.table for i in inputs]
    ratios = present_ratios(tables)
    if not ratios:
        return "<section><h2>Pruned chains</h2><p>The pruned files hold no rows.</p></section>", ""
    ratio = choose_ratio(ratios, opts.keep)
    if opts.color_by != "greedy" and not any(opts.color_by in s.table.column_names
                                             for s in scores):
        raise InputError(f"--color-by {opts.color_by}: no scores input has that column "
                         "(give a scores file, or use --color-by greedy)")
    summary = objective_summary(tables)
    methods = sorted({m for m, _ in summary}, key=lambda m: (m != "greedy", m))
    head = "".join(f"<th>{r:g}</th>" for r in sorted(ratios, reverse=True))
    body = ""
    for m in methods:
        cells = "".join(
            f'<td title="{summary[(m, r)][1]} rows">{summary[(m, r)][0]:.3f}</td>'
            if (m, r) in summary else "<td>-</td>" for r in sorted(ratios, reverse=True))
        body += f"<tr><th>{html.escape(m)}</th>{cells}</tr>"
    table_html = (f'<table class="summary" id="objective-table"><tr><th>method \\ keep ratio'
                  f'</th>{head}</tr>{body}</table>')
    by_method = {m: ([r for r in ratios if (m, r) in summary],
                     [summary[(m, r)][0] for r in ratios if (m, r) in summary]) for m in methods}
    png = objective_plot(by_method)
    pngs.append(png)

    all_ids = list(dict.fromkeys(i for t in tables for i in t["id"].to_pylist()))
    ids = sample_ids(all_ids, opts.max_chains, opts.seed)
    if len(ids) < len(all_ids):
        notes.append(f"Pruned chains: showing a random sample of {len(ids)} of {len(all_ids)} "
                     f"chains (seed {opts.seed}; change with --max-chains and --seed). The "
                     "summary table and plots use all rows.")
    rows_by_id: dict[str, list[tuple[Input, dict]]] = {i: [] for i in ids}
    for inp in inputs:
        for row in _rows_for(inp.table, ids):
            rows_by_id[row["id"]].append((inp, row))
    score_rows: dict[str, dict] = {}
    for s in scores:
        if opts.color_by in s.table.column_names:
            for row in _rows_for(s.table.select(["id", opts.color_by]), ids):
                score_rows.setdefault(row["id"], row)

    trace_rows = [r for rs in rows_by_id.values() for _, r in rs
                  if r.get("objective_trace") is not None
                  and abs(r["keep_ratio"] - ratio) < RATIO_TOL]
    trace_html = ""
    if trace_rows:
        tpng = trace_plot([r["objective_trace"] for r in trace_rows],
                          [r["original_tokens"] for r in trace_rows])
        pngs.append(tpng)
        trace_html = (f'<figure><img src="{tpng.data_uri()}" alt="greedy J trace"><figcaption>'
                      f"Greedy's J after each deletion, {len(trace_rows)} shown chains."
                      "</figcaption></figure>")

    chains_html = "".join(chain_html(cid, rows_by_id[cid], score_rows, ratio, opts, texts)
                          for cid in ids)
    scale = ("when greedy deletes it (blue: deleted first, orange: kept longest)"
             if opts.color_by == "greedy" else
             f"its {html.escape(opts.color_by)} score, min-max per chain (blue low, orange high)")
    summary_html = f"""<section id="pruned"><h2>Pruning: J per method and keep ratio</h2>
<p>J is the summed negative log-likelihood (nats) under the pruner model of the kept CoT
tokens plus the answer (or of the answer alone, with <code>--objective answer</code>). Methods
keep the same number of tokens at a ratio, so at equal ratio lower J is better. Mean over all
rows.</p>{table_html}
<div class="figs"><figure><img src="{png.data_uri()}" alt="mean J per method"><figcaption>
Mean J against keep ratio.</figcaption></figure>{trace_html}</div></section>"""
    view_html = f"""<section id="chain-view"><h2>Pruned chains at keep ratio {ratio:g}</h2>
<p>Each CoT token is coloured by {scale}
<span class="legend" style="background:{css_gradient()}"></span>.
Deleted tokens are <s class="t">struck through</s>. Hover a token for its position and value.
Other ratios: <code>--keep</code> ({", ".join(f"{r:g}" for r in ratios)}).</p>
<p><label>Filter by chain id: <input id="filter" type="search" placeholder="id contains..."></label>
<span id="shown">{len(ids)}</span> of {len(ids)} shown</p>
<div id="chains">{chains_html}</div></section>"""
    return summary_html, view_html


def chain_html(cid: str, rows: list[tuple[Input, dict]], score_rows: dict[str, dict],
               ratio: float, opts: ReportOptions, texts: TokenTexts) -> str:
    at_ratio = [(i, r) for i, r in rows if abs(r["keep_ratio"] - ratio) < RATIO_TOL]
    at_ratio.sort(key=lambda ir: method_sort_key(ir[1]))
    if not at_ratio:
        return (f'<div class="chain" data-id="{html.escape(cid, quote=True)}"><h4>'
                f"{html.escape(cid)}</h4><p>No row at keep ratio {ratio:g}.</p></div>")
    first = at_ratio[0][1]
    runs = []
    for inp, row in at_ratio:
        toks = texts.texts(inp, row)
        u, tips = colour_values([r for _, r in rows], score_rows, opts.color_by, len(toks), cid)
        kept = set(row["kept_positions"] or [])
        runs.append(
            f'<div class="run"><div class="run-head"><b>{html.escape(str(row["method"]))}</b> '
            f'kept {row["kept_tokens"]}/{row["original_tokens"]} tokens, '
            f'J = {row["objective_nll"]:.3f}</div>'
            f'<div class="toks">{render_tokens(toks, kept, u, tips)}</div></div>')
    return (f'<div class="chain" data-id="{html.escape(cid, quote=True)}">'
            f'<h4>{html.escape(cid)}</h4>'
            f'<p class="q"><b>Q:</b> {html.escape(str(first.get("question") or ""))}</p>'
            f'{"".join(runs)}'
            f'<p class="a"><b>A:</b> {html.escape(str(first.get("answer") or ""))}</p></div>')


# --- eval results ---------------------------------------------------------------------------

@dataclass
class Run:
    label: str
    file: str
    n: int
    accuracy: float
    mean_tokens: float
    truncated: float
    model: str = ""
    adapter: str = ""
    keep_ratio: str = ""
    method: str = ""


def _first(manifest: dict, *keys: str) -> str:
    """The first of `keys` the manifest sets, at its top or among the stage's options."""
    options = manifest.get("options") if isinstance(manifest.get("options"), dict) else {}
    for k in keys:
        v = manifest.get(k, options.get(k))
        if v not in (None, ""):
            return str(v)
    return ""


def eval_run(inp: Input, label: str | None) -> Run:
    t = inp.table
    correct = [bool(c) for c in t["correct"].to_pylist()]
    tokens = [float(x) for x in t["generated_tokens"].to_pylist() if x is not None]
    truncated = [bool(x) for x in t["truncated"].to_pylist()]
    m = inp.manifest
    run = Run(label="", file=inp.name, n=t.num_rows,
              accuracy=float(np.mean(correct)) if correct else 0.0,
              mean_tokens=float(np.mean(tokens)) if tokens else 0.0,
              truncated=float(np.mean(truncated)) if truncated else 0.0,
              model=_first(m, "model"), adapter=_first(m, "adapter"),
              keep_ratio=_first(m, "keep_ratio", "keep-ratio", "keep"),
              method=_first(m, "method"))
    parts = [Path(run.model).name if run.model else "",
             f"+{Path(run.adapter).name}" if run.adapter else "",
             run.method, f"@{run.keep_ratio}" if run.keep_ratio else ""]
    run.label = label or " ".join(p for p in parts if p) or inp.path.stem
    return run


def eval_section(inputs: list[Input], labels: list[str], pngs: list[Png]) -> str:
    if labels and len(labels) != len(inputs):
        raise InputError(f"--label was given {len(labels)} times but there are {len(inputs)} "
                         "eval inputs; give one label per eval input, in order")
    runs = [eval_run(inp, labels[k] if labels else None) for k, inp in enumerate(inputs)]
    counts = Counter(r.label for r in runs)
    for r in runs:  # two runs with the same identity: tell them apart by file name
        if counts[r.label] > 1:
            r.label = f"{r.label} ({Path(r.file).stem})"
    front = pareto_front([r.mean_tokens for r in runs], [r.accuracy for r in runs])
    png = pareto_plot([r.label for r in runs], [r.mean_tokens for r in runs],
                      [r.accuracy for r in runs], front)
    pngs.append(png)
    rows = "".join(
        f'<tr class="{"front" if f else ""}"><td>{html.escape(r.label)}</td>'
        f"<td>{html.escape(r.model)}</td><td>{html.escape(r.adapter)}</td>"
        f"<td>{html.escape(r.method)}</td><td>{html.escape(r.keep_ratio)}</td><td>{r.n}</td>"
        f"<td>{r.accuracy:.3f}</td><td>{r.mean_tokens:.1f}</td><td>{100 * r.truncated:.1f}%</td>"
        f'<td>{"yes" if f else ""}</td></tr>'
        for r, f in sorted(zip(runs, front, strict=True), key=lambda rf: rf[0].mean_tokens))
    return f"""<section id="eval"><h2>Accuracy against generated tokens</h2>
<figure><img src="{png.data_uri()}" alt="accuracy vs mean generated tokens">
<figcaption>One point per run; orange points are on the Pareto front (no other run has fewer
tokens and higher accuracy).
</figcaption></figure>
<table class="summary" id="eval-table"><tr><th>run</th><th>model</th><th>adapter</th>
<th>method</th><th>keep ratio</th><th>n</th><th>accuracy</th><th>mean generated tokens</th>
<th>truncated</th><th>Pareto</th></tr>{rows}</table></section>"""


# --- the page -------------------------------------------------------------------------------

def inputs_html(inputs: list[Input]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(i.name)}</td><td>{i.kind}</td><td>{i.table.num_rows}</td>"
        f"<td>{html.escape(str(i.manifest.get('command', '')))}</td>"
        f"<td>{html.escape(str(i.manifest.get('model', '')))}</td></tr>" for i in inputs)
    return (f'<table class="summary" id="inputs"><tr><th>input</th><th>kind</th><th>rows</th>'
            f"<th>made by</th><th>model</th></tr>{rows}</table>")


def render_page(inputs: list[Input], opts: ReportOptions) -> tuple[str, list[Png], dict]:
    """The page, the PNGs it embeds, and a summary of what it shows."""
    pngs: list[Png] = []
    notes: list[str] = []
    texts = TokenTexts(opts.tokenizer)
    by_kind = {k: [i for i in inputs if i.kind == k] for k in ("pruned", "eval", "scores")}
    sections, chain_view = [], ""
    if by_kind["pruned"]:
        summary_html, chain_view = pruned_section(by_kind["pruned"], by_kind["scores"], opts,
                                                  texts, pngs, notes)
        sections.append(summary_html)
    elif opts.color_by != "greedy":
        raise InputError("--color-by colours pruned chains; give a pruned file too")
    if by_kind["eval"]:
        sections.append(eval_section(by_kind["eval"], opts.labels, pngs))
    elif opts.labels:
        raise InputError("--label names eval runs; no input is an eval results file")
    for k, inp in enumerate(by_kind["scores"]):
        sections.append(scores_section(inp.table, inp.name, k, pngs))
    sections.append(chain_view)  # long, so after the overview sections
    notes = notes + list(dict.fromkeys(texts.notes))
    notes_html = ("<div class=\"notes\">" + "".join(f"<p>{html.escape(n)}</p>" for n in notes)
                  + "</div>") if notes else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cotprune report</title><style>{CSS}</style></head>
<body><main><h1>cotprune report</h1>
<p>What was pruned and what it cost. Written by <code>cotprune report</code>; this page is
self-contained (no network).</p>
{inputs_html(inputs)}{notes_html}
{"".join(sections)}
</main><script>{FILTER_JS}</script></body></html>
"""
    summary = {"inputs": len(inputs), **{k: len(v) for k, v in by_kind.items()},
               "plots": len(pngs), "notes": len(notes)}
    return page, pngs, summary


def write_report(paths: list[Path], opts: ReportOptions) -> dict:
    """Read and check every input, build the page in a temporary directory, rename it into
    place. Nothing is written unless all inputs are good."""
    inputs = load_inputs(paths)
    page, pngs, summary = render_page(inputs, opts)
    out = Path(opts.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes it 0700; the report is for others too
    try:
        for png in pngs:
            (tmp / png.name).write_bytes(png.data)
        (tmp / "index.html").write_text(page, encoding="utf-8")
        tmp.chmod(0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"command": "report", "output": str(out / "index.html"), **summary}
