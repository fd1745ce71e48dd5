"""On paper: the decoder tokens, FLOP and H100-hours to prune all of GSM8K train to --keep with
a 1.5B pruner (issue 18), from what bench/greedy_set.py measured per chain.

For each mode, the ratio published/run tokens of the measured chains is fitted as a power of the
chain's CoT length (least squares in log-log: exact greedy's ratio is about flat in length, lazy
greedy's grows with it, because the published cost is cubic and lazy greedy's about quadratic).
Every GSM8K train chain is laid out with the pruner's tokenizer (Qwen2.5's by default), its
published-algorithm tokens follow from its lengths (`published_tokens`), and a mode's tokens are
those over the fitted ratio at its CoT length. FLOP = 2 x parameters per decoder token (the
matrix products; attention over these short sequences adds a few percent, left out), and hours
at --mfu of --peak-tflops:

    .venv/bin/python bench/gsm8k_estimate.py --records bench/results/greedy_set.jsonl \
        --modes exact,shortlist=4,shortlist=4+self-term=1
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
QWEN = ROOT.parent / "shared" / "data" / "tokenizers" / "qwen2.5-0.5b-instruct"
QWEN_1_5B_PARAMS = 1.54e9


def fit_power(lengths: list[float], ratios: list[float]) -> tuple[float, float]:
    """(a, b) of ratio = a * length**b, least squares on log ratio against log length."""
    xs, ys = [math.log(n) for n in lengths], [math.log(r) for r in ratios]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return math.exp(my - b * mx), b


def mode_fits(records: list[dict], modes: list[str]) -> dict[str, tuple[float, float]]:
    """Fitted (a, b) per mode over the chains that mode finished."""
    fits = {}
    for mode in modes:
        rows = [r for r in records if r["mode"] == mode]
        if len(rows) < 2:
            raise SystemExit(f"mode {mode!r}: {len(rows)} chains in the records, need 2")
        fits[mode] = fit_power([r["cot_tokens"] for r in rows],
                               [r["published_tokens"] / r["tokens_run"] for r in rows])
    return fits


def estimate(chains: list[tuple[int, int, int]], fits: dict[str, tuple[float, float]],
             keep: float, params: float, peak_tflops: float, mfu: float) -> dict[str, dict]:
    """Per mode ('published' too): decoder tokens, FLOP and hours to prune `chains` (prompt,
    CoT, answer token counts) to `keep`."""
    from cotprune.pruning.greedy import published_tokens

    per_chain = [(n, published_tokens(p, n, a, n - math.floor(keep * n + 1e-9)))
                 for p, n, a in chains]
    out = {"published": sum(t for _, t in per_chain)}
    for mode, (a, b) in fits.items():
        out[mode] = sum(t / (a * n ** b) for n, t in per_chain if n > 0)
    flop_per_s = peak_tflops * 1e12 * mfu
    return {mode: {"tokens": tokens, "flop": 2 * params * tokens,
                   "hours": 2 * params * tokens / flop_per_s / 3600}
            for mode, tokens in out.items()}


def gsm8k_lengths(tokenizer_path: Path, data: Path) -> list[tuple[int, int, int]]:
    """(prompt, CoT, answer) token counts of every chain, as `prune` lays them out."""
    from transformers import AutoTokenizer

    from cotprune.data.importers import import_chains
    from cotprune.data.layout import ChainLayout

    layouter = ChainLayout(AutoTokenizer.from_pretrained(str(tokenizer_path)))
    out = []
    for chain in import_chains(str(data), "gsm8k"):
        lay = layouter.layout(chain["question"], chain["cot"], chain["answer"])
        out.append((lay.cot_start, len(lay.cot_ids), len(lay.input_ids) - lay.answer_start))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, required=True, help="bench/greedy_set.py's output")
    ap.add_argument("--modes", default="exact,shortlist=4")
    ap.add_argument("--tokenizer", type=Path, default=QWEN)
    ap.add_argument("--data", type=Path, default=GSM8K)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--params", type=float, default=QWEN_1_5B_PARAMS)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed share of peak")
    args = ap.parse_args()
    records = [json.loads(line) for line in args.records.read_text().splitlines() if line]
    fits = mode_fits(records, args.modes.split(","))
    chains = gsm8k_lengths(args.tokenizer, args.data)
    lengths = sorted(n for _, n, _ in chains)
    print(f"{len(chains)} chains, CoT tokens mean {sum(lengths) / len(lengths):.1f}, median "
          f"{lengths[len(lengths) // 2]}, max {lengths[-1]}; {args.params:.3g} parameters, "
          f"{args.mfu:.0%} of {args.peak_tflops:g} TFLOP/s\n")
    print("| mode | ratio fit (a * n^b) | decoder tokens | FLOP | H100-hours |")
    print("| --- | --- | --- | --- | --- |")
    for mode, row in estimate(chains, fits, args.keep, args.params, args.peak_tflops,
                              args.mfu).items():
        fit = "-" if mode == "published" else "{:.3g} * n^{:.2f}".format(*fits[mode])
        print(f"| {mode} | {fit} | {row['tokens']:.3g} | {row['flop']:.3g} | "
              f"{row['hours']:.2f} |")


if __name__ == "__main__":
    main()
