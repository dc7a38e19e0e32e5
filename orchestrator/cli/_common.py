"""Options and printing helpers shared by the ``srcompress`` command modules."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sr.errors import UserError

SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Knob override KEY=VALUE (repeatable), e.g. --set C=24")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table")]


def parse_knobs(items: list[str] | None) -> dict[str, Any]:
    """``["C=24", "res_scale=0.1", "upsampler=pixelshuffle"]`` -> typed dict (int, float, bool or str)."""
    knobs: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r} is not KEY=VALUE; write e.g. --set C=24")
        knobs[key.strip()] = _parse_scalar(raw.strip())
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

    return load(arch, {**knobs, "scale": scale}, weights)
