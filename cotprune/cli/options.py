"""Option types shared by commands, declared once (SPEC "Common options"; README "Option
vocabulary").

Commands spell their signatures with these aliases so that one concept has one flag and one
meaning everywhere: `--keep` is always a keep ratio (or a list of them), `--max-length` the
longest whole sequence, `--significance-model` a token classifier, and so on. The model-loading
options are added by `model_options`, so no command can declare them differently. Old spellings
live on as hidden aliases (`alias`, `prefer`) so that existing scripts keep working.

`--config FILE.yaml` fills defaults from a file: flags on the command line win over the file,
the file over the built-in defaults.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cotprune.core.models import DEFAULT_MODEL, ModelOptions
from cotprune.core.stage import RunOptions
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
OutputDir = Annotated[Path, typer.Option("-o", "--output", help="Output directory.")]
MODEL_HELP = "Hugging Face id, local directory, or the alias smollm2-135m."
Adapter = Annotated[Optional[str], typer.Option("--adapter", help="A peft adapter directory.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto|float32|bfloat16|float16.")]
Device = Annotated[str, typer.Option("--device", help="auto|cpu|cuda|cuda:N.")]
TrustRemoteCode = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Allow model code from the hub (off by default).")]
BatchTokens = Annotated[int, typer.Option(
    "--batch-tokens", min=1, help="Token budget of one forward batch (training: one micro-batch).")]
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


# --- options that several commands share, beyond the model-loading ones ----------------------

MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", min=1,
                                           help="Most tokens to generate per response.")]
Temperature = Annotated[float, typer.Option("--temperature", help="0 is greedy decoding.")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")]
AnswerMarker = Annotated[str, typer.Option(
    "--answer-marker", help="Text that introduces the final answer in a response.")]
Samples = Annotated[int, typer.Option("--samples", min=1, help="Responses per question.")]
MaxLength = Annotated[Optional[int], typer.Option(
    "--max-length", min=1, help="Skip sequences (prompt + CoT + answer) longer than this many "
                                "tokens, and count them.")]
SignificanceModel = Annotated[Optional[str], typer.Option(
    "--significance-model", help="A token-classification checkpoint (LLMLingua-2 kind).")]
Tokenizer = Annotated[Optional[str], typer.Option(
    "--tokenizer", help="Decode token ids with this tokenizer instead of the manifest's model.")]
Predictor = Annotated[Optional[Path], typer.Option(
    "--predictor", help="A file written by `predictor fit`.")]


def alias(old_flag: str, new_flag: str) -> Any:
    """A hidden option for the old spelling of `new_flag`; pair it with `prefer`."""
    return typer.Option(old_flag, hidden=True, help=f"Deprecated: use {new_flag}.")


def prefer(ctx: typer.Context, name: str, value: Any, old_value: Any, old_flag: str) -> Any:
    """The value of option `name` when its deprecated spelling `old_flag` may be given instead.

    The old spelling still works, with a warning; the command line wins over a config file as
    for any option, and giving both spellings on one command line is an error, since one of
    them would be silently ignored.
    """
    if old_value is None:
        return value
    params = {p.name: p for p in ctx.command.params}
    new_flag = next(f for f in params[name].opts if f.startswith("--"))
    old_name = next(p.name for p in params.values() if old_flag in p.opts)

    def on_command_line(param: str) -> bool:
        source = ctx.get_parameter_source(param)
        return source is not None and source.name == "COMMANDLINE"

    if on_command_line(name):
        if on_command_line(old_name):
            raise InputError(f"{old_flag} is the old spelling of {new_flag}: give only "
                             f"{new_flag}")
        return value
    from cotprune.console import log

    log.warning("%s is deprecated: use %s", old_flag, new_flag)
    return old_value


Flags = list[tuple[str, Any, Any]]  # (parameter name, annotated type, default)


def _bundled(arg: str, flags: Flags, build: Callable[..., Any], before: tuple[str, ...]
             ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add `flags` to a command's signature (ahead of the first parameter named in
    `before`) and call the command with them built into one argument `arg`."""
    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(command, eval_str=True).parameters.values()
               if p.name != arg]
        at = next((i for i, p in enumerate(own) if p.name in before), len(own))
        own[at:at] = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                        annotation=annotation, default=default)
                      for name, annotation, default in flags]

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            bundle = build(**{name: kwargs.pop(name) for name, _, _ in flags})
            return command(**{arg: bundle}, **kwargs)

        # typer reads the signature (annotations included) to declare the options
        run.__signature__ = inspect.Signature(own)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in own}
        return run

    return decorate


def model_options(default_model: str | None = DEFAULT_MODEL, model_help: str = MODEL_HELP
                  ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: give a command the model-loading options (--model, --adapter, --dtype,
    --device, --trust-remote-code), declared here once, and pass them to it as one
    `model_opts: ModelOptions` argument. `default_model=None` leaves `model_opts.model` None
    for commands that read the model from an input's manifest.
    """
    flags: Flags = [
        ("model", Annotated[Optional[str], typer.Option("--model", help=model_help)],
         default_model),
        ("adapter", Adapter, None), ("dtype", Dtype, "auto"), ("device", Device, "auto"),
        ("trust_remote_code", TrustRemoteCode, False),
    ]
    # Listed before the batch and run options, where --help always showed them.
    return _bundled("model_opts", flags, ModelOptions,
                    before=("batch_tokens", "seed", "limit", "config"))


def stage_options() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for the data-parallel stages (score, prune, generate, eval): add --seed,
    --limit, --resume and --shard, and pass them as one `run: RunOptions` argument."""
    flags: Flags = [("seed", Seed, 0), ("limit", Limit, None), ("resume", Resume, False),
                    ("shard", ShardSpec, None)]
    return _bundled("run", flags, RunOptions, before=("config",))
