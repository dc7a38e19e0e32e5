"""The ``srcompress`` command line.

Every user-caused error is one line on stderr (cause, then fix) with exit code 2, usage errors included (an
unknown option, a bad value, a missing one); ``--debug`` (anywhere on the command line) or ``SRCOMPRESS_DEBUG=1``
shows the traceback instead. Ctrl-C exits 130. The command modules (``core``, ``choose``, ``cluster``, ``dry_run`` and
``method``) define plain functions; this module registers them on ``app`` from one list
(``commands()``) and no command module imports it. Heavy imports (torch, ray, mlflow) happen inside the
commands that need them so that ``srcompress`` starts fast.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import typer
import typer.main
from typer import _click  # typer >= 0.29 vendors click: its usage errors are typer._click.* classes, not click.*

from orchestrator.cli import choose, cluster, core, dry_run, method
from orchestrator.cli._common import JsonOpt, SetOpt, _fmt_g, _fmt_int, _print_table, load_model, parse_knobs
from orchestrator.cli.core import complexity_row, print_summary
from sr.errors import UserError

__all__ = [
    "JsonOpt",
    "SetOpt",
    "_fmt_g",
    "_fmt_int",
    "_print_table",
    "app",
    "commands",
    "complexity_row",
    "get_app",
    "load_model",
    "main",
    "parse_knobs",
    "print_summary",
]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compress super-resolution models and search for compact ones on Ray.",
)


def commands() -> tuple[tuple[str, Callable[..., Any]], ...]:
    """Every command as ``(name, function)``, in the order ``srcompress --help`` lists them."""
    return (
        ("complexity", core.complexity),
        ("eval", core.eval_),
        ("allocate", core.allocate),
        ("run", core.run),
        ("plan", dry_run.plan),
        ("pareto", choose.pareto),
        ("report", choose.report),
        ("table", choose.table),
        ("export", choose.export),
        ("ui", choose.ui),
        ("submit", cluster.submit),
        ("status", cluster.status),
        ("logs", cluster.logs),
        ("stop", cluster.stop),
        ("prune", method.prune),
        ("distill", method.distill),
        ("compress", method.compress),
    )


def get_app() -> typer.Typer:
    """``app`` with every command of ``commands()`` registered on it (once)."""
    # Registered on first use, not at import: importing a command module (``orchestrator.cli.method``) runs this
    # package's __init__ first, which must not need the command modules' names to be complete yet.
    if not app.registered_commands:
        for name, fn in commands():
            app.command(name)(fn)
    return app


# ------------------------------------------------------------------------------------------------------- entry
def _wants_debug(argv: list[str]) -> tuple[bool, list[str]]:
    debug = os.environ.get("SRCOMPRESS_DEBUG", "") not in ("", "0")
    if "--debug" in argv:
        debug = True
        argv = [a for a in argv if a != "--debug"]
    return debug, argv


def _dispatch(args: list[str]) -> int:
    # make_context + invoke rather than app(standalone_mode=False): typer's main turns Ctrl-C into a silent
    # Exit(130) and prints usage errors itself; here main() sees every exception and words it as one line.
    command = typer.main.get_command(get_app())
    with command.make_context("srcompress", args) as ctx:
        rv = command.invoke(ctx)
    return rv if isinstance(rv, int) else 0


def _usage_line(exc: _click.exceptions.UsageError) -> str:
    message = " ".join(exc.format_message().split()).rstrip(".")
    where = exc.ctx.command_path if exc.ctx is not None else "srcompress"
    return f"srcompress: error: {message}; see {where} --help"


# What the user's filesystem refuses (a read-only or full disk, a path through a file): their input, not a bug.
_USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC, errno.EDQUOT}


def _quiet_store_setup() -> None:
    """MLflow logs its schema migrations at INFO when it creates a sqlite store: noise on every first run."""
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code (0 ok, 2 user error, 1 internal error, 130 interrupted)."""
    debug, args = _wants_debug(list(sys.argv[1:] if argv is None else argv))
    _quiet_store_setup()
    try:
        return _dispatch(args)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"srcompress: error: {exc}", file=sys.stderr)
        return 2
    except _click.exceptions.NoArgsIsHelpError:
        # The help (the list of commands) is already on stdout; a bare `srcompress` is still a usage error.
        print("srcompress: error: no command given; pick one above (srcompress COMMAND --help)", file=sys.stderr)
        return 2
    except _click.exceptions.UsageError as exc:
        if debug:
            traceback.print_exc()
        print(_usage_line(exc), file=sys.stderr)
        return 2
    except _click.exceptions.ClickException as exc:  # e.g. FileError: still the user's input
        print(f"srcompress: error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        return 2
    except typer.Exit as exc:  # --help, or a command ending with its own code
        return exc.exit_code
    except BrokenPipeError:  # `srcompress ... | head` closed the pipe: nothing left to tell anyone
        sys.stderr.close()
        return 0
    except OSError as exc:
        if exc.errno not in _USER_OS_ERRORS or exc.filename is None:
            return _internal(exc, debug)
        if debug:
            traceback.print_exc()
        print(
            f"srcompress: error: cannot use {exc.filename}: {exc.strerror}; pass a path in a writable folder "
            "(with free space)",
            file=sys.stderr,
        )
        return 2
    except (typer.Abort, KeyboardInterrupt, EOFError):
        print("srcompress: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: keep it to one line unless asked for the traceback
        return _internal(exc, debug)


def _internal(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    text = " ".join(str(exc).split())
    message = f"srcompress: internal error: {type(exc).__name__}: {text}; rerun with --debug for the traceback"
    print(message, file=sys.stderr)
    return 1
