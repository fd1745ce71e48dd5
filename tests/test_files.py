import pyarrow as pa
import pytest

from cotprune.data.files import (
    Shard,
    StageOutput,
    extend_schema,
    make_manifest,
    read_manifest,
    read_table,
    validate_chains,
    write_table,
)
from cotprune.errors import InputError

SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("x", pa.int32())])


def test_write_table_is_atomic_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "t.parquet"
    write_table(pa.Table.from_pylist([{"id": "a", "x": 1}], schema=SCHEMA), target)
    import pyarrow.parquet as pq

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError):
        write_table(pa.Table.from_pylist([{"id": "b", "x": 2}], schema=SCHEMA), target)
    monkeypatch.undo()
    assert read_table(target).to_pylist() == [{"id": "a", "x": 1}]  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]  # no temp left


def test_written_files_get_the_umask_permissions(tmp_path):
    """Not mkstemp's 0600: a stage's output is readable as any new file would be."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        write_table(pa.Table.from_pylist([{"id": "a", "x": 1}], schema=SCHEMA), tmp_path / "t")
        stage = StageOutput(tmp_path / "o.parquet", SCHEMA, make_manifest("t"))
        stage.write([{"id": "a", "x": 1}], [0])
        stage.finish()
    finally:
        os.umask(old)
    for name in ("t", "o.parquet"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def _interrupted(out, manifest):
    stage = StageOutput(out, SCHEMA, manifest)
    stage.write([{"id": "a", "x": 0}], [0])


@pytest.mark.parametrize("change, named", [
    ({"options": {"keep": [0.5]}}, "option keep"),
    ({"model": "other"}, "model"),
    ({"dtype": "bfloat16"}, "dtype"),
    ({"inputs": [{"path": "c.parquet", "sha256": "beef"}]}, "input files"),
])
def test_resume_refuses_a_run_that_differs_and_names_what(tmp_path, change, named):
    base = make_manifest("t", model="m", dtype="float32", options={"keep": [0.9]},
                         inputs=[{"path": "c.parquet", "sha256": "abc"}])
    out = tmp_path / "o.parquet"
    _interrupted(out, base)
    with pytest.raises(InputError, match=named):
        StageOutput(out, SCHEMA, {**base, **change}, resume=True)
    moved = {**base, "argv": ["elsewhere"], "time": "later", "device": "cuda:1",
             "inputs": [{"path": "moved.parquet", "sha256": "abc"}]}
    assert StageOutput(out, SCHEMA, moved, resume=True).done_ids == {"a"}


def test_fingerprint_follows_content_not_path(tmp_path):
    from cotprune.data.files import fingerprint

    table = pa.Table.from_pylist([{"id": "a", "x": 1}], schema=SCHEMA)
    write_table(table, tmp_path / "one.parquet")
    (tmp_path / "two.parquet").write_bytes((tmp_path / "one.parquet").read_bytes())
    write_table(table.set_column(1, "x", pa.array([2], pa.int32())), tmp_path / "three.parquet")
    assert fingerprint(tmp_path / "one.parquet") == fingerprint(tmp_path / "two.parquet")
    assert fingerprint(tmp_path / "one.parquet") != fingerprint(tmp_path / "three.parquet")


def test_fingerprint_ignores_the_manifest_of_the_run_that_wrote_the_file(tmp_path):
    # a stage re-run on a fresh machine writes the same rows with another time and command
    # line in its metadata; --resume of a run over that input must still match (issue 15)
    from cotprune.data.files import fingerprint

    table = pa.Table.from_pylist([{"id": "a", "x": 1}, {"id": "b", "x": 2}], schema=SCHEMA)
    write_table(table, tmp_path / "first.parquet", make_manifest("synth", seed=1))
    write_table(table, tmp_path / "again.parquet", make_manifest("synth", seed=1, note="x"))
    assert (tmp_path / "first.parquet").read_bytes() != (tmp_path / "again.parquet").read_bytes()
    assert fingerprint(tmp_path / "first.parquet") == fingerprint(tmp_path / "again.parquet")
    write_table(table.slice(0, 1), tmp_path / "fewer.parquet", make_manifest("synth", seed=1))
    assert fingerprint(tmp_path / "first.parquet") != fingerprint(tmp_path / "fewer.parquet")


def test_manifest_contents(tmp_path):
    m = make_manifest("score", model="smollm2-135m", dtype="float32", seed=3)
    path = tmp_path / "m.parquet"
    write_table(SCHEMA.empty_table(), path, m)
    got = read_manifest(path)
    assert got["command"] == "score" and got["model"] == "smollm2-135m" and got["seed"] == 3
    assert {"cotprune_version", "argv", "time", "dtype"} <= set(got)


def test_extend_schema_replaces_in_place_and_appends():
    base = pa.schema([("id", pa.string()), ("cot", pa.string()), ("extra", pa.int64())])
    out = extend_schema(base, [pa.field("cot", pa.large_string()), pa.field("n", pa.int32())])
    assert out.names == ["id", "cot", "extra", "n"] and out.field("cot").type == pa.large_string()


def test_shard_rows_partition_in_order():
    for n in range(0, 12):
        parts = [list(Shard(i, 3).rows(n)) for i in range(3)]
        assert sum(parts, []) == list(range(n))
    assert Shard.parse("1/4") == Shard(1, 4)
    for bad in ["4/4", "x", "1/0"]:
        with pytest.raises(InputError):
            Shard.parse(bad)


def test_shard_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert Shard.parse(None) == Shard(1, 2)


def test_stage_output_resume_and_input_order(tmp_path):
    out = tmp_path / "o.parquet"
    stage = StageOutput(out, SCHEMA, make_manifest("t"))
    stage.write([{"id": "c", "x": 2}], [2])
    stage.write([{"id": "a", "x": 0}], [0])
    assert not out.exists()
    with pytest.raises(InputError, match="--resume"):
        StageOutput(out, SCHEMA, make_manifest("t"))
    again = StageOutput(out, SCHEMA, make_manifest("t"), resume=True)
    assert again.done_ids == {"a", "c"}
    again.write([{"id": "b", "x": 1}], [1])
    assert again.finish() == 3
    assert read_table(out).column("id").to_pylist() == ["a", "b", "c"]
    assert not (tmp_path / "o.parquet.partial").exists()


def test_part_directories_read_as_one(tmp_path):
    for i in range(2):
        s = StageOutput(tmp_path / "d", SCHEMA, make_manifest("t"), shard=Shard(i, 2))
        s.write([{"id": str(i), "x": i}], [i])
        s.finish()
    assert read_table(tmp_path / "d").column("id").to_pylist() == ["0", "1"]


def test_validate_chains_names_row_and_column(tmp_path):
    t = pa.Table.from_pylist([{"id": "a", "question": "q", "cot": None, "answer": "1"}])
    with pytest.raises(InputError, match="f.parquet: row a: column 'cot': null value"):
        validate_chains(t, "f.parquet")
    with pytest.raises(InputError, match="not a readable Parquet"):
        (tmp_path / "x.parquet").write_text("hello")
        read_table(tmp_path / "x.parquet")
