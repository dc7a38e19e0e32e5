"""Options and printing helpers shared by the ``srcompress`` command modules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from search_spaces import Overrides, store_uri
from sr.errors import UserError

SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Knob override KEY=VALUE (repeatable), e.g. --set C=24")
]
# A job spec's overrides (search_spaces.Overrides): the same two options on run, plan and submit.
SpecOverrideOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--override",
        help="Overlay YAML merged into the spec (repeatable), e.g. search_spaces/overrides/cpu_smoke.yaml",
    ),
]
SpecSetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Spec key override dotted.key=VALUE (repeatable, after --override), e.g. --set training.steps=20"
    ),
]


def spec_overrides(files: list[str] | None, sets: list[str] | None) -> Overrides:
    """``--override``/``--set`` as the ``Overrides`` that ``load_job_spec`` applies."""
    return Overrides(files=tuple(files or ()), sets=tuple(sets or ()))


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table")]
# One way to name the MLflow store in every command (the spec's tracking.uri takes the same forms); the older
# spellings --tracking-uri and --storage (ui) still work.
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        "--tracking-uri",
        "--storage",
        help="MLflow store: a folder (its mlflow.db), a .db file, or a URI (sqlite:///..., http://HOST:PORT)",
    ),
]


def store_option(value: str | None) -> str | None:
    """The tracking URI that ``--store`` names (``search_spaces.store_uri``), None when not given."""
    return None if value is None else store_uri(value, what="--store")


def parse_knobs(items: list[str] | None) -> dict[str, Any]:
    """``["C=24", "res_scale=0.1", "upsampler=pixelshuffle"]`` -> typed dict (int, float, bool or str)."""
    knobs: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r} is not KEY=VALUE; write e.g. --set C=24")
        knobs[key.strip()] = _parse_scalar(raw.strip())
    return knobs


def check_knobs(arch: str, knobs: dict[str, Any], option: str = "--set") -> dict[str, Any]:
    """``knobs`` when each value has the type of ``arch``'s default for it; else one line naming the option.

    Unknown names and architectures are left to ``sr.models`` (its errors are one line already).
    """
    from sr.models import resolve_knobs  # deferred: importing sr.models builds the registry (torch)

    try:
        defaults = resolve_knobs(arch)
    except UserError:
        return knobs
    for key, value in knobs.items():
        default = defaults.get(key)
        if default is None or isinstance(default, str):
            continue
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok, kind = isinstance(value, int | float) and not isinstance(value, bool), "a number"
        else:
            continue
        if not ok:
            raise UserError(
                f"{option} {key}={value!r} is not {kind} ({arch}'s {key} is {default!r}); pass e.g. "
                f"{option} {key}={default}"
            )
    return knobs


def _parse_scalar(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def _fmt_int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _fmt_g(macs: float | None) -> str:
    return "-" if macs is None else f"{macs / 1e9:.1f}G"


def _print_table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in columns))
    Console(width=200).print(table)


def load_model(arch: str, *, scale: int, knobs: dict[str, Any], weights: str | None):
    """Build ``arch`` and load ``weights`` (weights_only; one-line error on a mismatch)."""
    # deferred: torch is heavy and commands such as `srcompress status` never need it
    from sr.stages import load_model as load

    return load(arch, {**check_knobs(arch, knobs), "scale": scale}, weights)


def check_output(path: str | Path, option: str, *, folder: bool = False) -> Path:
    """``path`` when it can be written (checked before any slow work); one line naming ``option`` otherwise.

    Nothing is left behind: the nearest existing folder on the way to ``path`` must take a new file (probed by
    creating and removing an empty hidden one, which catches read-only filesystems and sysfs-like folders that
    even root cannot write), and ``path`` itself, when it exists, must be a folder (``folder=True``) or a file.
    """
    path = Path(path)
    want = "a folder" if folder else "a file"
    if path.exists() and path.is_dir() != folder:
        raise UserError(f"cannot write {option} {path}: it exists and is not {want}; pass another path")
    anc = path if folder and path.is_dir() else path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UserError(f"cannot write {option} {path}: {anc} is a file, not a folder; pass a path in a folder")
    probe = anc / f".srcompress-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"cannot write {option} {path}: {anc} does not take new files ({exc.strerror}); pass a path in a "
            "writable folder"
        ) from None
    if path.is_file() and not os.access(path, os.W_OK):
        raise UserError(f"cannot write {option} {path}: the file is read-only; pass another path")
    return path
