"""Deterministic fault injection, for the fault tests (tests/test_faults.py, docs/faults.md).

A long stage calls `fault_point(POINT)` at its safe points: after a chunk of rows is written, after
greedy's mid-row state, after a training step or checkpoint. With the environment variable

    COTPRUNE_FAULT=POINT:N[:ACTION][,POINT:N[:ACTION]...]

the N-th time this process reaches POINT it does ACTION: `kill` (SIGKILL itself: the default,
what a pre-empted job sees), `term` (SIGTERM itself, as `kill PID` would), `int` (SIGINT, as
Ctrl-C), `stop` (SIGSTOP: frozen with its locks held, for the two-writers test) or `enospc`
(raise the OSError a full disk gives). The `write` point is reached inside every atomic file
write, before the rename, so that an injected fault there lands in the middle of an output.

Unset (always, outside the tests) this costs one dictionary look-up per call.
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

ENV = "COTPRUNE_FAULT"
_reached: Counter[str] = Counter()


def _plan(spec: str) -> list[tuple[str, int, str]]:
    plan = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, n, *action = item.split(":")
        plan.append((point, int(n), action[0] if action else "kill"))
    return plan


def fault_point(point: str, path: object = None) -> None:
    """Count one arrival at `point`; do what COTPRUNE_FAULT asks for on the N-th."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _reached[point] += 1
    for name, n, action in _plan(spec):
        if name != point or _reached[point] != n:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        elif action == "int":  # Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        elif action == "stop":  # freeze, lock held, until the test kills it
            os.kill(os.getpid(), signal.SIGSTOP)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device (injected)",
                          None if path is None else str(path))
        else:
            raise ValueError(f"{ENV}: unknown action {action!r}")


def reset() -> None:
    """Forget the counts (tests that run several commands in one process)."""
    _reached.clear()
