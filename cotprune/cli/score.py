"""`cotprune score`: per-token surprisal, entropy, attention (and significance) of CoT tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cotprune.cli import app
from cotprune.cli import options as o
from cotprune.core.models import ModelOptions
from cotprune.core.stage import RunOptions


@app.command("score")
@o.model_options()
@o.stage_options()
def score_cmd(
    chains: Annotated[Path, typer.Argument(help="A chains file (or directory of part files).")],
    output: o.Output,
    model_opts: ModelOptions,
    run: RunOptions,
    scorer: Annotated[str, typer.Option(
        "--scorer", help="Comma-separated: surprisal,entropy,attention,loo,significance.")
    ] = "surprisal,entropy,attention",
    objective: Annotated[str, typer.Option(
        "--objective", help="loo: reason-answer|answer (SPEC 'the pruning objective J').")
    ] = "reason-answer",
    significance_model: o.SignificanceModel = None,
    max_length: o.MaxLength = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Fail instead of skipping chains that are too long.")] = False,
    batch_tokens: o.BatchTokens = 8192,
    config: o.Config = None,
) -> None:
    """Score every CoT token of CHAINS; write chain + layout columns and one list per scorer."""
    from cotprune.console import emit_summary
    from cotprune.scoring.score import ScoreOptions, run_score

    opts = ScoreOptions(scorers=o.parse_list(scorer, "--scorer"), objective=objective,
                        batch_tokens=batch_tokens, max_length=max_length, strict=strict,
                        significance_model=significance_model)
    emit_summary(run_score(chains, output, opts, model_opts, run))
