"""Bad input, command by command (issue 19, docs/faults.md): every command that reads a file
gets each malformed input and must exit 2 with a message naming the file (and the row and the
column where there is one), having written nothing. Valid edge cases must succeed.

All in-process (conftest.run_cli) on the tiny random models: bad input is refused before a model
loads, so the whole matrix takes seconds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, summary_of

from cotprune.data.files import CHAIN_SCHEMA, read_table, write_table

CHAINS = [
    {"id": "a", "question": "What is 3+4?", "cot": "We add 3 and 4 to get 7.", "answer": "7",
     "reference": "7"},
    {"id": "b", "question": "Half of 12?", "cot": "12 / 2 = 6. Check: 6 * 2 = 12.",
     "answer": "6", "reference": "6"},
]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from conftest import TOKENIZERS, save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("bad-input-model"), TOKENIZERS / "gpt2")


@pytest.fixture(scope="module")
def pruned_table(tmp_path_factory, model) -> pa.Table:
    """A real `prune --method greedy` output (what `predictor fit` and `report` read)."""
    d = tmp_path_factory.mktemp("pruned")
    write_table(pa.Table.from_pylist(CHAINS, schema=CHAIN_SCHEMA), d / "chains.parquet")
    code, _, err = run_cli("prune", d / "chains.parquet", "-o", d / "pruned.parquet", "--model",
                           model, "--device", "cpu", "--keep", "0.5,1", "--max-cot-tokens", "40")
    assert code == 0, err
    return pq.read_table(d / "pruned.parquet")


def chains_table(rows: list[dict] = CHAINS, schema: pa.Schema = CHAIN_SCHEMA) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


# --- the commands: argv for (input, output, model) -------------------------------------------

TINY_RL = ["--max-steps", "1", "--prompts-per-step", "1", "--samples", "2",
           "--max-new-tokens", "4"]
COMMANDS: dict[str, Callable[[Path, Path, Path], list]] = {
    "score": lambda f, o, m: ["score", f, "-o", o, "--model", m, "--device", "cpu",
                              "--scorer", "surprisal"],
    "prune": lambda f, o, m: ["prune", f, "-o", o, "--model", m, "--device", "cpu",
                              "--method", "surprisal", "--keep", "0.5"],
    "generate": lambda f, o, m: ["generate", f, "-o", o, "--model", m, "--device", "cpu",
                                 "--max-new-tokens", "4"],
    "eval": lambda f, o, m: ["eval", f, "-o", o, "--model", m, "--device", "cpu",
                             "--max-new-tokens", "4"],
    "distill": lambda f, o, m: ["distill", f, "-o", o, "--model", m, "--device", "cpu",
                                "--max-steps", "1"],
    "rl": lambda f, o, m: ["rl", f, "-o", o, "--model", m, "--device", "cpu", *TINY_RL],
    "predictor-fit": lambda f, o, m: ["predictor", "fit", f, "-o", o, "--model", m,
                                      "--device", "cpu", "--epochs", "2"],
    "report": lambda f, o, m: ["report", f, "-o", o],
    "show": lambda f, o, m: ["show", f],
}
READS_PRUNED = {"predictor-fit", "report"}  # the others read chains (or questions)
NEEDS_COT = {"score", "prune", "distill"}  # generate, eval and rl read only id and question
UNIQUE_IDS = {"score", "prune", "generate", "eval", "rl"}  # one row per chain
WRITES = set(COMMANDS) - {"show"}


# --- the bad inputs: (name, maker(dir, base table) -> path, what the message must name) ------

def _write(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path)
    return path


def empty_file(d: Path, base: pa.Table) -> Path:
    path = d / "empty.parquet"
    path.write_bytes(b"")
    return path


def truncated_parquet(d: Path, base: pa.Table) -> Path:
    whole = _write(base, d / "whole.parquet").read_bytes()
    path = d / "truncated.parquet"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def zero_rows(d: Path, base: pa.Table) -> Path:
    return _write(base.slice(0, 0), d / "zero.parquet")


def _set(base: pa.Table, column: str, row: int, value) -> pa.Table:
    values = base.column(column).to_pylist()
    values[row] = value
    i = base.column_names.index(column)
    return base.set_column(i, base.schema.field(column).with_nullable(True),
                           pa.array(values, base.schema.field(column).type))


def blank_cot(d: Path, base: pa.Table) -> Path:
    return _write(_set(base, "cot", 1, "  \n\t "), d / "blank-cot.parquet")


def missing_id_column(d: Path, base: pa.Table) -> Path:
    return _write(base.drop_columns(["id"]), d / "no-id.parquet")


def null_id(d: Path, base: pa.Table) -> Path:
    return _write(_set(base, "id", 1, None), d / "null-id.parquet")


def duplicate_id(d: Path, base: pa.Table) -> Path:
    return _write(_set(base, "id", 1, base.column("id")[0].as_py()), d / "dup-id.parquet")


def wrong_type(d: Path, base: pa.Table) -> Path:
    i = base.column_names.index("question")
    table = base.set_column(i, "question", pa.array(range(base.num_rows), pa.int64()))
    return _write(table, d / "int-question.parquet")


def parts_disagree(d: Path, base: pa.Table) -> Path:
    parts = d / "parts"
    parts.mkdir()
    _write(base, parts / "part-00000-of-00002.parquet")
    i = base.column_names.index("question")
    other = base.set_column(i, "question", pa.array(range(base.num_rows), pa.int64()))
    _write(other, parts / "part-00001-of-00002.parquet")
    return parts


BAD = {  # name -> (maker, fragments the message must hold besides the file name)
    "empty-file": (empty_file, ["Parquet"]),
    "truncated-parquet": (truncated_parquet, ["Parquet"]),
    "zero-rows": (zero_rows, ["no rows"]),
    "blank-cot": (blank_cot, ["row b", "'cot'"]),
    "missing-id-column": (missing_id_column, ["'id'"]),
    "null-id": (null_id, ["row #1", "'id'"]),
    "duplicate-id": (duplicate_id, ["row", "'id'", "duplicate"]),
    "wrong-type": (wrong_type, ["row", "'question'"]),
    "parts-disagree": (parts_disagree, ["part-00001", "'question'"]),
}


def applies(command: str, case: str) -> bool:
    if case == "blank-cot":
        return command in NEEDS_COT
    if case == "duplicate-id":
        return command in UNIQUE_IDS
    return True


MATRIX = [(c, b) for c in COMMANDS for b in BAD if applies(c, b)]


def outputs_of(d: Path) -> set[str]:
    """Every path under `d` (the inputs the test wrote are listed first and subtracted)."""
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def assert_refused(args: list, d: Path, before: set[str], names: list[str]) -> str:
    code, _, err = run_cli(*args)
    assert code == 2, err
    for fragment in names:
        assert fragment in err, (fragment, err)
    assert outputs_of(d) == before, "a refused command wrote something"
    return err


@pytest.mark.parametrize(("command", "case"), MATRIX, ids=[f"{c}-{b}" for c, b in MATRIX])
def test_bad_input_exits_2_names_where_and_writes_nothing(command, case, tmp_path, model,
                                                          pruned_table):
    maker, names = BAD[case]
    base = pruned_table if command in READS_PRUNED else chains_table()
    path = maker(tmp_path, base)
    out = tmp_path / ("out" if command in {"distill", "rl", "report"} else
                      "out.safetensors" if command == "predictor-fit" else "out.parquet")
    before = outputs_of(tmp_path)
    named = path.name if case != "parts-disagree" else "parts"
    assert_refused(COMMANDS[command](path, out, model), tmp_path, before, [named, *names])


@pytest.mark.parametrize("command", ["score", "prune", "generate", "eval", "rl"])
def test_pruned_file_where_chains_are_expected_is_refused(command, tmp_path, model,
                                                          pruned_table):
    path = _write(pruned_table, tmp_path / "pruned.parquet")
    before = outputs_of(tmp_path)
    err = assert_refused(COMMANDS[command](path, tmp_path / "out.parquet", model), tmp_path,
                         before, ["pruned.parquet", "duplicate id", "pruned file"])
    assert "'id'" in err


@pytest.mark.parametrize("command", sorted(READS_PRUNED))
def test_chains_file_where_pruned_is_expected_is_refused(command, tmp_path, model):
    path = _write(chains_table(), tmp_path / "chains.parquet")
    before = outputs_of(tmp_path)
    assert_refused(COMMANDS[command](path, tmp_path / "out", model), tmp_path, before,
                   ["chains.parquet"])


@pytest.mark.parametrize("command", sorted(WRITES))
def test_output_under_a_file_is_refused_before_any_work(command, tmp_path, model,
                                                        pruned_table):
    """-o below a regular file: no directory can be made there (as root too)."""
    base = pruned_table if command in READS_PRUNED else chains_table()
    path = _write(base, tmp_path / "input.parquet")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    before = outputs_of(tmp_path)
    assert_refused(COMMANDS[command](path, blocker / "sub" / "out.parquet", model), tmp_path,
                   before, ["blocker"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
@pytest.mark.parametrize("command", ["score", "import"])
def test_output_in_a_read_only_directory_is_refused(command, tmp_path, model):
    path = _write(chains_table(), tmp_path / "input.parquet")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    args = (["import", path, "--format", "parquet", "-o", locked / "out.parquet"]
            if command == "import" else COMMANDS[command](path, locked / "out.parquet", model))
    before = outputs_of(tmp_path)
    assert_refused(args, tmp_path, before, ["locked"])


# --- import: JSONL and Parquet sources -------------------------------------------------------

def _jsonl(path: Path, lines: list) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n"
                              for x in lines))
    return path


GOOD_LINE = {"id": "a", "question": "q?", "cot": "think", "answer": "1"}
IMPORT_BAD = {  # name -> (lines of the JSONL source, fragments the message must hold)
    "empty-file": ([], ["no rows"]),
    "blank-lines-only": ([b"", b"   "], ["no rows"]),
    "blank-cot": ([GOOD_LINE, {**GOOD_LINE, "id": "b", "cot": "   "}], ["line 2", "'cot'"]),
    "missing-cot": ([{k: v for k, v in GOOD_LINE.items() if k != "cot"}], ["line 1", "'cot'"]),
    "null-question": ([{**GOOD_LINE, "question": None}], ["line 1", "'question'"]),
    "duplicate-id": ([GOOD_LINE, GOOD_LINE], ["line 2", "'id'", "duplicate"]),
    "wrong-type": ([{**GOOD_LINE, "cot": {"steps": [1, 2]}}], ["line 1", "'cot'", "dict"]),
    "not-json": ([GOOD_LINE, b"{not json"], ["line 2", "JSON"]),
    "not-utf8": ([GOOD_LINE, b'{"id": "b", "question": "caf\xe9", "cot": "x", "answer": "1"}'],
                 ["line 2", "UTF-8", "0xe9"]),
}


@pytest.mark.parametrize("case", sorted(IMPORT_BAD))
def test_import_of_bad_jsonl_exits_2_names_the_line(case, tmp_path):
    lines, names = IMPORT_BAD[case]
    src = _jsonl(tmp_path / "src.jsonl", lines)
    before = outputs_of(tmp_path)
    assert_refused(["import", src, "-o", tmp_path / "out.parquet"], tmp_path, before,
                   ["src.jsonl", *names])


def test_import_of_non_utf8_csv_names_the_line(tmp_path):
    src = tmp_path / "src.csv"
    src.write_bytes(b"id,question,cot,answer\na,q,think,1\nb,caf\xe9,x,1\n")
    before = outputs_of(tmp_path)
    assert_refused(["import", src, "--format", "csv", "-o", tmp_path / "o.parquet"], tmp_path,
                   before, ["src.csv", "line 3", "UTF-8"])


@pytest.mark.parametrize("case", ["empty-file", "truncated-parquet"])
def test_import_of_bad_parquet_exits_2(case, tmp_path):
    path = BAD[case][0](tmp_path, chains_table())
    before = outputs_of(tmp_path)
    assert_refused(["import", path, "--format", "parquet", "-o", tmp_path / "o.parquet"],
                   tmp_path, before, [path.name, "Parquet"])


def test_import_output_under_a_file_is_refused(tmp_path):
    src = _jsonl(tmp_path / "src.jsonl", [GOOD_LINE])
    (tmp_path / "blocker").write_text("x")
    before = outputs_of(tmp_path)
    assert_refused(["import", src, "-o", tmp_path / "blocker" / "o.parquet"], tmp_path, before,
                   ["blocker"])


# --- chains longer than the model's context --------------------------------------------------

def long_chains(tmp_path: Path) -> Path:
    rows = [*CHAINS, {"id": "long", "question": "Count.", "cot": " ".join(["one"] * 300),
                      "answer": "300", "reference": "300"}]
    return _write(chains_table(rows), tmp_path / "long.parquet")


def test_score_skips_and_counts_a_too_long_chain_or_refuses_it_under_strict(tmp_path, model):
    path = long_chains(tmp_path)
    args = COMMANDS["score"](path, tmp_path / "s.parquet", model)
    code, out, err = run_cli(*args, "--max-length", "100")
    assert code == 0, err
    assert summary_of(out)["skipped"] == 1
    assert read_table(tmp_path / "s.parquet").column("id").to_pylist() == ["a", "b"]
    before = outputs_of(tmp_path)
    assert_refused([*COMMANDS["score"](path, tmp_path / "strict.parquet", model),
                    "--max-length", "100", "--strict"], tmp_path, before,
                   ["long.parquet", "row long", "--strict"])


def test_prune_skips_and_counts_a_chain_over_max_cot_tokens(tmp_path, model):
    code, out, err = run_cli(*COMMANDS["prune"](long_chains(tmp_path), tmp_path / "p.parquet",
                                                model), "--max-cot-tokens", "100")
    assert code == 0, err
    assert summary_of(out)["skipped"] == 1
    assert set(read_table(tmp_path / "p.parquet").column("id").to_pylist()) == {"a", "b"}


def test_distill_skips_and_counts_a_sequence_over_max_length(tmp_path, model):
    code, out, err = run_cli(*COMMANDS["distill"](long_chains(tmp_path), tmp_path / "d", model),
                             "--max-length", "100")
    assert code == 0, err
    assert summary_of(out)["skipped"]["too_long"] == 1


def long_question(tmp_path: Path) -> Path:
    """The chains plus a question longer than the tiny models' 2,048-token context."""
    rows = [*CHAINS, {"id": "long", "question": "Count:" + " one" * 2100, "cot": "x",
                      "answer": "2100", "reference": "2100"}]
    return _write(chains_table(rows), tmp_path / "longq.parquet")


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_generation_skips_and_counts_a_question_longer_than_the_context(tmp_path, model,
                                                                        command, caplog):
    out = tmp_path / "o.parquet"
    code, stdout, err = run_cli(*COMMANDS[command](long_question(tmp_path), out, model))
    assert code == 0, err
    assert summary_of(stdout)["skipped"] == 1
    assert "too long for the model's context" in caplog.text and ": long" in caplog.text
    assert sorted(read_table(out).column("id").to_pylist()) == ["a", "b"]


def test_rl_skips_and_counts_a_prompt_longer_than_the_context(tmp_path, model):
    code, stdout, err = run_cli(*COMMANDS["rl"](long_question(tmp_path), tmp_path / "r", model))
    assert code == 0, err
    assert summary_of(stdout)["skipped"] == 1


def test_rl_refuses_when_every_prompt_is_too_long(tmp_path, model):
    rows = [{"id": "long", "question": "Count:" + " one" * 2100, "cot": "x", "answer": "1",
             "reference": "1"}]
    path = _write(chains_table(rows), tmp_path / "all-long.parquet")
    before = outputs_of(tmp_path)
    assert_refused(COMMANDS["rl"](path, tmp_path / "r", model), tmp_path, before,
                   ["all-long.parquet", "too long"])


# --- valid edge cases succeed ----------------------------------------------------------------

def test_keep_0_and_keep_1_prune_to_nothing_and_to_everything(tmp_path, model):
    path = _write(chains_table(), tmp_path / "c.parquet")
    code, _, err = run_cli("prune", path, "-o", tmp_path / "p.parquet", "--model", model,
                           "--device", "cpu", "--keep", "0,1")
    assert code == 0, err
    rows = read_table(tmp_path / "p.parquet").to_pylist()
    assert {(r["id"], r["keep_ratio"]) for r in rows} == {(i, k) for i in "ab" for k in (0, 1)}
    for r in rows:
        assert r["kept_tokens"] == (0 if r["keep_ratio"] == 0 else r["original_tokens"])
    # a keep-0 row has an empty CoT, and is still a valid pruned file to train on and look at
    assert run_cli("distill", tmp_path / "p.parquet", "-o", tmp_path / "d", "--model", model,
                   "--device", "cpu", "--max-steps", "1")[0] == 0
    assert run_cli("show", tmp_path / "p.parquet", "--keep", "0")[0] == 0


def test_a_one_token_cot_is_scored_and_pruned(tmp_path, model):
    rows = [{**CHAINS[0], "cot": "7"}]
    path = _write(chains_table(rows), tmp_path / "one.parquet")
    code, _, err = run_cli(*COMMANDS["score"](path, tmp_path / "s.parquet", model))
    assert code == 0, err
    scores = read_table(tmp_path / "s.parquet").to_pylist()[0]
    assert len(scores["surprisal"]) == scores["cot_end"] - scores["cot_start"] == 1
    code, _, err = run_cli("prune", path, "-o", tmp_path / "p.parquet", "--model", model,
                           "--device", "cpu", "--keep", "0,0.5,1")
    assert code == 0, err
    assert [r["kept_tokens"] for r in read_table(tmp_path / "p.parquet").to_pylist()] == [0, 0, 1]


UNICODE = {"id": "ü-🦄-1", "question": "Ünïcødé ✓ 数学: what is ½ of 8? 🤔",
           "cot": "Half of 8 is 4 — ✅ 四 🎉", "answer": "4 ✓", "reference": "4 ✓",
           "note": "ça va 🙂"}


def test_unicode_and_emoji_in_every_text_field_survive_every_stage(tmp_path, model):
    src = _jsonl(tmp_path / "u.jsonl", [UNICODE])
    code, _, err = run_cli("import", src, "-o", tmp_path / "c.parquet")
    assert code == 0, err
    chain = read_table(tmp_path / "c.parquet").to_pylist()[0]
    assert {k: chain[k] for k in ("id", "question", "cot", "answer")} == {
        k: UNICODE[k] for k in ("id", "question", "cot", "answer")}
    for command in ("score", "prune", "generate", "eval"):
        out = tmp_path / f"{command}.parquet"
        code, _, err = run_cli(*COMMANDS[command](tmp_path / "c.parquet", out, model))
        assert code == 0, (command, err)
        row = read_table(out).to_pylist()[0]
        assert row["question"] == UNICODE["question"], command
        assert row["id"].startswith(UNICODE["id"]), command
    assert read_table(tmp_path / "score.parquet").to_pylist()[0]["cot"] == UNICODE["cot"]
    code, out, err = run_cli("show", tmp_path / "prune.parquet")
    assert code == 0 and "数学" in out, err


def test_extra_columns_pass_through_score_prune_generate_and_eval(tmp_path, model):
    schema = CHAIN_SCHEMA.append(pa.field("source", pa.string())).append(
        pa.field("difficulty", pa.int64()))
    rows = [{**r, "source": f"src-{r['id']}", "difficulty": i} for i, r in enumerate(CHAINS)]
    path = _write(chains_table(rows, schema), tmp_path / "x.parquet")
    for command in ("score", "prune", "generate", "eval"):
        out = tmp_path / f"{command}.parquet"
        code, _, err = run_cli(*COMMANDS[command](path, out, model))
        assert code == 0, (command, err)
        got = {(r["source"], r["difficulty"]) for r in read_table(out).to_pylist()}
        assert got == {("src-a", 0), ("src-b", 1)}, command


def test_import_makes_ids_where_the_source_has_none_or_null(tmp_path):
    no_id = {k: v for k, v in GOOD_LINE.items() if k != "id"}
    src = _jsonl(tmp_path / "src.jsonl", [no_id, {**no_id, "id": None}])
    code, _, err = run_cli("import", src, "-o", tmp_path / "o.parquet")
    assert code == 0, err
    assert read_table(tmp_path / "o.parquet").column("id").to_pylist() == ["src-00000",
                                                                             "src-00001"]


@pytest.mark.parametrize("case", ["blank-cot", "duplicate-id"])
def test_show_renders_a_pruned_style_file_with_blank_cots_and_repeated_ids(case, tmp_path):
    path = BAD[case][0](tmp_path, chains_table())
    code, out, err = run_cli("show", path)
    assert code == 0, err
    assert "Half of 12?" in out or "What is 3+4?" in out


# --- predictor eval and prune --method predicted: bad greedy files, bad artifacts -------------

@pytest.fixture(scope="module")
def predictor_file(tmp_path_factory, pruned_table, model) -> Path:
    d = tmp_path_factory.mktemp("predictor")
    _write(pruned_table, d / "pruned.parquet")
    code, _, err = run_cli(*COMMANDS["predictor-fit"](d / "pruned.parquet",
                                                      d / "p.safetensors", model))
    assert code == 0, err
    return d / "p.safetensors"


PREDICTOR_EVAL_CASES = [b for b in BAD if applies("predictor-fit", b)]


@pytest.mark.parametrize("case", PREDICTOR_EVAL_CASES)
def test_predictor_eval_of_a_bad_greedy_file_exits_2(case, tmp_path, model, pruned_table,
                                                     predictor_file):
    maker, names = BAD[case]
    path = maker(tmp_path, pruned_table)
    before = outputs_of(tmp_path)
    named = path.name if case != "parts-disagree" else "parts"
    assert_refused(["predictor", "eval", path, "--predictor", predictor_file, "--model", model,
                    "--device", "cpu"], tmp_path, before, [named, *names])


def bad_artifacts(d: Path, good: Path) -> dict[str, Path]:
    empty = d / "empty.safetensors"
    empty.write_bytes(b"")
    cut = d / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    parquet = _write(chains_table(), d / "chains.safetensors")
    return {"empty": empty, "truncated": cut, "a parquet file": parquet}


@pytest.mark.parametrize("command", ["prune-predicted", "predictor-eval"])
def test_a_bad_predictor_artifact_exits_2_naming_it(command, tmp_path, model, pruned_table,
                                                    predictor_file):
    chains = _write(chains_table(), tmp_path / "c.parquet")
    greedy = _write(pruned_table, tmp_path / "g.parquet")
    for what, artifact in bad_artifacts(tmp_path, predictor_file).items():
        args = (["prune", chains, "-o", tmp_path / "out.parquet", "--model", model, "--device",
                 "cpu", "--method", "predicted", "--predictor", artifact, "--keep", "0.5"]
                if command == "prune-predicted" else
                ["predictor", "eval", greedy, "--predictor", artifact, "--model", model,
                 "--device", "cpu"])
        before = outputs_of(tmp_path)
        code, _, err = run_cli(*args)
        assert code == 2, (what, err)
        assert artifact.name in err and "predictor" in err, (what, err)
        assert outputs_of(tmp_path) == before, what


def test_predictor_eval_of_a_chains_file_exits_2(tmp_path, model, predictor_file):
    path = _write(chains_table(), tmp_path / "chains.parquet")
    before = outputs_of(tmp_path)
    assert_refused(["predictor", "eval", path, "--predictor", predictor_file, "--model", model,
                    "--device", "cpu"], tmp_path, before, ["chains.parquet", "prune_order"])
