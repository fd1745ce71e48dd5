"""Logs and progress on stderr, the one-line JSON summary on stdout (SPEC "Common options").

On a terminal progress is a rich bar; otherwise (CI, pipes, files) a plain line every few
seconds, so logs stay readable.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

log = logging.getLogger("cotprune")


def setup_logging() -> None:
    if log.handlers:
        return
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s cotprune: %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def emit_summary(summary: dict) -> None:
    """The run's one line of JSON on stdout, printed once: by rank 0 under torchrun or
    accelerate (RANK), so that N processes do not print N summaries."""
    if int(os.environ.get("RANK", 0)) != 0:
        return
    sys.stdout.write(json.dumps(summary, default=float) + "\n")
    sys.stdout.flush()


class Progress:
    """Counts rows (and tokens) done; a rich bar on a terminal, plain lines elsewhere.

    Rows done by an earlier run (`--resume`) or skipped are counted with `skip`: they move the
    count but not the rate, so the rate and the time left are those of this run's work.
    """

    def __init__(self, total: int, description: str, *, every_s: float = 10.0):
        self.total, self.description, self.every_s = total, description, every_s
        self.done = self.tokens = self.skipped = 0
        self.start = self._last = time.perf_counter()
        self._bar = None
        if sys.stderr.isatty():
            from rich import progress as rp
            from rich.console import Console

            self._bar = rp.Progress(
                rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                rp.TextColumn("{task.fields[rate]}"), rp.TimeRemainingColumn(),
                console=Console(stderr=True), transient=False)
            self._task = self._bar.add_task(description, total=total, rate="")
            self._bar.start()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def rate_text(self) -> str:
        """This run's rate (rows/s, or s/row for slow stages such as greedy), tokens/s, and
        the time left at that rate."""
        s = max(self.seconds, 1e-9)
        worked = self.done - self.skipped
        tokens = [f"{self.tokens / s:.0f} tok/s"] if self.tokens else []
        if worked == 0:
            return ", ".join(tokens)
        rate = f"{worked / s:.2f} rows/s" if worked >= s else f"{s / worked:.0f} s/row"
        left = (self.total - self.done) * s / worked
        return ", ".join([rate, *tokens, f"{format_duration(left)} left"])

    def skip(self, rows: int = 1) -> None:
        """Rows that need no work in this run: done before (--resume) or skipped."""
        self.skipped += rows
        self.advance(rows)

    def advance(self, rows: int = 1, tokens: int = 0) -> None:
        self.done += rows
        self.tokens += tokens
        if self._bar is not None:
            self._bar.update(self._task, advance=rows, rate=self.rate_text())
        elif time.perf_counter() - self._last >= self.every_s or self.done == self.total:
            self._last = time.perf_counter()
            log.info("%s: %d/%d (%s)", self.description, self.done, self.total, self.rate_text())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_duration(seconds: float) -> str:
    """1h05m, 12m30s or 42s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
