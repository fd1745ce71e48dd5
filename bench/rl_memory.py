"""Peak memory of one `rl` policy update with a large vocabulary, against its token count.

A random 2-layer Qwen2-shaped model (hidden 64) with the Qwen2.5 tokenizer's vocabulary
(151,665 rows: the output projection dominates), R responses of L random tokens after a short
prompt, all in one micro-batch, `--token-select all`, full fine-tuning, one update. Each size
runs in a fresh spawned process; peak memory is the growth of the process's peak RSS over its
RSS just before the update (CUDA max allocated on a GPU). Runs the `cotprune` on PYTHONPATH, so
the same script measures any revision:

    PYTHONPATH=. .venv/bin/python bench/rl_memory.py [--tokens 1024,2048,4096] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers" / \
    "qwen2.5-0.5b-instruct"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run(tokens: int, args, queue) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    import cotprune
    from cotprune.rl.update import PolicyPair, Sample, UpdateConfig, policy_update

    vocab = len(AutoTokenizer.from_pretrained(args.tokenizer))
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=False)
    device = torch.device(args.device)
    model = Qwen2ForCausalLM(config).to(device).train()
    responses = args.responses
    per = tokens // responses
    g = torch.Generator().manual_seed(1)
    samples = [Sample(torch.randint(0, vocab, (16,), generator=g).tolist(),
                      torch.randint(0, vocab, (per,), generator=g).tolist(),
                      1.0 if k % 2 else -1.0) for k in range(responses)]
    cfg = UpdateConfig(max_new_tokens=per, batch_tokens=10**9)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    base = rss_mb()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    t0 = time.perf_counter()
    policy_update(PolicyPair(model), opt, samples, cfg, torch.Generator())
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 - base if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)
    queue.put({"tokens": responses * per, "vocab": vocab, "peak_mb": round(peak, 1),
               "logits_mb": round(responses * per * vocab * 4 / 2**20, 1),
               "seconds": round(seconds, 2), "code": str(Path(cotprune.__file__).parent),
               "device": str(device)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="1024,2048,4096")
    ap.add_argument("--responses", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokenizer", default=str(TOKENIZER))
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    for n in [int(x) for x in args.tokens.split(",")]:
        q = ctx.Queue()
        p = ctx.Process(target=run, args=(n, args, q))
        p.start()
        print(json.dumps(q.get()), flush=True)
        p.join()


if __name__ == "__main__":
    main()
