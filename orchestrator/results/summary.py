"""What a finished search amounts to, in numbers and words: the parent run's summary metrics and description, and
the hypervolume progress the report plots (one computation for both, so the UI and the report agree).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.results.pareto import (
    GOOD_STATUSES,
    Objective,
    hypervolume_history,
    objective_matrix,
    reference_point,
)

# The statuses every search summary counts, zeros included, so a UI column is comparable across searches.
SUMMARY_STATUSES = ("completed", "stopped-early", "infeasible", "failed", "interrupted")


@dataclass(frozen=True)
class HypervolumeProgress:
    """Hypervolume of the first two objectives after each trial, as a fraction of the box between the ideal point
    (best value seen per objective) and the reference point, so that it reads the same whatever the units."""

    objectives: tuple[Objective, Objective]
    trial: np.ndarray  # trial numbers (the Optuna draw number, else the row order), ascending
    fraction: np.ndarray  # hypervolume / box after each trial, never decreasing
    ideal: np.ndarray
    ref: np.ndarray

    @property
    def final(self) -> float:
        return float(self.fraction[-1]) if len(self.fraction) else 0.0


def hypervolume_progress(df: pd.DataFrame, objectives: Sequence[Objective]) -> HypervolumeProgress | None:
    """The search's hypervolume progress; None without two objectives or a trained trial that has both."""
    objs = list(objectives)[:2]
    if len(objs) < 2 or not len(df):
        return None
    pts = objective_matrix(df, objs)
    good = df["status"].isin(list(GOOD_STATUSES)).to_numpy(dtype=bool)
    pts[~good] = np.nan
    finite = pts[np.isfinite(pts).all(axis=1)]
    if not len(finite):
        return None
    modes = [m for _, m in objs]
    ref = reference_point(pts, modes)
    ideal = np.array([finite[:, j].max() if m == "max" else finite[:, j].min() for j, m in enumerate(modes)])
    box = float(np.prod(np.abs(ref - ideal))) or 1.0
    numbers = (
        pd.to_numeric(df["trial_number"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        if "trial_number" in df.columns
        else np.full(len(df), np.nan)
    )
    trial = np.where(np.isfinite(numbers), numbers, np.arange(len(df)))
    order = np.argsort(trial, kind="stable")
    # Accumulated in trial order, so the curve shows when the front improved.
    hv = hypervolume_history(pts[order], modes, ref) / box
    return HypervolumeProgress((objs[0], objs[1]), trial[order], hv, ideal, ref)


def format_value(name: str, value: float) -> str:
    """An objective's value in readable units: ``17.5 G MACs``, ``74.2 k params``, ``33.67 dB``, ``12.3 ms``."""
    v = float(value)
    if name.startswith("macs"):
        return f"{v / 1e9:.3g} G MACs" if abs(v) >= 1e8 else f"{v / 1e6:.3g} M MACs"
    if name == "params":
        return f"{v / 1e6:.3g} M params" if abs(v) >= 1e6 else f"{v / 1e3:.3g} k params"
    if "psnr" in name or name.endswith("_db"):
        return f"{v:.2f} dB"
    if name.endswith("_ms"):
        return f"{v:.3g} ms"
    return f"{v:.4g}"


def summary_metrics(
    df: pd.DataFrame, front: pd.DataFrame, objectives: Sequence[Objective], counts: Mapping[str, int]
) -> dict[str, float]:
    """The parent run's summary: best validation PSNR_Y, front size, hypervolume (fraction, see
    ``HypervolumeProgress``) and the trials by status (``trials_<status>``, zeros included)."""
    out: dict[str, float] = {"front_size": float(len(front))}
    if len(df) and "psnr_y" in df.columns:
        good = df["status"].isin(list(GOOD_STATUSES))
        psnr = pd.to_numeric(df.loc[good, "psnr_y"], errors="coerce").dropna()
        if len(psnr):
            out["best_psnr_y"] = float(psnr.max())
        if "test_psnr_y" in df.columns:
            test = pd.to_numeric(df.loc[good, "test_psnr_y"], errors="coerce").dropna()
            if len(test):
                out["best_test_psnr_y"] = float(test.max())
    hv = hypervolume_progress(df, objectives)
    if hv is not None:
        out["hypervolume"] = hv.final
    for status in (*SUMMARY_STATUSES, *(s for s in counts if s not in SUMMARY_STATUSES)):
        out[f"trials_{status.replace('-', '_')}"] = float(counts.get(status, 0))
    return out


def describe_search(
    name: str,
    df: pd.DataFrame,
    front: pd.DataFrame,
    objectives: Sequence[Objective],
    summary: Mapping[str, float],
    *,
    extra: Sequence[str] = (),
) -> str:
    """The parent run's description (Markdown, shown by the MLflow UI): the outcome and the front, in words."""
    objs = ", ".join(f"{n} ({m})" for n, m in objectives)
    counts = ", ".join(
        f"{int(v)} {k[len('trials_') :].replace('_', '-')}" for k, v in summary.items() if k.startswith("trials_") and v
    )
    lines = [f"**Search {name}**: {len(df)} trials ({counts or 'none'}); objectives {objs}."]
    if "best_psnr_y" in summary:
        lines.append(f"Best validation PSNR_Y {summary['best_psnr_y']:.3f} dB.")
    hv = hypervolume_progress(df, objectives)
    if hv is not None:
        (o1, _), (o2, _) = hv.objectives
        lines.append(
            f"Hypervolume {hv.final:.3f} of the box from the ideal point ({format_value(o1, hv.ideal[0])}, "
            f"{format_value(o2, hv.ideal[1])}) to the reference point ({format_value(o1, hv.ref[0])}, "
            f"{format_value(o2, hv.ref[1])})."
        )
    lines += list(extra)
    lines.append("")
    lines.append(f"Pareto front: {len(front)} models" + (":" if len(front) else "."))
    if len(front):
        lines += ["", "| run | " + " | ".join(n for n, _ in objectives) + " |", "|---" * (len(objectives) + 1) + "|"]
        for _, r in front.iterrows():
            cells = [_cell(n, r.get(n)) for n, _ in objectives]
            lines.append(f"| {r.get('run_name')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(name: str, value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return format_value(name, v) if np.isfinite(v) else "-"


__all__ = [
    "SUMMARY_STATUSES",
    "HypervolumeProgress",
    "describe_search",
    "format_value",
    "hypervolume_progress",
    "summary_metrics",
]
