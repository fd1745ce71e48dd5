"""Commands that run a model forwards to write or answer: `generate`, `eval`; and `distill`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cotprune.cli import app
from cotprune.cli import options as o
from cotprune.core.models import ModelOptions
from cotprune.core.stage import RunOptions
from cotprune.data.layout import ANSWER_PREFIX


@app.command("generate")
@o.model_options()
@o.stage_options()
def generate_cmd(
    questions: Annotated[Path, typer.Argument(help="Parquet with id, question [, reference].")],
    output: o.Output,
    model_opts: ModelOptions,
    run: RunOptions,
    samples: o.Samples = 1,
    temperature: o.Temperature = 0.7,
    top_p: o.TopP = 1.0,
    max_new_tokens: o.MaxNewTokens = 512,
    keep_correct: Annotated[bool, typer.Option(
        "--keep-correct", help="Keep only the first correct, untruncated sample per question "
                               "(graded against reference).")] = False,
    answer_marker: o.AnswerMarker = ANSWER_PREFIX,
    batch_tokens: o.BatchTokens = 16384,
    config: o.Config = None,
) -> None:
    """Sample chains from a teacher model: split into CoT and answer, optionally keep correct."""
    from cotprune.console import emit_summary
    from cotprune.training.generate_chains import GenerateOptions, run_generate
    from cotprune.training.sampling import SamplingOptions

    sampling = SamplingOptions(max_new_tokens=max_new_tokens, temperature=temperature,
                               top_p=top_p, samples=samples, seed=run.seed)
    opts = GenerateOptions(sampling=sampling, keep_correct=keep_correct,
                           answer_marker=answer_marker, batch_tokens=batch_tokens)
    emit_summary(run_generate(questions, output, model_opts, opts, run))


@app.command("eval")
@o.model_options()
@o.stage_options()
def eval_cmd(
    ctx: typer.Context,
    bench: Annotated[Path, typer.Argument(help="Parquet with id, question, reference.")],
    output: o.Output,
    model_opts: ModelOptions,
    run: RunOptions,
    keep: Annotated[Optional[float], typer.Option(
        "--keep", help="Ask a ratio-conditioned student for this keep ratio.")] = None,
    keep_ratio: Annotated[Optional[float], o.alias("--keep-ratio", "--keep")] = None,
    max_new_tokens: o.MaxNewTokens = 512,
    temperature: o.Temperature = 0.0,
    top_p: o.TopP = 1.0,
    answer_marker: o.AnswerMarker = ANSWER_PREFIX,
    batch_tokens: o.BatchTokens = 16384,
    config: o.Config = None,
) -> None:
    """Answer a benchmark (greedy by default) and grade: accuracy vs generated tokens."""
    from cotprune.console import emit_summary
    from cotprune.training.evaluate import EvalOptions, run_eval
    from cotprune.training.sampling import SamplingOptions

    sampling = SamplingOptions(max_new_tokens=max_new_tokens, temperature=temperature,
                               top_p=top_p, samples=1, seed=run.seed)
    opts = EvalOptions(sampling=sampling, keep_ratio=o.prefer(ctx, "keep", keep, keep_ratio,
                                                              "--keep-ratio"),
                       answer_marker=answer_marker, batch_tokens=batch_tokens)
    emit_summary(run_eval(bench, output, model_opts, opts, run))


@app.command("distill")
@o.model_options()
def distill_cmd(
    ctx: typer.Context,
    pruned: Annotated[Path, typer.Argument(help="Pruned (or chains) Parquet to train on.")],
    output: o.OutputDir,
    model_opts: ModelOptions,
    full: Annotated[bool, typer.Option("--full", help="Full fine-tuning instead of LoRA.")] = False,
    fsdp: Annotated[bool, typer.Option(
        "--fsdp", help="Shard weights, gradients and optimiser state over the processes "
                       "(FSDP2; for a --full student too large for one device).")] = False,
    lora_r: Annotated[int, typer.Option("--lora-r")] = 16,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha")] = 32,
    lora_dropout: Annotated[float, typer.Option("--lora-dropout")] = 0.0,
    lora_targets: Annotated[str, typer.Option(
        "--lora-targets", help="all-linear, or module names (q_proj,v_proj,...).")] = "all-linear",
    epochs: Annotated[float, typer.Option("--epochs")] = 1.0,
    max_steps: Annotated[Optional[int], typer.Option(
        "--max-steps", help="Optimiser steps (overrides --epochs).")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 2e-4,
    warmup_ratio: Annotated[float, typer.Option("--warmup-ratio")] = 0.03,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.0,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="0: no clipping.")] = 1.0,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1)] = 1,
    max_length: Annotated[int, typer.Option(
        "--max-length", help="Skip sequences (prompt + CoT + answer) longer than this many "
                             "tokens, and count them.")] = 2048,
    packing: Annotated[str, typer.Option(
        "--packing", help="auto|pack|group: pack (padding-free) or length-grouped batches; "
                          "auto packs with flash-attention.")] = "auto",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing")] = False,
    ratio_conditioned: Annotated[bool, typer.Option(
        "--ratio-conditioned", help="TokenSkip: write each row's keep ratio into its prompt.")
    ] = False,
    keep: Annotated[Optional[str], typer.Option(
        "--keep", help="Pruned files: train only on the rows of these keep ratios "
                       "(comma-separated).")] = None,
    keep_ratio: Annotated[Optional[str], o.alias("--keep-ratio", "--keep")] = None,
    save_every: Annotated[int, typer.Option("--save-every", help="Checkpoint every N steps.")
                          ] = 100,
    keep_checkpoints: Annotated[int, typer.Option("--keep-checkpoints")] = 2,
    batch_tokens: o.BatchTokens = 4096,
    seed: o.Seed = 0,
    limit: o.Limit = None,
    resume: o.Resume = False,
    config: o.Config = None,
) -> None:
    """Fine-tune a student on pruned chains (loss on CoT + answer only); LoRA by default.

    With --adapter, LoRA training continues from that adapter (its rank and targets; the
    --lora-* options then do not apply), and --full starts from the base with it merged in.
    """
    from cotprune.console import emit_summary
    from cotprune.training.distill import DistillOptions, LoraOptions, run_distill

    keep = o.prefer(ctx, "keep", keep, keep_ratio, "--keep-ratio")
    lora = LoraOptions(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, targets=lora_targets)
    opts = DistillOptions(
        lora=lora, full=full, fsdp=fsdp, epochs=epochs, max_steps=max_steps, lr=lr,
        warmup_ratio=warmup_ratio, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
        batch_tokens=batch_tokens, grad_accum=grad_accum, max_length=max_length,
        packing=packing, gradient_checkpointing=gradient_checkpointing,
        ratio_conditioned=ratio_conditioned, save_every=save_every,
        keep_checkpoints=keep_checkpoints, seed=seed, limit=limit, resume=resume,
        keep_ratios=None if keep is None else tuple(o.parse_list(keep, "--keep", float)))
    emit_summary(run_distill(pruned, output, model_opts, opts))
