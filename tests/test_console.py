"""Progress lines: this run's rate and time left, not inflated by resumed or skipped rows."""

from __future__ import annotations

import pytest

from cotprune import console
from cotprune.console import Progress, format_duration


@pytest.mark.parametrize("seconds, text", [(42, "42s"), (750, "12m30s"), (3900, "1h05m"),
                                           (59.6, "1m00s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_rate_counts_only_this_runs_rows(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(console.time, "perf_counter", lambda: clock[0])
    p = Progress(10, "prune greedy")
    p.skip(4)                      # done by an earlier run: no time spent on them now
    assert p.rate_text() == ""
    clock[0] += 240.0
    p.advance(2, tokens=48_000)    # two chains in 4 minutes: 2 min each, 4 left -> 8 min
    assert p.done == 6
    assert p.rate_text() == "120 s/row, 200 tok/s, 8m00s left"
    clock[0] += 60.0
    p.advance(298)                 # fast stages read in rows/s
    assert p.done == 304
    assert p.rate_text().startswith("1.00 rows/s, 160 tok/s")
