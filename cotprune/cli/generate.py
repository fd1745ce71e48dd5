"""Commands that run a model forwards to write or answer: `generate`, `eval`; and `distill`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

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
from cotprune.data.layout import ANSWER_PREFIX

MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", min=1,
                                           help="Most tokens to generate per response.")]
Temperature = Annotated[float, typer.Option("--temperature", help="0 is greedy decoding.")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")]
AnswerMarker = Annotated[str, typer.Option(
    "--answer-marker", help="Text that introduces the final answer in a response.")]


@app.command("generate")
def generate_cmd(
    questions: Annotated[Path, typer.Argument(help="Parquet with id, question [, reference].")],
    output: Output,
    model: Model = DEFAULT_MODEL,
    adapter: Adapter = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Responses per question.")] = 1,
    temperature: Temperature = 0.7,
    top_p: TopP = 1.0,
    max_new_tokens: MaxNewTokens = 512,
    keep_correct: Annotated[bool, typer.Option(
        "--keep-correct", help="Keep only the first correct, untruncated sample per question "
                               "(graded against reference).")] = False,
    answer_marker: AnswerMarker = ANSWER_PREFIX,
    dtype: Dtype = "auto",
    device: Device = "auto",
    trust_remote_code: TrustRemoteCode = False,
    batch_tokens: BatchTokens = 16384,
    seed: Seed = 0,
    limit: Limit = None,
    resume: Resume = False,
    shard: ShardSpec = None,
    config: Config = None,
) -> None:
    """Sample chains from a teacher model: split into CoT and answer, optionally keep correct."""
    from cotprune.console import emit_summary
    from cotprune.core.models import ModelOptions
    from cotprune.core.stage import RunOptions
    from cotprune.training.generate_chains import GenerateOptions, run_generate
    from cotprune.training.sampling import SamplingOptions

    model_opts = ModelOptions(model=model, adapter=adapter, dtype=dtype, device=device,
                              trust_remote_code=trust_remote_code)
    sampling = SamplingOptions(max_new_tokens=max_new_tokens, temperature=temperature,
                               top_p=top_p, samples=samples, seed=seed)
    opts = GenerateOptions(sampling=sampling, keep_correct=keep_correct,
                           answer_marker=answer_marker, batch_tokens=batch_tokens)
    run = RunOptions(limit=limit, shard=shard, resume=resume, seed=seed)
    emit_summary(run_generate(questions, output, model_opts, opts, run))


@app.command("eval")
def eval_cmd(
    bench: Annotated[Path, typer.Argument(help="Parquet with id, question, reference.")],
    output: Output,
    model: Model = DEFAULT_MODEL,
    adapter: Adapter = None,
    keep_ratio: Annotated[float | None, typer.Option(
        "--keep-ratio", help="Ask a ratio-conditioned student for this keep ratio.")] = None,
    max_new_tokens: MaxNewTokens = 512,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    answer_marker: AnswerMarker = ANSWER_PREFIX,
    dtype: Dtype = "auto",
    device: Device = "auto",
    trust_remote_code: TrustRemoteCode = False,
    batch_tokens: BatchTokens = 16384,
    seed: Seed = 0,
    limit: Limit = None,
    resume: Resume = False,
    shard: ShardSpec = None,
    config: Config = None,
) -> None:
    """Answer a benchmark (greedy by default) and grade: accuracy vs generated tokens."""
    from cotprune.console import emit_summary
    from cotprune.core.models import ModelOptions
    from cotprune.core.stage import RunOptions
    from cotprune.training.evaluate import EvalOptions, run_eval
    from cotprune.training.sampling import SamplingOptions

    model_opts = ModelOptions(model=model, adapter=adapter, dtype=dtype, device=device,
                              trust_remote_code=trust_remote_code)
    sampling = SamplingOptions(max_new_tokens=max_new_tokens, temperature=temperature,
                               top_p=top_p, samples=1, seed=seed)
    opts = EvalOptions(sampling=sampling, keep_ratio=keep_ratio, answer_marker=answer_marker,
                       batch_tokens=batch_tokens)
    run = RunOptions(limit=limit, shard=shard, resume=resume, seed=seed)
    emit_summary(run_eval(bench, output, model_opts, opts, run))


@app.command("distill")
def distill_cmd(
    pruned: Annotated[Path, typer.Argument(help="Pruned (or chains) Parquet to train on.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output directory.")],
    model: Model = DEFAULT_MODEL,
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
    max_steps: Annotated[int | None, typer.Option(
        "--max-steps", help="Optimiser steps (overrides --epochs).")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 2e-4,
    warmup_ratio: Annotated[float, typer.Option("--warmup-ratio")] = 0.03,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.0,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="0: no clipping.")] = 1.0,
    batch_tokens: Annotated[int, typer.Option(
        "--batch-tokens", min=1, help="Token budget of one micro-batch.")] = 4096,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1)] = 1,
    max_length: Annotated[int, typer.Option(
        "--max-length", help="Longer sequences are skipped (and counted).")] = 2048,
    packing: Annotated[str, typer.Option(
        "--packing", help="auto|pack|group: pack (padding-free) or length-grouped batches; "
                          "auto packs with flash-attention.")] = "auto",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing")] = False,
    ratio_conditioned: Annotated[bool, typer.Option(
        "--ratio-conditioned", help="TokenSkip: write each row's keep ratio into its prompt.")
    ] = False,
    keep_ratio: Annotated[Optional[str], typer.Option(
        "--keep-ratio", help="Pruned files: train only on the rows of these keep ratios "
                             "(comma-separated).")] = None,
    save_every: Annotated[int, typer.Option("--save-every", help="Checkpoint every N steps.")
                          ] = 100,
    keep_checkpoints: Annotated[int, typer.Option("--keep-checkpoints")] = 2,
    dtype: Dtype = "auto",
    device: Device = "auto",
    trust_remote_code: TrustRemoteCode = False,
    seed: Seed = 0,
    limit: Limit = None,
    resume: Resume = False,
    config: Config = None,
) -> None:
    """Fine-tune a student on pruned chains (loss on CoT + answer only); LoRA by default."""
    from cotprune.console import emit_summary
    from cotprune.core.models import ModelOptions
    from cotprune.training.distill import DistillOptions, LoraOptions, run_distill

    model_opts = ModelOptions(model=model, dtype=dtype, device=device,
                              trust_remote_code=trust_remote_code)
    lora = LoraOptions(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, targets=lora_targets)
    opts = DistillOptions(
        lora=lora, full=full, fsdp=fsdp, epochs=epochs, max_steps=max_steps, lr=lr,
        warmup_ratio=warmup_ratio, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
        batch_tokens=batch_tokens, grad_accum=grad_accum, max_length=max_length,
        packing=packing, gradient_checkpointing=gradient_checkpointing,
        ratio_conditioned=ratio_conditioned, save_every=save_every,
        keep_checkpoints=keep_checkpoints, seed=seed, limit=limit, resume=resume,
        keep_ratios=None if keep_ratio is None else tuple(
            parse_list(keep_ratio, "--keep-ratio", float)))
    emit_summary(run_distill(pruned, output, model_opts, opts))
