"""The `cotprune` command line: options are parsed here, the work happens in the stage modules.

Each command group lives in its own module under `cotprune/cli/` and registers itself on `app`.
Heavy libraries (torch, transformers) are imported inside commands so `--help` stays fast.
"""

from __future__ import annotations

import errno
import shlex
import signal
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`, a scheduler pre-empting the job), raised where the stage is, so that
    it unwinds exactly like Ctrl-C: finished chunks stay on disk, the output is released."""


_terminated: list[int] = []  # the SIGTERMs received (click turns any KeyboardInterrupt into
# its Abort, so the kind of interruption is remembered here rather than read off the exception)


def _terminate(signum, frame) -> None:
    _terminated.append(signum)
    raise Terminated


# Commands that continue an interrupted run with --resume (SPEC "Errors and interruptions").
RESUMABLE = ("score", "prune", "generate", "eval", "distill", "rl")
# Write failures that are the user's to fix (a read-only or full disk), not a bug: exit 2.
WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                errno.ENOTDIR, errno.EEXIST, errno.EISDIR)


def resume_hint(argv: list[str]) -> str:
    """How to continue an interrupted command: the same command line, plus --resume."""
    words = [str(a) for a in argv]
    if not any(w in RESUMABLE for w in words[:1]):
        return "no output was written; run the command again"
    again = words if "--resume" in words else [*words, "--resume"]
    return f"finished work is kept; to continue: cotprune {shlex.join(again)}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 0 on success, 2 on bad usage or input, 1 on a run-time failure,
    130 after Ctrl-C and 143 after SIGTERM."""
    from cotprune.console import log, setup_logging
    from cotprune.data.files import close_outputs

    setup_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    _terminated.clear()
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (main() called from a library): leave it alone
        previous = None
    try:
        # Without standalone mode typer returns an exit code (130 after Ctrl-C) instead of exiting.
        result = app(args=args, standalone_mode=False)
    except InputError as e:
        print(f"cotprune: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        result = 143 if isinstance(e, Terminated) else 130
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            log.exception("cotprune: failed")
            sys.exit(1)
        where = f"{e.filename}: " if e.filename else ""
        hint = (" (free some space, then run it again with --resume)"
                if e.errno in (errno.ENOSPC, errno.EDQUOT) and args[:1]
                and args[0] in RESUMABLE else "")
        print(f"cotprune: error: cannot write {where}{e.strerror or e}{hint}", file=sys.stderr)
        sys.exit(2)
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
    finally:
        close_outputs()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if result == 130 and _terminated:
        result = 143
    if result in (130, 143):
        what = "terminated" if result == 143 else "interrupted"
        print(f"cotprune: {what}; {resume_hint(args)}", file=sys.stderr)
    sys.exit(result if isinstance(result, int) else 0)
