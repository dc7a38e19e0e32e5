"""The job log's wording for values that would otherwise print as Python reprs (``Budget(...)``, a dict of the
paper-rule allocation, a density with 17 digits): one readable phrase each, the same in every line that shows it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _count(n: float) -> str:
    """``120k``, ``1.5M``, ``17.5G``: a count in the units people read."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


def describe_budget(budget: Any) -> str:
    """A ``sr.budget.Budget`` as ``params <= 120k, MACs (720p) <= 20G, latency <= 5 ms on cpu`` (or ``none``)."""
    parts = []
    if budget.max_params is not None:
        parts.append(f"params <= {_count(budget.max_params)}")
    if budget.max_macs is not None:
        parts.append(f"MACs ({budget.macs_convention}) <= {_count(budget.max_macs)}")
    if budget.max_latency_ms is not None:
        parts.append(f"latency <= {budget.max_latency_ms:g} ms on {budget.latency_device}")
    return ", ".join(parts) or "none"


def describe_density(density: float | None) -> str:
    return "not measured" if density is None else f"{density:.4f}"


def describe_allocation(alloc: Mapping[str, Any] | None) -> str:
    """The paper-rule allocation as ``C24 L1 B8 (from edsr_baseline at d = 0.0681)``."""
    if not alloc:
        return "none"
    size = " ".join(f"{k}{alloc[k]}" for k in ("C", "L", "B") if k in alloc)
    base = alloc.get("base_arch")
    d = alloc.get("density")
    origin = ", ".join(
        x for x in (f"from {base}" if base else "", f"at d = {describe_density(d)}" if d is not None else "") if x
    )
    return f"{size} ({origin})" if origin else size


__all__ = ["describe_allocation", "describe_budget", "describe_density"]
