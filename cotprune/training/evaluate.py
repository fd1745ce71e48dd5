"""`cotprune eval`: answer a benchmark's questions (greedy by default) and grade the answers.

Per row: the input columns, plus `response`, `prediction` (the stated answer, null when none),
`correct`, `generated_tokens` and `truncated`. The summary gives accuracy and mean generated
tokens over all rows and split by truncation; that pair is the accuracy-vs-length point a pruned
student is judged by.

`--adapter` takes a `distill` output directory as it is (a peft adapter with its tokenizer);
`--keep R` writes the ratio into each prompt exactly as `distill --ratio-conditioned`
did in training (`sampling.ratio_question`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from cotprune.console import Progress, log
from cotprune.core.models import ModelOptions
from cotprune.core.stage import RunOptions, open_stage
from cotprune.data.files import extend_schema, read_table, validate_chains
from cotprune.data.layout import ANSWER_PREFIX
from cotprune.errors import InputError
from cotprune.training.generate_chains import (
    generate_in_batches,
    too_long_questions,
    warn_too_long,
)
from cotprune.training.grading import is_correct
from cotprune.training.sampling import SamplingOptions, ratio_question, response_answer

EVAL_FIELDS = [
    pa.field("response", pa.string()),
    pa.field("prediction", pa.string()),
    pa.field("correct", pa.bool_()),
    pa.field("generated_tokens", pa.int32()),
    pa.field("truncated", pa.bool_()),
]


@dataclass
class EvalOptions:
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    keep_ratio: float | None = None
    answer_marker: str = ANSWER_PREFIX
    batch_tokens: int = 16384

    def __post_init__(self) -> None:
        if self.keep_ratio is not None and not 0 < self.keep_ratio <= 1:
            raise InputError("--keep must be in (0, 1]")
        if self.sampling.samples != 1:
            raise InputError("eval draws one response per question (--samples 1)")


def reference_column(table: pa.Table) -> str:
    """`reference`, or `answer` for chain files without one."""
    if "reference" in table.column_names:
        return "reference"
    if "answer" in table.column_names:
        log.info("eval: no 'reference' column, grading against 'answer'")
        return "answer"
    raise InputError("missing column (eval grades against 'reference')", column="reference")


def summarise(correct: list[bool], tokens: list[int], truncated: list[bool]) -> dict:
    """n, accuracy and mean generated tokens, overall and split by truncation."""
    def part(mask: list[bool]) -> dict:
        c = [x for x, m in zip(correct, mask, strict=True) if m]
        t = [x for x, m in zip(tokens, mask, strict=True) if m]
        return {"n": len(c), "accuracy": sum(c) / len(c) if c else None,
                "mean_generated_tokens": sum(t) / len(t) if t else None}

    overall = part([True] * len(correct))
    return {**overall, "truncated": part(truncated),
            "complete": part([not x for x in truncated])}


def check_adapter_dir(adapter: str | None, keep_ratio: float | None) -> None:
    """A distill output directory: an adapter is required; warn when ratios do not match."""
    if adapter is None:
        return
    path = Path(adapter)
    if (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise InputError("this directory holds a fully fine-tuned model: pass it as --model",
                         file=adapter)
    meta = path / "distill.json"
    if meta.exists():
        conditioned = json.loads(meta.read_text()).get("ratio_conditioned", False)
        if conditioned and keep_ratio is None:
            log.warning("eval: %s was trained ratio-conditioned; pass --keep R", adapter)
        if not conditioned and keep_ratio is not None:
            log.warning("eval: %s was not trained ratio-conditioned; --keep only "
                        "changes its prompt", adapter)


def eval_options(opts: EvalOptions) -> dict:
    """What changes the rows `eval` writes (--batch-tokens too: sampled batches are seeded)."""
    from cotprune.core.stage import plain

    return {**plain(opts.sampling), "keep_ratio": opts.keep_ratio,
            "answer_marker": opts.answer_marker, "batch_tokens": opts.batch_tokens}


def run_eval(bench: Path, output: Path, model_opts: ModelOptions, opts: EvalOptions,
             run: RunOptions | None = None) -> dict:
    """The `eval` stage; returns its summary (computed from the whole output, resumed or not)."""
    run = run or RunOptions(seed=opts.sampling.seed)
    check_adapter_dir(model_opts.adapter, opts.keep_ratio)
    ref_col = None

    def validate(table: pa.Table, file: str) -> None:
        nonlocal ref_col
        ref_col = reference_column(table)
        validate_chains(table, file, need=["id", "question", ref_col])

    stage = open_stage("eval", bench, output, model_opts, run, validate=validate,
                       output_schema=lambda s: extend_schema(s, EVAL_FIELDS),
                       options=eval_options(opts), merge_adapter=True)
    rows = stage.rows
    done = stage.output.done_ids
    questions = [ratio_question(r["question"], opts.keep_ratio) for r in rows]
    skipped = too_long_questions(stage.model, stage.tokenizer, questions, opts.sampling)
    warn_too_long([rows[i]["id"] for i in skipped], opts.sampling)
    with Progress(len(rows), "eval") as progress:
        progress.skip(len(done) + len(skipped))
        for batch, responses in generate_in_batches(
                stage.model, stage.tokenizer, questions, opts.sampling, opts.batch_tokens,
                skip_batch=lambda b: any(rows[i]["id"] in done for i in b), exclude=skipped):
            out = []
            for i, (resp,) in zip(batch, responses, strict=True):
                prediction = response_answer(resp.text, opts.answer_marker)
                out.append({**rows[i], "response": resp.text, "prediction": prediction,
                            "correct": is_correct(prediction, rows[i][ref_col]),
                            "generated_tokens": resp.generated_tokens,
                            "truncated": resp.truncated})
            stage.write(out, batch)
            progress.advance(len(batch), sum(g[0].generated_tokens for g in responses))
    stage.output.finish()
    result = read_table(stage.output.target, columns=["correct", "generated_tokens", "truncated"])
    summary = summarise(result.column("correct").to_pylist(),
                        result.column("generated_tokens").to_pylist(),
                        result.column("truncated").to_pylist())
    return {"command": "eval", **summary, "skipped": len(skipped), "keep_ratio": opts.keep_ratio,
            "output": str(stage.output.target)}
