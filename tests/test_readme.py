"""The README's Python example runs as written (on a tiny model instead of the default)."""

import re
from pathlib import Path

import pyarrow as pa

from cotprune.data.files import CHAIN_SCHEMA, read_table, write_table
from cotprune.data.synth import synth_arithmetic

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(tmp_path, tiny_gpt2_model, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_table(pa.Table.from_pylist(synth_arithmetic(2, 0), schema=CHAIN_SCHEMA),
                "chains.parquet")
    code = readme_example().replace('"smollm2-135m"', repr(str(tiny_gpt2_model)))
    exec(compile(code, "README.md", "exec"), {})
    assert read_table("pruned.parquet").num_rows == 4
    assert capsys.readouterr().out.startswith("4 ")
