"""Commands that make and look at chain files: `import`, `synth`, `show`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cotprune.cli import app
from cotprune.cli.options import Config, Limit, Output, Seed, Tokenizer, parse_list


@app.command("import")
def import_cmd(
    source: Annotated[str, typer.Argument(help="File, or a dataset name with --format hf.")],
    output: Output,
    format: Annotated[str, typer.Option(
        "--format", help="gsm8k|math|jsonl|csv|parquet|hf.")] = "jsonl",
    question_field: Annotated[str, typer.Option("--question-field")] = "question",
    cot_field: Annotated[str, typer.Option("--cot-field")] = "cot",
    answer_field: Annotated[str, typer.Option("--answer-field")] = "answer",
    reference_field: Annotated[Optional[str], typer.Option("--reference-field")] = "reference",
    id_field: Annotated[Optional[str], typer.Option("--id-field")] = "id",
    keep_calc: Annotated[bool, typer.Option(
        "--keep-calc", help="gsm8k: keep the <<...>> calculator annotations.")] = False,
    split: Annotated[str, typer.Option("--split", help="hf: the split to load.")] = "train",
    limit: Limit = None,
    config: Config = None,
) -> None:
    """Convert a dataset into a chains file (id, question, cot, answer, reference)."""
    from cotprune.console import emit_summary
    from cotprune.data.files import CHAIN_SCHEMA, make_manifest, write_table
    from cotprune.data.importers import FieldMap, import_chains

    fields = FieldMap(question=question_field, cot=cot_field, answer=answer_field,
                      reference=reference_field, id=id_field)
    rows = import_chains(source, format, fields=fields, keep_calc=keep_calc, split=split,
                         limit=limit)
    import pyarrow as pa

    write_table(pa.Table.from_pylist(rows, schema=CHAIN_SCHEMA), output,
                make_manifest("import", source=source, format=format))
    emit_summary({"command": "import", "rows": len(rows), "output": str(output)})


@app.command("synth")
def synth_cmd(
    kind: Annotated[str, typer.Argument(help="Only 'arithmetic' for now.")],
    output: Output,
    n: Annotated[int, typer.Option("-n", min=1, help="Number of problems.")] = 100,
    seed: Seed = 0,
    steps: Annotated[str, typer.Option("--steps", help="Operations per problem: N or MIN-MAX.")
                     ] = "2-5",
    max_start: Annotated[int, typer.Option("--max-start", help="Largest starting amount.")] = 40,
    max_operand: Annotated[int, typer.Option(
        "--max-operand", help="Largest amount added (and per-pack bound, at most 6 and 9).")] = 30,
    operations: Annotated[str, typer.Option(
        "--operations", help="Comma-separated: add,sub,mul,groups.")] = "add,sub,mul,groups",
    style: Annotated[str, typer.Option(
        "--style", help="verbose (long filler and checks) or brief (the same, in fewer words).")
    ] = "verbose",
    config: Config = None,
) -> None:
    """Make synthetic chains with exact answers and deliberately verbose reasoning."""
    from dataclasses import asdict

    import pyarrow as pa

    from cotprune.console import emit_summary
    from cotprune.data.files import CHAIN_SCHEMA, make_manifest, write_table
    from cotprune.data.synth import SynthOptions, parse_steps, synth_arithmetic
    from cotprune.errors import InputError

    if kind != "arithmetic":
        raise InputError(f"synth knows only 'arithmetic', got {kind!r}")
    min_steps, max_steps = parse_steps(steps)
    opts = SynthOptions(min_steps=min_steps, max_steps=max_steps, max_start=max_start,
                        max_operand=max_operand,
                        operations=tuple(parse_list(operations, "--operations", str)),
                        style=style)
    rows = synth_arithmetic(n, seed, opts)
    write_table(pa.Table.from_pylist(rows, schema=CHAIN_SCHEMA), output,
                make_manifest("synth", kind=kind, n=n, seed=seed, options=asdict(opts)))
    emit_summary({"command": "synth", "rows": len(rows), "output": str(output)})


@app.command("show")
def show_cmd(
    file: Annotated[Path, typer.Argument(help="A chains, scores or pruned file.")],
    id: Annotated[Optional[str], typer.Option("--id", help="Show only this chain.")] = None,
    keep: Annotated[Optional[float], typer.Option(
        "--keep", help="Pruned files: show this keep ratio (default: the smallest present).")
    ] = None,
    tokenizer: Tokenizer = None,
    limit: Limit = 3,
    config: Config = None,
) -> None:
    """Render chains in the terminal (pruned files: deleted tokens struck through)."""
    from cotprune.report.show import show_file

    show_file(file, chain_id=id, keep=keep, limit=limit, tokenizer=tokenizer)
