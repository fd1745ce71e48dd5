"""`cotprune show`: render chains in the terminal."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from cotprune.errors import InputError
from cotprune.files import iter_rows, read_table, require_columns


def chain_panel(row: dict) -> Panel:
    body = Text()
    body.append("Q: ", style="bold")
    body.append(f"{row['question']}\n\n")
    body.append(f"{row['cot']}\n\n", style="cyan")
    body.append("A: ", style="bold")
    body.append(str(row["answer"]), style="green")
    if row.get("reference") is not None:
        body.append(f"   (reference: {row['reference']})", style="dim")
    return Panel(body, title=str(row["id"]), expand=False)


def show_file(path: Path, *, chain_id: str | None = None, keep: float | None = None,
              limit: int | None = 3) -> None:
    table = read_table(path)
    require_columns(table, ["id", "question", "cot", "answer"], str(path))
    console = Console()
    shown = 0
    for row in iter_rows(table):
        if chain_id is not None and row["id"] != chain_id:
            continue
        if keep is not None and row.get("keep_ratio") is not None \
                and abs(row["keep_ratio"] - keep) > 1e-6:
            continue
        console.print(chain_panel(row))
        shown += 1
        if chain_id is None and limit is not None and shown >= limit:
            break
    if shown == 0:
        raise InputError(f"no chain with id {chain_id!r}" if chain_id else "no rows to show",
                         file=str(path))
