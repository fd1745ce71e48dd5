"""`cotprune generate`: a teacher writes chains for questions.

Each question is asked with the same prompt ids a chain's prompt has in training, sampled
`--samples` times, and each response is split into CoT and answer. With `--keep-correct` only the
first correct, untruncated sample of each question is kept (rejection sampling against
`reference`); questions with none are dropped and counted. Without it every sample is a row
(ids `Q#k` when there are several), with `truncated` and `correct` marking its quality.

Data-parallel and resumable through `files.StageOutput`: batches are planned over this shard's
rows in input order and seeded by their index, so a resumed run forms the same batches, skips
the finished ones (a batch is written as one chunk, so one finished row means a finished
batch) and draws the same samples as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from cotprune.console import Progress, log
from cotprune.core.models import ModelOptions
from cotprune.core.stage import RunOptions, open_stage
from cotprune.data.files import (
    CHAIN_FIELDS,
    StageOutput,
    extend_schema,
    read_table,
    validate_chains,
)
from cotprune.data.layout import ANSWER_PREFIX, ChainLayout
from cotprune.errors import InputError
from cotprune.training.grading import is_correct
from cotprune.training.sampling import (
    Response,
    SamplingOptions,
    generate_batch,
    plan_generation_batches,
    response_answer,
    split_response,
    stop_token_ids,
    too_long,
)

GENERATED_FIELDS = [
    pa.field("source_id", pa.string()),
    pa.field("sample", pa.int32()),
    pa.field("response", pa.string()),
    pa.field("generated_tokens", pa.int32()),
    pa.field("truncated", pa.bool_()),
    pa.field("correct", pa.bool_()),
]
DONE_QUESTIONS = "questions.done"  # state file: ids of questions whose batch was written


@dataclass
class GenerateOptions:
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    keep_correct: bool = False
    answer_marker: str = ANSWER_PREFIX
    batch_tokens: int = 16384

    def __post_init__(self) -> None:
        if not self.answer_marker:
            raise InputError("--answer-marker must not be empty")
        if self.batch_tokens < 1:
            raise InputError("--batch-tokens must be at least 1")


def batch_seed(seed: int, batch_index: int) -> int:
    """The RNG seed of one batch: fixed by the run's seed and the batch's place in the plan."""
    return (seed * 1_000_003 + batch_index) % (2**63)


def too_long_questions(model, tokenizer, questions: Sequence[str], opts: SamplingOptions,
                       ) -> list[int]:
    """Indices of the questions whose prompt leaves no room for --max-new-tokens in the model's
    context: generate and eval skip them and count them."""
    layout = ChainLayout(tokenizer)
    return too_long([len(layout.prompt_ids(q)) for q in questions], opts.max_new_tokens, model)


def warn_too_long(ids: Sequence[str], opts: SamplingOptions) -> None:
    if ids:
        shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
        log.warning("skipping %d question(s) too long for the model's context with "
                    "--max-new-tokens %d: %s", len(ids), opts.max_new_tokens, shown)


def generate_in_batches(model, tokenizer, questions: Sequence[str], opts: SamplingOptions,
                        batch_tokens: int, *, skip_batch: Callable[[list[int]], bool],
                        exclude: Sequence[int] = (),
                        ) -> Iterator[tuple[list[int], list[list[Response]]]]:
    """Yield (row indices, responses per row) batch by batch, skipping batches already done and
    the rows in `exclude` (too long: `question_prompts`)."""
    chain_layout = ChainLayout(tokenizer)
    prompts = [chain_layout.prompt_ids(q) for q in questions]
    stops = stop_token_ids(tokenizer, chain_layout)
    gone = set(exclude)
    kept = [i for i in range(len(prompts)) if i not in gone]
    plan = [[kept[j] for j in rows] for rows in
            plan_generation_batches([len(prompts[i]) for i in kept], opts, batch_tokens)]
    for b, rows in enumerate(plan):
        if skip_batch(rows):
            continue
        responses = generate_batch(model, tokenizer, [prompts[i] for i in rows], opts, stops,
                                   seed=None if opts.greedy else batch_seed(opts.seed, b))
        yield rows, responses


def output_id(question_id: str, sample: int, opts: GenerateOptions) -> str:
    if opts.keep_correct or opts.sampling.samples == 1:
        return question_id
    return f"{question_id}#{sample}"


def chain_rows(row: dict, responses: list[Response], opts: GenerateOptions) -> list[dict]:
    """The output rows of one question: every sample, or the first correct one."""
    reference = row.get("reference")
    out = []
    for k, resp in enumerate(responses):
        cot, answer = split_response(resp.text, opts.answer_marker)
        correct = None if reference is None else (
            not resp.truncated and is_correct(response_answer(resp.text, opts.answer_marker),
                                              reference))
        chain = {**row, "id": output_id(row["id"], k, opts), "source_id": row["id"],
                 "sample": k, "cot": cot, "answer": answer or "", "reference": reference,
                 "response": resp.text, "generated_tokens": resp.generated_tokens,
                 "truncated": resp.truncated, "correct": correct}
        if opts.keep_correct:
            if correct:
                return [chain]
            continue
        out.append(chain)
    return out


def generate_options(opts: GenerateOptions) -> dict:
    """What changes the rows `generate` writes; --batch-tokens too, since each batch of the plan
    draws its own seeded samples."""
    from cotprune.core.stage import plain

    return {**plain(opts.sampling), "keep_correct": opts.keep_correct,
            "answer_marker": opts.answer_marker, "batch_tokens": opts.batch_tokens}


def run_generate(questions_path: Path, output: Path, model_opts: ModelOptions,
                 opts: GenerateOptions, run: RunOptions | None = None) -> dict:
    """The `generate` stage; returns its summary."""
    run = run or RunOptions(seed=opts.sampling.seed)
    need = ["id", "question"] + (["reference"] if opts.keep_correct else [])
    stage = open_stage(
        "generate", questions_path, output, model_opts, run,
        validate=lambda table, file: validate_chains(table, file, need=need),
        output_schema=lambda s: extend_schema(s, [*CHAIN_FIELDS[1:], *GENERATED_FIELDS]),
        options=generate_options(opts), merge_adapter=True)
    rows, out_stage = stage.rows, stage.output
    done = _done_questions(out_stage, rows, opts)
    questions = [r["question"] for r in rows]
    skipped = too_long_questions(stage.model, stage.tokenizer, questions, opts.sampling)
    warn_too_long([rows[i]["id"] for i in skipped], opts.sampling)
    new_samples = new_truncated = 0
    with Progress(len(rows), "generate") as progress:
        progress.skip(sum(1 for r in rows if r["id"] in done) + len(skipped))
        for batch, responses in generate_in_batches(
                stage.model, stage.tokenizer, questions, opts.sampling, opts.batch_tokens,
                skip_batch=lambda b: any(rows[i]["id"] in done for i in b), exclude=skipped):
            out, local = [], []
            for i, group in zip(batch, responses, strict=True):
                chains = chain_rows(rows[i], group, opts)
                out += chains
                local += [i] * len(chains)
                new_samples += len(group)
                new_truncated += sum(r.truncated for r in group)
            stage.write(out, local)
            out_stage.append_state(DONE_QUESTIONS, (rows[i]["id"] for i in batch))
            progress.advance(len(batch), sum(r.generated_tokens for g in responses for r in g))
    n = out_stage.finish()
    result = read_table(out_stage.target, columns=["correct", "truncated"])
    correct = [c for c in result.column("correct").to_pylist() if c is not None]
    summary = {"command": "generate", "questions": len(rows), "skipped": len(skipped), "rows": n,
               "new_samples": new_samples, "new_truncated": new_truncated,
               "correct_rows": sum(correct), "graded_rows": len(correct),
               "output": str(out_stage.target)}
    if opts.keep_correct:
        summary["dropped_questions"] = len(rows) - n
    log.info("generate: %d rows from %d questions", n, len(rows))
    return summary


def _done_questions(stage: StageOutput, rows: list[dict], opts: GenerateOptions) -> set[str]:
    """Questions finished by an interrupted run: the state file, plus those with written rows."""
    done: set[str] = set()
    state = stage.state_path(DONE_QUESTIONS)
    if state.exists():
        done.update(line.strip() for line in state.read_text().splitlines() if line.strip())
    written = stage.done_ids
    if written:
        by_output = {output_id(r["id"], k, opts): r["id"] for r in rows
                     for k in range(opts.sampling.samples)}
        done.update(by_output[i] for i in written if i in by_output)
    return done
