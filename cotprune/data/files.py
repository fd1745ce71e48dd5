"""Every Parquet read and write of cotprune goes through here.

A stage file is one Parquet file or a directory of part files. Every file carries the JSON run
manifest under the schema-metadata key `cotprune`. Writes are atomic (temp file + rename), and a
stage writes its rows through `StageOutput`, which gives `--resume` and `--shard I/N` to every
command the same way:

    OUT.partial/chunk-000000.parquet ...   rows finished so far (each chunk written atomically)
    OUT                                    the result, assembled from the chunks at the end

With N shards, OUT is a directory and shard i writes OUT/part-0000i-of-0000N.parquet.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cotprune.errors import InputError
from cotprune.faults import fault_point
from cotprune.version import __version__

MANIFEST_KEY = b"cotprune"
ORDER_COLUMN = "__cotprune_order"  # hidden column in chunk files: the input row index
ROW_GROUP_ROWS = 1024

# --- schemas ---------------------------------------------------------------------------------

CHAIN_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("question", pa.string()),
    pa.field("cot", pa.string()),
    pa.field("answer", pa.string()),
    pa.field("reference", pa.string()),
]
CHAIN_SCHEMA = pa.schema(CHAIN_FIELDS)
REQUIRED_CHAIN_COLUMNS = ("id", "question", "cot", "answer")

LAYOUT_FIELDS = [
    pa.field("input_ids", pa.list_(pa.int32())),
    pa.field("cot_start", pa.int32()),
    pa.field("cot_end", pa.int32()),
    pa.field("answer_start", pa.int32()),
    pa.field("answer_end", pa.int32()),
]


def extend_schema(base: pa.Schema, fields: Iterable[pa.Field]) -> pa.Schema:
    """`base` with `fields` appended; a field of the same name replaces the old one in place.

    This is how unknown columns pass through a stage unchanged.
    """
    fields = list(fields)
    new_names = {f.name for f in fields}
    out = [f if f.name not in new_names else next(g for g in fields if g.name == f.name)
           for f in base]
    out += [f for f in fields if f.name not in base.names]
    return pa.schema(out)


# --- manifest --------------------------------------------------------------------------------

def make_manifest(command: str, **fields: object) -> dict:
    """The run manifest: version, command line, time, plus whatever the stage adds (model...)."""
    return {
        "cotprune_version": __version__,
        "command": command,
        "argv": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **fields,
    }


def fingerprint(path: str | Path) -> str:
    """A content fingerprint of a stage file or part directory: sha256 over its rows.

    Parquet files are hashed by schema and data, not by bytes: their metadata holds the manifest
    of the run that wrote them (its time and command line), so a stage re-run on another machine
    writes the same rows in different bytes, and `--resume` must still accept them. Other files
    (a predictor's safetensors) are hashed by bytes.
    """
    digest = hashlib.sha256()
    for f in list_parquet_files(path):
        with open(f, "rb") as fh:
            if fh.read(4) != b"PAR1":
                fh.seek(0)
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
                continue
        table = _read_rows(f)
        digest.update(table.schema.remove_metadata().to_string().encode())
        for batch in table.combine_chunks().to_batches():
            digest.update(batch.serialize())
    return digest.hexdigest()


def _read_rows(path: Path) -> pa.Table:
    try:
        return pq.read_table(path).replace_schema_metadata(None)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"not a readable Parquet file ({e})", file=str(path)) from None


def input_record(path: str | Path) -> dict:
    """How a manifest names one input file: its path and its content fingerprint."""
    return {"path": str(path), "sha256": fingerprint(path)}


# What must match for `--resume` to continue a run: everything that changes the output. The
# command line, the time and the device may differ (a resumed run may run on another GPU).
RESUME_KEYS = ("command", "model", "adapter", "tokenizer", "dtype", "seed", "shard", "options")


def resume_differences(before: dict, now: dict) -> list[str]:
    """What differs between the manifest of an interrupted run and this one, in words."""
    found = []
    for key in RESUME_KEYS:
        a, b = before.get(key), now.get(key)
        if key == "options" and isinstance(a, dict) and isinstance(b, dict):
            found += [f"option {k} ({a.get(k)!r} then, {b.get(k)!r} now)"
                      for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            found.append(f"{key} ({a!r} then, {b!r} now)")
    fingerprints = [[i.get("sha256") for i in m.get("inputs", [])] for m in (before, now)]
    if fingerprints[0] != fingerprints[1]:
        found.append("the input files' contents")
    return found


def check_resumable(before: dict | None, now: dict, what: str) -> None:
    """Refuse (exit 2) to continue `what` when the interrupted run computed something else."""
    if before is None:
        raise InputError(f"--resume: {what} records no manifest, so it cannot be checked "
                         "against this run; delete it to start again")
    differences = resume_differences(before, now)
    if differences:
        raise InputError(f"--resume: this run differs from the interrupted one in "
                         f"{'; '.join(differences)}. Repeat the first run's options, or delete "
                         f"{what} to start again")


def with_manifest(schema: pa.Schema, manifest: dict) -> pa.Schema:
    meta = dict(schema.metadata or {})
    meta[MANIFEST_KEY] = json.dumps(manifest).encode()
    return schema.with_metadata(meta)


def read_manifest(path: str | Path) -> dict | None:
    files = list_parquet_files(path)
    try:
        meta = pq.read_schema(files[0]).metadata or {}
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"not a readable Parquet file ({e})", file=str(files[0])) from None
    raw = meta.get(MANIFEST_KEY)
    return json.loads(raw) if raw else None


# --- reading ---------------------------------------------------------------------------------

def list_parquet_files(path: str | Path) -> list[Path]:
    """The file itself, or the sorted part files of a directory (hidden entries skipped)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise InputError("directory holds no .parquet part files", file=str(path))
        return files
    if not path.exists():
        raise InputError("no such file", file=str(path))
    return [path]


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_int_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
        pa.types.is_integer(t.value_type) or pa.types.is_null(t.value_type))


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or pa.types.is_integer(t)


# The Arrow types of the columns cotprune writes (SPEC "Files"), checked on every read so that a
# column of the wrong type is named here instead of failing deep inside a stage.
KNOWN_TYPES = {
    **{c: (_is_text, "string") for c in ("id", "question", "cot", "answer", "reference",
                                         "method")},
    **{c: (pa.types.is_integer, "integer") for c in ("cot_start", "cot_end", "answer_start",
                                                    "answer_end", "original_tokens",
                                                    "kept_tokens")},
    **{c: (_is_int_list, "list of integers") for c in ("input_ids", "kept_positions",
                                                      "prune_order")},
    **{c: (_is_number, "number") for c in ("keep_ratio", "objective_nll")},
}


def check_types(table: pa.Table, file: str) -> None:
    """Refuse (exit 2) a known column whose Arrow type is not the one cotprune writes."""
    for name in table.column_names:
        known = KNOWN_TYPES.get(name)
        kind = table.schema.field(name).type
        if known is None or pa.types.is_null(kind) or known[0](kind):
            continue
        column = table.column(name)
        first = next((i for i, v in enumerate(column.is_valid().to_pylist()) if v), 0)
        raise InputError(f"expected {known[1]} values, the column holds {kind}", file=file,
                         row=f"#{first}", column=name)


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read a stage file (or part directory) whole; anything but Parquet is an InputError."""
    tables = []
    files = list_parquet_files(path)
    for f in files:
        try:
            tables.append(pq.read_table(f, columns=columns))
        except (pa.ArrowException, OSError) as e:  # empty, truncated, not Parquet at all
            raise InputError(f"not a readable Parquet file ({e})", file=str(f)) from None
    for f, t in zip(files, tables, strict=True):
        check_types(t, str(f))
    if len(tables) == 1:
        return tables[0]
    for f, t in zip(files[1:], tables[1:], strict=True):
        # Parts of one stage share one schema; a part that differs (another stage's output, a
        # column of another type) is named rather than silently promoted to nulls.
        if not t.schema.equals(tables[0].schema):
            column = next((n for n in sorted(set(t.schema.names) ^ set(tables[0].schema.names))),
                          None) or next((n for n in t.schema.names
                                         if t.schema.field(n).type
                                         != tables[0].schema.field(n).type), None)
            raise InputError(f"part file's schema differs from that of {files[0].name}",
                             file=str(f), column=column)
    try:
        return pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as e:
        raise InputError(f"part files have different schemas ({e})", file=str(path)) from None


def require_columns(table: pa.Table, columns: Iterable[str], file: str) -> None:
    for c in columns:
        if c not in table.column_names:
            raise InputError("missing column", file=file, column=c)


def validate_chains(table: pa.Table, file: str, *, need: Iterable[str] = REQUIRED_CHAIN_COLUMNS,
                    unique_ids: bool = True) -> None:
    """Chains must have rows, the needed columns as non-null strings, a CoT that is not blank,
    and unique ids (unless `unique_ids` is False: a pruned file has one row per keep ratio)."""
    need = list(need)
    require_columns(table, need, file)
    if table.num_rows == 0:
        raise InputError("the file has no rows", file=file)
    ids = table.column("id").to_pylist()
    for column in need:
        values = table.column(column).to_pylist()
        for i, v in enumerate(values):
            row = ids[i] if ids[i] is not None else f"#{i}"
            if v is None:
                raise InputError("null value", file=file, row=row, column=column)
            if not isinstance(v, str):
                raise InputError(f"expected a string, got {type(v).__name__}", file=file,
                                 row=row, column=column)
            # A blank CoT has nothing to score or prune; a pruned row at keep 0 may be blank.
            if not v.strip() and (column == "id" or (
                    column == "cot" and "keep_ratio" not in table.column_names)):
                raise InputError("empty value", file=file, row=row, column=column)
    if unique_ids:
        seen: set[str] = set()
        for i, v in enumerate(ids):
            if v in seen:
                hint = ("; this is a pruned file (one row per keep ratio): pass the chains file"
                        if "keep_ratio" in table.column_names else "")
                raise InputError(f"duplicate id{hint}", file=file, row=f"{v} (#{i})",
                                 column="id")
            seen.add(v)


# --- writing ---------------------------------------------------------------------------------

def umask_mode(mode: int = 0o666) -> int:
    """`mode` less the process umask: the permissions `open()` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _temp_path_beside(target: Path) -> Path:
    check_writable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    # mkstemp makes the file 0600; the output must get the usual permissions once renamed.
    os.chmod(name, umask_mode())
    return Path(name)


def check_writable(target: str | Path) -> None:
    """Refuse (exit 2) an output whose directory cannot be written, before any work is done.

    The nearest existing ancestor (or the target itself, when it is a directory already, as a
    sharded output is) must be a writable directory: the missing ones below it are created when
    the first file is written."""
    target = Path(target).absolute()
    parent = target if target.is_dir() else target.parent
    while not parent.exists() and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot write here: {parent} is not a directory", file=str(target))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write here: directory {parent} is not writable",
                         file=str(target))


def write_table(table: pa.Table, path: str | Path, manifest: dict | None = None) -> None:
    """Write `table` to `path` atomically: the target never holds a partial file."""
    target = Path(path)
    if manifest is not None:
        table = table.replace_schema_metadata(with_manifest(table.schema, manifest).metadata)
    tmp = _temp_path_beside(target)
    try:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
        fault_point("write", target)  # a fault here lands mid-write: the target is untouched
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# --- shards and resumable stage output -------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @staticmethod
    def parse(spec: str | None) -> Shard:
        """`--shard I/N`, else RANK/WORLD_SIZE from torchrun or accelerate, else 0/1."""
        if spec:
            try:
                i, n = (int(x) for x in spec.split("/"))
            except ValueError:
                raise InputError(f"--shard expects I/N, got {spec!r}") from None
        else:
            i = int(os.environ.get("RANK", 0))
            n = int(os.environ.get("WORLD_SIZE", 1))
        if n < 1 or not 0 <= i < n:
            raise InputError(f"shard {i}/{n} is out of range (need 0 <= I < N)")
        return Shard(i, n)

    def rows(self, n_rows: int) -> range:
        """This shard's contiguous block of rows, so part files concatenate in input order."""
        per, extra = divmod(n_rows, self.count)
        start = self.index * per + min(self.index, extra)
        return range(start, start + per + (1 if self.index < extra else 0))


PARTIAL_MANIFEST = "manifest.json"  # in OUT.partial/: the manifest of the run that wrote it


class StageOutput:
    """Resumable, shardable, atomic output of one stage.

    Rows are written in chunks as they finish (each chunk atomically) into a `.partial`
    directory, beside the manifest of the run that writes them; `finish()` assembles them in
    input order into the target and removes the directory. With `resume=True`, ids already in
    the chunks are reported by `done_ids` and the caller skips them, but only when the
    interrupted run's manifest matches this one (same inputs, model, options: else exit 2).
    Without it, a leftover `.partial` directory is an error rather than silently thrown away.
    """

    def __init__(self, out: str | Path, schema: pa.Schema, manifest: dict, *,
                 shard: Shard = Shard(), resume: bool = False):
        out = Path(out)
        if shard.count == 1:
            self.target = out
            self.partial = out.with_name(out.name + ".partial")
        else:
            self.target = out / f"part-{shard.index:05d}-of-{shard.count:05d}.parquet"
            self.partial = out / f".part-{shard.index:05d}.partial"
        self.schema = schema
        self.manifest = {**manifest, "shard": f"{shard.index}/{shard.count}"}
        self._chunk_schema = schema.append(pa.field(ORDER_COLUMN, pa.int64()))
        check_writable(self.target)
        # The lock comes first: a second process on the same output is refused before it looks
        # at (or writes) anything of the first one's.
        lock_partial(self.partial, self.target)
        _open_outputs.append(self)
        self._remove_stale_temps()
        try:
            if self.holds_work():
                if not resume:
                    raise InputError(f"{self.partial} holds rows of an interrupted run: pass "
                                     "--resume to continue it, or delete it to start again",
                                     file=str(out))
                check_resumable(self._partial_manifest(), self.manifest, str(self.partial))
            else:  # killed before its first row: nothing to continue, nothing to lose
                (self.partial / PARTIAL_MANIFEST).unlink(missing_ok=True)
        except BaseException:
            self.close()
            raise
        self._chunks = sorted(self.partial.glob("chunk-*.parquet"))

    def _remove_stale_temps(self) -> None:
        """Temp files of writes a killed run never renamed: garbage, and ours to remove now that
        this process holds the output's lock."""
        for tmp in [*self.target.parent.glob(f".{self.target.name}.*.tmp"),
                    *self.partial.glob(".*.tmp")]:
            tmp.unlink(missing_ok=True)

    def holds_work(self) -> bool:
        """Whether the partial directory holds rows or mid-row state of a run."""
        keep = {LOCK_FILE, PARTIAL_MANIFEST}
        return self.partial.is_dir() and any(
            p.name not in keep and not p.name.startswith(".") for p in self.partial.iterdir())

    def close(self) -> None:
        """Release the output: unlock it, and remove the partial directory when it holds no
        work (a run that failed before its first row leaves nothing behind)."""
        if self in _open_outputs:
            _open_outputs.remove(self)
        if not self.holds_work():
            shutil.rmtree(self.partial, ignore_errors=True)
        unlock_partial(self.partial)

    def _partial_manifest(self) -> dict | None:
        path = self.partial / PARTIAL_MANIFEST
        return json.loads(path.read_text()) if path.exists() else None

    def _open_partial(self) -> None:
        """Create the partial directory with this run's manifest (once)."""
        if (self.partial / PARTIAL_MANIFEST).exists():
            return
        self.partial.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.partial / PARTIAL_MANIFEST, json.dumps(self.manifest, indent=1))

    @property
    def done_ids(self) -> set[str]:
        done: set[str] = set()
        for f in self._chunks:
            done.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
        return done

    def state_path(self, name: str) -> Path:
        """Where a stage keeps mid-row state (greedy's trajectory): a file in the partial
        directory. Reading it creates nothing; `write_state` writes it."""
        return self.partial / name

    def write_state(self, name: str, text: str) -> None:
        self._open_partial()
        write_text_atomic(self.partial / name, text)
        fault_point("state")

    def append_state(self, name: str, lines: Iterable[str]) -> None:
        """Append lines to a state file; rewritten whole and atomically, because a kill in the
        middle of an append would leave half a line (half an id, read back as another id)."""
        self._open_partial()
        path = self.partial / name
        before = path.read_text() if path.exists() else ""
        write_text_atomic(path, before + "".join(line + "\n" for line in lines))
        fault_point("state")

    def write(self, rows: list[dict], order: list[int]) -> None:
        """Append finished rows; `order[k]` is the input row index of `rows[k]`."""
        if not rows:
            return
        table = pa.Table.from_pylist(
            [{**r, ORDER_COLUMN: o} for r, o in zip(rows, order, strict=True)],
            schema=self._chunk_schema)
        self._open_partial()
        chunk = self.partial / f"chunk-{len(self._chunks):06d}.parquet"
        write_table(table, chunk)
        self._chunks.append(chunk)
        fault_point("chunk")

    def finish(self) -> int:
        """Assemble the chunks in input order into the target; return the row count."""
        if self._chunks:
            table = pa.concat_tables(pq.read_table(f) for f in self._chunks)
            table = table.take(pc.sort_indices(
                table, sort_keys=[(ORDER_COLUMN, "ascending")]))  # stable: sub-order kept
            table = table.drop_columns([ORDER_COLUMN])
        else:
            table = self.schema.empty_table()
        write_table(table.cast(self.schema), self.target, self.manifest)
        shutil.rmtree(self.partial, ignore_errors=True)
        self.close()
        return table.num_rows


# --- one writer per output -------------------------------------------------------------------

LOCK_FILE = ".lock"  # in OUT.partial/: flock-ed by the process writing OUT, holds its pid
_locks: dict[str, int] = {}  # partial directory -> the open lock file this process holds
_open_outputs: list[StageOutput] = []  # closed by `close_outputs` when a command ends
_made: set[str] = set()  # locked directories this process created (and may remove again)


def lock_partial(partial: Path, target: Path) -> None:
    """Hold an exclusive lock on `partial` (a directory: OUT.partial, or the OUTDIR of `distill`
    and `rl`) for this process, or refuse (exit 2): two processes writing one output would
    interleave their chunks or checkpoints. flock dies with its process, so the lock of a run
    killed with -9 is never stale."""
    key = str(partial.absolute())
    if key in _locks:  # this process holds it (an earlier StageOutput of the same output)
        return
    if not partial.exists():
        _made.add(key)
    partial.mkdir(parents=True, exist_ok=True)
    fd = os.open(partial / LOCK_FILE, os.O_RDWR | os.O_CREAT, umask_mode())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise InputError(f"another cotprune process (pid {holder}) is writing this output; "
                         "wait for it to end, or stop it and pass --resume",
                         file=str(target)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _locks[key] = fd


def unlock_partial(partial: Path) -> None:
    fd = _locks.pop(str(partial.absolute()), None)
    if fd is not None:
        os.close(fd)


def lock_directory(directory: Path) -> None:
    """The one-writer lock of an output directory (`distill`, `rl`), held until `close_outputs`;
    the directory holds its `.lock` file meanwhile."""
    lock_partial(Path(directory), Path(directory))


def holds_only_lock(directory: Path) -> bool:
    return directory.is_dir() and all(p.name == LOCK_FILE for p in directory.iterdir())


def close_outputs() -> None:
    """Release every output this process still holds (the CLI calls this when a command ends,
    however it ends). A locked directory that holds nothing but its lock is removed: a run that
    failed before writing leaves nothing behind."""
    for output in list(_open_outputs):
        output.close()
    for key in list(_locks):
        unlock_partial(Path(key))
        if key in _made and holds_only_lock(Path(key)):
            shutil.rmtree(key, ignore_errors=True)
    _made.clear()


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file so that a reader never sees half of it."""
    tmp = _temp_path_beside(path)
    try:
        tmp.write_text(text)
        fault_point("write", path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def iter_rows(table: pa.Table) -> Iterator[dict]:
    for batch in table.to_batches():
        yield from batch.to_pylist()
