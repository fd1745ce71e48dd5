"""`cotprune show`: render chains in the terminal.

Pruned rows show the original CoT token by token: deleted tokens dim and struck through, kept
tokens coloured by when greedy would delete them (red: next to go, green: last or never).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from cotprune.data.files import (
    iter_rows,
    read_manifest,
    read_table,
    require_columns,
    validate_chains,
)
from cotprune.errors import InputError

# From "deleted soon after this ratio" to "kept longest".
STEP_COLOURS = ["red", "dark_orange", "yellow", "green_yellow", "green"]


def pruned_cot_text(row: dict, token_texts: list[str]) -> Text:
    """The original CoT with deleted tokens struck through and kept ones coloured by step."""
    kept = set(row["kept_positions"])
    order = row.get("prune_order") or []
    rank = {i: r for r, i in enumerate(order)}
    n_deleted = len(token_texts) - len(kept)
    later = max(1, len(order) - n_deleted)  # deletions after this ratio on the trajectory
    text = Text()
    for i, tok in enumerate(token_texts):
        if i not in kept:
            text.append(tok, style="dim strike")
        elif i in rank:
            step = (rank[i] - n_deleted) / later  # 0: next to go, 1: last to go
            text.append(tok, style=STEP_COLOURS[min(int(step * 4), 3)])
        else:
            text.append(tok, style=STEP_COLOURS[-1])
    return text


def _token_texts_for(path: Path, tokenizer_name: str | None = None):
    """A function row -> CoT token texts, with `tokenizer_name` or else the tokenizer of the
    model that pruned the file."""
    from cotprune.core.models import DEFAULT_MODEL, load_tokenizer
    from cotprune.data.layout import token_texts

    manifest = read_manifest(path) or {}
    tokenizer = load_tokenizer(tokenizer_name or manifest.get("model") or DEFAULT_MODEL)
    return lambda row: token_texts(tokenizer, row["input_ids"][row["cot_start"]:row["cot_end"]])


def chain_panel(row: dict, cot: Text | None = None) -> Panel:
    body = Text()
    body.append("Q: ", style="bold")
    body.append(f"{row['question']}\n\n")
    if cot is None:
        body.append(f"{row['cot']}\n\n", style="cyan")
    else:
        body.append_text(cot)
        body.append("\n\n")
    body.append("A: ", style="bold")
    body.append(str(row["answer"]), style="green")
    if row.get("reference") is not None:
        body.append(f"   (reference: {row['reference']})", style="dim")
    return Panel(body, title=str(row["id"]), expand=False)


def show_file(path: Path, *, chain_id: str | None = None, keep: float | None = None,
              limit: int | None = 3, tokenizer: str | None = None) -> None:
    table = read_table(path)
    require_columns(table, ["id", "question", "cot", "answer"], str(path))
    validate_chains(table, str(path), need=["id"], unique_ids=False)  # rows, ids not null
    console = Console()
    pruned = "kept_positions" in table.column_names and "input_ids" in table.column_names
    texts_of = _token_texts_for(path, tokenizer) if pruned else None
    if pruned and keep is None:
        keep = min(table.column("keep_ratio").to_pylist())
    shown = 0
    for row in iter_rows(table):
        if chain_id is not None and row["id"] != chain_id:
            continue
        if keep is not None and row.get("keep_ratio") is not None \
                and abs(row["keep_ratio"] - keep) > 1e-6:
            continue
        if pruned:
            title = (f"{row['method']}: kept {row['kept_tokens']}/{row['original_tokens']} "
                     f"tokens (keep {row['keep_ratio']:.2f}), J = {row['objective_nll']:.3f}")
            console.print(title, style="bold")
            console.print(chain_panel(row, pruned_cot_text(row, texts_of(row))))
        else:
            console.print(chain_panel(row))
        shown += 1
        if chain_id is None and limit is not None and shown >= limit:
            break
    if shown == 0:
        raise InputError(f"no chain with id {chain_id!r}" if chain_id else "no rows to show",
                         file=str(path))
