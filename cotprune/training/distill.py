"""`cotprune distill`: fine-tune a student on (pruned) chains; the loss covers CoT + answer only.

LoRA through peft by default (`--full` trains every weight). The data order is a pure function
of the seed (`sft.plan_epoch`), optimiser steps normalise the summed token NLL by the
step's target-token count (so packing, grouping, accumulation and the number of processes do
not change the objective), and checkpoints hold the trainable weights, the optimiser, the step
and the RNG state: `--resume` continues the same run and gives the same losses.

OUTDIR afterwards:

    adapter_config.json, adapter_model.safetensors   (or the full model with --full)
    tokenizer files, distill.json (manifest + options), metrics.jsonl (one line per step)
    checkpoints/step-NNNNNN/state.pt                  (the last `--keep-checkpoints`)

Many processes: `torchrun --nproc-per-node N -m cotprune distill ...` (or `accelerate launch
-m cotprune distill ...` on GPUs, the same path). Each process takes every N-th micro-batch of a
step and DDP averages the gradients, or with `--fsdp` FSDP2 shards the weights, gradients and
optimiser state (for a `--full` student too large for one device); gloo on CPU, nccl on GPUs;
rank 0 writes the outputs. Processes, LoRA, checkpoints and metrics are the shared
`training.parts`, which `rl` uses too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cotprune.console import log
from cotprune.core.models import ModelOptions
from cotprune.core.stage import run_manifest
from cotprune.data.files import (
    LOCK_FILE,
    check_resumable,
    check_writable,
    lock_directory,
    read_table,
    validate_chains,
    write_text_atomic,
)
from cotprune.errors import InputError
from cotprune.faults import fault_point
from cotprune.training.parts.lora import LoraOptions

__all__ = ["DistillOptions", "LoraOptions", "run_distill"]

METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
MANIFEST = "distill.json"


@dataclass
class DistillOptions:
    lora: LoraOptions = field(default_factory=LoraOptions)
    full: bool = False
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 2e-4
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_tokens: int = 4096
    grad_accum: int = 1
    max_length: int = 2048
    packing: str = "auto"
    gradient_checkpointing: bool = False
    ratio_conditioned: bool = False
    save_every: int = 100
    keep_checkpoints: int = 2
    seed: int = 0
    limit: int | None = None
    resume: bool = False
    keep_ratios: tuple[float, ...] | None = None  # train only on these rows of a pruned file
    fsdp: bool = False  # shard weights, gradients and optimiser state (FSDP2) instead of DDP

    def __post_init__(self) -> None:
        from cotprune.training.sft import PACKINGS

        if self.keep_ratios is not None and not all(0 <= r <= 1 for r in self.keep_ratios):
            raise InputError("--keep ratios must be in [0, 1]")
        checks = [
            (self.epochs > 0, "--epochs must be > 0"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be at least 1"),
            (self.lr > 0, "--lr must be > 0"),
            (0 <= self.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)"),
            (self.batch_tokens >= 1, "--batch-tokens must be at least 1"),
            (self.grad_accum >= 1, "--grad-accum must be at least 1"),
            (self.max_length >= 2, "--max-length must be at least 2"),
            (self.packing in PACKINGS, f"--packing must be one of {', '.join(PACKINGS)}"),
            (self.save_every >= 1, "--save-every must be at least 1"),
            (self.keep_checkpoints >= 1, "--keep-checkpoints must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def resume_options(self) -> dict:
        """What must match for `--resume` to continue a run (not resume/save settings)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("resume", "save_every", "keep_checkpoints", "fsdp")}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.resume_options(),
                                         sort_keys=True).encode()).hexdigest()[:16]


# --- data ------------------------------------------------------------------------------------

def rows_with_ratios(table, ratios: tuple[float, ...], path: str):
    """The rows of a pruned file whose keep ratio is one of `ratios` (float32-tolerant)."""
    import pyarrow as pa

    if "keep_ratio" not in table.column_names:
        raise InputError("--keep needs a pruned file (column keep_ratio)", file=path,
                         column="keep_ratio")
    have = table.column("keep_ratio").to_pylist()
    wanted = [any(r is not None and abs(r - w) < 1e-6 for w in ratios) for r in have]
    missing = [w for w in ratios if not any(r is not None and abs(r - w) < 1e-6 for r in have)]
    if missing:
        found = sorted({round(r, 6) for r in have if r is not None})
        raise InputError(f"--keep {','.join(map(str, missing))}: no such rows "
                         f"(the file has {', '.join(map(str, found))})", file=path,
                         column="keep_ratio")
    return table.filter(pa.array(wanted))


def load_examples(path: Path, tokenizer, opts: DistillOptions):
    """Examples from a pruned (or plain chains) file; skipped rows are counted, not hidden."""
    from cotprune.data.layout import ChainLayout
    from cotprune.training.sft import build_example

    table = read_table(path)
    validate_chains(table, str(path), unique_ids=False)
    if opts.ratio_conditioned and "keep_ratio" not in table.column_names:
        raise InputError("--ratio-conditioned needs a pruned file (column keep_ratio)",
                         file=str(path), column="keep_ratio")
    if opts.keep_ratios is not None:
        table = rows_with_ratios(table, opts.keep_ratios, str(path))
    if opts.limit is not None:
        table = table.slice(0, opts.limit)
    chain_layout = ChainLayout(tokenizer)
    examples, skipped = [], {"truncated": 0, "no_answer": 0, "too_long": 0}
    for row in table.to_pylist():
        if row.get("truncated"):
            skipped["truncated"] += 1
            continue
        if not row["answer"].strip():
            skipped["no_answer"] += 1
            continue
        ratio = row.get("keep_ratio") if opts.ratio_conditioned else None
        if opts.ratio_conditioned and ratio is None:
            raise InputError("null keep ratio", file=str(path), row=row["id"],
                             column="keep_ratio")
        ex = build_example(chain_layout, row["question"], row["cot"], row["answer"], ratio)
        if len(ex) > opts.max_length:
            skipped["too_long"] += 1
            continue
        examples.append(ex)
    if any(skipped.values()):
        log.warning("distill: skipped rows %s", skipped)
    if not examples:
        raise InputError("no usable rows to train on", file=str(path))
    return examples, skipped


@dataclass
class StepPlan:
    """Every optimiser step's micro-batches (lists of example indices), for all processes."""

    steps: list[list[list[int]]]
    epochs_used: int

    def for_rank(self, step: int, rank: int, world: int) -> list[list[int]]:
        return self.steps[step][rank::world]


def plan_steps(lengths: list[int], opts: DistillOptions, packed: bool, world: int) -> StepPlan:
    """Cut the epochs' micro-batches into steps of grad_accum x world micro-batches.

    `--max-steps` runs as many epochs as it needs; `--epochs` may be fractional. A last step with
    fewer micro-batches than processes is dropped so that every process has work.
    """
    from cotprune.training.sft import plan_epoch

    per_step = opts.grad_accum * world
    stream: list[list[int]] = []
    epoch = 0
    want = None if opts.max_steps is None else opts.max_steps * per_step
    while True:
        batches = plan_epoch(lengths, opts.batch_tokens, opts.seed, epoch, packed=packed)
        if want is None:
            remaining = round(opts.epochs * len(batches)) - epoch * len(batches)
            if remaining <= 0:
                break
            batches = batches[:remaining]
        stream += batches
        epoch += 1
        if want is not None and len(stream) >= want:
            stream = stream[:want]
            break
    steps = [stream[s:s + per_step] for s in range(0, len(stream), per_step)]
    if steps and len(steps[-1]) < world:
        steps.pop()
    if not steps:
        raise InputError(f"too little data for one step on {world} processes")
    return StepPlan(steps, epoch)


# --- the run ---------------------------------------------------------------------------------

def check_outdir(outdir: Path, resume: bool) -> None:
    """A new run needs an empty (or missing) OUTDIR; a leftover run needs --resume."""
    check_writable(outdir)
    if not outdir.exists():
        return
    if not outdir.is_dir():
        raise InputError("the output of distill is a directory", file=str(outdir))
    if any(p.name != LOCK_FILE for p in outdir.iterdir()) and not resume:
        raise InputError("directory is not empty: pass --resume to continue its run, or choose "
                         "a new directory", file=str(outdir))


def distill_manifest(pruned: Path, model_opts: ModelOptions, model, tokenizer,
                     opts: DistillOptions) -> dict:
    """The stages' manifest (`core.stage.run_manifest`), with what `eval` reads of a student."""
    manifest = run_manifest("distill", [pruned], model_opts, model=model, tokenizer=tokenizer,
                            seed=opts.seed, options=opts.resume_options())
    return {**manifest, "ratio_conditioned": opts.ratio_conditioned, "full": opts.full}


def check_resume(outdir: Path, manifest: dict) -> None:
    """`--resume` continues only the run OUTDIR holds: same data, model and options."""
    path = outdir / MANIFEST
    if path.exists():
        check_resumable(json.loads(path.read_text()), manifest, str(outdir))


def write_manifest(outdir: Path, manifest: dict, extra: dict) -> None:
    write_text_atomic(outdir / MANIFEST, json.dumps({**manifest, **extra}, indent=2, default=str))


# --- model -----------------------------------------------------------------------------------

def load_student(model_opts: ModelOptions, opts: DistillOptions, device):
    """(model, tokenizer, autocast dtype or None). `--dtype auto` keeps float32 master weights
    and trains under bf16 autocast on a GPU that has it."""
    import torch

    from cotprune.core.models import load_model
    from cotprune.training.parts.lora import apply_lora

    autocast = None
    dtype = model_opts.dtype
    if dtype == "auto":
        dtype = "float32"
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            autocast = torch.bfloat16
    if opts.full and model_opts.adapter:
        raise InputError("--adapter continues LoRA training from an adapter; it does not go "
                         "with --full")
    # With --adapter, load_model attaches it trainable: training continues that adapter.
    model, tokenizer = load_model(replace(model_opts, dtype=dtype, device=str(device)),
                                  for_training=True)
    if opts.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if not opts.full and not model_opts.adapter:
        model = apply_lora(model, opts.lora)
    model.train()
    return model, tokenizer, autocast


def save_final(outdir: Path, model, tokenizer, *, sharded: bool, main: bool) -> None:
    """The adapter (LoRA) or the whole model; FSDP weights are gathered first, by all.

    Written into a temporary directory and moved into OUTDIR file by file, the weights last, so
    a full disk or a kill mid-write never leaves weights at OUTDIR that look complete."""
    full = None
    if sharded:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        from cotprune.training.parts.checkpoint import _full_options

        full = get_model_state_dict(model, options=_full_options())
    if not main:
        return
    import os
    import shutil

    tmp = outdir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True,
                          **({} if full is None else {"state_dict": full}))
    tokenizer.save_pretrained(tmp)
    for name in sorted(os.listdir(tmp), key=lambda n: (n.endswith(".safetensors")
                                                      or n.endswith(".index.json"), n)):
        os.replace(tmp / name, outdir / name)
    tmp.rmdir()


# --- the loop --------------------------------------------------------------------------------

def run_distill(pruned: Path, outdir: Path, model_opts: ModelOptions,
                opts: DistillOptions) -> dict:
    """Train and save; returns the summary (rank 0's view)."""
    import contextlib

    import torch

    from cotprune.training.parts.checkpoint import Checkpoints
    from cotprune.training.parts.dist import (
        all_sum,
        barrier,
        fsdp_requested,
        init_distributed,
        wrap_data_parallel,
    )
    from cotprune.training.parts.metrics import MetricsLog, Timer
    from cotprune.training.sft import (
        TargetLoss,
        collate_packed,
        collate_padded,
        lr_factor,
        micro_batch_nll,
    )

    outdir = Path(outdir)
    d = init_distributed(model_opts.device)
    if d.main:  # one writer per OUTDIR: a second process is refused (exit 2)
        lock_directory(outdir)
    check_outdir(outdir, opts.resume)
    torch.manual_seed(opts.seed)
    model, tokenizer, autocast = load_student(model_opts, opts, d.device)
    manifest = distill_manifest(Path(pruned), model_opts, model, tokenizer, opts)
    if opts.resume:
        check_resume(outdir, manifest)
    device = d.device
    examples, skipped = load_examples(Path(pruned), tokenizer, opts)
    attn = getattr(model.config, "_attn_implementation", "") or ""
    packed = opts.packing == "pack" or (opts.packing == "auto" and "flash" in attn)
    plan = plan_steps([len(e) for e in examples], opts, packed, d.world)
    total = len(plan.steps)
    warmup = round(opts.warmup_ratio * total)
    loss_module = TargetLoss(model)
    wrapped = wrap_data_parallel(loss_module, d, fsdp=fsdp_requested(opts.fsdp),
                                 layers=loss_module.decoder_layers())
    # after wrapping: FSDP replaces the parameters by their shards
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    fingerprint = opts.fingerprint() + hashlib.sha256(
        json.dumps([e.input_ids for e in examples]).encode()).hexdigest()[:16]
    checkpoints = Checkpoints(outdir / CHECKPOINTS, fingerprint=fingerprint,
                              keep=opts.keep_checkpoints, main=d.main)
    sharded = wrapped.kind == "fsdp"
    start = 0
    ckpt = checkpoints.latest() if opts.resume else None
    if ckpt is not None:
        start = checkpoints.load(ckpt, model, optimizer, sharded=sharded)["step"]
        log.info("distill: resuming after step %d from %s", start, ckpt)
    metrics = MetricsLog(outdir / METRICS, d.main)
    if d.main:
        outdir.mkdir(parents=True, exist_ok=True)
        metrics.truncate(start)
        write_manifest(outdir, manifest, {"status": "running", "steps": total})
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    log.info("distill: %d examples, %d steps, %s micro-batches, %d process(es) (%s), %s",
             len(examples), total, "packed" if packed else "length-grouped", d.world,
             wrapped.kind, "LoRA" if not opts.full else "full fine-tuning")
    timer, last_loss, first_loss = Timer(), None, None
    for step in range(start, total):
        for group in optimizer.param_groups:
            group["lr"] = opts.lr * lr_factor(step, total, warmup)
        step_batches = plan.steps[step]
        step_targets = sum(examples[i].n_targets for b in step_batches for i in b)
        step_tokens = sum(len(examples[i]) for b in step_batches for i in b)
        mine = plan.for_rank(step, d.rank, d.world)
        nll_sum = 0.0
        for k, batch_ids in enumerate(mine):
            batch = [examples[i] for i in batch_ids]
            mb = (collate_packed(batch) if packed else collate_padded(batch, pad_id)).to(device)
            # gradients are averaged over processes: the world factor makes them the step's sum
            sync = k == len(mine) - 1
            ctx = contextlib.nullcontext() if sync else wrapped.no_sync()
            amp = torch.autocast(device.type, dtype=autocast) if autocast else \
                contextlib.nullcontext()
            with ctx, amp:
                nll = micro_batch_nll(wrapped.train, mb)
                (nll * (d.world / step_targets)).backward()
            nll_sum += float(nll.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm) \
            if opts.max_grad_norm > 0 else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = all_sum(nll_sum, device) / step_targets
        seconds = timer.lap()
        first_loss = loss if first_loss is None else first_loss
        last_loss = loss
        record = {"step": step + 1, "loss": loss, "lr": optimizer.param_groups[0]["lr"],
                  "tokens": step_tokens, "target_tokens": step_targets,
                  "tokens_per_s": step_tokens / max(seconds, 1e-9),
                  "grad_norm": None if grad_norm is None else float(grad_norm)}
        metrics.append(record)
        if (step + 1) % opts.save_every == 0 or step + 1 == total:
            checkpoints.save(step + 1, model, optimizer, sharded=sharded)
        if d.main:
            log.info("distill: step %d/%d loss %.4f lr %.2e %.0f tok/s", step + 1, total, loss,
                     record["lr"], record["tokens_per_s"])
        fault_point("step")
    summary = {"command": "distill", "examples": len(examples), "skipped": skipped,
               "steps": total, "resumed_from": start, "first_loss": first_loss,
               "final_loss": last_loss, "processes": d.world, "parallel": wrapped.kind,
               "output": str(outdir)}
    save_final(outdir, model, tokenizer, sharded=sharded, main=d.main)
    if d.main:
        write_manifest(outdir, manifest,
                       {"status": "done", **{k: v for k, v in summary.items() if k != "command"}})
    barrier()
    return summary
