"""`cotprune score`: per-token surprisal, entropy, attention (and significance) of CoT tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cotprune.cli import app
from cotprune.cli.options import (
    Adapter,
    BatchTokens,
    Config,
    Device,
    Dtype,
    Limit,
    Model,
    Output,
    Resume,
    Seed,
    ShardSpec,
    TrustRemoteCode,
    parse_list,
)
from cotprune.core.models import DEFAULT_MODEL


@app.command("score")
def score_cmd(
    chains: Annotated[Path, typer.Argument(help="A chains file (or directory of part files).")],
    output: Output,
    scorer: Annotated[str, typer.Option(
        "--scorer", help="Comma-separated: surprisal,entropy,attention,loo,significance.")
    ] = "surprisal,entropy,attention",
    objective: Annotated[str, typer.Option(
        "--objective", help="loo: reason-answer|answer (SPEC 'the pruning objective J').")
    ] = "reason-answer",
    significance_model: Annotated[str | None, typer.Option(
        "--significance-model", help="Token-classification checkpoint (LLMLingua-2 kind).")
    ] = None,
    max_length: Annotated[int | None, typer.Option(
        "--max-length", min=1, help="Skip chains longer than this many tokens.")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Fail instead of skipping chains that are too long.")] = False,
    model: Model = DEFAULT_MODEL,
    adapter: Adapter = None,
    dtype: Dtype = "auto",
    device: Device = "auto",
    trust_remote_code: TrustRemoteCode = False,
    batch_tokens: BatchTokens = 8192,
    seed: Seed = 0,
    limit: Limit = None,
    resume: Resume = False,
    shard: ShardSpec = None,
    config: Config = None,
) -> None:
    """Score every CoT token of CHAINS; write chain + layout columns and one list per scorer."""
    from cotprune.console import emit_summary
    from cotprune.core.models import ModelOptions
    from cotprune.core.stage import RunOptions
    from cotprune.scoring.score import ScoreOptions, run_score

    opts = ScoreOptions(scorers=parse_list(scorer, "--scorer"), objective=objective,
                        batch_tokens=batch_tokens, max_length=max_length, strict=strict,
                        significance_model=significance_model)
    model_opts = ModelOptions(model=model, adapter=adapter, dtype=dtype, device=device,
                              trust_remote_code=trust_remote_code)
    run = RunOptions(limit=limit, shard=shard, resume=resume, seed=seed)
    emit_summary(run_score(chains, output, opts, model_opts, run))
