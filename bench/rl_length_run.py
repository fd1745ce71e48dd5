"""The documented `cotprune rl --reward length` run: easy arithmetic prompts, then a plot.

The 135M default model gets the multi-step `synth arithmetic` word problems almost always wrong,
and the length reward gives 0 to wrong answers, so there would be no signal. This script writes
one-operation prompts on small integers ("What is 7 + 5?") with exact references, on which the
model is right often enough for the length penalty to separate correct answers by length.

    .venv/bin/python bench/rl_length_run.py --prompts runs/easy.parquet [-n 256 --seed 0]
    OMP_NUM_THREADS=1 .venv/bin/cotprune rl runs/easy.parquet -o runs/rl_length --reward length ...
    .venv/bin/python bench/rl_length_run.py --plot runs/rl_length/metrics.jsonl \
        --png docs/rl_length_run.png
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

    from cotprune.files import write_table

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


def plot(metrics: str, png: str, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in Path(metrics).read_text().splitlines() if ln.strip()]
    steps = [r["step"] for r in rows]
    panels = [("mean_length", "mean response length (tokens)"), ("accuracy", "accuracy"),
              ("reward_mean", "mean reward")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 8), sharex=True)
    for ax, (key, label) in zip(axes, panels):
        values = [float(r[key]) for r in rows]
        ax.plot(steps, values, color="0.75", lw=1, label="per step")
        ax.plot(steps, moving_average(values, window), color="C0", lw=2,
                label=f"moving average ({window})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right")
    axes[-1].set_xlabel("RL step")
    fig.suptitle("cotprune rl --reward length, smollm2-135m (CPU)")
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    first, last = rows[:window], rows[-window:]
    summary = {k: [round(sum(r[k] for r in part) / len(part), 3) for part in (first, last)]
               for k, _ in panels}
    print(json.dumps({"png": png, "steps": len(rows), f"first/last {window} steps": summary}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", help="write the easy prompts Parquet here")
    ap.add_argument("-n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=9, help="largest operand")
    ap.add_argument("--plot", help="a run's metrics.jsonl")
    ap.add_argument("--png", default="docs/rl_length_run.png")
    ap.add_argument("--window", type=int, default=5)
    args = ap.parse_args()
    if args.prompts:
        write_prompts(args.prompts, args.n, args.seed, args.top)
    if args.plot:
        plot(args.plot, args.png, args.window)


if __name__ == "__main__":
    main()
