"""Faults (issue 19, docs/faults.md): kill -9 every long stage at seeded random points and resume,
SIGTERM and Ctrl-C, two writers on one output, a full disk. Nothing may be lost or corrupted,
and no killed run may leave a file at the target path.

The kills are deterministic: `COTPRUNE_FAULT=POINT:N` (cotprune/faults.py) makes the process
SIGKILL itself the N-th time it reaches POINT (a chunk written, a greedy step saved, a training
step, inside an atomic write before its rename). The stage runs in a forked child of this test
process (torch already imported, so a run costs its work, not its start-up), and the kills are
chained: run, killed, resumed, killed again ... finished, compared with an uninterrupted run. A
few tests use real subprocesses and timers, as a user's `kill` would.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TOKENIZERS, run_cli, save_tiny_model

from cotprune import faults
from cotprune.data.files import CHAIN_SCHEMA, write_table
from cotprune.data.synth import synth_arithmetic

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@dataclass
class Run:
    code: int  # exit status, or -N when killed by signal N
    stdout: str
    stderr: str


def run_forked(args: list, fault: str | None = None, timeout: float = 300) -> Run:
    """Run the CLI in a forked child, with COTPRUNE_FAULT=`fault`; wait for it to end."""
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
            os.environ.pop(faults.ENV, None)
            if fault:
                os.environ[faults.ENV] = fault
            faults.reset()
            # a shell starts background jobs with SIGINT ignored, and Python keeps that: give the
            # child the handler a command started at a terminal has, so Ctrl-C tests test it
            signal.signal(signal.SIGINT, signal.default_int_handler)
            import torch

            torch.set_num_threads(1)  # OpenMP's thread pool does not survive a fork
            from cotprune.cli import main

            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return _wait(pid, out, err, timeout)


def _wait(pid: int, out, err, timeout: float) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"{pid} ran past {timeout}s")
        time.sleep(0.02)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    out.seek(0)
    err.seek(0)
    return Run(code, out.read().decode(errors="replace"), err.read().decode(errors="replace"))


# --- inputs ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("faults-model"), TOKENIZERS / "gpt2")


@pytest.fixture(scope="module")
def chains(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults-data") / "chains.parquet"
    write_table(pa.Table.from_pylist(synth_arithmetic(8, seed=4), schema=CHAIN_SCHEMA), path)
    return path


@pytest.fixture(scope="module")
def short_chains(tmp_path_factory) -> Path:
    """Chains short enough for exact greedy (every step rescoring every token) to be quick."""
    rows = [{"id": f"c{i}", "question": f"What is {i} + {i}?",
             "cot": f"We add {i} and {i}. That gives {2 * i}, so {2 * i}.",
             "answer": str(2 * i), "reference": str(2 * i)} for i in range(3)]
    path = tmp_path_factory.mktemp("faults-short") / "short.parquet"
    write_table(pa.Table.from_pylist(rows, schema=CHAIN_SCHEMA), path)
    return path


@pytest.fixture(scope="module")
def greedy_file(tmp_path_factory, short_chains, model) -> Path:
    path = tmp_path_factory.mktemp("faults-greedy") / "greedy.parquet"
    code, _, err = run_cli("prune", short_chains, "-o", path, "--model", model, "--device",
                           "cpu", "--keep", "0.5")
    assert code == 0, err
    return path


def score_args(chains: Path, model: Path) -> list:
    return ["score", chains, "--model", model, "--device", "cpu", "--batch-tokens", "1"]


@pytest.fixture(scope="module")
def score_whole(tmp_path_factory, chains, model) -> list[dict]:
    """The rows of an uninterrupted `score` run, which every interrupted one must end with."""
    out = tmp_path_factory.mktemp("faults-score") / "whole.parquet"
    run = run_forked([*score_args(chains, model), "-o", out])
    assert run.code == 0, run.stderr
    return pq.read_table(out).to_pylist()


# --- chained kills ---------------------------------------------------------------------------

def leftovers_at(target: Path) -> list[str]:
    """Files that look like the finished output (or a torn copy of it) after a kill."""
    found = [target] if target.exists() else []
    found += list(target.parent.glob(f"{target.name}.tmp"))  # a non-atomic writer's temp name
    return [str(p) for p in found]


def kill_chain(args: list, target: Path, points: list[tuple[str, int, int]], seed: int, *,
               resume: list[str] = ("--resume",), min_kills: int = 5,
               max_runs: int = 40) -> tuple[Run, list[str]]:
    """Run `args`, SIGKILL it at a seeded random point of `points` (name, lowest N, highest N),
    resume with `resume`, again and again, until a run finishes. Returns the finishing run and
    the faults it took. After every kill, nothing may exist at `target`."""
    rng = random.Random(seed)
    taken: list[str] = []
    for attempt in range(max_runs):
        name, low, high = rng.choice(points)
        fault = f"{name}:{rng.randint(low, high)}" if len(taken) < min_kills else None
        run = run_forked([*args, *(resume if attempt else [])], fault)
        if run.code == -signal.SIGKILL:
            taken.append(fault)
            assert not leftovers_at(target), f"after kill at {fault}: {leftovers_at(target)}"
            continue
        assert run.code == 0, (fault, run.stderr[-3000:])
        assert len(taken) >= min_kills, f"only {taken} were taken before the run finished"
        return run, taken
    pytest.fail(f"no run finished in {max_runs} tries: {taken}")


def rows_of(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


STAGE_CHUNKS = [("chunk", 1, 2), ("write", 1, 3)]


def test_score_killed_at_random_chunks_resumes_to_identical_rows(tmp_path, chains, model,
                                                                 score_whole):
    out = tmp_path / "killed.parquet"
    _, taken = kill_chain([*score_args(chains, model), "-o", out], out, STAGE_CHUNKS, seed=1)
    assert rows_of(out) == score_whole, taken
    assert not (tmp_path / "killed.parquet.partial").exists()


@pytest.mark.parametrize("mode", [[], ["--shortlist", "3"],
                                  ["--shortlist", "3", "--self-term", "--first-window", "2",
                                   "--screen", "2"],
                                  ["--per-step", "2"], ["--lockstep", "2"]],
                         ids=["exact", "shortlist", "self-term-window-screen", "per-step",
                              "lockstep"])
def test_greedy_killed_mid_chain_resumes_to_identical_orders(mode, tmp_path, short_chains,
                                                            model):
    args = ["prune", short_chains, "--model", model, "--device", "cpu", "--keep", "0.5,0.2",
            *mode]
    assert run_forked([*args, "-o", tmp_path / "whole.parquet"]).code == 0
    out = tmp_path / "killed.parquet"
    _, taken = kill_chain([*args, "-o", out], out,
                          [("state", 1, 6), ("chunk", 1, 1), ("write", 2, 8)], seed=2)
    got, want = rows_of(out), rows_of(tmp_path / "whole.parquet")
    # Every mode carries rows (KV caches, lazy J) from one step to the next, which a resumed
    # process no longer holds: it recomputes them with other batch shapes, equal up to float
    # rounding (CI once saw 139.85820 against 139.85818). The deletions must be identical.
    floats = ("objective_nll", "objective_trace")
    assert [{k: v for k, v in r.items() if k not in floats} for r in got] == \
        [{k: v for k, v in r.items() if k not in floats} for r in want], taken
    for g, w in zip(got, want, strict=True):
        assert g["objective_nll"] == pytest.approx(w["objective_nll"], rel=1e-5)
        assert g["objective_trace"] == pytest.approx(w["objective_trace"], rel=1e-5)


def questions_file(tmp_path: Path, n: int = 8) -> Path:
    rows = [{"id": f"q{i}", "question": f"Q{i}: what is {i} + {i}?", "cot": "x", "answer": "",
             "reference": str(2 * i)} for i in range(n)]
    path = tmp_path / "questions.parquet"
    write_table(pa.Table.from_pylist(rows, schema=CHAIN_SCHEMA), path)
    return path


def test_sampled_generate_killed_at_random_batches_resumes_to_the_same_samples(tmp_path, model):
    args = ["generate", questions_file(tmp_path), "--model", model, "--device", "cpu",
            "--samples", "2", "--temperature", "0.9", "--max-new-tokens", "6",
            "--batch-tokens", "1", "--seed", "3"]
    assert run_forked([*args, "-o", tmp_path / "whole.parquet"]).code == 0
    out = tmp_path / "killed.parquet"
    _, taken = kill_chain([*args, "-o", out], out, [("chunk", 1, 2), ("state", 1, 2),
                                                    ("write", 1, 3)], seed=3)
    assert rows_of(out) == rows_of(tmp_path / "whole.parquet"), taken


def test_eval_killed_at_random_batches_resumes_to_identical_grades(tmp_path, model):
    args = ["eval", questions_file(tmp_path), "--model", model, "--device", "cpu",
            "--max-new-tokens", "6", "--batch-tokens", "1"]
    assert run_forked([*args, "-o", tmp_path / "whole.parquet"]).code == 0
    out = tmp_path / "killed.parquet"
    _, taken = kill_chain([*args, "-o", out], out, STAGE_CHUNKS, seed=4)
    assert rows_of(out) == rows_of(tmp_path / "whole.parquet"), taken


def metrics(outdir: Path, drop: tuple[str, ...]) -> list[dict]:
    lines = (outdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in lines]


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_tensors(a: Path, b: Path) -> None:
    x, y = tensors(a), tensors(b)
    assert x.keys() == y.keys()
    for k in x:
        assert (x[k] == y[k]).all(), k


def test_distill_killed_at_random_steps_resumes_to_identical_losses_and_weights(tmp_path,
                                                                               chains, model):
    args = ["distill", chains, "--model", model, "--device", "cpu", "--max-steps", "7",
            "--batch-tokens", "300", "--save-every", "1", "--lora-dropout", "0.1",
            "--lr", "5e-3"]
    assert run_forked([*args, "-o", tmp_path / "whole"]).code == 0
    out = tmp_path / "killed"
    _, taken = kill_chain([*args, "-o", out], out / "adapter_model.safetensors",
                          [("step", 1, 2), ("write", 1, 1)], seed=5)
    timing = ("tokens_per_s",)
    assert metrics(out, timing) == metrics(tmp_path / "whole", timing), taken
    assert_same_tensors(out / "adapter_model.safetensors",
                        tmp_path / "whole" / "adapter_model.safetensors")


def test_rl_killed_at_random_steps_resumes_to_identical_metrics_and_weights(tmp_path, chains,
                                                                           model):
    args = ["rl", chains, "--model", model, "--device", "cpu", "--max-steps", "6",
            "--prompts-per-step", "2", "--samples", "2", "--max-new-tokens", "6",
            "--save-every", "1", "--seed", "5"]
    assert run_forked([*args, "-o", tmp_path / "whole"]).code == 0, "uninterrupted run failed"
    out = tmp_path / "killed"
    _, taken = kill_chain([*args, "-o", out], out / "model", [("step", 1, 2), ("write", 1, 1)],
                          seed=6)
    timing = tuple(k for k in json.loads((tmp_path / "whole" / "metrics.jsonl").read_text()
                                         .splitlines()[0])
                   if k.endswith("_s") or "memory" in k)  # wall-clock facts differ per run
    got, want = metrics(out, timing), metrics(tmp_path / "whole", timing)
    assert [m["step"] for m in got] == list(range(1, 7))
    assert got == want, taken
    assert_same_tensors(out / "model" / "adapter_model.safetensors",
                        tmp_path / "whole" / "model" / "adapter_model.safetensors")


def test_predictor_fit_killed_at_random_epochs_reruns_to_the_same_artifact(tmp_path,
                                                                          greedy_file, model):
    args = ["predictor", "fit", greedy_file, "--model", model, "--device", "cpu",
            "--epochs", "20", "--val-fraction", "0"]
    assert run_forked([*args, "-o", tmp_path / "whole.safetensors"]).code == 0
    out = tmp_path / "killed.safetensors"
    _, taken = kill_chain([*args, "-o", out], out, [("epoch", 1, 19)], seed=7, resume=[])
    assert_same_tensors(out, tmp_path / "whole.safetensors")
    assert not list(tmp_path.glob(".*.tmp")), "a killed fit's temp file was left behind"


# --- SIGTERM and Ctrl-C ----------------------------------------------------------------------

@pytest.mark.parametrize(("action", "status"), [("term", 143), ("int", 130)])
def test_sigterm_and_ctrl_c_stop_keep_the_rows_and_say_how_to_resume(action, status, tmp_path,
                                                                     chains, model, score_whole):
    args = score_args(chains, model)
    out = tmp_path / "out.parquet"
    run = run_forked([*args, "-o", out], f"chunk:3:{action}")
    assert run.code == status, run.stderr[-2000:]
    assert "--resume" in run.stderr and f"score {chains}" in run.stderr
    assert not out.exists()
    assert len(list((tmp_path / "out.parquet.partial").glob("chunk-*"))) == 3  # kept
    resumed = run_forked([*args, "-o", out, "--resume"])
    assert resumed.code == 0, resumed.stderr
    assert rows_of(out) == score_whole


def test_sigterm_from_another_process_mid_greedy_exits_143_with_the_resume_command(
        tmp_path, short_chains, model):
    """A real `kill PID` at a timer, not at a safe point the stage chose."""
    args = [sys.executable, "-m", "cotprune", "prune", str(short_chains), "-o",
            str(tmp_path / "p.parquet"), "--model", str(model), "--device", "cpu",
            "--keep", "0.5"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "p.parquet.partial"
    deadline = time.monotonic() + 120
    while not any(partial.glob("greedy-*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until greedy is under way
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "terminated" in err and "--resume" in err and "prune" in err
    assert not (tmp_path / "p.parquet").exists()


# --- kill -9 at timers -----------------------------------------------------------------------

def test_score_killed_by_a_timer_resumes_to_identical_rows(tmp_path, chains, model,
                                                           score_whole):
    """kill -9 from outside at a seeded random time, as a scheduler would (a real process)."""
    out = tmp_path / "killed.parquet"
    partial = tmp_path / "killed.parquet.partial"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop(faults.ENV, None)
    proc = subprocess.Popen([sys.executable, "-m", "cotprune",
                             *map(str, score_args(chains, model)), "-o", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while proc.poll() is None and not any(partial.glob("chunk-*")):
        assert time.monotonic() < deadline, "the run never wrote a chunk"
        time.sleep(0.02)  # the work has begun (start-up is not the interesting part)
    time.sleep(random.Random(8).uniform(0.0, 0.5))
    killed = proc.poll() is None
    proc.kill()
    proc.wait()
    assert killed, "the run finished before the timer: give it more work"
    assert not out.exists()
    resumed = run_forked([*score_args(chains, model), "-o", out, "--resume"])
    assert resumed.code == 0, resumed.stderr
    assert rows_of(out) == score_whole


# --- two writers -----------------------------------------------------------------------------

def test_a_second_process_on_the_same_output_is_refused_and_a_killed_ones_lock_is_not_stale(
        tmp_path, chains, model, score_whole):
    args = score_args(chains, model)
    out = tmp_path / "out.parquet"
    # the first writer freezes after its second chunk, holding the lock
    out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    first = os.fork()
    if first == 0:
        os.environ[faults.ENV] = "chunk:2:stop"
        faults.reset()
        code = 99
        try:
            import torch

            torch.set_num_threads(1)
            os.dup2(err_f.fileno(), 2)
            run_cli(*args, "-o", out)
        finally:
            os._exit(code)
    try:
        deadline = time.monotonic() + 120
        while len(list((tmp_path / "out.parquet.partial").glob("chunk-*"))) < 2:
            assert time.monotonic() < deadline, "the first writer never wrote two chunks"
            time.sleep(0.05)
        time.sleep(0.2)
        for extra in ([], ["--resume"]):
            second = run_forked([*args, "-o", out, *extra])
            assert second.code == 2, second.stderr
            assert "another cotprune process" in second.stderr and str(first) in second.stderr
        assert not out.exists()
    finally:
        os.kill(first, signal.SIGKILL)  # kill -9: its flock dies with it
        _wait(first, out_f, err_f, 30)
    resumed = run_forked([*args, "-o", out, "--resume"])
    assert resumed.code == 0, resumed.stderr
    assert rows_of(out) == score_whole


# --- a full disk -----------------------------------------------------------------------------

@pytest.mark.parametrize("write", [2, 4, 10], ids=["chunk", "later-chunk", "final-assembly"])
def test_a_full_disk_exits_2_leaves_no_output_and_resume_completes(write, tmp_path, chains,
                                                                   model, score_whole):
    """ENOSPC injected in the N-th atomic write (the partial manifest is write 1, the eight
    chunks writes 2-9, the assembled output write 10)."""
    args = score_args(chains, model)
    out = tmp_path / "out.parquet"
    run = run_forked([*args, "-o", out], f"write:{write}:enospc")
    assert run.code == 2, run.stderr[-2000:]
    assert "No space left on device" in run.stderr and "--resume" in run.stderr
    assert "Traceback" not in run.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*.tmp"))
    resumed = run_forked([*args, "-o", out, "--resume"])  # "space is freed"
    assert resumed.code == 0, resumed.stderr
    assert rows_of(out) == score_whole


@pytest.mark.parametrize("command", ["distill", "rl"])
def test_a_second_training_process_on_the_same_outdir_is_refused(command, tmp_path, chains,
                                                                 model):
    args = {"distill": ["distill", chains, "--max-steps", "4", "--batch-tokens", "300",
                        "--save-every", "1"],
            "rl": ["rl", chains, "--max-steps", "4", "--prompts-per-step", "2",
                   "--samples", "2", "--max-new-tokens", "6", "--save-every", "1"]
            }[command] + ["--model", model, "--device", "cpu", "-o", tmp_path / "out"]
    first = os.fork()
    if first == 0:  # freezes after its first step, holding the lock
        os.environ[faults.ENV] = "step:1:stop"
        faults.reset()
        try:
            import torch

            torch.set_num_threads(1)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            run_cli(*args)
        finally:
            os._exit(99)
    try:
        deadline = time.monotonic() + 120
        while True:  # stopped by its own SIGSTOP
            pid, status = os.waitpid(first, os.WUNTRACED | os.WNOHANG)
            if pid and os.WIFSTOPPED(status):
                break
            assert not pid, "the first run ended instead of stopping"
            assert time.monotonic() < deadline, "the first run never reached a step"
            time.sleep(0.05)
        second = run_forked([*args, "--resume"])
        assert second.code == 2, second.stderr
        assert "another cotprune process" in second.stderr and str(first) in second.stderr
    finally:
        os.kill(first, signal.SIGKILL)
        os.waitpid(first, 0)
    resumed = run_forked([*args, "--resume"])  # the lock died with the first process
    assert resumed.code == 0, resumed.stderr[-2000:]


def test_a_full_disk_mid_greedy_exits_2_and_resume_gives_the_same_orders(tmp_path,
                                                                          short_chains, model):
    """ENOSPC while greedy saves its trajectory (write 5: a mid-chain state file)."""
    args = ["prune", short_chains, "--model", model, "--device", "cpu", "--keep", "0.5"]
    assert run_forked([*args, "-o", tmp_path / "whole.parquet"]).code == 0
    out = tmp_path / "out.parquet"
    run = run_forked([*args, "-o", out], "write:5:enospc")
    assert run.code == 2, run.stderr[-2000:]
    assert "No space left on device" in run.stderr and "greedy-" in run.stderr
    assert not out.exists()
    resumed = run_forked([*args, "-o", out, "--resume"])
    assert resumed.code == 0, resumed.stderr
    assert rows_of(out) == rows_of(tmp_path / "whole.parquet")
