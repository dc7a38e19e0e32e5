"""Shared plumbing of the benchmark scripts: machine description, one JSON line, one row in BENCHMARKS.md.

Every script in ``bench/`` prints exactly one JSON line of figures on stdout (progress goes to stderr) and records
a row ``date | command | machine | figures`` under its ``## <name>`` section of BENCHMARKS.md. A row with the
same command replaces the older one, so re-running a benchmark updates its row instead of piling rows up; any
other text in the file (the intro, notes under a section) is kept as it is.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "BENCHMARKS.md"

_TABLE_HEADER = "| date | command | machine | figures |"
_TABLE_SEP = "|---|---|---|---|"
_TITLE = "# Benchmarks\n"
# Options that only say where (or whether) to record; they do not change the figures, so the recorded command
# leaves them out and a re-run with another --benchmarks-md still matches the same row.
_RECORD_OPTS_WITH_VALUE = ("--benchmarks-md",)
_RECORD_FLAGS = ("--no-record",)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, torch threads and version, CUDA device name (or ``None``) and Python version."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": gpu,
        "python": platform.python_version(),
    }


def machine_summary(machine: dict[str, Any]) -> str:
    """One-line form of :func:`machine_info` for a table cell."""
    return (
        f"{machine['cpu']}, {machine['logical_cores']} logical cores, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}, {machine['gpu'] or 'no GPU'}, Python {machine['python']}"
    )


def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every benchmark has: ``--quick``, ``--no-record``, ``--benchmarks-md``."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    parser.add_argument("--quick", action="store_true", help="small settings that finish in under 2 minutes")
    parser.add_argument("--no-record", action="store_true", help="print the JSON line only; leave BENCHMARKS.md")
    parser.add_argument(
        "--benchmarks-md",
        type=Path,
        default=BENCHMARKS_MD,
        help=f"markdown file that gets the row (default: {BENCHMARKS_MD.name} at the repo root)",
    )
    return parser


def command_for(name: str, argv: Sequence[str]) -> str:
    """The command line that reproduces the figures: ``python -m bench.<name> <args>`` without recording options."""
    kept: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg in _RECORD_FLAGS:
            continue
        if arg in _RECORD_OPTS_WITH_VALUE:
            skip_next = True
            continue
        if arg.startswith(tuple(f"{opt}=" for opt in _RECORD_OPTS_WITH_VALUE)):
            continue
        kept.append(arg)
    return " ".join([f"python -m bench.{name}", *kept])


def log(msg: str) -> None:
    """Progress line on stderr (stdout carries only the JSON line)."""
    print(msg, file=sys.stderr, flush=True)


def emit(
    figures: dict[str, Any],
    *,
    name: str,
    command: str,
    record: bool = True,
    md_path: Path | str = BENCHMARKS_MD,
    summary: str | None = None,
) -> dict[str, Any]:
    """Print ``{"bench": name, **figures, "machine": ..., "date": ...}`` as one JSON line and record a row.

    Args:
        figures: JSON-serialisable figures of the run.
        name: benchmark name, also the ``## <name>`` section of the markdown file.
        command: the command that produced the figures (a row with the same command is replaced).
        record: write the row; ``False`` only prints.
        md_path: markdown file to update (created when absent).
        summary: compact figures for the table cell; by default the scalar top-level figures.

    Returns:
        The printed record.
    """
    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    record_dict = {"bench": name, **figures, "machine": machine_info(), "date": date, "command": command}
    print(json.dumps(record_dict), flush=True)
    if record:
        cells = [date, f"`{command}`", machine_summary(record_dict["machine"]), summary or _auto_summary(figures)]
        record_row(Path(md_path), name=name, cells=cells)
    return record_dict


def bench_main(
    name: str,
    argv: Sequence[str] | None,
    parse_args: Callable[[list[str]], Any],
    run: Callable[[Any], dict[str, Any]],
    summary: Callable[[dict[str, Any]], str],
    *,
    command: Callable[[list[str]], str] | None = None,
) -> dict[str, Any]:
    """A benchmark's ``main``: parse ``argv`` (default: the command line), run, then ``emit`` the figures.

    A ``UserError`` (a missing table, a bad option value) ends it with one line and exit code 1. ``command``
    gives the recorded command (default ``command_for(name, argv)``).
    """
    from sr.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        figures = run(args)
    except UserError as exc:
        sys.exit(f"error: {exc}")
    return emit(
        figures,
        name=name,
        command=(command or (lambda a: command_for(name, a)))(argv),
        record=not args.no_record,
        md_path=args.benchmarks_md,
        summary=summary(figures),
    )


def _auto_summary(figures: dict[str, Any]) -> str:
    parts = []
    for key, value in figures.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        elif isinstance(value, int | str | bool):
            parts.append(f"{key} {value}")
    return "; ".join(parts)


def _cell(text: str) -> str:
    # A raw '|' would end the cell and a newline the row.
    return text.replace("\n", " ").replace("|", "\\|").strip()


def _split_row(line: str) -> list[str]:
    """Cells of a markdown table row, splitting on unescaped pipes."""
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [c.strip() for c in re.split(r"(?<!\\)\|", inner)]


def record_row(md_path: Path, *, name: str, cells: Sequence[str]) -> None:
    """Put ``cells`` as a row of the table under ``## <name>`` in ``md_path``, replacing the row with the same
    command (second cell); creates the file, the section or the table when absent."""
    row = "| " + " | ".join(_cell(c) for c in cells) + " |"
    command_cell = _cell(cells[1])
    text = md_path.read_text() if md_path.exists() else _TITLE
    lines = text.splitlines()
    heading = f"## {name}"
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == heading)
    except StopIteration:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", heading, "", _TABLE_HEADER, _TABLE_SEP, row]
        _write(md_path, lines)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    header = next((i for i in range(start + 1, end) if lines[i].strip().startswith("| date |")), None)
    if header is None:
        # The table goes at the end of the section, after its description and notes.
        while end > start + 1 and not lines[end - 1].strip():
            end -= 1
        lines[end:end] = ["", _TABLE_HEADER, _TABLE_SEP, row] + (
            [""] if end < len(lines) and lines[end].strip() else []
        )
        _write(md_path, lines)
        return
    last = header
    while last + 1 < end and lines[last + 1].strip().startswith("|"):
        last += 1
    for i in range(header + 2, last + 1):
        cells_i = _split_row(lines[i])
        if len(cells_i) > 1 and cells_i[1] == command_cell:
            lines[i] = row
            break
    else:
        lines.insert(last + 1, row)
    _write(md_path, lines)


def _write(md_path: Path, lines: list[str]) -> None:
    md_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = md_path.with_name(md_path.name + ".tmp")
    # Write then rename, so an interrupted run never leaves a half-written file.
    tmp.write_text("\n".join(lines).rstrip("\n") + "\n")
    tmp.replace(md_path)
