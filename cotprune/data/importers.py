"""`cotprune import`: turn datasets into chain files (SPEC "chains").

Formats:
- `gsm8k`: JSONL rows {question, answer}; the CoT is the text before `####` with the `<<...>>`
  calculator annotations removed (unless `keep_calc`), the answer and the reference are the text
  after `####`.
- `math`: MATH / MATH-500 rows {problem, solution, answer?}; the CoT is the solution, the answer
  and reference are the `answer` field or else the last `\\boxed{...}` of the solution.
- `jsonl`, `csv`, `parquet`, `hf` (`datasets.load_dataset` on a name or local files): columns
  mapped with the `*_field` options.

Any bad row (not JSON, missing or empty field, duplicate id) raises `InputError` naming the file,
the line or row and the field; nothing is written then.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cotprune.errors import InputError

FORMATS = ("gsm8k", "math", "jsonl", "csv", "parquet", "hf")
_CALC = re.compile(r"<<[^<>]*>>")


@dataclass
class FieldMap:
    """Which source field feeds each chain column (`--question-field` etc.)."""

    question: str = "question"
    cot: str = "cot"
    answer: str = "answer"
    reference: str | None = "reference"
    id: str | None = "id"


def strip_calculator(text: str) -> str:
    """GSM8K's `<<48/2=24>>` annotations are for a calculator tool, not part of the reasoning."""
    return _CALC.sub("", text)


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1] if depth == 0 else None


# --- sources: yield (row label for errors, record dict) --------------------------------------

def _decode(raw: bytes, path: Path, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 (byte {raw[e.start]:#04x} at offset {e.start} of the "
                         "line); re-encode the file as UTF-8", file=str(path), row=where) from None


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, "rb") as f:  # bytes, so that a line that is not UTF-8 is named
        for n, raw in enumerate(f, 1):
            line = _decode(raw, path, f"line {n}")
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"not JSON ({e.msg})", file=str(path), row=f"line {n}") from None
            if not isinstance(rec, dict):
                raise InputError("a line must be a JSON object", file=str(path), row=f"line {n}")
            yield f"line {n}", rec


def _csv_records(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, "rb") as f:
        lines = [_decode(raw, path, f"line {n}") for n, raw in enumerate(f, 1)]
    reader = csv.DictReader(lines)
    for rec in reader:
        yield f"line {reader.line_num}", rec


def _parquet_records(path: Path) -> Iterator[tuple[str, dict]]:
    from cotprune.data.files import iter_rows, read_table

    for n, rec in enumerate(iter_rows(read_table(path))):
        yield f"row {n}", rec


def _hf_records(source: str, split: str) -> Iterator[tuple[str, dict]]:
    import datasets

    local = Path(source)
    try:
        if local.is_file():
            kind = {".jsonl": "json", ".json": "json", ".csv": "csv",
                    ".parquet": "parquet"}.get(local.suffix)
            if kind is None:
                raise InputError("hf format reads .json/.jsonl/.csv/.parquet files or hub names",
                                 file=source)
            ds = datasets.load_dataset(kind, data_files=str(local), split=split)
        else:
            ds = datasets.load_dataset(source, split=split)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        raise InputError(f"cannot load dataset ({e})", file=source) from None
    for n, rec in enumerate(ds):
        yield f"row {n}", rec


def _records(source: str, fmt: str, split: str) -> Iterator[tuple[str, dict]]:
    if fmt == "hf":
        return _hf_records(source, split)
    path = Path(source)
    if not path.is_file():
        raise InputError("no such file", file=source)
    if fmt == "csv":
        return _csv_records(path)
    if fmt == "parquet":
        return _parquet_records(path)
    if fmt == "math" and path.suffix == ".parquet":
        return _parquet_records(path)
    return _jsonl_records(path)


# --- record -> chain -------------------------------------------------------------------------

def _field(rec: dict, name: str, source: str, where: str, *, required: bool = True) -> str | None:
    value = rec.get(name)
    if isinstance(value, (dict, list)):  # str() of it would import "{'a': 1}" as text
        raise InputError(f"expected text, got {type(value).__name__}", file=source, row=where,
                         column=name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            what = "missing field" if name not in rec or value is None else "empty field"
            raise InputError(what, file=source, row=where, column=name)
        return None
    return str(value).strip()


def _gsm8k_chain(rec: dict, source: str, where: str) -> dict:
    question = _field(rec, "question", source, where)
    solution = _field(rec, "answer", source, where)
    if "####" not in solution:
        raise InputError("GSM8K answer has no '####' final-answer marker", file=source,
                         row=where, column="answer")
    cot, final = solution.rsplit("####", 1)
    final = final.strip().replace(",", "")
    if not final:
        raise InputError("empty final answer after '####'", file=source, row=where,
                         column="answer")
    return {"question": question, "cot": cot.strip(), "answer": final, "reference": final}


def _math_chain(rec: dict, source: str, where: str) -> dict:
    question = _field(rec, "problem", source, where)
    solution = _field(rec, "solution", source, where)
    answer = _field(rec, "answer", source, where, required=False) or last_boxed(solution)
    if not answer:
        raise InputError("no answer field and no \\boxed{} answer in the solution",
                         file=source, row=where, column="answer")
    return {"question": question, "cot": solution, "answer": answer, "reference": answer}


def _mapped_chain(rec: dict, fields: FieldMap, source: str, where: str) -> dict:
    return {
        "question": _field(rec, fields.question, source, where),
        "cot": _field(rec, fields.cot, source, where),
        "answer": _field(rec, fields.answer, source, where),
        "reference": _field(rec, fields.reference, source, where, required=False)
        if fields.reference else None,
    }


def import_chains(source: str, fmt: str, *, fields: FieldMap | None = None,
                  keep_calc: bool = False, split: str = "train",
                  limit: int | None = None) -> list[dict]:
    """Read `source` in format `fmt` into chain rows (dicts with the chain columns)."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    fields = fields or FieldMap()
    prefix = f"{fmt}-{Path(source).stem}" if fmt in ("gsm8k", "math") else Path(source).stem
    chains: list[dict] = []
    seen: dict[str, str] = {}
    for n, (where, rec) in enumerate(_records(source, fmt, split)):
        if limit is not None and len(chains) >= limit:
            break
        if fmt == "gsm8k":
            chain = _gsm8k_chain(rec, source, where)
            if not keep_calc:
                chain["cot"] = strip_calculator(chain["cot"])
        elif fmt == "math":
            chain = _math_chain(rec, source, where)
        else:
            chain = _mapped_chain(rec, fields, source, where)
        id_field = fields.id if fmt not in ("gsm8k", "math") else "id"
        given = rec.get(id_field) if id_field else None
        if fmt == "math" and given is None:
            given = rec.get("unique_id")
        chain_id = str(given) if given not in (None, "") else f"{prefix}-{n:05d}"
        if chain_id in seen:
            raise InputError(f"duplicate id {chain_id!r} (first at {seen[chain_id]})",
                             file=source, row=where, column=id_field or "id")
        seen[chain_id] = where
        chains.append({"id": chain_id, **chain})
    if not chains:
        raise InputError("no rows to import", file=source)
    return chains
