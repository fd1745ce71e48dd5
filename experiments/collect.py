"""Gather the experiment's outputs into one record per evaluated arm, and a Markdown table.

Reads what the Makefile wrote under `--work`: evals/*.parquet (graded answers), students/*/
(distill.json, metrics.jsonl), pruned/*.parquet (J and kept positions of the training chains)
and times/*.json (wall seconds per stage). Writes `--out` (JSON), `--table` (Markdown) and
`--plot` (accuracy against generated tokens, every arm, with the Pareto front).

Results accumulate: the records of arms already in `--out` and not evaluated this time are
kept (a sitting that runs only some arms, on a machine without the others' files, adds to the
table instead of replacing it); a re-evaluated arm's record is replaced.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def token_kind(text: str) -> str:
    """What a CoT token is, for 'what did each method delete': digit, operator, word, space."""
    stripped = text.strip()
    if any(c.isdigit() for c in stripped):
        return "digit"
    if stripped in {"+", "-", "=", "*", "/", "->", ">"}:
        return "operator"
    if not stripped or not any(c.isalpha() for c in stripped):
        return "punct/space"
    return "word"


def deleted_kinds(rows: list[dict], tokenizer) -> dict:
    """Share of each token kind among the deleted CoT tokens, and the share of digits kept."""
    deleted = {"digit": 0, "operator": 0, "word": 0, "punct/space": 0}
    digits = kept_digits = 0
    for r in rows:
        cot = r["input_ids"][r["cot_start"]:r["cot_end"]]
        kept = set(r["kept_positions"])
        for i, t in enumerate(cot):
            kind = token_kind(tokenizer.decode([t]))
            digits += kind == "digit"
            if i in kept:
                kept_digits += kind == "digit"
            else:
                deleted[kind] += 1
    total = sum(deleted.values()) or 1
    return {**{k: round(v / total, 4) for k, v in deleted.items()},
            "digits_kept": round(kept_digits / digits, 4) if digits else None}


def read_rows(path: Path, columns=None) -> list[dict]:
    from cotprune.data.files import read_table

    return read_table(path, columns=columns).to_pylist()


def seconds(times: Path, stage: str) -> float | None:
    f = times / f"{stage}.json"
    if not f.exists():
        return None
    return round(sum(a["seconds"] for a in json.loads(f.read_text())["attempts"]), 1)


def split_subset(student: str) -> tuple[str, int | None]:
    """`greedy-0.5-n96` -> ("greedy-0.5", 96): the student trained on the first 96 chains."""
    base, sep, n = student.rpartition("-n")
    if sep and n.isdigit():
        return base, int(n)
    return student, None


def student_source(student: str) -> tuple[str, float | None]:
    """(pruned file stem, keep ratio) a student was trained on, from its name."""
    student = split_subset(student)[0]
    if student == "full":
        return "full", 1.0
    if student == "nocot":
        return "nocot", 0.0
    if student == "tokenskip":
        return "greedy", None
    method, keep = student.rsplit("-", 1)
    return method, float(keep)


def training_rows(work: Path, student: str) -> list[dict]:
    """The pruned rows a student was trained on: its keep ratio's, of its first N chains."""
    stem, keep = student_source(student)
    rows = read_rows(work / "pruned" / stem if stem == "greedy" else
                     work / "pruned" / f"{stem}.parquet")
    if keep is not None:
        rows = [r for r in rows if abs(r["keep_ratio"] - keep) < 1e-6]
    n = split_subset(student)[1]
    if n is not None:
        first = list(dict.fromkeys(r["id"] for r in rows))[:n]
        rows = [r for r in rows if r["id"] in set(first)]
    return rows


def arm_record(work: Path, name: str, tokenizer) -> dict:
    student = name.split("@")[0]
    eval_keep = float(name.split("@")[1]) if "@" in name else None
    graded = read_rows(work / "evals" / f"{name}.parquet",
                       ["correct", "generated_tokens", "truncated"])
    n = len(graded)
    correct = sum(bool(r["correct"]) for r in graded)
    low, high = wilson_interval(correct, n)
    method, keep = student_source(student)
    trained = (work / "students" / student / "distill.json").exists()
    # an eval file saved by an earlier sitting whose student and training chains went with
    # its machine: the answers still give the accuracy; the training columns stay empty
    metrics = [json.loads(line) for line in
               (work / "students" / student / "metrics.jsonl").read_text().splitlines()
               if line] if trained else []
    distilled = json.loads((work / "students" / student / "distill.json").read_text()) \
        if trained else {}
    rows = training_rows(work, student) if trained else []
    times = work / "times"
    data_stage = {"full": "train.parquet", "nocot": "pruned_nocot.parquet"}.get(
        method, f"pruned_{method}.parquet")
    prune_seconds = (greedy_seconds(work, split_subset(student)[1]) if method == "greedy"
                     else seconds(times, data_stage))
    return {
        "arm": name, "method": "tokenskip" if student.startswith("tokenskip") else method,
        "keep": eval_keep if eval_keep is not None else keep,
        # chains, not rows: the TokenSkip student has a row per keep ratio of every chain
        "train_chains": len({r["id"] for r in rows}) if rows else distilled.get("examples"),
        "train_rows": distilled.get("examples"),
        "tokens_trained": sum(m["tokens"] for m in metrics) if trained else None,
        "target_tokens_trained": sum(m["target_tokens"] for m in metrics) if trained else None,
        "final_loss": metrics[-1]["loss"] if metrics else None,
        "n_test": n, "correct": correct,
        "accuracy": round(correct / n, 4) if n else None,
        "interval95": [round(low, 4), round(high, 4)],
        "mean_generated_tokens": round(sum(r["generated_tokens"] for r in graded) / n, 2),
        "truncated": round(sum(bool(r["truncated"]) for r in graded) / n, 4),
        "train_mean_J": round(sum(r["objective_nll"] for r in rows) / len(rows), 3)
        if rows and "objective_nll" in rows[0] else None,
        "train_mean_cot_tokens": round(sum(r["kept_tokens"] for r in rows) / len(rows), 2)
        if rows and "kept_tokens" in rows[0] else None,
        "deleted": deleted_kinds(rows, tokenizer)
        if rows and "kept_positions" in rows[0] and keep not in (None, 1.0) else None,
        "seconds": {"prune": prune_seconds,
                    "distill": seconds(times, f"students_{student}_adapter_model.safetensors"),
                    "eval": seconds(times, f"evals_{name}.parquet")},
        "commit": current_commit(),
        **({} if trained else {"note": "student and training chains lost with an earlier "
                                       "machine; accuracy from its saved eval file"}),
    }


def greedy_seconds(work: Path, chains: int | None) -> float:
    """Wall seconds of the finished greedy shards that hold the first `chains` chains (all of
    them for None): the labels a student trained on, not the shards still running."""
    total, covered = 0.0, 0
    for part in sorted((work / "pruned" / "greedy").glob("part-*.parquet")):
        if chains is not None and covered >= chains:
            break
        covered += len({r["id"] for r in read_rows(part, ["id"])})
        total += seconds(work / "times", f"pruned_greedy_{part.name}") or 0.0
    return round(total, 1)


def current_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def merge_records(previous: list[dict], new: list[dict]) -> list[dict]:
    """The earlier records in their order, each replaced by this run's record of the same arm
    where there is one, then this run's other records."""
    fresh = {r["arm"]: r for r in new}
    merged = [fresh.pop(r["arm"], r) for r in previous]
    return merged + [r for r in new if r["arm"] in fresh]


def write_plot(records: list[dict], path: Path) -> None:
    from cotprune.report.plots import pareto_front, pareto_plot

    tokens = [r["mean_generated_tokens"] for r in records]
    accuracy = [r["accuracy"] for r in records]
    png = pareto_plot([r["arm"] for r in records], tokens, accuracy,
                      pareto_front(tokens, accuracy), name=path.name)
    path.write_bytes(png.data)


def float32_objectives(model_name: str, rows: list[dict]) -> list[float]:
    """J (reason-answer) of each pruned row's kept chain, recomputed with the model in float32:
    the fast labels may come from a bfloat16 pruner, whose stored J carries its rounding."""
    from cotprune.core.engine import sequence_objectives
    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.layout import join_segments

    model, tokenizer = load_model(ModelOptions(model=model_name, device="cpu", dtype="float32"))
    layouts = []
    for r in rows:
        ids, start = r["input_ids"], r["cot_start"]
        # the trace's J counts every target after the CoT, end of turn included
        answer = ids[r["answer_start"]:]
        layouts.append(join_segments(ids[:start], [ids[start + i] for i in r["kept_positions"]],
                                     answer))
    return sequence_objectives(model, layouts, "reason-answer", batch_tokens=4096,
                               pad_id=tokenizer.pad_token_id)


def greedy_validation(work: Path, model_name: str) -> list[dict]:
    """The labels' greedy mode against float32 exact greedy on the validation chains: J of both
    recomputed in float32, per keep ratio (empty while either file is missing: a partial run)."""
    if not all((work / "pruned" / f).exists() for f in ("val-exact.parquet",
                                                         "fit-greedy.parquet")):
        return []
    exact = read_rows(work / "pruned" / "val-exact.parquet")
    fast = {(r["id"], round(r["keep_ratio"], 4)): r
            for r in read_rows(work / "pruned" / "fit-greedy.parquet")}
    paired = [fast[(r["id"], round(r["keep_ratio"], 4))] for r in exact]
    js = float32_objectives(model_name, exact + paired)
    j_of = {id(r): j for r, j in zip(exact + paired, js, strict=True)}
    out = []
    for keep in sorted({round(r["keep_ratio"], 4) for r in exact}):
        pairs = [(j_of[id(r)], j_of[id(f)]) for r, f in zip(exact, paired, strict=True)
                 if round(r["keep_ratio"], 4) == keep]
        j_exact, j_fast = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        out.append({"keep": keep, "chains": len(pairs), "J_exact": round(j_exact, 3),
                    "J_fast": round(j_fast, 3),
                    "gap_percent": round(100 * (j_fast - j_exact) / j_exact, 2)})
    return out


def markdown(records: list[dict], validation: list[dict]) -> str:
    lines = ["| arm | keep | train chains | tokens trained | mean J (train) | accuracy "
             "[95% CI] | mean generated tokens | truncated |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    def cell(value):  # an eval-only record has no training figures
        return "n/a" if value is None else value

    for r in records:
        lo, hi = r["interval95"]
        lines.append(f"| {r['arm']} | {r['keep']} | {cell(r['train_chains'])} | "
                     f"{cell(r['tokens_trained'])} | {cell(r['train_mean_J'])} | "
                     f"{r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | "
                     f"{r['mean_generated_tokens']} | {r['truncated']:.3f} |")
    if validation:  # empty where this run did not check the label mode
        lines += ["", "| greedy validation: keep | chains | J exact | J fast | gap % |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {v['keep']} | {v['chains']} | {v['J_exact']} | {v['J_fast']} | "
                  f"{v['gap_percent']} |" for v in validation]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--evals", required=True, help="Space-separated eval names, in order.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--table", type=Path, required=True)
    parser.add_argument("--plot", type=Path, help="Accuracy against generated tokens (PNG).")
    args = parser.parse_args()

    from cotprune.core.models import load_tokenizer
    from cotprune.data.files import read_manifest

    model = read_manifest(args.work / "pruned" / "full.parquet").get("model")
    tokenizer = load_tokenizer(model)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    records = merge_records(previous.get("arms", []),
                            [arm_record(args.work, e, tokenizer) for e in args.evals.split()])
    validation = greedy_validation(args.work, model) or previous.get("greedy_validation", [])
    result = {"experiment": args.name, "model": model, "arms": records,
              "greedy_validation": validation}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.table.write_text(markdown(records, validation))
    if args.plot:
        write_plot(records, args.plot)
    print(args.table.read_text())


if __name__ == "__main__":
    main()
