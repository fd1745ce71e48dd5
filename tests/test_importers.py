import json
from itertools import pairwise

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import GSM8K, run_cli, summary_of

from cotprune.data.files import read_manifest, read_table
from cotprune.data.importers import last_boxed, strip_calculator


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_full_train_split(tmp_path):
    out = tmp_path / "gsm8k.parquet"
    code, stdout, stderr = run_cli("import", GSM8K, "--format", "gsm8k", "-o", out)
    assert code == 0, stderr
    assert summary_of(stdout)["rows"] == 7473
    rows = read_table(out).to_pylist()
    assert len(rows) == 7473 and len({r["id"] for r in rows}) == 7473
    first = rows[0]
    assert first["id"] == "gsm8k-train-00000"
    assert first["cot"] == ("Natalia sold 48/2 = 24 clips in May.\n"
                            "Natalia sold 48+24 = 72 clips altogether in April and May.")
    assert first["answer"] == first["reference"] == "72"
    assert not any("<<" in r["cot"] or "####" in r["cot"] for r in rows)
    manifest = read_manifest(out)
    assert manifest["command"] == "import" and manifest["format"] == "gsm8k"
    assert manifest["cotprune_version"] and manifest["time"]
    assert pq.read_schema(out).field("id").type == pa.string()


def test_gsm8k_keep_calc(tmp_path):
    out = tmp_path / "g.parquet"
    assert run_cli("import", GSM8K, "--format", "gsm8k", "-o", out, "--limit", "1",
                   "--keep-calc")[0] == 0
    assert "<<48/2=24>>" in read_table(out).to_pylist()[0]["cot"]
    assert strip_calculator("a $<<1+1=2>>2 b") == "a $2 b"


def test_math_rows_use_boxed_reference(tmp_path):
    src = write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "1+1?", "solution": "So $\\boxed{\\frac{2}{1}}$.", "unique_id": "m/1"},
        {"problem": "2+2?", "solution": "It is 4.", "answer": "4"},
    ])
    out = tmp_path / "m.parquet"
    assert run_cli("import", src, "--format", "math", "-o", out)[0] == 0
    rows = read_table(out).to_pylist()
    assert rows[0]["id"] == "m/1" and rows[0]["reference"] == "\\frac{2}{1}"
    assert rows[1]["answer"] == "4" and rows[1]["id"] == "math-math-00001"
    assert last_boxed("a \\boxed{x^{2}} b \\boxed{y}") == "y"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "hf"])
def test_mapped_formats(tmp_path, fmt):
    rows = [{"q": "Q1", "why": "because", "a": "1", "gold": "1", "key": "x1"},
            {"q": "Q2", "why": "since", "a": "2", "gold": "2", "key": "x2"}]
    if fmt == "csv":
        src = tmp_path / "in.csv"
        src.write_text("q,why,a,gold,key\n" + "".join(
            f"{r['q']},{r['why']},{r['a']},{r['gold']},{r['key']}\n" for r in rows))
    elif fmt == "parquet":
        src = tmp_path / "in.parquet"
        pq.write_table(pa.Table.from_pylist(rows), src)
    else:
        src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    code, _, stderr = run_cli("import", src, "--format", fmt, "-o", out, "--question-field", "q",
                              "--cot-field", "why", "--answer-field", "a",
                              "--reference-field", "gold", "--id-field", "key")
    assert code == 0, stderr
    got = read_table(out).to_pylist()
    assert [(r["id"], r["question"], r["cot"], r["answer"], r["reference"]) for r in got] == [
        ("x1", "Q1", "because", "1", "1"), ("x2", "Q2", "since", "2", "2")]


@pytest.mark.parametrize("lines,fmt,needle", [
    (['{"question": "q", "answer": "a #### 1"}', "not json"], "gsm8k", "line 2: not JSON"),
    (['{"question": "q"}'], "gsm8k", "line 1: column 'answer': missing field"),
    (['{"question": "", "answer": "a #### 1"}'], "gsm8k", "column 'question': empty field"),
    (['{"question": "q", "answer": "no marker"}'], "gsm8k", "no '####'"),
    (['{"id": "a", "question": "q", "cot": "c", "answer": "1"}',
      '{"id": "a", "question": "q", "cot": "c", "answer": "1"}'], "jsonl", "duplicate id 'a'"),
    (['{"question": "q", "cot": "c"}'], "jsonl", "column 'answer': missing field"),
    (['[1, 2]'], "jsonl", "must be a JSON object"),
])
def test_bad_rows_exit_2_and_write_nothing(tmp_path, lines, fmt, needle):
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.parquet"
    code, _, stderr = run_cli("import", src, "--format", fmt, "-o", out)
    assert code == 2 and needle in stderr and str(src) in stderr, stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_unknown_format_and_missing_file(tmp_path):
    assert run_cli("import", tmp_path / "nope.jsonl", "-o", tmp_path / "o.parquet")[0] == 2
    src = write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "cot": "c", "answer": "a"}])
    code, _, stderr = run_cli("import", src, "--format", "xml", "-o", tmp_path / "o.parquet")
    assert code == 2 and "--format" in stderr


def test_synth_is_seeded_and_exact(tmp_path):
    from cotprune.data.synth import synth_arithmetic

    a, b = synth_arithmetic(20, seed=5), synth_arithmetic(20, seed=5)
    assert a == b and a != synth_arithmetic(20, seed=6)
    for row in a:
        steps = row["cot"].count("Step ")
        assert 2 <= steps <= 5
        trail = row["cot"].rsplit("once more: ", 1)[1].split(".")[0].split(" -> ")
        assert trail[-1] == row["answer"] == row["reference"]
        assert all(int(v) >= 0 for v in trail)
    out = tmp_path / "s.parquet"
    code, stdout, _ = run_cli("synth", "arithmetic", "-n", "5", "--seed", "1", "-o", out)
    assert code == 0 and summary_of(stdout)["rows"] == 5 and read_table(out).num_rows == 5
    assert run_cli("synth", "geometry", "-o", out)[0] == 2


def _trail(cot: str) -> list[int]:
    return [int(v) for v in cot.rsplit("nce more: ", 1)[1].split(".")[0].split(" -> ")]


def test_synth_options_size_the_task(tmp_path):
    """--steps, --max-start, --max-operand, --operations and --style bound every problem."""
    import re

    out = tmp_path / "s.parquet"
    code, _, err = run_cli("synth", "arithmetic", "-n", "40", "--seed", "3", "-o", out,
                           "--steps", "2-3", "--max-start", "20", "--max-operand", "9",
                           "--operations", "add,sub", "--style", "brief")
    assert code == 0, err
    rows = read_table(out).to_pylist()
    for row in rows:
        trail = _trail(row["cot"])
        assert 2 <= len(trail) - 1 <= 3 and 3 <= trail[0] <= 20
        assert all(abs(b - a) <= max(9, a) for a, b in pairwise(trail))
        assert all(b <= a + 9 for a, b in pairwise(trail))
        assert trail[-1] == int(row["answer"]) and "*" not in row["cot"]
        assert "Step " not in row["cot"]  # the brief style
        equations = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)", row["cot"])
        assert equations and all(
            (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c)
            for a, op, b, c in equations)
    assert {len(_trail(r["cot"])) - 1 for r in rows} == {2, 3}


@pytest.mark.parametrize("flag, value", [("--steps", "3-2"), ("--steps", "x"),
                                         ("--operations", "add,pow"), ("--style", "terse"),
                                         ("--max-operand", "1")])
def test_synth_bad_options_name_the_flag(tmp_path, flag, value):
    out = tmp_path / "s.parquet"
    code, _, err = run_cli("synth", "arithmetic", "-n", "2", "-o", out, flag, value)
    assert code == 2 and flag in err and not out.exists()
