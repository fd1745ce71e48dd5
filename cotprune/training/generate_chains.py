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
from cotprune.data.files import (
    CHAIN_FIELDS,
    Shard,
    StageOutput,
    extend_schema,
    make_manifest,
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
    limit: int | None = None
    resume: bool = False
    shard: str | None = None

    def __post_init__(self) -> None:
        if not self.answer_marker:
            raise InputError("--answer-marker must not be empty")
        if self.batch_tokens < 1:
            raise InputError("--batch-tokens must be at least 1")


def batch_seed(seed: int, batch_index: int) -> int:
    """The RNG seed of one batch: fixed by the run's seed and the batch's place in the plan."""
    return (seed * 1_000_003 + batch_index) % (2**63)


def generate_in_batches(model, tokenizer, questions: Sequence[str], opts: SamplingOptions,
                        batch_tokens: int, *, skip_batch: Callable[[list[int]], bool],
                        ) -> Iterator[tuple[list[int], list[list[Response]]]]:
    """Yield (row indices, responses per row) batch by batch, skipping batches already done."""
    chain_layout = ChainLayout(tokenizer)
    prompts = [chain_layout.prompt_ids(q) for q in questions]
    stops = stop_token_ids(tokenizer, chain_layout)
    plan = plan_generation_batches([len(p) for p in prompts], opts, batch_tokens)
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


def _read_questions(path: Path, opts: GenerateOptions) -> pa.Table:
    table = read_table(path)
    need = ["id", "question"] + (["reference"] if opts.keep_correct else [])
    validate_chains(table, str(path), need=need)
    if opts.limit is not None:
        table = table.slice(0, opts.limit)
    return table


def run_generate(questions_path: Path, output: Path, model_opts: ModelOptions,
                 opts: GenerateOptions) -> dict:
    """The `generate` stage; returns its summary."""
    from cotprune.core.models import load_model

    table = _read_questions(Path(questions_path), opts)
    shard = Shard.parse(opts.shard)
    span = shard.rows(table.num_rows)
    rows = table.slice(span.start, len(span)).to_pylist()
    schema = extend_schema(table.schema, [*CHAIN_FIELDS[1:], *GENERATED_FIELDS])
    manifest = make_manifest("generate", model=model_opts.model, adapter=model_opts.adapter,
                             dtype=model_opts.dtype, seed=opts.sampling.seed,
                             samples=opts.sampling.samples,
                             temperature=opts.sampling.temperature, top_p=opts.sampling.top_p,
                             max_new_tokens=opts.sampling.max_new_tokens,
                             keep_correct=opts.keep_correct)
    stage = StageOutput(output, schema, manifest, shard=shard, resume=opts.resume)
    done = _done_questions(stage, rows, opts)
    model, tokenizer = load_model(model_opts, merge_adapter=True)
    counts = {"questions": len(rows), "samples": 0, "kept": 0, "truncated": 0, "correct": 0}
    with Progress(len(rows), "generate") as progress:
        progress.advance(sum(1 for r in rows if r["id"] in done))
        for batch, responses in generate_in_batches(
                model, tokenizer, [r["question"] for r in rows], opts.sampling,
                opts.batch_tokens, skip_batch=lambda b: any(rows[i]["id"] in done for i in b)):
            out, order = [], []
            for i, group in zip(batch, responses, strict=True):
                chains = chain_rows(rows[i], group, opts)
                out += chains
                order += [span[i]] * len(chains)
                counts["samples"] += len(group)
                counts["truncated"] += sum(r.truncated for r in group)
                counts["kept"] += len(chains)
            stage.write(out, order)
            with open(stage.state_path(DONE_QUESTIONS), "a") as f:
                f.writelines(rows[i]["id"] + "\n" for i in batch)
            progress.advance(len(batch), sum(r.generated_tokens for g in responses for r in g))
    n = stage.finish()
    result = read_table(stage.target, columns=["correct", "truncated"])
    correct = [c for c in result.column("correct").to_pylist() if c is not None]
    summary = {"command": "generate", "questions": len(rows), "rows": n,
               "new_samples": counts["samples"], "new_truncated": counts["truncated"],
               "correct_rows": sum(correct), "graded_rows": len(correct),
               "output": str(stage.target)}
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
