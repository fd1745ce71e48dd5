"""Training throughput of `cotprune distill` against TRL's SFTTrainer, in one run.

Same student (default smollm2-135m), same data (synth chains laid out by `layout.ChainLayout`),
same LoRA (r 16, alpha 32, dropout 0.05, all linear layers), max length, learning rate, schedule
(cosine, no warm-up) and one epoch. Effective batch: TRL takes B rows per step, cotprune a token
budget of B x the longest sequence (padded, length-grouped: at least B rows per step, so never
smaller batches than TRL's). Both put the loss on the completion
(CoT + answer) only. Each framework trains in its own subprocess, so its peak memory (max RSS
on CPU, max_memory_allocated on GPU) is its own. Afterwards one function measures each trained
student's mean NLL per CoT+answer token on the training chains: "loss after the same tokens"
on one yardstick.

    .venv/bin/python bench/distill.py [--n 16] [--batch 4] [--device cpu]

TRL is a benchmark-only dependency (`pip install -e .[bench]`); without it the TRL side
reports the import error and only cotprune's figures are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")


def chains(n: int, seed: int) -> list[dict]:
    from cotprune.data.synth import synth_arithmetic

    return synth_arithmetic(n, seed)


def peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mean_target_nll(model, tokenizer, rows: list[dict], device) -> float:
    """Mean NLL per CoT+answer token over the chains (the yardstick for both students)."""
    import torch

    from cotprune.data.layout import ChainLayout
    from cotprune.training.sft import TargetLoss, build_example, collate_padded, micro_batch_nll

    cl = ChainLayout(tokenizer)
    examples = [build_example(cl, r["question"], r["cot"], r["answer"]) for r in rows]
    loss = TargetLoss(model)
    total = count = 0.0
    model.eval()
    with torch.no_grad():
        for s in range(0, len(examples), 8):
            batch = collate_padded(examples[s:s + 8], tokenizer.pad_token_id).to(device)
            total += float(micro_batch_nll(loss, batch))
            count += batch.n_targets
    return total / count


def run_cotprune(args, work: Path) -> dict:
    import pyarrow as pa

    from cotprune.core.models import ModelOptions, load_tokenizer
    from cotprune.data.files import CHAIN_SCHEMA, write_table
    from cotprune.training.distill import DistillOptions, LoraOptions, run_distill

    rows = chains(args.n, args.seed)
    data = work / "chains.parquet"
    write_table(pa.Table.from_pylist(rows, schema=CHAIN_SCHEMA), data)
    tok = load_tokenizer(args.model)
    from cotprune.data.layout import ChainLayout
    from cotprune.training.sft import build_example

    cl = ChainLayout(tok)
    # B rows of the longest chain: every micro-batch holds at least the B rows TRL takes per step
    longest = max(len(build_example(cl, r["question"], r["cot"], r["answer"])) for r in rows)
    lora = LoraOptions(r=16, alpha=32, dropout=0.05, targets="all-linear")
    opts = DistillOptions(lora=lora, epochs=1.0, lr=args.lr,
                          warmup_ratio=0.0, batch_tokens=args.batch * longest,
                          max_length=args.max_length, packing=args.packing,
                          save_every=10**6, seed=args.seed)
    model_opts = ModelOptions(model=args.model, dtype="float32", device=args.device)
    out = work / "cotprune-out"
    cpu_start = time.process_time()
    run_distill(data, out, model_opts, opts)
    cpu_s = time.process_time() - cpu_start
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(m["tokens"] / m["tokens_per_s"] for m in metrics)
    tokens = sum(m["tokens"] for m in metrics)
    from cotprune.core.models import load_model

    model, tokenizer = load_model(ModelOptions(model=args.model, adapter=str(out),
                                               dtype="float32", device=args.device))
    nll = mean_target_nll(model, tokenizer, rows, model.device)
    return {"framework": "cotprune", "steps": len(metrics), "tokens": tokens,
            "train_s": seconds, "tokens_per_s": tokens / seconds, "cpu_s": cpu_s,
            "tokens_per_cpu_s": tokens / cpu_s,
            "peak_mb": peak_memory_mb(args.device), "final_nll": nll,
            "batch_tokens": opts.batch_tokens}


def _trl_dataset(rows, tokenizer):
    from datasets import Dataset

    from cotprune.data.layout import ANSWER_PREFIX, ChainLayout

    cl = ChainLayout(tokenizer)
    return Dataset.from_list([{"prompt": cl.prompt_text(r["question"]),
                               "completion": r["cot"] + ANSWER_PREFIX + r["answer"]
                               + cl.end_of_turn} for r in rows])


def run_baseline(args, work: Path) -> dict:
    """TRL SFTTrainer (prompt-completion data, completion-only loss), LoRA via peft."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from cotprune.core.models import load_tokenizer, resolve_model_path

    torch.manual_seed(args.seed)
    rows = chains(args.n, args.seed)
    tokenizer = load_tokenizer(args.model)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model),
                                                 dtype=torch.float32)
    lora = LoraConfig(task_type="CAUSAL_LM", **LORA)
    try:
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        return {"framework": "trl", "error": "trl is not installed (pip install -e .[bench])"}
    config = SFTConfig(
        output_dir=str(work / "trl-out"), per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="cosine",
        warmup_steps=0, num_train_epochs=1, max_length=args.max_length, logging_steps=1,
        save_strategy="no", report_to=[], completion_only_loss=True,
        gradient_checkpointing=False, use_cpu=args.device == "cpu",
        bf16=False, fp16=False, seed=args.seed, dataloader_num_workers=0, max_grad_norm=1.0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=_trl_dataset(rows, tokenizer),
                         processing_class=tokenizer, peft_config=lora)
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    start, cpu_start = time.perf_counter(), time.process_time()
    result = trainer.train()
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    nll = mean_target_nll(trainer.model, tokenizer, rows, trainer.model.device)
    import trl

    return {"framework": f"trl {trl.__version__} SFTTrainer", "steps": result.global_step,
            "tokens": tokens, "train_s": seconds, "tokens_per_s": tokens / seconds,
            "cpu_s": cpu_s, "tokens_per_cpu_s": tokens / cpu_s,
            "peak_mb": peak_memory_mb(args.device), "final_nll": nll}


def child(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fn = run_cotprune if args.child == "cotprune" else run_baseline
        print("RESULT " + json.dumps(fn(args, Path(tmp))), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=16, help="training chains")
    p.add_argument("--batch", type=int, default=4, help="rows per step (TRL)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--packing", default="auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", choices=["cotprune", "trl"])
    args = p.parse_args()
    if args.child:
        return child(args)
    results = {}
    for name in ("trl", "cotprune"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--child", name]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        results[name] = json.loads(line[-1][7:]) if line else \
            {"error": proc.stderr[-2000:], "framework": name}
        print(json.dumps(results[name]), file=sys.stderr)
    a, b = results["cotprune"], results["trl"]
    if "tokens_per_s" in a and "tokens_per_s" in b:
        results["throughput_ratio"] = a["tokens_per_s"] / b["tokens_per_s"]
        # CPU seconds are steadier than wall seconds when other jobs share the machine
        results["cpu_throughput_ratio"] = a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"]
        results["peak_memory_ratio"] = a["peak_mb"] / b["peak_mb"]
    results["device"] = args.device
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
