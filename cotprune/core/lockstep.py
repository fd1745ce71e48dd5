"""Several chains' greedy runs in lockstep, so that their candidates share forwards.

One chain's candidates fill a forward poorly: near the end of its deletions a step has a few
short rows, and on a GPU one chain never fills the device. `prune --lockstep N` runs N chains'
greedy loops side by side. Each loop runs in a thread of its own, on a scorer of its own (its
session, prompt KV and rows), but every model call goes through one `Lockstep`:

- a loop's call waits until every loop still running has made one (a round);
- the round runs in the main thread: the packed candidates of all loops as one forward
  (`RowRunner.run_packs`), every other call alone, in loop order;
- then each loop goes on with its answer.

Only the main thread touches the model, and a round always runs its calls in the same order, so
a run is reproducible; a chain's J equal those of a run without lockstep up to float rounding
(other batch shapes), and its deletions are the same unless two candidates tie that closely.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cotprune.core.runner import KvBudget, PackRequest, RowRunner


@dataclass
class _Call:
    """One loop's model call in a round: packed candidates (merged with the round's others),
    or any other call, run alone."""

    loop: int
    packed: PackRequest | None = None
    alone: Callable[[], Any] | None = None
    result: Any = None
    error: BaseException | None = None
    done: bool = False


class Lockstep:
    """Runs loops in threads and their model calls in rounds (see the module docstring)."""

    def __init__(self, runner: RowRunner):
        self.runner = runner
        self._cond = threading.Condition()
        self._calls: list[_Call] = []
        self._running = 0

    def run(self, loops: list[Callable[[LockstepRunner], Any]]) -> list[Any]:
        """Run every loop (called with its own runner view) to its end; their results in order.
        The first loop's error, if any, is raised once every loop has stopped."""
        results: list[Any] = [None] * len(loops)
        errors: list[BaseException | None] = [None] * len(loops)

        def body(i: int) -> None:
            try:
                results[i] = loops[i](LockstepRunner(self, i))
            except BaseException as e:  # noqa: BLE001 - raised again in the main thread
                errors[i] = e
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()

        self._running = len(loops)
        # daemons: a main thread stopped by a signal must not wait for loops blocked in a call
        threads = [threading.Thread(target=body, args=(i,), daemon=True)
                   for i in range(len(loops))]
        for thread in threads:
            thread.start()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: len(self._calls) == self._running)
                if not self._calls:
                    break
                calls = sorted(self._calls, key=lambda c: c.loop)
                self._calls = []
            self._run_round(calls)
            with self._cond:
                for c in calls:
                    c.done = True
                self._cond.notify_all()
        for thread in threads:
            thread.join()
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return results

    def call(self, loop: int, *, packed: PackRequest | None = None,
             alone: Callable[[], Any] | None = None) -> Any:
        """From loop `loop`'s thread: wait for the round that runs this call; its result."""
        c = _Call(loop, packed, alone)
        with self._cond:
            self._calls.append(c)
            self._cond.notify_all()
            self._cond.wait_for(lambda: c.done)
        if c.error is not None:
            raise c.error
        return c.result

    def _run_round(self, calls: list[_Call]) -> None:
        packed = [c for c in calls if c.packed is not None]
        if packed:
            try:
                for c, rows in zip(packed, self.runner.run_packs([c.packed for c in packed]),
                                   strict=True):
                    c.result = rows
            except Exception as e:  # a failed shared forward fails every loop in it
                for c in packed:
                    c.error = e
        for c in calls:
            if c.alone is not None:
                try:
                    c.result = c.alone()
                except Exception as e:
                    c.error = e


class LockstepRunner:
    """One loop's view of the shared `RowRunner`: its methods, each answered in a round."""

    def __init__(self, lockstep: Lockstep, loop: int):
        self._lockstep, self._loop = lockstep, loop
        runner = lockstep.runner
        self.device, self.can_bound, self.work = runner.device, runner.can_bound, runner.work

    def run_packed(self, lanes_of_tasks, budget: KvBudget, vocab):
        return self._lockstep.call(self._loop, packed=PackRequest(lanes_of_tasks, budget, vocab))

    def run_chain(self, *args):
        return self._alone(self._lockstep.runner.run_chain, *args)

    def run_batch(self, *args):
        return self._alone(self._lockstep.runner.run_batch, *args)

    def resolve(self, rows) -> None:
        return self._alone(self._lockstep.runner.resolve, rows)

    def prompt_kv(self, prompt: list[int]):
        return self._alone(self._lockstep.runner.prompt_kv, prompt)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Any other model work (a predictor's feature forward), in the main thread."""
        return self._lockstep.call(self._loop, alone=fn)

    def _alone(self, method, *args):
        return self._lockstep.call(self._loop, alone=lambda: method(*args))
