"""One RL step's training time and peak memory: --token-select all vs nat-rpc vs nat-urs.

The rollouts are the same for every mode: synth arithmetic problems laid out with the
project's chat layout, and their reference CoT + answer used as the "sampled" responses
(teacher-forced, so the bench measures the update and not generation), with fixed +-1
advantages. Each mode runs `cotprune.rl.update.policy_update` (the code `cotprune rl` runs) in a
fresh spawned process on the default model with LoRA, so peak memory is that process's own:
CUDA max allocated on a GPU, else peak RSS growth over the RSS just before the step.

    .venv/bin/python bench/rl.py [--responses 8] [--repeats 2] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

MODES = [("all", {}), ("nat-rpc", {"cut_floor": 0.0}), ("nat-urs", {"keep_prob": 0.5})]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def build_samples(tokenizer, n: int):
    from cotprune.data.layout import ChainLayout
    from cotprune.data.synth import synth_arithmetic
    from cotprune.rl.update import Sample

    layout = ChainLayout(tokenizer)
    out = []
    for k, row in enumerate(synth_arithmetic(n, seed=11)):
        lay = layout.layout(row["question"], row["cot"], row["answer"])
        out.append(Sample(lay.input_ids[:lay.cot_start], lay.input_ids[lay.cot_start:],
                          1.0 if k % 2 else -1.0))
    return out


def run_mode(mode: str, extra: dict, args, queue) -> None:
    import torch

    from cotprune.core.models import ModelOptions
    from cotprune.rl.trainer import RLOptions, build_policy
    from cotprune.rl.update import UpdateConfig, policy_update
    from cotprune.training.parts.dist import init_distributed

    torch.set_num_threads(torch.get_num_threads())
    pair, tok = build_policy(ModelOptions(device=args.device),
                             RLOptions(prompts="", output=""), init_distributed(args.device))
    device = next(pair.policy.parameters()).device
    samples = build_samples(tok, args.responses)
    longest = max(len(s.response_ids) for s in samples)
    cfg = UpdateConfig(token_select=mode, max_new_tokens=longest,
                       batch_tokens=args.batch_tokens, **extra)
    opt = torch.optim.AdamW([p for p in pair.policy.parameters() if p.requires_grad], lr=0.0)
    times, stats = [], {}
    base = rss_mb()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    for r in range(args.repeats):
        t0 = time.perf_counter()
        stats = policy_update(pair, opt, samples, cfg, torch.Generator().manual_seed(r))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)
    queue.put({"mode": mode, "times_s": times, "best_s": min(times), "peak_mb": peak,
               "forward_tokens": stats["forward_tokens"],
               "tokens_trained": stats["tokens_trained"],
               "response_tokens": sum(len(s.response_ids) for s in samples),
               "prompt_tokens": sum(len(s.prompt_ids) for s in samples),
               "device": str(device)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--responses", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    results = {}
    for mode, extra in MODES:
        q = ctx.Queue()
        p = ctx.Process(target=run_mode, args=(mode, extra, args, q))
        p.start()
        results[mode] = q.get()
        p.join()
        print(json.dumps(results[mode]), flush=True)
    base = results["all"]
    for mode in ("nat-rpc", "nat-urs"):
        r = results[mode]
        print(f"{mode}: {base['best_s'] / r['best_s']:.2f}x faster than all "
              f"({r['best_s']:.2f}s vs {base['best_s']:.2f}s), peak memory "
              f"{r['peak_mb']:.0f} vs {base['peak_mb']:.0f} MB "
              f"({1 - r['peak_mb'] / base['peak_mb']:+.0%} less), forward tokens "
              f"{r['forward_tokens']:.0f} vs {base['forward_tokens']:.0f}")


if __name__ == "__main__":
    main()
