"""The `cotprune` command line: options are parsed here, the work happens in the stage modules.

Each command group lives in its own module under `cotprune/cli/` and registers itself on `app`.
Heavy libraries (torch, transformers) are imported inside commands so `--help` stays fast.
"""

from __future__ import annotations

import sys

import typer

from cotprune.errors import InputError

app = typer.Typer(
    name="cotprune",
    help="Find the chain-of-thought tokens that matter, delete the rest, and train models to "
         "reason with fewer tokens. Stages pass Parquet files.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Registering commands: each module adds its commands to `app` on import.
# In pipeline order, which is the order `--help` lists them in.
from cotprune.cli import chains, score, prune, predictor, generate, rl, report  # noqa: E402,F401,I001


def _click_kind(error: BaseException) -> str | None:
    """'Exit', 'Abort' or 'ClickException' for click's exceptions, whichever copy of click
    raised them (recent typer vendors its own), else None."""
    names = {c.__name__ for c in type(error).__mro__}
    return next((n for n in ("Exit", "Abort", "ClickException") if n in names), None)


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 0 on success, 2 on bad usage or input, 1 on a run-time failure."""
    from cotprune.console import log, setup_logging

    setup_logging()
    try:
        # Without standalone mode typer returns an exit code (130 after Ctrl-C) instead of exiting.
        result = app(args=argv, standalone_mode=False)
    except InputError as e:
        print(f"cotprune: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        result = 130
    except Exception as e:
        kind = _click_kind(e)
        if kind == "Exit":
            sys.exit(e.exit_code)
        if kind == "ClickException":  # usage errors: missing argument, bad option value...
            e.show()
            sys.exit(2)
        if kind == "Abort":
            result = 130
        else:
            log.exception("cotprune: failed")
            sys.exit(1)
    if result == 130:
        print("cotprune: interrupted", file=sys.stderr)
    sys.exit(result if isinstance(result, int) else 0)
