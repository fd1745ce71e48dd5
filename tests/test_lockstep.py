"""The lockstep rounds (core/lockstep.py) on a fake runner: every loop's calls run in the main
thread, round by round in loop order, packed calls of one round in one shared call, and a
loop's error reaches the caller once every loop has stopped."""

import threading

import pytest

from cotprune.core.lockstep import Lockstep
from cotprune.core.runner import WorkCounts


class FakeRunner:
    device, can_bound = "cpu", True

    def __init__(self):
        self.work = WorkCounts()
        self.log: list = []
        self.threads: set = set()

    def run_packs(self, requests):
        self.threads.add(threading.current_thread())
        self.log.append(("packs", [r.lanes for r in requests]))
        return [[f"row of {r.lanes}"] for r in requests]

    def run_batch(self, tasks, budget, vocab):
        self.threads.add(threading.current_thread())
        self.log.append(("batch", tasks))
        return [f"batch row of {t}" for t in tasks]


def test_rounds_merge_packed_calls_and_run_the_rest_in_loop_order():
    runner = FakeRunner()

    def loop(name, steps):
        def body(view):
            got = []
            for step in range(steps):
                got += view.run_packed([[f"{name}{step}"]], None, None)
                got += view.run_batch([f"{name}{step}"], None, None)
            return got
        return body

    results = Lockstep(runner).run([loop("a", 2), loop("b", 3), loop("c", 1)])
    assert results[0] == ["row of [['a0']]", "batch row of a0", "row of [['a1']]",
                          "batch row of a1"]
    assert len(results[1]) == 6 and len(results[2]) == 2
    # a round: one call of every loop still running, the packed ones as one call, the others
    # one after another in loop order; a loop's next call waits for the next round
    assert runner.log == [
        ("packs", [[["a0"]], [["b0"]], [["c0"]]]),
        ("batch", ["a0"]), ("batch", ["b0"]), ("batch", ["c0"]),
        ("packs", [[["a1"]], [["b1"]]]),
        ("batch", ["a1"]), ("batch", ["b1"]),
        ("packs", [[["b2"]]]),
        ("batch", ["b2"]),
    ]
    assert runner.threads == {threading.main_thread()}


def test_a_loops_error_stops_the_run_after_the_others_end():
    runner = FakeRunner()

    def failing(view):
        view.run_packed([["x"]], None, None)
        raise ValueError("bad chain")

    def fine(view):
        return [view.run_packed([[str(i)]], None, None) for i in range(3)]

    with pytest.raises(ValueError, match="bad chain"):
        Lockstep(runner).run([fine, failing])
    assert len([e for e in runner.log if e[0] == "packs"]) == 3  # fine ran to its end


def test_an_error_in_a_shared_call_reaches_every_loop_in_it():
    class Broken(FakeRunner):
        def run_packs(self, requests):
            raise RuntimeError("out of memory")

    def body(view):
        return view.run_packed([["x"]], None, None)

    with pytest.raises(RuntimeError, match="out of memory"):
        Lockstep(Broken()).run([body, body])
