"""Define-by-run sampling of a student architecture and its KD weights (pure; testable with FixedTrial).

A *space* is a plain mapping from a dimension name to either a fixed value or a range:
``{"C": {"low": 8, "high": 32, "step": 8}, "L": {"low": 1, "high": 2}, "w_gt": {"low": 0.01, "high": 1,
"log": true}, "scale": 2}``. Integers are sampled with ``suggest_int``, floats with ``suggest_float``; a dimension
whose ``choices`` are given uses ``suggest_categorical``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ARCH_DIMS = ("C", "L", "B")
KD_DIMS = ("w_gt", "w_lap", "w_hf", "lr")


def is_range(v: Any) -> bool:
    return isinstance(v, Mapping) and ("low" in v or "choices" in v)


def suggest(trial: Any, space: Mapping[str, Any]) -> dict[str, Any]:
    """Sample every dimension of ``space`` on an Optuna ``trial`` (fixed values pass through unchanged)."""
    out: dict[str, Any] = {}
    for name, dim in space.items():
        if not is_range(dim):
            out[name] = dim
        elif "choices" in dim:
            out[name] = trial.suggest_categorical(name, list(dim["choices"]))
        elif all(isinstance(dim.get(k), int) for k in ("low", "high")) and isinstance(dim.get("step", 1), int):
            out[name] = trial.suggest_int(name, dim["low"], dim["high"], step=dim.get("step", 1))
        else:
            out[name] = trial.suggest_float(
                name, float(dim["low"]), float(dim["high"]), log=bool(dim.get("log", False))
            )
    return out


def smallest(space: Mapping[str, Any]) -> dict[str, Any]:
    """The cheapest corner: every architecture range at its low end (fixed values kept)."""
    return {
        k: (v["low"] if is_range(v) and "low" in v else v)
        for k, v in space.items()
        if k in ARCH_DIMS or not is_range(v)
    }


def clamp_to_space(point: Mapping[str, Any], space: Mapping[str, Any]) -> dict[str, Any]:
    """Project ``point`` onto the space's ranges (and steps), so an enqueued seed is a valid sample."""
    out: dict[str, Any] = {}
    for k, v in point.items():
        dim = space.get(k)
        if not is_range(dim) or "low" not in dim:
            if is_range(dim) and "choices" in dim and v not in dim["choices"]:
                continue
            out[k] = v
            continue
        lo, hi = dim["low"], dim["high"]
        x = min(max(v, lo), hi)
        if isinstance(lo, int) and isinstance(x, int):
            step = dim.get("step", 1)
            x = lo + round((x - lo) / step) * step
            x = min(x, hi - (hi - lo) % step)
        out[k] = x
    return out
