"""The documented `cotprune rl --reward length` run: easy arithmetic prompts, then a plot.

The 135M default model gets the multi-step `synth arithmetic` word problems almost always wrong,
and the length reward gives 0 to wrong answers, so there would be no signal. This script writes
one-operation prompts on small integers ("What is 7 + 5?") with exact references, on which the
model is right often enough for the length penalty to separate correct answers by length.

    .venv/bin/python bench/rl_length_run.py --prompts runs/easy.parquet [-n 256 --seed 0]
    OMP_NUM_THREADS=1 .venv/bin/cotprune rl runs/easy.parquet -o runs/rl_length --reward length ...
    (the same with --reward accuracy -o runs/rl_accuracy: the baseline)
    .venv/bin/python bench/rl_length_run.py --plot runs/rl_length/metrics.jsonl \
        --baseline runs/rl_accuracy/metrics.jsonl --png docs/rl_length_run.png

The exact sizes of the documented run are in BENCHMARKS.md (rl).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def easy_problem(rng: random.Random, index: int, top: int = 9) -> dict:
    """One addition or subtraction of two integers in 1..top (non-negative result).

    With top 9 the 135M model answers about half of them right greedily (measured on 24), so
    the group of sampled responses usually holds both correct and wrong answers.
    """
    a, b = rng.randint(1, top), rng.randint(1, top)
    op = rng.choice(["+", "-"])
    if op == "-" and b > a:
        a, b = b, a
    value = a + b if op == "+" else a - b
    return {"id": f"easy-{index:05d}", "question": f"What is {a} {op} {b}?",
            "reference": str(value)}


def write_prompts(path: str, n: int, seed: int, top: int) -> None:
    import pyarrow as pa

    from cotprune.data.files import write_table

    rng = random.Random(seed)
    rows = [easy_problem(rng, i, top) for i in range(n)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_table(pa.Table.from_pylist(rows), path)
    print(json.dumps({"prompts": path, "rows": n, "seed": seed, "top": top}))


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def read_metrics(path: str) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


PANELS = [("mean_length", "mean response length (tokens)"), ("accuracy", "accuracy"),
          ("truncated_frac", "truncated fraction"), ("reward_mean", "mean reward")]


def plot(metrics: str, png: str, window: int, baseline: str | None = None) -> None:
    """Per-step values (thin) and their trailing moving average (thick) of each panel's metric;
    a baseline run (e.g. `--reward accuracy`, same sizes) in orange when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [("--reward length", read_metrics(metrics), "C0")]
    if baseline:
        runs.append(("--reward accuracy (baseline)", read_metrics(baseline), "C1"))
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(7, 10), sharex=True)
    for ax, (key, label) in zip(axes, PANELS):
        for name, rows, color in runs:
            steps = [r["step"] for r in rows]
            values = [float(r[key]) for r in rows]
            ax.plot(steps, values, color=color, alpha=0.3, lw=1)
            ax.plot(steps, moving_average(values, window), color=color, lw=2,
                    label=f"{name}, moving average ({window})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("RL step (thin lines: per step)")
    fig.suptitle("cotprune rl, smollm2-135m (CPU), one-operation arithmetic prompts")
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    for name, rows, _ in runs:
        first, last = rows[:window], rows[-window:]
        summary = {k: [round(sum(r[k] for r in part) / len(part), 3) for part in (first, last)]
                   for k, _ in PANELS}
        print(json.dumps({"run": name, "png": png, "steps": len(rows),
                          f"first/last {window} steps": summary}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", help="write the easy prompts Parquet here")
    ap.add_argument("-n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=9, help="largest operand")
    ap.add_argument("--plot", help="a run's metrics.jsonl")
    ap.add_argument("--baseline", help="a baseline run's metrics.jsonl, drawn beside --plot")
    ap.add_argument("--png", default="docs/rl_length_run.png")
    ap.add_argument("--window", type=int, default=5)
    args = ap.parse_args()
    if args.prompts:
        write_prompts(args.prompts, args.n, args.seed, args.top)
    if args.plot:
        plot(args.plot, args.png, args.window, args.baseline)


if __name__ == "__main__":
    main()
