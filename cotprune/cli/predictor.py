"""`cotprune predictor fit|eval`: learn greedy deletion ranks from one-forward features."""

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
    Output,
    Seed,
    TrustRemoteCode,
)

predictor_app = typer.Typer(help="Fit and evaluate a greedy-rank predictor (prune --method "
                                 "predicted).", no_args_is_help=True)
app.add_typer(predictor_app, name="predictor")

PrunedFile = Annotated[Path, typer.Argument(help="Output of `prune --method greedy`.")]
OptionalModel = Annotated[str | None, typer.Option(
    "--model", help="Pruner model (fit: default the greedy file's model and adapter; eval: "
                    "the predictor's).")]


def _model_options(model, adapter, dtype, device, trust_remote_code):
    from cotprune.core.models import ModelOptions

    return ModelOptions(model=model, adapter=adapter, dtype=dtype, device=device,
                        trust_remote_code=trust_remote_code)


@predictor_app.command("fit")
def fit_cmd(
    pruned: PrunedFile,
    output: Output,
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
    model: OptionalModel = None,
    adapter: Adapter = None,
    dtype: Dtype = "auto",
    device: Device = "auto",
    trust_remote_code: TrustRemoteCode = False,
    batch_tokens: BatchTokens = 8192,
    seed: Seed = 0,
    limit: Limit = None,
    config: Config = None,
) -> None:
    """Train a rank predictor on greedy pruning output; write one safetensors artifact."""
    from cotprune.console import emit_summary
    from cotprune.core.models import DEFAULT_MODEL
    from cotprune.data.files import read_manifest
    from cotprune.pruning.predictor import fit_predictor
    from cotprune.pruning.ranking import FitOptions

    opts = FitOptions(arch=arch, loss=loss, hidden=hidden, epochs=epochs, lr=lr,
                      weight_decay=weight_decay, seed=seed, batch_tokens=batch_tokens,
                      val_fraction=val_fraction)
    # Features must come from the model that pruned: its manifest names it, adapter included.
    pruned_by = read_manifest(pruned) or {}
    if model is None:
        model = pruned_by.get("model") or DEFAULT_MODEL
        adapter = adapter or pruned_by.get("adapter")
    emit_summary(fit_predictor(pruned, output, _model_options(
        model, adapter, dtype, device, trust_remote_code), opts, limit=limit))


@predictor_app.command("eval")
def eval_cmd(
    pruned: PrunedFile,
    predictor: Annotated[Path, typer.Option("--predictor", help="A `predictor fit` file.")],
    model: OptionalModel = None,
    adapter: Adapter = None,
    dtype: Dtype = "auto",
    device: Device = "auto",
    trust_remote_code: TrustRemoteCode = False,
    batch_tokens: BatchTokens = 8192,
    limit: Limit = None,
    config: Config = None,
) -> None:
    """Spearman of predicted vs greedy ranks (and of each raw feature), keep-set overlaps."""
    from cotprune.console import emit_summary
    from cotprune.pruning.predictor import eval_predictor, read_predictor

    if model is None:
        model = read_predictor(predictor).spec.pruner_model
    emit_summary(eval_predictor(pruned, predictor, _model_options(
        model, adapter, dtype, device, trust_remote_code), batch_tokens=batch_tokens,
        limit=limit))
