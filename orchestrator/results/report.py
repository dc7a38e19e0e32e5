"""A self-contained HTML report of a search: trade-off plots, the Pareto front, progress and status counts.

Figures are drawn with matplotlib's Agg canvas (no display needed, ``_figures``) and inlined as ``data:`` PNGs in
one HTML page (``_page``), so the one file opens anywhere without network access and nothing is written beside
it. ``assets_dir`` writes the PNGs there instead and links them; ``report_for_experiment`` writes a trials Parquet
and logs the report to the search's parent run only when asked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.results._figures import _hypervolume_figure, _num, _png, _tradeoff_figure
from orchestrator.results._page import STATUS_ORDER, _page, png_src
from orchestrator.results._store import as_tracker
from orchestrator.results.pareto import (
    DEFAULT_OBJECTIVES,
    Objective,
    apply_budgets,
    latest_search_run,
    pareto_models,
    parse_objectives,
    query_references,
    search_trials,
)
from orchestrator.results.table import write_trials_parquet
from orchestrator.tracking import Tracker
from sr.published import EXTRA_POINTS, PUBLISHED, Published

__all__ = ["STATUS_ORDER", "ReportFiles", "published_points", "report_for_experiment", "write_report"]


@dataclass(frozen=True)
class ReportFiles:
    """What ``write_report`` wrote: the HTML and the figure PNGs it links (none when they are inlined)."""

    html: Path
    figures: tuple[Path, ...]


# --------------------------------------------------------------------------------------------- references
def published_points(scale: int) -> list[Published]:
    """Published rows at ``scale`` (registered variants, then the extra points) that carry a Set5 PSNR."""
    rows = [p for (_, s), p in PUBLISHED.items() if s == scale]
    # EXTRA_POINTS carry no scale field; their source string ends with ", xN" (e.g. the CDISM x2 table).
    rows += [p for p in EXTRA_POINTS if _source_scale(p.source) == scale]
    return [p for p in rows if p.set5_psnr_y is not None]


def _source_scale(source: str) -> int | None:
    m = re.search(r"\bx(\d+)\s*$", source)
    return int(m.group(1)) if m else None


def _job_scale(df: pd.DataFrame) -> int:
    if "scale" in df.columns:
        s = pd.to_numeric(df["scale"], errors="coerce").dropna()
        if len(s):
            return int(s.mode().iloc[0])
    return 2


def write_report(
    df_trials: pd.DataFrame,
    out_html: str | Path,
    *,
    objectives: str | Sequence[Objective] = DEFAULT_OBJECTIVES,
    references: pd.DataFrame | None = None,
    published: Sequence[Published] | None = None,
    scale: int | None = None,
    title: str = "srcompress search report",
    subtitle: str = "",
    max_params: float | None = None,
    max_macs: float | None = None,
    max_latency_ms: float | None = None,
    device: str | None = None,
    assets_dir: str | Path | None = None,
) -> ReportFiles:
    """Write an HTML report of the trials: one self-contained file, or figures as PNGs in ``assets_dir``.

    Args:
        df_trials: trials as from ``query_trials``.
        out_html: the HTML file to write.
        objectives: objectives of the front table, e.g. ``"psnr_y:max,macs_720p:min"``; the progress plot uses
            the first two.
        references: teacher/bicubic rows as from ``query_references`` (kind, run_name, psnr_y, params, ...).
        published: published points to draw; default ``published_points(scale)``.
        scale: the job's upscaling factor; default the most common ``scale`` among the trials (else 2).
        title: page title.
        subtitle: one line under the title (experiment, URI ...).
        max_params: parameter budget for the front (also drawn on the plots).
        max_macs: budget in MACs for a 1280x720 output.
        max_latency_ms: latency budget in ms.
        device: only trials whose latency was measured on this device count for the front.
        assets_dir: write the figures there as PNGs, linked from the page (default: inlined as ``data:`` URIs).

    Returns:
        The paths written.
    """
    objs = parse_objectives(objectives)
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    df = df_trials.reset_index(drop=True)
    if "status" not in df.columns:
        df = df.assign(status="completed")
    scale = scale or _job_scale(df)
    pubs = list(published) if published is not None else published_points(scale)
    budgets = {"max_params": max_params, "max_macs": max_macs, "max_latency_ms": max_latency_ms, "device": device}
    in_budget = df.index.isin(apply_budgets(df, statuses=None, **budgets).index)
    front = pareto_models(df, objectives=objs, **budgets)
    if "kd_gain_db" in df.columns and len(front):  # the KD twin's gain (search.kd_twin) beside each front model
        front = front.assign(kd_gain_db=front["run_id"].map(df.set_index("run_id")["kd_gain_db"]))

    figures = _tradeoff_figures(df, pubs=pubs, in_budget=in_budget, references=references, budgets=budgets)
    hv_caption = ""
    hv = _hypervolume_figure(df, objs)
    if hv is not None:
        figures.append(("hypervolume", _png(hv[0]), "search progress"))
        hv_caption = hv[1]

    paths: list[Path] = []
    linked: list[tuple[str, str, str]] = []
    for name, png, caption in figures:
        src = png_src(png)
        if assets_dir is not None:
            p = Path(assets_dir) / f"{name}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(png)
            paths.append(p)
            src = Path(os.path.relpath(p.resolve(), out_html.parent.resolve())).as_posix()
        linked.append((name, src, caption))

    out_html.write_text(
        _page(
            df,
            front=front,
            objs=objs,
            figures=linked,
            hv_caption=hv_caption,
            references=references,
            pubs=pubs,
            scale=scale,
            title=title,
            subtitle=subtitle,
            budgets=budgets,
        ),
        encoding="utf-8",
    )
    return ReportFiles(out_html, tuple(paths))


# (file name, x column, divisor, axis label, tick format, budget key, title) of each trade-off plot.
_TRADEOFF_PLOTS = (
    ("psnr_vs_macs", "macs_720p", 1e9, "MACs for a 1280x720 output (G, log scale)", "g", "max_macs", "PSNR vs MACs"),
    ("psnr_vs_latency", "latency_ms", 1.0, "latency (ms, log scale)", "g", "max_latency_ms", "PSNR vs latency"),
    ("psnr_vs_params", "params", 1e3, "parameters (thousands, log scale)", "g", "max_params", "PSNR vs params"),
)


def _tradeoff_figures(
    df: pd.DataFrame,
    *,
    pubs: Sequence[Published],
    in_budget: np.ndarray,
    references: pd.DataFrame | None,
    budgets: dict[str, float | str | None],
) -> list[tuple[str, bytes, str]]:
    """``(name, png, title)`` of each PSNR-vs-cost plot whose cost some trial has."""
    figures: list[tuple[str, bytes, str]] = []
    for name, col, div, label, fmt, budget_key, ttl in _TRADEOFF_PLOTS:
        if not np.isfinite(_num(df, col)).any():
            continue
        if col == "latency_ms":
            devices = sorted({str(d) for d in df.get("latency_device", pd.Series(dtype="string")).dropna()})
            if devices:
                ttl += f" ({', '.join(devices)})"
        pub_x: dict[str, float | None] = {}
        for p in pubs:
            if col == "macs_720p":
                pub_x[p.label] = p.macs_720p_g
            elif col == "params":
                pub_x[p.label] = p.params / div if p.params else None
        budget = budgets[budget_key]
        fig = _tradeoff_figure(
            df,
            x_col=col,
            x_div=div,
            x_label=label,
            x_unit_fmt=fmt,
            budget=budget if isinstance(budget, (int, float)) else None,
            in_budget=in_budget,
            references=references,
            published=pubs if col != "latency_ms" else [],
            published_x=pub_x,
            title=ttl,
        )
        figures.append((name, _png(fig), ttl))
    return figures


# ----------------------------------------------------------------------------------------------- from MLflow
def report_for_experiment(
    uri: str | Tracker,
    experiment: str,
    out_html: str | Path,
    *,
    objectives: str | Sequence[Objective] = DEFAULT_OBJECTIVES,
    parent_run_id: str | None = None,
    title: str | None = None,
    max_params: float | None = None,
    max_macs: float | None = None,
    max_latency_ms: float | None = None,
    device: str | None = None,
    assets_dir: str | Path | None = None,
    parquet: str | Path | None = None,
    log_to_mlflow: bool = False,
) -> Path:
    """Query an experiment's trials and references and write the report (see ``write_report``).

    With ``parent_run_id`` only that search's trials are reported; without it every trial of the experiment is.
    ``parquet`` also writes the trials table there. ``log_to_mlflow`` logs the HTML (and the linked PNGs and the
    Parquet, when written) under ``report/`` of the search's parent run (without ``parent_run_id``: the most
    recent search run); by default the store is only read.

    Returns:
        The HTML path.
    """
    tracker = as_tracker(uri)
    df = search_trials(tracker, experiment, parent_run_id).reset_index(drop=True)
    refs = query_references(tracker, experiment)
    if parent_run_id is not None:
        refs = refs[refs["parent_run_id"] == parent_run_id].reset_index(drop=True)
    files = write_report(
        df,
        out_html,
        objectives=objectives,
        references=refs,
        title=title or f"srcompress search: {experiment}",
        subtitle=f"experiment {experiment} at {tracker.uri}",
        max_params=max_params,
        max_macs=max_macs,
        max_latency_ms=max_latency_ms,
        device=device,
        assets_dir=assets_dir,
    )
    table = write_trials_parquet(df, parquet) if parquet is not None else None
    target = parent_run_id or latest_search_run(tracker, experiment)
    if log_to_mlflow and target:
        tracker.log_artifact(target, files.html, artifact_path="report")
        if table is not None:
            tracker.log_artifact(target, table, artifact_path="report")
        for png in files.figures:
            tracker.log_artifact(target, png, artifact_path="report/figures")
    return files.html
