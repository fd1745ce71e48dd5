"""`cotprune predictor fit|eval`: learn greedy deletion ranks from one-forward features."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cotprune.cli import app
from cotprune.cli import options as o
from cotprune.core.models import ModelOptions

predictor_app = typer.Typer(help="Fit and evaluate a greedy-rank predictor (prune --method "
                                 "predicted).", no_args_is_help=True)
app.add_typer(predictor_app, name="predictor")

PrunedFile = Annotated[Path, typer.Argument(help="Output of `prune --method greedy`.")]
# No default model: features must come from the model that pruned (fit) or that the predictor
# was fitted for (eval), which the input names.
pruner_model = o.model_options(default_model=None, model_help=(
    "Pruner model (fit: default the greedy file's model and adapter; eval: the predictor's)."))


@predictor_app.command("fit")
@pruner_model
def fit_cmd(
    pruned: PrunedFile,
    output: o.Output,
    model_opts: ModelOptions,
    arch: Annotated[str, typer.Option("--arch", help="mlp (2 layers) or linear.")] = "mlp",
    loss: Annotated[str, typer.Option(
        "--loss", help="pairwise (RankNet, per chain) or mse (on the normalised rank).")
    ] = "pairwise",
    hidden: Annotated[int, typer.Option("--hidden", help="MLP hidden width.")] = 64,
    epochs: Annotated[int, typer.Option("--epochs", help="Full passes over the chains.")] = 300,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 1e-2,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 1e-4,
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="Chains held out to choose the epoch count (the best mean "
                               "Spearman); the final fit uses every chain. 0: no validation.")
    ] = 0.1,
    batch_tokens: o.BatchTokens = 8192,
    seed: o.Seed = 0,
    limit: o.Limit = None,
    config: o.Config = None,
) -> None:
    """Train a rank predictor on greedy pruning output; write one safetensors artifact."""
    from dataclasses import replace

    from cotprune.console import emit_summary
    from cotprune.core.models import DEFAULT_MODEL
    from cotprune.data.files import read_manifest
    from cotprune.pruning.predictor import fit_predictor
    from cotprune.pruning.ranking import FitOptions

    opts = FitOptions(arch=arch, loss=loss, hidden=hidden, epochs=epochs, lr=lr,
                      weight_decay=weight_decay, seed=seed, batch_tokens=batch_tokens,
                      val_fraction=val_fraction)
    # Features must come from the model that pruned: its manifest names it, adapter included.
    if model_opts.model is None:
        pruned_by = read_manifest(pruned) or {}
        model_opts = replace(model_opts, model=pruned_by.get("model") or DEFAULT_MODEL,
                             adapter=model_opts.adapter or pruned_by.get("adapter"))
    emit_summary(fit_predictor(pruned, output, model_opts, opts, limit=limit))


@predictor_app.command("eval")
@pruner_model
def eval_cmd(
    pruned: PrunedFile,
    predictor: Annotated[Path, typer.Option("--predictor", help="A `predictor fit` file.")],
    model_opts: ModelOptions,
    batch_tokens: o.BatchTokens = 8192,
    limit: o.Limit = None,
    config: o.Config = None,
) -> None:
    """Spearman of predicted vs greedy ranks (and of each raw feature), keep-set overlaps."""
    from dataclasses import replace

    from cotprune.console import emit_summary
    from cotprune.pruning.predictor import eval_predictor, read_predictor

    if model_opts.model is None:
        model_opts = replace(model_opts, model=read_predictor(predictor).spec.pruner_model)
    emit_summary(eval_predictor(pruned, predictor, model_opts, batch_tokens=batch_tokens,
                                limit=limit))
