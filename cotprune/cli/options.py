"""Option types shared by commands, declared once (SPEC "Common options").

Commands spell their signatures with these aliases so that `--model`, `--dtype`, `--resume` and
the rest mean the same everywhere. `--config FILE.yaml` fills defaults from a file: flags on the
command line win over the file, the file over the built-in defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cotprune.errors import InputError


def _load_config(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]):
    """Eager callback: turn a YAML file into the command's default map before other flags."""
    if value is None:
        return value
    import yaml

    try:
        data = yaml.safe_load(Path(value).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"cannot read config ({e})", file=str(value)) from None
    if not isinstance(data, dict):
        raise InputError("config must be a mapping of option names to values", file=str(value))
    known = {p.name for p in ctx.command.params}
    defaults = {}
    for key, v in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in known or name == "config":
            raise InputError(f"unknown option {key!r} for this command", file=str(value))
        defaults[name] = ",".join(map(str, v)) if isinstance(v, list) else v
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


Config = Annotated[Optional[Path], typer.Option(
    "--config", help="YAML file of option defaults (flags win over it).",
    callback=_load_config, is_eager=True)]
Output = Annotated[Path, typer.Option("-o", "--output", help="Output path.")]
Model = Annotated[str, typer.Option(
    "--model", help="Hugging Face id, local directory, or the alias smollm2-135m.")]
Adapter = Annotated[Optional[str], typer.Option("--adapter", help="A peft adapter directory.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto|float32|bfloat16|float16.")]
Device = Annotated[str, typer.Option("--device", help="auto|cpu|cuda|cuda:N.")]
TrustRemoteCode = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Allow model code from the hub (off by default).")]
BatchTokens = Annotated[int, typer.Option(
    "--batch-tokens", min=1, help="Token budget of one forward batch.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
Limit = Annotated[Optional[int], typer.Option("--limit", min=1, help="Use only the first N rows.")]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Continue an interrupted run without redoing finished rows.")]
ShardSpec = Annotated[Optional[str], typer.Option(
    "--shard", help="I/N: process the I-th of N row blocks (default: RANK/WORLD_SIZE).")]


def parse_list(value: str, flag: str, cast=str) -> list:
    """A comma-separated flag value, e.g. `--keep 0.9,0.7` or `--scorer a,b`."""
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise InputError(f"{flag} needs at least one value")
    try:
        return [cast(v) for v in items]
    except ValueError:
        raise InputError(f"{flag}: cannot read {value!r}") from None
