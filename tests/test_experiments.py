"""The payoff experiment's recipe (experiments/): its statistics, and the smoke run end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """One of experiments/*.py, imported as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _collect():
    return _script("collect")


@pytest.mark.parametrize("k, n, low, high", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634),
                                             (150, 300, 0.4437, 0.5563), (300, 300, 0.9874, 1.0)])
def test_wilson_interval_matches_known_values(k, n, low, high):
    lo, hi = _collect().wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_token_kinds():
    kind = _collect().token_kind
    assert [kind(t) for t in [" 7", " +", " =", "->", " Check", ".", " "]] == \
        ["digit", "operator", "operator", "operator", "word", "punct/space", "punct/space"]


@pytest.mark.parametrize("seed, run", [("0", "arith"), ("1", "arith-seed1")])
def test_a_second_seed_gets_its_own_work_directory_and_results(seed, run, tmp_path):
    """Seed 1's students and results sit beside seed 0's; both share the greedy labels."""
    (tmp_path / "experiments").mkdir()  # a copy: the real work directories would show as made
    shutil.copy(ROOT / "experiments" / "Makefile", tmp_path / "experiments")
    dry = subprocess.run(["make", "-n", "-C", str(tmp_path / "experiments"), "results",
                          "NAME=arith", f"SEED={seed}", "STUDENTS=greedy-0.5-n64", "VALIDATION="],
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert f"distill work/{run}/pruned/greedy -o work/{run}/students/greedy-0.5-n64" in dry.stdout
    assert f"--seed {seed} " in dry.stdout
    assert f"labels.sh run results/labels/arith work/{run}/pruned/greedy/" in dry.stdout
    assert f"--out results/{run}.json" in dry.stdout
    assert f"cp work/{run}/evals/greedy-0.5-n64.parquet results/evals/{run}/" in dry.stdout


@pytest.mark.slow
def test_smoke_run_end_to_end_and_cached(tmp_path):
    """`make -C experiments smoke` runs every stage on a tiny model and writes the results; run
    again, Make redoes nothing but the summary."""
    work, results = tmp_path / "work", tmp_path / "results"
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = ["make", "-C", str(ROOT / "experiments"), "smoke", "-j2", f"W={work}",
           f"RESULTS={results}", f"COTPRUNE={Path(sys.executable).parent / 'cotprune'}",
           f"PYTHON={sys.executable}"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    record = json.loads((results / "smoke.json").read_text())
    arms = {a["arm"]: a for a in record["arms"]}
    assert set(arms) >= {"full", "nocot", "greedy-0.5", "surprisal-0.5", "random-0.5",
                         "predicted-0.5", "tokenskip@0.5", "attention-0.5"}
    for a in arms.values():
        assert a["n_test"] == 8 and 0 <= a["accuracy"] <= 1
        lo, hi = a["interval95"]
        assert lo <= a["accuracy"] <= hi
        assert a["tokens_trained"] > 0 and a["seconds"]["distill"] > 0
    # matched lengths: every method's 0.5 students trained on the same number of CoT tokens
    assert len({arms[m]["train_mean_cot_tokens"] for m in
                ("greedy-0.5", "surprisal-0.5", "random-0.5", "predicted-0.5")}) == 1
    assert arms["nocot"]["train_mean_cot_tokens"] == 0
    # TokenSkip trains on a row per keep ratio of the same 8 chains
    assert (arms["tokenskip@0.5"]["train_chains"], arms["tokenskip@0.5"]["train_rows"]) == (8, 16)
    assert (arms["greedy-0.5"]["train_chains"], arms["greedy-0.5"]["train_rows"]) == (8, 8)
    assert [v["keep"] for v in record["greedy_validation"]] == [0.5, 0.7]
    assert (results / "smoke-report" / "index.html").exists()
    errors = (results / "smoke-errors.txt").read_text().splitlines()
    assert len(errors) == len(arms) and all(" wrong of 8; operand " in e for e in errors)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert second.returncode == 0
    assert " prune " not in second.stdout and " distill " not in second.stdout
    assert "collect.py" in second.stdout


def _labels(*args, cwd):
    return subprocess.run(["bash", str(ROOT / "experiments" / "labels.sh"), *args], cwd=cwd,
                          capture_output=True, text=True)


def test_labels_keep_finished_shards_and_saved_progress(tmp_path):
    """labels.sh: a finished shard is kept in LABELS, with its recorded seconds, and copied back
    instead of recomputed; an unfinished shard's saved progress is put back before the command
    resumes it."""
    labels, work = tmp_path / "labels", tmp_path / "work" / "greedy"
    part = work / "part-00001-of-00008.parquet"
    times = tmp_path / "work" / "times" / "part-00001.json"
    # an interrupted run left progress; save it (the lock is the live process's, not saved)
    partial = work / ".part-00001.partial"
    partial.mkdir(parents=True)
    (partial / "chunk-000000.parquet").write_text("chain 0")
    (partial / ".lock").write_text("123")
    saved = _labels("save", str(labels), str(work), cwd=tmp_path)
    assert saved.returncode == 0 and "saved 1 finished chains of shard 00001" in saved.stdout
    assert sorted(p.name for p in (labels / "partial-00001").iterdir()) == ["chunk-000000.parquet"]
    # a fresh machine: the work directory is gone; the command must find the progress restored
    shutil.rmtree(tmp_path / "work")
    resume = (f"test -f {partial}/chunk-000000.parquet && mkdir -p {work} {times.parent} && "
              f"echo labels > {part} && echo 99 > {times}")
    ran = _labels("run", str(labels), str(part), str(times), "--", "bash", "-c", resume,
                  cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert (labels / part.name).read_text() == "labels\n"
    assert (labels / "part-00001-of-00008.times.json").read_text() == "99\n"
    assert not (labels / "partial-00001").exists()
    # the part is cached: a later run on a fresh machine copies it and its seconds, and never
    # runs the (here failing) command
    shutil.rmtree(tmp_path / "work")
    again = _labels("run", str(labels), str(part), str(times), "--", "false", cwd=tmp_path)
    assert again.returncode == 0 and part.read_text() == "labels\n"
    assert times.read_text() == "99\n"
    # a command that fails leaves nothing in LABELS
    other = work / "part-00002-of-00008.parquet"
    failed = _labels("run", str(labels), str(other), str(times), "--", "false", cwd=tmp_path)
    assert failed.returncode != 0 and not (labels / other.name).exists()


def test_collect_merges_records_and_reads_subset_names():
    collect = _collect()
    assert collect.split_subset("greedy-0.5-n96") == ("greedy-0.5", 96)
    assert collect.split_subset("nocot") == ("nocot", None)
    assert collect.student_source("surprisal-0.5-n64") == ("surprisal", 0.5)
    assert collect.student_source("full-n64") == ("full", 1.0)
    old = [{"arm": "full", "v": 1}, {"arm": "nocot", "v": 1}]
    new = [{"arm": "nocot", "v": 2}, {"arm": "greedy-0.5", "v": 2}]
    assert collect.merge_records(old, new) == [{"arm": "full", "v": 1}, {"arm": "nocot", "v": 2},
                                               {"arm": "greedy-0.5", "v": 2}]


def test_collect_reports_an_eval_whose_student_was_lost(tmp_path):
    """An eval file kept from a machine that took its student with it still gives a record:
    accuracy and interval from the answers, no training figures, and a note that says why."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    collect = _collect()
    (tmp_path / "evals").mkdir()
    pq.write_table(pa.table({"correct": [True, False, True, True],
                             "generated_tokens": [10, 20, 30, 40],
                             "truncated": [False, False, False, True]}),
                   tmp_path / "evals" / "predicted-0.5.parquet")
    record = collect.arm_record(tmp_path, "predicted-0.5", tokenizer=None)
    assert (record["correct"], record["accuracy"], record["truncated"]) == (3, 0.75, 0.25)
    assert record["mean_generated_tokens"] == 25.0
    low, high = collect.wilson_interval(3, 4)
    assert record["interval95"] == [round(low, 4), round(high, 4)]
    assert record["tokens_trained"] is None and record["train_mean_J"] is None
    assert "lost" in record["note"]
    table = collect.markdown([record], [])
    assert "| predicted-0.5 | 0.5 | n/a | n/a | n/a | 0.750" in table
    assert "greedy validation" not in table  # no check of the label mode in this run
    validation = [{"keep": 0.5, "chains": 2, "J_exact": 10.0, "J_fast": 10.2, "gap_percent": 2.0}]
    assert "| 0.5 | 2 | 10.0 | 10.2 | 2.0 |" in collect.markdown([record], validation)


def test_error_kinds_of_wrong_arithmetic_answers():
    """errors.py: a lost amount is 'operand', a false equation 'slip', the rest 'other'."""
    errors = _script("errors")
    question = ("Leo has 3 pencils. Then Leo finds 8 more pencils. Then Leo gives away 1 "
                "pencils. How many pencils does Leo have now?")
    assert errors.error_kind(question, "3 +8 =11 Check: 11 -8 =3\n11 -1 =9") == "slip"
    assert errors.error_kind(question, "3 +8 =11\n11 -2 =9") == "operand"
    assert errors.error_kind(question, "Hmm. 3 +. Check: 8 -81") == "operand"
    assert errors.error_kind(question, "3 + 8 = 11\n11 + 1 = 12") == "other"
