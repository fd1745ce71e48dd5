"""`cotprune report`: an HTML page with plots of pruned, eval and score files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cotprune.cli import app
from cotprune.cli.options import Config, OutputDir, Seed, Tokenizer


@app.command("report")
def report_cmd(
    inputs: Annotated[list[Path], typer.Argument(
        help="Pruned, eval-results or scores files (or part directories), in any mix.")],
    output: OutputDir,
    keep: Annotated[float | None, typer.Option(
        "--keep", help="Pruned files: show this keep ratio (default: the smallest present).")
    ] = None,
    color_by: Annotated[str, typer.Option(
        "--color-by", help="Colour CoT tokens by 'greedy' deletion step, or by a score column "
                           "of a scores input (surprisal, entropy, attention, ...).")] = "greedy",
    tokenizer: Tokenizer = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="Name of an eval run; repeat once per eval input, in order.")] = None,
    max_chains: Annotated[int, typer.Option(
        "--max-chains", help="Show at most this many chains (a seeded random sample).")] = 50,
    seed: Seed = 0,
    config: Config = None,
) -> None:
    """Write DIR/index.html: pruned chains, J per method, accuracy vs tokens, score plots.

    One self-contained page (inline CSS and images, no network) plus the PNGs it embeds.
    """
    from cotprune.console import emit_summary
    from cotprune.report.page import ReportOptions, write_report

    opts = ReportOptions(output=output, keep=keep, color_by=color_by, tokenizer=tokenizer,
                         labels=list(label or []), max_chains=max_chains, seed=seed)
    emit_summary(write_report(inputs, opts))
