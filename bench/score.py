"""Benchmark: `cotprune score --scorer surprisal,entropy,attention` against the hand-written loop.

A third side is the floor: a bare decoder forward of each chain alone (no padding, no output
head), which every scorer needs; `score` should come close to it plus the projections.

The baseline is what a user writes by hand: one chain at a time, the model loaded with
`attn_implementation="eager"`, `output_attentions=True`, and a full-vocabulary `log_softmax` of
the logits. The optimised path is the `score` stage itself (`run_score`, called in-process:
read Parquet, lay out, batch by --batch-tokens, SDPA forward, chunked vocabulary projection at CoT
positions only, answer-row attention from captured q/k, write Parquet).

Each side runs in its own fresh (spawned) process, in the same invocation of this script, so the
peak memory of each is that process's `resource.getrusage(RUSAGE_SELF).ru_maxrss` (peak resident
set size, includes the model and the Python/torch runtime); we also print the growth of maxrss
from just before the model is loaded to the end (`delta`). Both sides are timed end to end,
including loading the model, and by their compute alone (after the load). The scores of both
are compared at the end. Also printed: the tokens the stage's batches run with their padding,
beside the tokens the chains hold (a count that does not depend on the machine).

    .venv/bin/python bench/score.py [--chains 48] [--repeats 1] [--batch-tokens 8192]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
SCORERS = ["surprisal", "entropy", "attention"]


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_cotprune(chains: str, batch_tokens: int) -> dict:
    """The `score` stage, in-process, end to end (model load, read, score, write)."""
    import pyarrow.parquet as pq
    import torch  # noqa: F401  (imported before the first maxrss reading, like the baseline)

    from cotprune.core.models import ModelOptions
    from cotprune.scoring.score import ScoreOptions, run_score

    rss0 = maxrss_mib()
    out = Path(tempfile.mkdtemp()) / "scores.parquet"
    start = time.perf_counter()
    summary = run_score(chains, out, ScoreOptions(scorers=SCORERS, batch_tokens=batch_tokens),
                        ModelOptions(device="cpu"))
    seconds = time.perf_counter() - start
    rows = pq.read_table(out).to_pylist()
    return {"seconds": seconds, "compute_s": summary["seconds"], "tokens": summary["tokens"],
            "rss_start_mib": rss0, "rss_peak_mib": maxrss_mib(),
            "scores": {r["id"]: {s: r[s] for s in SCORERS} for r in rows}}


def run_hand_loop(chains: str) -> dict:
    """One chain at a time, eager attention with output_attentions=True, full log_softmax."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM

    from cotprune.core.models import load_tokenizer, resolve_model_path
    from cotprune.data.layout import ChainLayout

    rss0 = maxrss_mib()
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m"),
                                                 attn_implementation="eager").eval()
    tok = load_tokenizer("smollm2-135m")
    layout = ChainLayout(tok)
    scores, tokens = {}, 0
    compute_start = time.perf_counter()
    with torch.no_grad():
        for row in pq.read_table(chains).to_pylist():
            x = layout.layout(row["question"], row["cot"], row["answer"])
            ids = torch.tensor([x.input_ids])
            out = model(ids, output_attentions=True)
            logp = torch.log_softmax(out.logits[0].float(), dim=-1)
            cs, ce, as_, ae = x.cot_start, x.cot_end, x.answer_start, x.answer_end
            rows = logp[cs - 1:ce - 1]
            surprisal = -rows.gather(-1, ids[0, cs:ce, None])[:, 0]
            entropy = -(rows.exp() * rows).sum(-1)
            att = torch.stack(out.attentions)[:, 0, :, as_:ae, cs:ce].mean(dim=(0, 1, 2))
            scores[row["id"]] = {"surprisal": surprisal.tolist(), "entropy": entropy.tolist(),
                                 "attention": att.tolist()}
            tokens += len(x.input_ids)
    end = time.perf_counter()
    return {"seconds": end - start, "compute_s": end - compute_start, "tokens": tokens,
            "rss_start_mib": rss0, "rss_peak_mib": maxrss_mib(), "scores": scores}


def run_bare_forward(chains: str) -> dict:
    """The floor: the decoder alone (no output head, no scores), one chain at a time."""
    import pyarrow.parquet as pq
    import torch

    from cotprune.core.engine import forward_hidden
    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.layout import ChainLayout

    rss0 = maxrss_mib()
    start = time.perf_counter()
    model, tok = load_model(ModelOptions(device="cpu"))
    layout = ChainLayout(tok)
    seqs = [layout.layout(r["question"], r["cot"], r["answer"]).input_ids
            for r in pq.read_table(chains).to_pylist()]
    compute_start = time.perf_counter()
    with torch.no_grad():
        for ids in seqs:
            forward_hidden(model, [ids], tok.pad_token_id)
    end = time.perf_counter()
    return {"seconds": end - start, "compute_s": end - compute_start,
            "tokens": sum(len(s) for s in seqs), "rss_start_mib": rss0,
            "rss_peak_mib": maxrss_mib()}


def chain_lengths(chains: str) -> list[int]:
    """Tokens of each chain as the stage lays it out (question, CoT, answer)."""
    import pyarrow.parquet as pq

    from cotprune.core.models import load_tokenizer
    from cotprune.data.layout import ChainLayout

    layout = ChainLayout(load_tokenizer("smollm2-135m"))
    return [len(layout.layout(r["question"], r["cot"], r["answer"]).input_ids)
            for r in pq.read_table(chains).to_pylist()]


def padded_tokens(plan, lengths: list[int], batch_tokens: int) -> int:
    """Tokens the batches of `plan` run, padding included."""
    return sum(len(b) * max(lengths[i] for i in b) for b in plan(lengths, batch_tokens))


def batching(chains: str, batch_tokens: int) -> dict:
    """Tokens the stage's batches run (padding included) against the tokens the chains hold."""
    from cotprune.core.engine import plan_batches

    lengths = chain_lengths(chains)
    return {"chain_tokens": sum(lengths),
            "forwards": len(plan_batches(lengths, batch_tokens)),
            "padded_tokens": padded_tokens(plan_batches, lengths, batch_tokens)}


def in_fresh_process(fn, *args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def max_differences(a: dict, b: dict) -> dict:
    """Largest absolute difference per scorer over all chains and tokens."""
    assert a.keys() == b.keys(), "the two runs scored different chains"
    out = {}
    for s in SCORERS:
        worst = 0.0
        for cid in a:
            x, y = a[cid][s], b[cid][s]
            assert len(x) == len(y), f"{cid}: {s} lengths differ"
            worst = max([worst, *(abs(p - q) for p, q in zip(x, y, strict=True))])
        out[s] = worst
    return out


def write_chains(n: int, directory: Path) -> str:
    import pyarrow as pa

    from cotprune.data.files import CHAIN_SCHEMA, write_table
    from cotprune.data.importers import import_chains

    path = directory / "gsm8k.parquet"
    write_table(pa.Table.from_pylist(import_chains(str(GSM8K), "gsm8k", limit=n),
                                     schema=CHAIN_SCHEMA), path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from cotprune.core.models import resolve_model_path

    resolve_model_path("smollm2-135m")  # convert the default model once, outside the timings
    chains = write_chains(args.chains, Path(tempfile.mkdtemp()))
    load_before = os.getloadavg()[0]
    runs = []
    for i in range(args.repeats):  # alternate the order, so noisy neighbours hurt all alike
        sides = [lambda: in_fresh_process(run_hand_loop, chains),
                 lambda: in_fresh_process(run_cotprune, chains, args.batch_tokens),
                 lambda: in_fresh_process(run_bare_forward, chains)]
        done = [side() for side in (sides if i % 2 == 0 else sides[::-1])]
        runs.append(tuple(done if i % 2 == 0 else done[::-1]))
    hand_s = min(h["seconds"] for h, _, _ in runs)
    ours_s = min(o["seconds"] for _, o, _ in runs)
    compute = {name: round(min(r[k]["compute_s"] for r in runs), 2)
               for k, name in enumerate(("hand_loop", "cotprune", "bare_forward"))}
    hand, ours, _ = runs[-1]
    result = {
        "chains": args.chains, "tokens": ours["tokens"], "batch_tokens": args.batch_tokens,
        **batching(chains, args.batch_tokens),
        "hand_loop_s": round(hand_s, 2), "cotprune_s": round(ours_s, 2),
        "speedup": round(hand_s / ours_s, 2),
        "compute_s": compute,
        "compute_speedup": round(compute["hand_loop"] / compute["cotprune"], 2),
        "cotprune_over_bare_forward": round(compute["cotprune"] / compute["bare_forward"], 2),
        "hand_loop_tok_per_s": round(hand["tokens"] / hand_s, 1),
        "cotprune_tok_per_s": round(ours["tokens"] / ours_s, 1),
        "hand_loop_peak_rss_mib": round(hand["rss_peak_mib"]),
        "cotprune_peak_rss_mib": round(ours["rss_peak_mib"]),
        "hand_loop_rss_growth_mib": round(hand["rss_peak_mib"] - hand["rss_start_mib"]),
        "cotprune_rss_growth_mib": round(ours["rss_peak_mib"] - ours["rss_start_mib"]),
        "max_abs_diff": max_differences(hand["scores"], ours["scores"]),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "all_compute_s": [[round(side["compute_s"], 2) for side in r] for r in runs],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
