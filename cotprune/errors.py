"""The two kinds of failure the CLI distinguishes (SPEC "Errors and interruptions").

`InputError` is bad usage or bad input: exit status 2, and the message names the file, the row
and the column. Anything else that escapes a command is a run-time failure: exit status 1.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad usage or bad input; the CLI exits with status 2 and writes nothing."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: object | None = None,
        column: str | None = None,
    ) -> None:
        self.file, self.row, self.column = file, row, column
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(": ".join([*where, message]))
