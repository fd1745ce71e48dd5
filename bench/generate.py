"""Benchmark: `eval`'s generation path against plain Hugging Face `generate`, same prompts.

Both sides answer the same questions greedily with the same LoRA student of the default model:

- baseline: the peft-wrapped model (adapter not merged) and one `model.generate` call per batch
  of `--batch` left-padded prompts, as a user would write it;
- cotprune: the adapter merged into the weights (`load_model(merge_adapter=True)`) and
  `generation.decode`, the KV-cache loop in which a row that has stopped leaves the batch.

The sides alternate `--repeats` times in one process (ABAB...), so a change in machine load hits
both. Reported: generated tokens (to each row's stop token, the same count `eval` records),
forward calls, wall seconds, tokens/s, and whether the two sides produced the same tokens. The
load average is printed at the start and the end.

    OMP_NUM_THREADS=2 .venv/bin/python bench/generate.py --adapter STUDENT [--prompts 32]
        [--batch 32] [--max-new-tokens 192] [--repeats 2]

Without --adapter a LoRA with random (non-zero) weights is used, so both sides still pay for it.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def prompts_of(n: int, tokenizer) -> list[list[int]]:
    from cotprune.data.layout import ChainLayout
    from cotprune.data.synth import SynthOptions, synth_arithmetic

    task = SynthOptions(min_steps=2, max_steps=3, max_start=20, max_operand=9,
                        operations=("add", "sub"), style="brief")  # the experiment's task
    layout = ChainLayout(tokenizer)
    return [layout.prompt_ids(r["question"]) for r in synth_arithmetic(n, 777, task)]


def random_adapter(path: str) -> str:
    from peft import LoraConfig, get_peft_model

    from cotprune.core.models import ModelOptions, load_model

    model, _ = load_model(ModelOptions(device="cpu", dtype="float32"))
    get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                     init_lora_weights=False)).save_pretrained(path)
    return path


class CountForwards:
    """Counts the decoder's forward calls (one per generated step and batch, plus prefill)."""

    def __init__(self, model) -> None:
        self.calls = 0
        model.get_decoder().register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapter")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import tempfile

    import torch

    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.layout import ChainLayout
    from cotprune.training.sampling import (
        SamplingOptions,
        decode,
        finish_response,
        hf_generate,
        stop_token_ids,
    )

    print(f"load average at start: {os.getloadavg()}", flush=True)
    adapter = args.adapter or random_adapter(tempfile.mkdtemp())
    opts = ModelOptions(adapter=adapter, device="cpu", dtype="float32")
    wrapped, tokenizer = load_model(opts)
    merged, _ = load_model(opts, merge_adapter=True)
    counters = {"baseline": CountForwards(wrapped), "cotprune": CountForwards(merged)}
    stops = stop_token_ids(tokenizer, ChainLayout(tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    sampling = SamplingOptions(max_new_tokens=args.max_new_tokens)
    prompts = prompts_of(args.prompts, tokenizer)
    batches = [prompts[i:i + args.batch] for i in range(0, len(prompts), args.batch)]
    sides = {
        "baseline": lambda b: hf_generate(wrapped, b, sampling, stops, pad),
        "cotprune": lambda b: decode(merged, b, sampling, stops, pad),
    }
    results = {name: {"seconds": 0.0, "tokens": 0, "forwards": 0} for name in sides}
    outputs = {}
    torch.set_grad_enabled(False)
    for _ in range(args.repeats):
        for name, run in sides.items():
            before = counters[name].calls
            start = time.perf_counter()
            rows = [r for b in batches for r in run(b)]
            results[name]["seconds"] += time.perf_counter() - start
            results[name]["forwards"] += counters[name].calls - before
            content = [finish_response(r, stops, args.max_new_tokens, pad) for r in rows]
            results[name]["tokens"] += sum(c[1] for c in content)
            outputs[name] = [c[0] for c in content]
    for r in results.values():
        r["tokens_per_s"] = round(r["tokens"] / r["seconds"], 1)
        r["seconds"] = round(r["seconds"], 2)
    same = sum(a == b for a, b in zip(outputs["baseline"], outputs["cotprune"], strict=True))
    print(json.dumps({
        "prompts": args.prompts, "batch": args.batch, "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats, "threads": torch.get_num_threads(), **results,
        "speedup": round(results["baseline"]["seconds"] / results["cotprune"]["seconds"], 2),
        "identical_rows": f"{same}/{len(outputs['baseline'])}",
        "load_average_end": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
