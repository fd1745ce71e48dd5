"""GPU check for greedy pruning: decoder tokens per second and share of bf16 peak (issue 18).

A random-weight Qwen2.5-1.5B-shaped model (bench/gpu.py's `--config`) in bfloat16, no
download, prunes chains of random token ids shaped like GSM8K's (`--prompt`, `--cot`,
`--answer` tokens: about the medians of bench/greedy_set.py's set) to keep 0.5:

- `greedy-exact`: exact greedy on one chain;
- `greedy-fast`: `prune --fast` on `--chains` chains, one at a time;
- `greedy-fast-lockstep`: the same chains side by side (`prune --lockstep`), their candidates in
  shared forwards: the lever that fills a GPU which one chain's few rows do not.

With random weights the deletions mean nothing, but a step's work depends on little else than
the chain's shape (the cuts and lazy rounds do depend on the values: the counts are printed
beside the seconds). FLOPs per decoder token as in bench/gpu.py (2 x parameters plus the
attention over the chain); "mfu" is achieved FLOP/s over `--peak-tflops`. A warm-up chain runs
first. Sized for a minute or two on one H100; the test suite runs `--config tiny --device cpu`:

    .venv/bin/python bench/gpu_greedy.py [--config qwen1.5b] [--device cuda] [--chains 8]
"""

from __future__ import annotations

import argparse
import math
import time

from gpu import CONFIGS, build_model, flops, measured  # bench/gpu.py


def random_chains(count: int, prompt: int, cot: int, answer: int, vocab: int, seed: int = 0):
    """`count` chains of random token ids: (prompt, CoT, answer) lists."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(0, vocab, (n,), generator=g).tolist()

    return [(ids(prompt), ids(cot), ids(answer)) for _ in range(count)]


def prune_chains(model, chains, opts, lockstep: bool):
    """Prune every chain to keep 0.5 with greedy options `opts`: (work counts, seconds)."""
    import torch

    from cotprune.core.deletion import DeletionScorer
    from cotprune.core.lockstep import Lockstep
    from cotprune.pruning.greedy import greedy_prune

    scorer = DeletionScorer(model, "reason-answer", 8192)

    def loop(chain, on=scorer):
        prompt, cot, answer = chain
        return greedy_prune(on, prompt, cot, answer, len(cot) - math.floor(0.5 * len(cot)),
                            opts=opts)

    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    if lockstep:
        Lockstep(scorer.runner).run([lambda runner, c=c: loop(c, scorer.with_runner(runner))
                                     for c in chains])
    else:
        for chain in chains:
            loop(chain)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return scorer.counts(), time.perf_counter() - start


def run(args) -> list[dict]:
    import torch

    from cotprune.pruning.greedy import FAST, GreedyOptions

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(args.config, device, dtype).eval()
    vocab = CONFIGS[args.config]["vocab_size"]
    length = args.prompt + args.cot + args.answer
    chains = random_chains(args.chains, args.prompt, args.cot, args.answer, vocab)
    prune_chains(model, random_chains(1, args.prompt, 8, args.answer, vocab, seed=1),
                 GreedyOptions(), False)  # warm-up
    results = []
    for part, todo, opts, lockstep in [("greedy-exact", chains[:1], GreedyOptions(), False),
                                       ("greedy-fast", chains, FAST, False),
                                       ("greedy-fast-lockstep", chains, FAST, True)]:
        counts, seconds = prune_chains(model, todo, opts, lockstep)
        tokens = counts["tokens_run"]
        results.append(measured(part, args, device, dtype, {"chains": len(todo), **counts},
                                tokens, seconds, flops(model, tokens, length, 1)))
    return results


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="qwen1.5b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--chains", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=130)
    ap.add_argument("--cot", type=int, default=140)
    ap.add_argument("--answer", type=int, default=9)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
