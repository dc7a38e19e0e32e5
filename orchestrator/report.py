"""A self-contained HTML report of a search: trade-off plots, the Pareto front, progress and status counts.

Figures are drawn with matplotlib's Agg canvas (no display needed) and embedded as base64 PNG, so the one HTML
file opens anywhere without network access; the same PNGs are written beside it and, with
``report_for_experiment``, logged as artifacts of the search's parent run so they show in the MLflow UI.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.pareto import (
    DEFAULT_OBJECTIVES,
    GOOD_STATUSES,
    Objective,
    apply_budgets,
    hypervolume_history,
    latest_search_run,
    objective_matrix,
    pareto_mask,
    pareto_models,
    parse_objectives,
    query_references,
    query_trials,
    reference_point,
)
from orchestrator.tracking import Tracker
from sr.published import EXTRA_POINTS, PUBLISHED, Published

STATUS_ORDER = ("completed", "stopped-early", "infeasible", "failed", "running")
_C_TRIAL = "#4c78a8"
_C_FRONT = "#e45756"
_C_INFEASIBLE = "#9d9d9d"
_C_TEACHER = "#f2b701"
_C_BICUBIC = "#6f6f6f"
_C_PUBLISHED = "#2f2f2f"


@dataclass(frozen=True)
class ReportFiles:
    """What ``write_report`` wrote: the HTML and the figure PNGs embedded in it."""

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


# ---------------------------------------------------------------------------------------------- formatting
def _num(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _fmt(v: Any, spec: str = "", scale: float = 1.0, suffix: str = "") -> str:
    if v is None or v is pd.NA:
        return "–"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return html.escape(str(v))
    if not np.isfinite(f):
        return "–"
    return f"{f / scale:{spec}}{suffix}"


def _s(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return html.escape(str(v))


def _clb(row: pd.Series) -> str:
    return "/".join(_fmt(row.get(k), "g") for k in ("C", "L", "B"))


# ------------------------------------------------------------------------------------------------- figures
def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _new_axes(figsize: tuple[float, float]) -> tuple[Any, Any]:
    # The Agg canvas needs no display, and a bare Figure never touches pyplot's global state or backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.08)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _tradeoff_figure(
    df: pd.DataFrame,
    *,
    x_col: str,
    x_div: float,
    x_label: str,
    x_unit_fmt: str,
    budget: float | None,
    in_budget: np.ndarray,
    references: pd.DataFrame | None,
    published: Sequence[Published],
    published_x: dict[str, float | None],
    title: str,
) -> Any:
    """PSNR_Y against one cost (log x): trials, their 2-D front as a step line, references, infeasible strip."""
    from matplotlib.ticker import FuncFormatter

    fig, ax = _new_axes((7.4, 4.6))
    x = _num(df, x_col) / x_div
    y = _num(df, "psnr_y")
    status = df["status"].astype("string").fillna("running").to_numpy() if "status" in df else np.array([])
    good = np.isin(status, GOOD_STATUSES) & np.isfinite(x) & (x > 0) & np.isfinite(y)
    ys_all: list[float] = list(y[good])
    xs_all: list[float] = list(x[good])

    done = good & (status == "completed")
    early = good & (status == "stopped-early")
    ax.scatter(x[done], y[done], s=28, color=_C_TRIAL, alpha=0.75, label="trials", zorder=3)
    if early.any():
        ax.scatter(x[early], y[early], s=28, facecolors="none", edgecolors=_C_TRIAL, label="stopped early", zorder=3)

    cand = good & in_budget
    if cand.any():
        pts = np.column_stack([y[cand], x[cand]])
        front = pts[pareto_mask(pts, ("max", "min"))]
        front = front[np.lexsort((front[:, 0], front[:, 1]))]
        ax.step(front[:, 1], front[:, 0], where="post", color=_C_FRONT, lw=1.6, zorder=4)
        ax.scatter(
            front[:, 1],
            front[:, 0],
            s=58,
            color=_C_FRONT,
            edgecolors="black",
            linewidths=0.7,
            zorder=5,
            label="Pareto front",
        )

    if references is not None and len(references):
        for _, r in references.iterrows():
            ry, rx = r.get("psnr_y"), r.get(x_col)
            if ry is None or not np.isfinite(ry):
                continue
            ys_all.append(float(ry))
            if r["kind"] == "bicubic" or rx is None or not np.isfinite(rx) or rx <= 0:
                ax.axhline(float(ry), color=_C_BICUBIC, ls="--", lw=1.0, zorder=1)
                ax.annotate(
                    f"{r['kind']} {ry:.2f} dB",
                    xy=(1.0, float(ry)),
                    xycoords=("axes fraction", "data"),
                    xytext=(-4, 3),
                    textcoords="offset points",
                    ha="right",
                    fontsize=8,
                    color=_C_BICUBIC,
                )
            else:
                xs_all.append(float(rx) / x_div)
                ax.scatter(
                    [float(rx) / x_div],
                    [float(ry)],
                    marker="*",
                    s=220,
                    color=_C_TEACHER,
                    edgecolors="black",
                    linewidths=0.6,
                    zorder=6,
                    label=str(r["kind"]),
                )

    pub_done = False
    labels: list[tuple[float, float, str]] = []
    shown = [p for p in published if (published_x.get(p.label) or 0) > 0 and p.set5_psnr_y is not None]
    for p in sorted(shown, key=lambda p: published_x[p.label] or 0.0):
        px = float(published_x[p.label] or 0.0)
        xs_all.append(px)
        ys_all.append(p.set5_psnr_y)
        ax.scatter(
            [px],
            [p.set5_psnr_y],
            marker="D",
            s=30,
            color=_C_PUBLISHED,
            zorder=5,
            label=None if pub_done else "published (Set5)",
        )
        labels.append((px, p.set5_psnr_y, p.label))
        pub_done = True

    if budget is not None and budget > 0:
        ax.axvline(budget / x_div, color=_C_FRONT, ls=":", lw=1.2, zorder=1)
        ax.annotate(
            "budget",
            xy=(budget / x_div, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=8,
            color=_C_FRONT,
        )
        xs_all.append(budget / x_div)

    # Infeasible trials were never trained (no PSNR): grey crosses on a strip below the data.
    infeasible = (status == "infeasible") & np.isfinite(x) & (x > 0)
    if infeasible.any():
        xs_all.extend(x[infeasible])
        ax.scatter(
            x[infeasible],
            np.full(int(infeasible.sum()), 0.035),
            transform=ax.get_xaxis_transform(),
            marker="x",
            s=30,
            color=_C_INFEASIBLE,
            zorder=3,
            clip_on=False,
            label="infeasible (not trained)",
        )

    if ys_all:
        lo, hi = min(ys_all), max(ys_all)
        span = max(hi - lo, 0.5)
        ax.set_ylim(lo - 0.14 * span, hi + 0.08 * span)
    if xs_all:
        ax.set_xscale("log")
        lo_x, hi_x = min(xs_all), max(xs_all)
        ax.set_xlim(lo_x / 1.6, hi_x * 1.9)  # room for the published labels right of their markers
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format(v, x_unit_fmt)))
    ax.set_xlabel(x_label)
    ax.set_ylabel("PSNR_Y (dB)")
    ax.set_title(title, fontsize=11, loc="left")
    # Cheap and accurate (upper left) is the corner no trade-off plot reaches.
    ax.legend(fontsize=8, loc="center right", framealpha=0.9)
    _place_labels(ax, labels, color=_C_PUBLISHED)
    return fig


# Label offsets in points, tried in order: right-above, right-below, left-above, left-below, then further out.
_LABEL_OFFSETS = (
    (5, 4, "left"),
    (5, -11, "left"),
    (-5, 4, "right"),
    (-5, -11, "right"),
    (6, 13, "left"),
    (6, -20, "left"),
    (-6, 13, "right"),
    (-6, -20, "right"),
)


def _place_labels(ax: Any, labels: Sequence[tuple[float, float, str]], *, color: str) -> None:
    """Annotate points so that labels avoid each other, every marker on the axes and the legend (greedy)."""
    if not labels:
        return
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()  # constrained layout moves the axes; place labels in the final positions
    obstacles = []
    for coll in ax.collections:
        offsets = coll.get_offsets()
        if len(offsets):
            sizes = coll.get_sizes()  # marker area in points^2
            r = 0.5 * np.sqrt(float(sizes.max()) if len(sizes) else 30.0) * fig.dpi / 72.0
            for xd, yd in coll.get_offset_transform().transform(np.asarray(offsets, dtype=float)):
                obstacles.append((xd - r, yd - r, xd + r, yd + r))
    legend = ax.get_legend()
    if legend is not None:
        b = legend.get_window_extent(renderer)
        obstacles.append((b.x0, b.y0, b.x1, b.y1))
    axes_box = ax.get_window_extent(renderer)

    def overlap(b: Any) -> float:
        area = 0.0
        for x0, y0, x1, y1 in obstacles:
            w, h = min(b.x1, x1) - max(b.x0, x0), min(b.y1, y1) - max(b.y0, y0)
            if w > 0 and h > 0:
                area += w * h
        outside = max(0.0, axes_box.x0 - b.x0) + max(0.0, b.x1 - axes_box.x1) + max(0.0, b.y1 - axes_box.y1)
        return area + 50.0 * outside

    for x, y, text in labels:
        best = None
        for dx, dy, ha in _LABEL_OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, fontsize=8, color=color)
            box = ann.get_window_extent(renderer)
            cost = overlap(box)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box)
            else:
                ann.remove()
            if cost == 0:
                break
        assert best is not None
        b = best[2]
        obstacles.append((b.x0, b.y0, b.x1, b.y1))


def _hypervolume_figure(df: pd.DataFrame, objectives: Sequence[Objective]) -> tuple[Any, str] | None:
    """Hypervolume of the first two objectives after each trial; None when there is nothing to plot."""
    objs = list(objectives)[:2]
    if len(objs) < 2 or not len(df):
        return None
    pts = objective_matrix(df, objs)
    good = df["status"].isin(list(GOOD_STATUSES)).to_numpy(dtype=bool)
    pts[~good] = np.nan
    if not np.isfinite(pts).all(axis=1).any():
        return None
    modes = [m for _, m in objs]
    ref = reference_point(pts, modes)
    # Normalised by the box between the ideal point (best value seen per objective) and the reference, so the
    # curve reads as a fraction whatever the objectives' units.
    finite = pts[np.isfinite(pts).all(axis=1)]
    ideal = np.array([finite[:, j].max() if m == "max" else finite[:, j].min() for j, m in enumerate(modes)])
    box = float(np.prod(np.abs(ref - ideal))) or 1.0
    hv = hypervolume_history(pts, modes, ref) / box
    trial_no = _num(df, "trial_number")
    x = np.where(np.isfinite(trial_no), trial_no, np.arange(len(df)))
    order = np.argsort(x, kind="stable")
    x, hv = x[order], hv[order]
    fig, ax = _new_axes((7.4, 3.2))
    ax.step(x, hv, where="post", color=_C_TRIAL, lw=1.6)
    gain = np.r_[hv[0] > 0, np.diff(hv) > 0]
    ax.scatter(x[gain], hv[gain], s=22, color=_C_FRONT, zorder=3, label="front improved")
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume (fraction of box)")
    ax.set_ylim(0, 1.02)
    ax.set_title(
        f"Search progress: hypervolume of ({objs[0][0]} {objs[0][1]}, {objs[1][0]} {objs[1][1]})",
        fontsize=11,
        loc="left",
    )
    ax.legend(fontsize=8, loc="lower right")
    ref_txt = (
        f"hypervolume as a fraction of the box from the ideal point ({objs[0][0]} = {ideal[0]:.4g}, "
        f"{objs[1][0]} = {ideal[1]:.4g}) to the reference point ({objs[0][0]} = {ref[0]:.4g}, "
        f"{objs[1][0]} = {ref[1]:.4g})"
    )
    return fig, ref_txt


# ---------------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1320px;color:#222;
  padding:0 16px;line-height:1.4}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:13px}.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(600px,1fr));gap:16px}
figure{margin:0;background:#fff;border:1px solid #e4e4e4;border-radius:6px;padding:8px}
figure img{width:100%;height:auto}figcaption{font-size:12px;color:#666;margin-top:4px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{padding:4px 9px;border-bottom:1px solid #eee;
  text-align:right;white-space:nowrap}th{background:#f6f6f6;text-align:center}td.l{text-align:left}
code{font-size:12px;color:#444}.badge{display:inline-block;padding:2px 9px;border-radius:10px;margin-right:6px;
  font-size:13px;color:#fff}.note{font-size:12px;color:#666}
"""
_BADGE = {
    "completed": "#4c78a8",
    "stopped-early": "#72b7b2",
    "infeasible": "#9d9d9d",
    "failed": "#e45756",
    "running": "#f2b701",
}


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="l">{c}</td>' if i in left else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
) -> ReportFiles:
    """Write a self-contained HTML report of the trials (figures also saved as PNGs in ``<stem>_figures/``).

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

    Returns:
        The paths written.
    """
    objs = parse_objectives(objectives)
    out_html = Path(out_html)
    fig_dir = out_html.parent / f"{out_html.stem}_figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    df = df_trials.reset_index(drop=True)
    if "status" not in df.columns:
        df = df.assign(status="completed")
    scale = scale or _job_scale(df)
    pubs = list(published) if published is not None else published_points(scale)
    budgets = {"max_params": max_params, "max_macs": max_macs, "max_latency_ms": max_latency_ms, "device": device}
    in_budget = df.index.isin(apply_budgets(df, statuses=None, **budgets).index)
    front = pareto_models(df, objectives=objs, **budgets)

    figures: list[tuple[str, bytes, str]] = []
    plots = [
        ("psnr_vs_macs", "macs_720p", 1e9, "MACs for a 1280x720 output (G, log scale)", "g", max_macs, "PSNR vs MACs"),
        ("psnr_vs_latency", "latency_ms", 1.0, "latency (ms, log scale)", "g", max_latency_ms, "PSNR vs latency"),
        ("psnr_vs_params", "params", 1e3, "parameters (thousands, log scale)", "g", max_params, "PSNR vs params"),
    ]
    for name, col, div, label, fmt, budget, ttl in plots:
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
        fig = _tradeoff_figure(
            df,
            x_col=col,
            x_div=div,
            x_label=label,
            x_unit_fmt=fmt,
            budget=budget,
            in_budget=in_budget,
            references=references,
            published=pubs if col != "latency_ms" else [],
            published_x=pub_x,
            title=ttl,
        )
        figures.append((name, _png(fig), ttl))

    hv_caption = ""
    hv = _hypervolume_figure(df, objs)
    if hv is not None:
        figures.append(("hypervolume", _png(hv[0]), "search progress"))
        hv_caption = hv[1]

    paths = []
    for name, png, _ in figures:
        p = fig_dir / f"{name}.png"
        p.write_bytes(png)
        paths.append(p)

    out_html.write_text(
        _page(
            df,
            front=front,
            objs=objs,
            figures=figures,
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


def _page(
    df: pd.DataFrame,
    *,
    front: pd.DataFrame,
    objs: Sequence[Objective],
    figures: list[tuple[str, bytes, str]],
    hv_caption: str,
    references: pd.DataFrame | None,
    pubs: Sequence[Published],
    scale: int,
    title: str,
    subtitle: str,
    budgets: dict[str, Any],
) -> str:
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    obj_txt = ", ".join(f"{n} ({m})" for n, m in objs)
    budget_txt = ", ".join(
        f"{k} ≤ {v:,}" if isinstance(v, (int, float)) else f"{k} = {v}" for k, v in budgets.items() if v is not None
    )
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<div class='meta'>{html.escape(subtitle) + ' · ' if subtitle else ''}x{scale} · {len(df)} trials · "
        f"objectives: {html.escape(obj_txt)}{' · budgets: ' + html.escape(budget_txt) if budget_txt else ''}"
        f" · generated {html.escape(now)}</div>",
    ]

    counts = df["status"].astype("string").fillna("running").value_counts()
    order = [s for s in STATUS_ORDER if s in counts] + sorted(s for s in counts.index if s not in STATUS_ORDER)
    parts.append("<h2>Trials by status</h2><div>")
    for s in order:
        parts.append(
            f"<span class='badge' style='background:{_BADGE.get(s, '#777')}'>{html.escape(s)}: {counts[s]}</span>"
        )
    parts.append("</div>")

    parts.append(f"<h2>Pareto front ({len(front)} models)</h2>")
    if len(front):
        rows = []
        for i, (_, r) in enumerate(front.iterrows(), 1):
            lat = _fmt(r.get("latency_ms"), ".2f")
            if lat != "–" and r.get("latency_device") is not pd.NA and r.get("latency_device"):
                lat += f" <span class='note'>({_s(r.get('latency_device'))})</span>"
            rows.append(
                [
                    str(i),
                    _s(r.get("run_name")),
                    _s(r.get("arch")),
                    _clb(r),
                    _fmt(r.get("psnr_y"), ".3f"),
                    _fmt(r.get("ssim_y"), ".4f"),
                    _fmt(r.get("params"), ",.0f"),
                    _fmt(r.get("macs_720p"), ".2f", 1e9, "G"),
                    lat,
                    f"<code>{_s(r.get('run_id'))}</code>",
                    f"<code>{_s(r.get('model_uri'))}</code>",
                ]
            )
        parts.append(
            _table(
                [
                    "#",
                    "run",
                    "arch",
                    "C/L/B",
                    "PSNR_Y (dB)",
                    "SSIM_Y",
                    "params",
                    "MACs 720p",
                    "latency (ms)",
                    "run id",
                    "model URI",
                ],
                rows,
                left=(1, 2, 9, 10),
            )
        )
    else:
        parts.append("<p class='note'>No completed trial meets the budgets.</p>")

    if figures:
        parts.append("<h2>Trade-offs</h2><div class='grid'>")
        for name, png, caption in figures:
            cap = html.escape(caption)
            if name == "hypervolume" and hv_caption:
                cap += " · " + html.escape(hv_caption)
            elif name != "hypervolume":
                cap += (
                    " · front = non-dominated trials in these two axes (within budgets) · published PSNR is on Set5"
                    " from the papers"
                )
            parts.append(_img(png, name, cap))
        parts.append("</div>")

    parts.append("<h2>References</h2>")
    ref_rows = []
    if references is not None:
        for _, r in references.iterrows():
            ref_rows.append(
                [
                    _s(r.get("kind")),
                    _s(r.get("run_name")),
                    "this job's eval set",
                    _fmt(r.get("psnr_y"), ".3f"),
                    _fmt(r.get("ssim_y"), ".4f"),
                    _fmt(r.get("params"), ",.0f"),
                    _fmt(r.get("macs_720p"), ".2f", 1e9, "G"),
                ]
            )
    for p in pubs:
        ref_rows.append(
            [
                "published",
                html.escape(p.label),
                html.escape(f"Set5 · {p.source}"),
                _fmt(p.set5_psnr_y, ".2f"),
                _fmt(p.set5_ssim_y, ".4f"),
                _fmt(p.params, ",.0f"),
                _fmt(p.macs_720p_g, ".1f", 1.0, "G"),
            ]
        )
    if ref_rows:
        parts.append(
            _table(["kind", "name", "measured on", "PSNR_Y (dB)", "SSIM_Y", "params", "MACs 720p"], ref_rows, (0, 1, 2))
        )
    else:
        parts.append("<p class='note'>No reference runs or published points at this scale.</p>")

    failed = df[df["status"] == "failed"]
    parts.append(f"<h2>Failed trials ({len(failed)})</h2>")
    if len(failed):
        err_col = next((c for c in ("error", "srcompress.error") if c in failed.columns), None)
        rows = [
            [
                _fmt(r.get("trial_number"), "g"),
                _s(r.get("run_name")),
                _s(r.get("arch")),
                _clb(r),
                f"<code>{_s(r.get('run_id'))}</code>",
                _s(r.get(err_col)) if err_col else "–",
            ]
            for _, r in failed.iterrows()
        ]
        parts.append(_table(["trial", "run", "arch", "C/L/B", "run id", "error"], rows, left=(1, 2, 4, 5)))
    else:
        parts.append("<p class='note'>None.</p>")

    parts.append(
        "<p class='note'>MACs are multiply-accumulates for a 1280x720 output. Infeasible trials exceeded a budget"
        " and were never trained; they appear on the plots as grey crosses along the bottom.</p></body></html>"
    )
    return "\n".join(parts)


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
    log_to_mlflow: bool = True,
) -> Path:
    """Query an experiment's trials and references, write the report, and log it to the search's parent run.

    With ``parent_run_id`` only that search's trials are reported; without it every trial of the experiment is,
    and the artifacts go to the most recent search run. Artifacts land under ``report/`` of the parent run
    (the HTML, ``<stem>_trials.parquet`` and ``figures/*.png``).

    Returns:
        The HTML path.
    """
    from orchestrator.trials_table import write_trials_parquet

    tracker = uri if isinstance(uri, Tracker) else Tracker(str(uri))
    df = query_trials(tracker, experiment)
    refs = query_references(tracker, experiment)
    if parent_run_id is not None:
        df = df[df["parent_run_id"] == parent_run_id].reset_index(drop=True)
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
    )
    parquet = write_trials_parquet(df, files.html.parent / f"{files.html.stem}_trials.parquet")
    target = parent_run_id or latest_search_run(tracker, experiment)
    if log_to_mlflow and target:
        tracker.log_artifact(target, files.html, artifact_path="report")
        tracker.log_artifact(target, parquet, artifact_path="report")
        for png in files.figures:
            tracker.log_artifact(target, png, artifact_path="report/figures")
    return files.html
