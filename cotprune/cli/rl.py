"""`cotprune rl PROMPTS -o OUTDIR`: RL with verifiable rewards for short, correct reasoning."""

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
    Resume,
    Seed,
    TrustRemoteCode,
)
from cotprune.core.models import DEFAULT_MODEL


def _opt(*names: str, help: str, **kw):
    return typer.Option(*names, help=help, **kw)


@app.command("rl")
def rl_cmd(
    prompts: Annotated[Path, typer.Argument(help="Parquet with id, question, reference.")],
    output: Annotated[Path, _opt("-o", "--output", help="Output directory.")],
    model: Model = DEFAULT_MODEL,
    adapter: Adapter = None,
    dtype: Dtype = "auto",
    device: Device = "auto",
    trust_remote_code: TrustRemoteCode = False,
    reward: Annotated[str, _opt("--reward", help="accuracy|length|bingo.")] = "accuracy",
    alpha: Annotated[float, _opt("--alpha", help="length: penalty weight.")] = 0.1,
    significance: Annotated[str, _opt(
        "--significance", help="bingo: token significance scorer: surprisal | attention "
        "(received from later response tokens) | predictor:PATH (a `predictor fit` artifact "
        "for --model) | model:PATH (a token classifier, LLMLingua-2 style).")] = "surprisal",
    tau: Annotated[float, _opt("--tau", help="bingo: insignificance threshold.")] = 0.5,
    overlong_buffer: Annotated[int, _opt(
        "--overlong-buffer", help="DAPO overlong shaping over the last N tokens (0: off).")] = 0,
    advantage: Annotated[str, _opt("--advantage", help="grpo|rloo|dr_grpo.")] = "grpo",
    loss_type: Annotated[str, _opt("--loss-type", help="grpo|dapo|dr_grpo.")] = "grpo",
    token_select: Annotated[str, _opt(
        "--token-select", help="all|entropy|nat-urs|nat-rpc.")] = "all",
    rho: Annotated[float, _opt("--rho", help="entropy: fraction of tokens kept.")] = 0.2,
    entropy_scope: Annotated[str, _opt("--entropy-scope", help="step|micro.")] = "step",
    entropy_normaliser: Annotated[str, _opt(
        "--entropy-normaliser", help="all|selected.")] = "all",
    keep_prob: Annotated[float, _opt("--keep-prob", help="nat-urs: p.")] = 0.5,
    cut_floor: Annotated[float, _opt("--cut-floor", help="nat-rpc: a.")] = 0.0,
    max_steps: Annotated[int, _opt("--max-steps", help="Optimiser steps.")] = 10,
    prompts_per_step: Annotated[int, _opt("--prompts-per-step", help="Prompts per step.")] = 4,
    num_generations: Annotated[int, _opt(
        "--num-generations", help="G: responses per prompt.")] = 4,
    max_new_tokens: Annotated[int, _opt("--max-new-tokens", help="Response budget.")] = 256,
    temperature: Annotated[float, _opt("--temperature", help="Sampling temperature.")] = 1.0,
    updates_per_step: Annotated[int, _opt(
        "--updates-per-step", help="PPO updates on each step's rollouts.")] = 1,
    epsilon: Annotated[float, _opt("--epsilon", help="PPO clip (low).")] = 0.2,
    epsilon_high: Annotated[Optional[float], _opt(
        "--epsilon-high", help="PPO clip (high); default = --epsilon.")] = None,
    beta: Annotated[float, _opt("--beta", help="KL weight to the initial policy.")] = 0.0,
    lr: Annotated[Optional[float], _opt(
        "--lr", help="Learning rate (default 1e-4 LoRA, 1e-5 --full).")] = None,
    full: Annotated[bool, _opt("--full", help="Full fine-tuning instead of LoRA.")] = False,
    lora_r: Annotated[int, _opt("--lora-r", help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, _opt("--lora-alpha", help="LoRA alpha.")] = 32,
    max_grad_norm: Annotated[float, _opt("--max-grad-norm", help="0: no clipping.")] = 1.0,
    batch_tokens: BatchTokens = 8192,
    generation_batch: Annotated[int, _opt(
        "--generation-batch", help="Sequences per generate call.")] = 64,
    save_every: Annotated[int, _opt("--save-every", help="Checkpoint every N steps.")] = 10,
    seed: Seed = 0,
    limit: Limit = None,
    resume: Resume = False,
    config: Config = None,
) -> None:
    """RL with verifiable rewards: length/Bingo rewards, entropy and NAT token selection."""
    from cotprune.console import emit_summary
    from cotprune.core.models import ModelOptions
    from cotprune.rl.trainer import RLOptions, run_rl
    from cotprune.rl.update import UpdateConfig

    model_opts = ModelOptions(model=model, adapter=adapter, dtype=dtype, device=device,
                              trust_remote_code=trust_remote_code)
    opts = RLOptions(
        prompts=str(prompts), output=str(output), reward=reward, alpha=alpha,
        significance=significance, tau=tau, advantage=advantage, max_steps=max_steps,
        prompts_per_step=prompts_per_step, num_generations=num_generations,
        max_new_tokens=max_new_tokens, temperature=temperature, overlong_buffer=overlong_buffer,
        lr=lr, full=full, lora_r=lora_r, lora_alpha=lora_alpha,
        generation_batch=generation_batch, save_every=save_every, seed=seed, limit=limit,
        resume=resume)
    cfg = UpdateConfig(
        loss_type=loss_type, epsilon=epsilon, epsilon_high=epsilon_high, beta=beta,
        temperature=temperature, token_select=token_select, rho=rho,
        entropy_scope=entropy_scope, entropy_normaliser=entropy_normaliser,
        keep_prob=keep_prob, cut_floor=cut_floor, batch_tokens=batch_tokens,
        max_new_tokens=max_new_tokens, updates_per_step=updates_per_step,
        max_grad_norm=max_grad_norm)
    emit_summary(run_rl(opts, model_opts, cfg))
