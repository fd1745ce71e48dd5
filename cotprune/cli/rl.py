"""`cotprune rl PROMPTS -o OUTDIR`: RL with verifiable rewards for short, correct reasoning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cotprune.cli import app
from cotprune.cli import options as o
from cotprune.core.models import ModelOptions


def _opt(*names: str, help: str, **kw):
    return typer.Option(*names, help=help, **kw)


def significance_spec(kind: str, predictor: Path | None, significance_model: str | None) -> str:
    """The `KIND[:PATH]` value `RLOptions.significance` takes, from `--significance KIND` and
    the flag that names its file (the same flags `prune` and `score` use for those files).

    The old one-flag spelling `--significance model:PATH` still works, with a warning.
    """
    from cotprune.console import log
    from cotprune.errors import InputError

    paths = {"predictor": ("--predictor", predictor),
             "model": ("--significance-model", significance_model)}
    if ":" in kind:
        if predictor is not None or significance_model is not None:
            raise InputError(f"--significance {kind}: give the PATH once, as --predictor or "
                             "--significance-model")
        old = kind.partition(":")[0]
        log.warning("--significance %s:PATH is deprecated: use --significance %s %s PATH", old,
                    old, paths.get(old, ("PATH",))[0])
        return kind
    for needs, (flag, path) in paths.items():
        if path is not None and kind != needs:
            raise InputError(f"{flag} goes with --significance {needs}, not {kind}")
    path = paths[kind][1] if kind in paths else None
    return f"{kind}:{path}" if path is not None else kind


@app.command("rl")
@o.model_options()
def rl_cmd(
    ctx: typer.Context,
    prompts: Annotated[Path, typer.Argument(help="Parquet with id, question, reference.")],
    output: o.OutputDir,
    model_opts: ModelOptions,
    reward: Annotated[str, _opt("--reward", help="accuracy|length|bingo.")] = "accuracy",
    alpha: Annotated[float, _opt("--alpha", help="length: penalty weight.")] = 0.1,
    significance: Annotated[str, _opt(
        "--significance", help="bingo: token significance scorer: surprisal | attention "
        "(received from later response tokens) | predictor (--predictor, fitted for --model) "
        "| model (--significance-model, a token classifier, LLMLingua-2 style).")
    ] = "surprisal",
    predictor: o.Predictor = None,
    significance_model: o.SignificanceModel = None,
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
    samples: Annotated[int, _opt(
        "--samples", help="G: responses per prompt (the group of one advantage).")] = 4,
    num_generations: Annotated[Optional[int], o.alias("--num-generations", "--samples")] = None,
    max_new_tokens: o.MaxNewTokens = 256,
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
    batch_tokens: o.BatchTokens = 8192,
    generation_batch: Annotated[int, _opt(
        "--generation-batch", help="Sequences per generate call.")] = 64,
    save_every: Annotated[int, _opt("--save-every", help="Checkpoint every N steps.")] = 10,
    seed: o.Seed = 0,
    limit: o.Limit = None,
    resume: o.Resume = False,
    config: o.Config = None,
) -> None:
    """RL with verifiable rewards: length/Bingo rewards, entropy and NAT token selection."""
    from cotprune.console import emit_summary
    from cotprune.rl.trainer import RLOptions, run_rl
    from cotprune.rl.update import UpdateConfig

    num_generations = o.prefer(ctx, "samples", samples, num_generations, "--num-generations")
    opts = RLOptions(
        prompts=str(prompts), output=str(output), reward=reward, alpha=alpha,
        significance=significance_spec(significance, predictor, significance_model), tau=tau,
        advantage=advantage, max_steps=max_steps, prompts_per_step=prompts_per_step,
        num_generations=num_generations,
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
