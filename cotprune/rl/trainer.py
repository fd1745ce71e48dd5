"""The `cotprune rl` loop: sample, grade, reward, advantage, select tokens, update; repeat.

Step s uses prompts (s P + j) mod N, j < P, and each prompt's G responses are slots of the
step; under torchrun/accelerate (RANK, WORLD_SIZE) process r takes slots r, r + W, ...  Per-slot
facts (correct, length, truncated, significance counts) are summed across processes, so every
process computes the same group rewards and advantages over whole groups. Generation and token
selection are seeded per (step, process), so a run resumed from a checkpoint draws the same
samples as one that was never interrupted.

OUTDIR holds metrics.jsonl (one line per step), manifest.json, checkpoints/step-NNNNNN/ (the
latest resumable state) and model/ (the final adapter or model, with its tokenizer).

Processes, DDP, LoRA, checkpoints and metrics are the shared `training.parts` (as `distill`):
gloo for a CPU run, nccl on GPUs, one GPU per local rank, rank 0 writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cotprune.console import log
from cotprune.core.models import ModelOptions
from cotprune.core.stage import run_manifest
from cotprune.data.files import (
    check_resumable,
    check_writable,
    lock_directory,
    read_table,
    validate_chains,
    write_text_atomic,
)
from cotprune.errors import InputError
from cotprune.faults import fault_point
from cotprune.rl import rewards as R
from cotprune.rl.response_significance import ResponseSignificance, parse_significance, score_counts
from cotprune.rl.rollout import Rollout, grade, sample_responses
from cotprune.rl.update import (
    PolicyPair,
    Sample,
    UpdateConfig,
    policy_update,
)
from cotprune.training.parts.checkpoint import Checkpoints
from cotprune.training.parts.dist import Dist, all_max, init_distributed, wrap_data_parallel
from cotprune.training.parts.logprobs import TokenScores
from cotprune.training.parts.lora import LoraOptions, apply_lora
from cotprune.training.parts.metrics import MetricsLog, peak_memory_mb
from cotprune.training.sampling import too_long

REWARDS = ("accuracy", "length", "bingo")


@dataclass
class RLOptions:
    """Everything `cotprune rl` takes besides the model and the update; validation names flags."""

    prompts: str
    output: str
    reward: str = "accuracy"
    alpha: float = 0.1
    significance: str = "surprisal"
    tau: float = 0.5
    advantage: str = "grpo"
    max_steps: int = 10
    prompts_per_step: int = 4
    num_generations: int = 4
    max_new_tokens: int = 256
    temperature: float = 1.0
    overlong_buffer: int = 0
    lr: float | None = None
    full: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    generation_batch: int = 64
    save_every: int = 10
    seed: int = 0
    limit: int | None = None
    resume: bool = False
    bingo: dict = field(default_factory=lambda: {"lambda_c": 5.0, "lambda_wn": 2.0,
                                                  "lambda_we": 5.0})

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise InputError(f"--reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        if self.advantage not in R.ADVANTAGES:
            raise InputError(f"--advantage must be one of {', '.join(R.ADVANTAGES)}")
        parse_significance(self.significance)
        for flag, value, low in [("--max-steps", self.max_steps, 1),
                                 ("--prompts-per-step", self.prompts_per_step, 1),
                                 ("--samples", self.num_generations, 1),
                                 ("--max-new-tokens", self.max_new_tokens, 1),
                                 ("--overlong-buffer", self.overlong_buffer, 0),
                                 ("--save-every", self.save_every, 0)]:
            if value < low:
                raise InputError(f"{flag} must be at least {low}")
        if self.overlong_buffer >= self.max_new_tokens:
            raise InputError("--overlong-buffer must be smaller than --max-new-tokens")
        if self.advantage == "rloo" and self.num_generations < 2:
            raise InputError("--advantage rloo needs --samples of at least 2")


# --- set-up ------------------------------------------------------------------------------------

def load_prompts(opts: RLOptions) -> list[dict]:
    table = read_table(opts.prompts)
    validate_chains(table, opts.prompts, need=("id", "question", "reference"))
    rows = table.select(["id", "question", "reference"]).to_pylist()
    rows = rows[:opts.limit] if opts.limit else rows
    if not rows:
        raise InputError("no prompts", file=opts.prompts)
    return rows


def build_policy(model_opts: ModelOptions, opts: RLOptions, d: Dist):
    """(PolicyPair, tokenizer): LoRA on the initial policy, or full fine-tuning with --full."""
    import copy

    from cotprune.core.models import attach_adapter, load_model

    base_opts = ModelOptions(**{**asdict(model_opts), "adapter": None, "device": str(d.device)})
    model, tokenizer = load_model(base_opts, for_training=True)
    if model_opts.adapter:  # the adapter is part of the initial policy
        model = attach_adapter(model, model_opts.adapter).merge_and_unload()
    if opts.full:
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        model.train()
        return PolicyPair(model, frozen), tokenizer
    torch.manual_seed(opts.seed)
    policy = apply_lora(model, LoraOptions(r=opts.lora_r, alpha=opts.lora_alpha))
    policy.train()
    return PolicyPair(policy), tokenizer


# --- one step ----------------------------------------------------------------------------------

class Trainer:
    def __init__(self, opts: RLOptions, model_opts: ModelOptions, cfg: UpdateConfig):
        from cotprune.data.layout import ChainLayout
        from cotprune.training.sampling import stop_token_ids

        cfg.max_new_tokens, cfg.temperature = opts.max_new_tokens, opts.temperature
        self.opts, self.model_opts, self.cfg = opts, model_opts, cfg
        self.dist = init_distributed(model_opts.device)
        self.rank, self.world = self.dist.rank, self.dist.world
        self.prompts = load_prompts(opts)
        self.out = Path(opts.output)
        self.check_output()
        self.scorer = ResponseSignificance(
            parse_significance(opts.significance), model_opts.model,
            trust_remote_code=model_opts.trust_remote_code) if opts.reward == "bingo" else None
        self.pair, self.tokenizer = build_policy(model_opts, opts, self.dist)
        self.device = self.dist.device
        self.wrapped = wrap_data_parallel(TokenScores(self.pair.policy), self.dist)
        self.metrics = MetricsLog(self.out / "metrics.jsonl", self.dist.main)
        layout = ChainLayout(self.tokenizer)
        self.prompt_ids = [layout.prompt_ids(p["question"]) for p in self.prompts]
        self.skipped = self.drop_too_long(opts)
        self.stop_ids = stop_token_ids(self.tokenizer, layout)
        if self.scorer is not None:
            self.scorer.bind(self.pair.policy, self.tokenizer, self.stop_ids,
                             batch_tokens=cfg.batch_tokens)
        params = [p for p in self.pair.policy.parameters() if p.requires_grad]
        lr = opts.lr if opts.lr is not None else (1e-5 if opts.full else 1e-4)
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        self.schedule = R.BingoSchedule(lambda_we=opts.bingo["lambda_we"])
        self.ref_counts: dict[int, tuple[int, int]] = {}
        self.step = 0

    def drop_too_long(self, opts: RLOptions) -> int:
        """Drop the prompts that leave no room for --max-new-tokens in the model's context
        (counted in the summary); refuse when none is left."""
        long = set(too_long([len(p) for p in self.prompt_ids], opts.max_new_tokens,
                            self.pair.policy))
        if not long:
            return 0
        ids = [self.prompts[i]["id"] for i in sorted(long)]
        log.warning("skipping %d prompt(s) too long for the model's context with "
                    "--max-new-tokens %d: %s", len(ids), opts.max_new_tokens, ", ".join(ids[:5]))
        if len(long) == len(self.prompts):
            raise InputError(f"every prompt is too long for the model's context with "
                             f"--max-new-tokens {opts.max_new_tokens}", file=opts.prompts)
        self.prompts = [p for i, p in enumerate(self.prompts) if i not in long]
        self.prompt_ids = [p for i, p in enumerate(self.prompt_ids) if i not in long]
        return len(long)

    def check_output(self) -> None:
        check_writable(self.out)
        if self.rank == 0:  # one writer per OUTDIR: a second process is refused (exit 2)
            lock_directory(self.out)
        metrics = self.out / "metrics.jsonl"
        if metrics.exists() and not self.opts.resume:
            raise InputError("output directory holds a run: pass --resume to continue it, or "
                             "choose another -o", file=str(self.out))

    # per-slot facts, summed over processes so every process sees whole groups
    def gather_slots(self, rollouts: list[Rollout], extra: dict[int, tuple[float, float]]):
        n = self.opts.prompts_per_step * self.opts.num_generations
        facts = torch.zeros((n, 5), dtype=torch.float64, device=self.device)
        for r in rollouts:
            low, high = extra.get(r.slot, (0, 0))
            facts[r.slot] = torch.tensor([r.correct, r.length, r.truncated, low, high],
                                         dtype=torch.float64)
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(facts)
        return facts.cpu()

    def reference_counts(self, indices: list[int]) -> None:
        """Bingo: significance counts of one greedy response of the frozen initial policy per
        prompt index (cached by prompt index, so it never depends on batch position)."""
        missing = sorted({i for i in indices if i not in self.ref_counts})
        if not missing:
            return
        mine = missing[self.rank::self.world]
        counts = torch.zeros((len(missing), 2), dtype=torch.float64, device=self.device)
        with self.pair.reference() as ref:
            outs = sample_responses(ref, self.tokenizer, [self.prompt_ids[i] for i in mine],
                                    max_new_tokens=self.opts.max_new_tokens, temperature=1.0,
                                    stop_ids=self.stop_ids, batch_size=self.opts.generation_batch,
                                    greedy=True)
            # the same scorer as the samples, on the frozen initial policy
            found = score_counts(self.scorer, ref, [self.prompt_ids[i] for i in mine],
                                 [o[0] for o in outs], self.opts.tau)
        for i, c in zip(mine, found):
            counts[missing.index(i)] = torch.tensor(c, dtype=torch.float64)
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(counts)
        for k, i in enumerate(missing):
            self.ref_counts[i] = (int(counts[k, 0]), int(counts[k, 1]))

    def sample_counts(self, rollouts: list[Rollout]) -> dict[int, tuple[int, int]]:
        """Bingo: (N_low, N_high) of each sampled response by slot, scored by the policy (the
        frozen initial policy for a predictor, which is bound to the model it was fitted on)."""
        prompts = [r.prompt_ids for r in rollouts]
        responses = [r.response_ids for r in rollouts]
        ctx = self.pair.reference() if self.scorer.frozen_only \
            else contextlib.nullcontext(self.pair.policy)
        with ctx as model:
            found = score_counts(self.scorer, model, prompts, responses, self.opts.tau)
        return {r.slot: c for r, c in zip(rollouts, found)}

    def rollouts(self, indices: list[int]) -> list[Rollout]:
        g = self.opts.num_generations
        slots = list(range(len(indices) * g))[self.rank::self.world]
        torch.manual_seed(self.opts.seed * 1_000_003 + self.step * 101 + self.rank)
        prompts = [self.prompt_ids[indices[s // g]] for s in slots]
        outs = sample_responses(self.pair.policy, self.tokenizer, prompts,
                                max_new_tokens=self.opts.max_new_tokens,
                                temperature=self.opts.temperature, stop_ids=self.stop_ids,
                                batch_size=self.opts.generation_batch)
        result = []
        for s, prompt, (ids, truncated) in zip(slots, prompts, outs):
            pi = indices[s // g]
            text, correct = grade(self.tokenizer, ids, self.prompts[pi]["reference"])
            result.append(Rollout(pi, s, prompt, ids, text, truncated, correct))
        return result

    def rewards(self, facts: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """[P, G] rewards from the gathered slot facts."""
        g, o = self.opts.num_generations, self.opts
        correct = facts[:, 0].bool().tolist()
        lengths = facts[:, 1].long().tolist()
        truncated = facts[:, 2].bool().tolist()
        out = []
        for p, pi in enumerate(indices):
            sl = slice(p * g, (p + 1) * g)
            if o.reward == "accuracy":
                group = R.accuracy_reward(correct[sl])
            elif o.reward == "length":
                group = R.length_penalty(correct[sl], lengths[sl], o.alpha, truncated[sl])
            else:
                low_ref, high_ref = self.ref_counts[pi]
                group = [R.bingo_reward(c, float(lo), float(hi), low_ref, high_ref,
                                        self.schedule.w, **o.bingo)
                         for c, lo, hi in zip(correct[sl], facts[sl, 3].tolist(),
                                              facts[sl, 4].tolist())]
            group = [r + R.overlong_penalty(n, o.max_new_tokens, o.overlong_buffer)
                     for r, n in zip(group, lengths[sl])]
            out.append(group)
        return torch.tensor(out, dtype=torch.float64)

    def run_step(self) -> dict:
        o = self.opts
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        n = len(self.prompts)
        indices = [(self.step * o.prompts_per_step + j) % n for j in range(o.prompts_per_step)]
        if o.reward == "bingo":
            self.reference_counts(indices)
        rollouts = self.rollouts(indices)
        extra = self.sample_counts(rollouts) if o.reward == "bingo" else {}
        facts = self.gather_slots(rollouts, extra)
        rewards = self.rewards(facts, indices)
        adv = R.group_advantages(rewards, o.advantage).reshape(-1)
        t_gen = time.perf_counter()
        samples = [Sample(r.prompt_ids, r.response_ids, float(adv[r.slot])) for r in rollouts
                   if r.response_ids]
        gen = torch.Generator().manual_seed(o.seed * 7919 + self.step * 31 + self.rank)
        stats = policy_update(self.pair, self.optimizer, samples, self.cfg, gen,
                              wrapped=self.wrapped)
        t_end = time.perf_counter()
        reward_mean = float(rewards.mean())
        w = self.schedule.w
        if o.reward == "bingo":
            self.schedule.update(reward_mean)
        return {
            "step": self.step + 1,
            "reward_mean": reward_mean,
            "accuracy": float(facts[:, 0].mean()),
            "mean_length": float(facts[:, 1].mean()),
            "truncated_frac": float(facts[:, 2].mean()),
            "tokens_trained": stats["tokens_trained"],
            "forward_tokens": stats["forward_tokens"],
            "response_tokens": float(facts[:, 1].sum()),
            "objective": stats["objective"],
            "step_time_s": t_end - t0,
            "generation_time_s": t_gen - t0,
            "train_time_s": t_end - t_gen,
            "peak_memory_mb": all_max(peak_memory_mb(self.device), self.device),
            **({"bingo_w": w} if o.reward == "bingo" else {}),
        }

    # --- checkpoints -------------------------------------------------------------------------

    def checkpoints(self, manifest: dict) -> Checkpoints:
        """The latest checkpoint only; the fingerprint is that of the resumable options."""
        options = json.dumps(manifest.get("options"), sort_keys=True, default=str)
        return Checkpoints(self.out / "checkpoints", keep=1, main=self.dist.main,
                           fingerprint=hashlib.sha256(options.encode()).hexdigest()[:16])

    def save_checkpoint(self, checkpoints: Checkpoints) -> None:
        checkpoints.save(self.step, self.pair.policy, self.optimizer,
                         extra={"schedule": self.schedule.state_dict(),
                                "ref_counts": self.ref_counts})

    def load_checkpoint(self, checkpoints: Checkpoints) -> None:
        path = checkpoints.latest()
        if path is None:
            return
        state = checkpoints.load(path, self.pair.policy, self.optimizer)
        self.schedule.load_state_dict(state["extra"]["schedule"])
        self.ref_counts = {int(k): tuple(v) for k, v in state["extra"]["ref_counts"].items()}
        self.step = state["step"]
        log.info("resuming from step %d", self.step)

    def manifest(self) -> dict:
        """The stages' manifest; `options` leaves out what a resumed run may change: the
        output, --resume itself, --save-every and --max-steps (a resume may train longer)."""
        o = self.opts
        options = {k: v for k, v in asdict(o).items()
                   if k not in ("output", "resume", "save_every", "max_steps")}
        manifest = run_manifest("rl", [o.prompts], self.model_opts, model=self.pair.policy,
                                tokenizer=self.tokenizer, seed=o.seed,
                                options={**options, "update": asdict(self.cfg)})
        return {**manifest, "world_size": self.world,
                "peak_memory": "cuda max allocated" if self.device.type == "cuda"
                else "process max RSS"}

    def save_final(self, manifest: dict) -> None:
        if self.rank != 0:
            return
        target, tmp = self.out / "model", self.out / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.pair.policy.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        write_text_atomic(self.out / "manifest.json", json.dumps(manifest, indent=2) + "\n")

    # --- the loop ----------------------------------------------------------------------------

    def train(self) -> dict:
        o = self.opts
        manifest = self.manifest()
        if o.resume and (self.out / "manifest.json").exists():
            check_resumable(json.loads((self.out / "manifest.json").read_text()), manifest,
                            str(self.out))
        self.out.mkdir(parents=True, exist_ok=True)
        checkpoints = self.checkpoints(manifest)
        if o.resume:
            self.load_checkpoint(checkpoints)
            self.metrics.truncate(self.step)
        if self.rank == 0:  # written first, so that a --resume can be checked against it
            write_text_atomic(self.out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        last = {}
        while self.step < o.max_steps:
            last = self.run_step()
            self.step += 1
            self.metrics.append(last)
            if self.rank == 0:
                log.info("step %d: reward %.3f acc %.2f len %.1f trained %d tok, %.1fs",
                         last["step"], last["reward_mean"], last["accuracy"],
                         last["mean_length"], last["tokens_trained"], last["step_time_s"])
            if o.save_every and self.step % o.save_every == 0 and self.step < o.max_steps:
                self.save_checkpoint(checkpoints)
            fault_point("step")
        # also at the end: --resume with a larger --max-steps goes on
        self.save_checkpoint(checkpoints)
        self.save_final(manifest)
        return {"command": "rl", "steps": self.step, "skipped": self.skipped,
                "output": str(self.out),
                **{k: last[k] for k in ("reward_mean", "accuracy", "mean_length")
                   if k in last}}


def run_rl(opts: RLOptions, model_opts: ModelOptions, cfg: UpdateConfig) -> dict:
    """Validate everything, then train; returns the summary."""
    return Trainer(opts, model_opts, cfg).train()

