"""`cotprune prune`: delete CoT tokens by greedy likelihood preservation or a static order."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cotprune.cli import app
from cotprune.cli import options as o
from cotprune.core.models import ModelOptions
from cotprune.core.stage import RunOptions


@app.command("prune")
@o.model_options()
@o.stage_options()
def prune_cmd(
    chains: Annotated[Path, typer.Argument(help="Chains (or scores) file or directory.")],
    output: o.Output,
    model_opts: ModelOptions,
    run: RunOptions,
    method: Annotated[str, typer.Option(
        "--method", help="greedy|surprisal|entropy|attention|loo|predicted|random.")] = "greedy",
    keep: Annotated[str, typer.Option(
        "--keep", help="Keep ratios, comma-separated; one row per chain and ratio.")
    ] = "0.9,0.7,0.5",
    objective: Annotated[str, typer.Option(
        "--objective", help="reason-answer (CoT + answer NLL) or answer.")] = "reason-answer",
    per_step: Annotated[int, typer.Option(
        "--per-step", help="greedy, approximate: delete the K best candidates per step.")] = 1,
    shortlist: Annotated[Optional[int], typer.Option(
        "--shortlist", help="greedy, approximate (lazy greedy): rescore the M candidates that "
                            "were cheapest when last scored, more while a stale cost undercuts "
                            "the best fresh one.")] = None,
    refresh_every: Annotated[int, typer.Option(
        "--refresh-every", help="greedy --shortlist: rescore all candidates every N steps "
                                "(0: never).")] = 0,
    self_term: Annotated[bool, typer.Option(
        "--self-term", help="greedy --shortlist: bring each stale cost's own-token term up to "
                            "date from the current chain (free; closer to exact greedy).")
    ] = False,
    first_window: Annotated[int, typer.Option(
        "--first-window", help="greedy --shortlist: full steps estimate each candidate from "
                               "the W targets after its deletion, rescoring only the "
                               "likeliest (0: score every candidate to its end).")] = 0,
    screen: Annotated[int, typer.Option(
        "--screen", help="greedy --shortlist: each rescored candidate runs the W targets after "
                         "its deletion, and only the likeliest run on to their end (0: all "
                         "run to their end).")] = 0,
    fast: Annotated[bool, typer.Option(
        "--fast", help="greedy, approximate: the recommended preset of --per-step, --shortlist, "
                       "--refresh-every, --self-term, --first-window and --screen "
                       "(pruning/greedy.py: FAST; trade-offs in BENCHMARKS.md).")] = False,
    protect: Annotated[Optional[str], typer.Option(
        "--protect", help="'digits' or a regex: matching tokens are never deleted.")] = None,
    max_cot_tokens: Annotated[Optional[int], typer.Option(
        "--max-cot-tokens", help="Skip chains with more CoT tokens than this, and count them "
                                 "(guards greedy's run time).")] = 1024,
    predictor: Annotated[Optional[Path], typer.Option(
        "--predictor", help="predicted: a file written by `predictor fit`; greedy with "
        "--shortlist M: its learned prior picks the M candidates each step scores.")] = None,
    repredict_every: Annotated[Optional[int], typer.Option(
        "--repredict-every", help="predicted: re-predict after every K deletions.")] = None,
    lockstep: Annotated[int, typer.Option(
        "--lockstep", help="greedy: prune N chains side by side, their candidates in shared "
                           "forwards (fewer forwards; J equal up to float rounding).")] = 1,
    batch_tokens: o.BatchTokens = 4096,
    config: o.Config = None,
) -> None:
    """Prune chains: one output row per chain and keep ratio, with J of each pruned chain."""
    from cotprune.console import emit_summary
    from cotprune.pruning.greedy import greedy_options
    from cotprune.pruning.prune import PruneOptions, run_prune

    opts = PruneOptions(
        method=method, keep=o.parse_list(keep, "--keep", float), objective=objective,
        greedy=greedy_options(per_step, shortlist, refresh_every, self_term, first_window,
                              screen, fast=fast),
        protect=protect, max_cot_tokens=max_cot_tokens, seed=run.seed, batch_tokens=batch_tokens,
        predictor=str(predictor) if predictor else None, repredict_every=repredict_every,
        lockstep=lockstep)
    emit_summary(run_prune(chains, output, model_opts, opts, run))
