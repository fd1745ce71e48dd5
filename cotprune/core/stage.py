"""The one recipe of the data-parallel stages (`score`, `prune`, `generate`, `eval`).

    read -> validate -> limit -> shard -> load model -> manifest -> output -> loop -> finish

`open_stage` does everything up to the loop and hands back a `Stage`: this process's rows, the
model and tokenizer, and the `files.StageOutput` to write finished rows into. The model is loaded
before the output is opened, so that a bad input file or a bad model stops the run before
anything exists on disk, and so that the manifest records the dtype and device actually used
(not "auto"). The stage itself only writes the loop and its summary.

Every manifest (`run_manifest`, also used by `distill` and `rl`) records the cotprune version, the
command, the input files with a content fingerprint, the model, adapter and tokenizer, the dtype
and device used, the seed, and under `options` every option that changes the output. `--resume`
compares that manifest with the interrupted run's and refuses (exit 2) when they differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from cotprune.data.files import (
    Shard,
    StageOutput,
    check_writable,
    input_record,
    make_manifest,
    read_table,
)
from cotprune.errors import InputError


@dataclass
class RunOptions:
    """How a data-parallel stage runs: which rows (--limit, --shard), --resume and --seed."""

    limit: int | None = None
    shard: str | None = None
    resume: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit must be >= 1, got {self.limit}")


def model_facts(model, tokenizer) -> dict:
    """The dtype and device a loaded model actually runs in, and its tokenizer."""
    first = next(model.parameters())
    return {"tokenizer": getattr(tokenizer, "name_or_path", None),
            "dtype": str(first.dtype).removeprefix("torch."), "device": str(first.device)}


def plain(options: Any) -> Any:
    """Options as JSON-ready values: dataclasses become dicts, paths strings, tuples lists."""
    if is_dataclass(options) and not isinstance(options, type):
        options = asdict(options)
    if isinstance(options, dict):
        return {str(k): plain(v) for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        return [plain(v) for v in options]
    if isinstance(options, Path):
        return str(options)
    return options


def run_manifest(command: str, inputs: Sequence[str | Path], model_opts, *, model=None,
                 tokenizer=None, seed: int, options: dict) -> dict:
    """The manifest every stage writes (module docstring); `model` None before it is loaded."""
    facts = model_facts(model, tokenizer) if model is not None else {
        "tokenizer": None, "dtype": model_opts.dtype, "device": model_opts.device}
    return make_manifest(command, inputs=[input_record(p) for p in inputs],
                         model=model_opts.model, adapter=model_opts.adapter, **facts, seed=seed,
                         options=plain(options))


def read_rows(path: str | Path, validate: Callable[[pa.Table, str], None],
              limit: int | None) -> pa.Table:
    """read -> validate -> limit: the whole input is validated, then cut to --limit rows."""
    table = read_table(path)
    validate(table, str(path))
    return table.slice(0, limit) if limit is not None else table


@dataclass
class Stage:
    """An opened stage: this shard's rows, the model, and the output to write them into."""

    table: pa.Table  # the input after --limit (its schema is what passes through)
    rows: list[dict]  # this process's share
    span: range  # the input row index of each of `rows`
    model: Any
    tokenizer: Any
    output: StageOutput

    def write(self, rows: list[dict], local: Sequence[int]) -> None:
        """Write finished output rows; `local[k]` is the index into `self.rows` of `rows[k]`."""
        self.output.write(rows, [self.span[i] for i in local])


def open_stage(command: str, source: str | Path, out: str | Path, model_opts, run: RunOptions,
               *, validate: Callable[[pa.Table, str], None],
               output_schema: Callable[[pa.Schema], pa.Schema], options: dict,
               check_model: Callable[[Any], None] | None = None,
               merge_adapter: bool = False) -> Stage:
    """Everything before a stage's loop; see the module docstring for the order and why.

    `merge_adapter` folds a LoRA adapter into the weights (the generating stages: faster, the
    same function up to float rounding)."""
    from cotprune.core.models import load_model

    table = read_rows(source, validate, run.limit)
    check_writable(out)  # before the model loads: a bad -o costs nothing
    shard = Shard.parse(run.shard)
    span = shard.rows(table.num_rows)
    rows = table.slice(span.start, len(span)).to_pylist()
    import torch

    torch.manual_seed(run.seed)
    model, tokenizer = load_model(model_opts, merge_adapter=merge_adapter)
    if check_model is not None:
        check_model(model)  # e.g. an architecture `attention` cannot read fails here
    manifest = run_manifest(command, [source], model_opts, model=model, tokenizer=tokenizer,
                            seed=run.seed, options={**options, "limit": run.limit})
    output = StageOutput(out, output_schema(table.schema), manifest, shard=shard,
                         resume=run.resume)
    return Stage(table, rows, span, model, tokenizer, output)
