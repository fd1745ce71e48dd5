"""GPU check: tokens per second and share of bf16 peak for the training stack's hot paths.

A random-weight Qwen2.5-1.5B-shaped model (`--config qwen1.5b`: hidden 1536, 28 layers, 12 query
/ 2 key-value heads, MLP 8960, vocabulary 151,936, tied embeddings) in bfloat16, no download:

- `distill-lora`: one optimiser step of `distill`'s loss module (`sft.TargetLoss`, LoRA r 16 on
  all linear layers) on `--rows` x `--length` tokens, AdamW;
- `distill-full-fsdp`: the same with every weight trained, through FSDP2 (`fully_shard`, the
  `--fsdp` path) on one device;
- `rl-update`: one `rl` policy update (`rl.update.policy_update`, LoRA, `--token-select all`);
- `score-forward`: the scoring forward (`core.engine.forward_hidden` + chunked log-probs and
  entropy, no grad).

Each part runs one warm-up and `--repeats` timed repeats (best kept). FLOPs are counted as
2 x parameters x tokens per forward, x3 for a full backward (x2 with frozen base weights, LoRA),
plus the attention matmuls; "mfu" is achieved FLOP/s over `--peak-tflops` (989 dense bf16 for
an H200/H100 SXM). Sized for under 8 minutes on one H200. The test suite runs `--config tiny
--device cpu` so the script cannot rot:

    .venv/bin/python bench/gpu.py [--config qwen1.5b] [--device cuda] [--rows 4 --length 2048]
"""

from __future__ import annotations

import argparse
import json
import time

CONFIGS = {
    "qwen1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                     num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                     tie_word_embeddings=True),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=1000,
                 tie_word_embeddings=True),
}


def build_model(name: str, device, dtype):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**CONFIGS[name], max_position_embeddings=32768,
                         attn_implementation="sdpa")
    return Qwen2ForCausalLM(config).to(device=device, dtype=dtype).train()


def flops(model, tokens: int, length: int, passes: float) -> float:
    """Matmul FLOPs of `passes` forward-equivalents over `tokens` tokens in rows of `length`."""
    cfg = model.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    if cfg.tie_word_embeddings:  # the tied embedding is still the output projection
        params += cfg.vocab_size * cfg.hidden_size
    attention = 2 * 2 * cfg.num_hidden_layers * length * cfg.hidden_size  # QK^T and AV, causal/2
    return passes * tokens * (2 * params + attention)


def timed(fn, repeats: int, device) -> float:
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def measured(part: str, args, device, dtype, counts: dict, tokens: int, seconds: float,
             flop: float) -> dict:
    """One result row, printed as a JSON line: tokens per second, TFLOP/s, share of peak and
    (on a GPU) peak memory, which it resets for the next part."""
    import torch

    row = {"part": part, "config": args.config, "device": str(device), "dtype": str(dtype),
           **counts, "seconds": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1),
           "tflops": round(flop / seconds / 1e12, 3),
           "mfu": round(flop / seconds / (args.peak_tflops * 1e12), 4)}
    if device.type == "cuda":
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
    print(json.dumps(row), flush=True)
    return row


def batch(rows: int, length: int, vocab: int, device):
    import torch

    from cotprune.training.sft import Example, collate_padded

    g = torch.Generator().manual_seed(1)
    examples = [Example(tuple(torch.randint(0, vocab, (length,), generator=g).tolist()), 1, length)
                for _ in range(rows)]
    return collate_padded(examples, 0).to(device)


def distill_step(module, params, mb):
    import torch

    from cotprune.training.sft import micro_batch_nll

    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step():
        (micro_batch_nll(module, mb) / mb.n_targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run(args) -> list[dict]:
    import torch

    from cotprune.training.parts.dist import Dist, wrap_data_parallel
    from cotprune.training.sft import TargetLoss

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokens, vocab = args.rows * args.length, CONFIGS[args.config]["vocab_size"]
    results = []

    def report(part, seconds, model, passes):
        row = measured(part, args, device, dtype, {"tokens": tokens}, tokens, seconds,
                       flops(model, tokens, args.length, passes))
        results.append(row)

    mb = batch(args.rows, args.length, vocab, device)
    lora_parts(args, device, dtype, mb, report)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    full = build_model(args.config, device, dtype)
    module = TargetLoss(full)
    wrap_data_parallel(module, Dist(device=device), fsdp=True, layers=module.decoder_layers())
    report("distill-full-fsdp", timed(distill_step(module, list(full.parameters()), mb),
                                      args.repeats, device), full, 3)
    return results


def lora_parts(args, device, dtype, mb, report) -> None:
    """The LoRA distill step, the rl update and the scoring forward, on one adapter model."""
    import torch

    from cotprune.core.engine import decoder_and_head, forward_hidden, logprob_entropy
    from cotprune.rl.update import PolicyPair, Sample, UpdateConfig, policy_update
    from cotprune.training.parts.lora import LoraOptions, apply_lora
    from cotprune.training.sft import TargetLoss

    vocab, tokens = CONFIGS[args.config]["vocab_size"], args.rows * args.length
    lora = apply_lora(build_model(args.config, device, dtype), LoraOptions())
    params = [p for p in lora.parameters() if p.requires_grad]
    report("distill-lora", timed(distill_step(TargetLoss(lora), params, mb), args.repeats,
                                 device), lora, 2)
    g = torch.Generator().manual_seed(2)
    prompt = max(1, args.length // 8)
    samples = [Sample(torch.randint(0, vocab, (prompt,), generator=g).tolist(),
                      torch.randint(0, vocab, (args.length - prompt,), generator=g).tolist(),
                      1.0 if k % 2 else -1.0) for k in range(args.rows)]
    cfg = UpdateConfig(max_new_tokens=args.length, batch_tokens=tokens)
    opt = torch.optim.AdamW(params, lr=1e-5)
    seconds = timed(lambda: policy_update(PolicyPair(lora), opt, samples, cfg, torch.Generator()),
                    args.repeats, device)
    report("rl-update", seconds, lora, 2)
    rows = [mb.input_ids[r].tolist() for r in range(args.rows)]

    @torch.no_grad()
    def score():
        hidden = forward_hidden(lora, rows, 0)
        _, head = decoder_and_head(lora)
        logprob_entropy(hidden[:, :-1].reshape(-1, hidden.shape[-1]), head,
                        mb.input_ids[:, 1:].reshape(-1))

    report("score-forward", timed(score, args.repeats, device), lora, 1)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="qwen1.5b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
