"""The report's figures: PSNR against a cost (trials, front, references, published points) and search progress.

Drawn on matplotlib's Agg canvas (no display needed); each function returns a ``Figure`` for ``_png``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.results.pareto import GOOD_STATUSES, Objective, pareto_mask
from orchestrator.results.summary import format_value, hypervolume_progress
from sr.published import Published

_C_TRIAL = "#4c78a8"
_C_FRONT = "#e45756"
_C_INFEASIBLE = "#9d9d9d"
_C_TEACHER = "#f2b701"
_C_BICUBIC = "#6f6f6f"
_C_PUBLISHED = "#2f2f2f"


def _num(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _new_axes(figsize: tuple[float, float], *, strip: bool = False) -> tuple[Any, Any, Any]:
    """``(figure, main axes, strip axes or None)``; the strip is a thin panel under the main axes, sharing its x
    axis, for points that have an x but no y (infeasible draws: priced, never trained)."""
    # The Agg canvas needs no display, and a bare Figure never touches pyplot's global state or backend.
    # deferred: matplotlib is heavy and only a report needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    if strip:
        ax, low = fig.subplots(2, 1, sharex=True, height_ratios=(14, 1))
    else:
        ax, low = fig.add_subplot(), None
    for a in (ax, low):
        if a is not None:
            a.grid(True, which="major", alpha=0.3)
            a.grid(True, which="minor", alpha=0.08)
            a.spines[["top", "right"]].set_visible(False)
    return fig, ax, low


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
    """PSNR_Y against one cost (log x): trials, their 2-D front as a step line, references, infeasible strip.

    With test figures the points sit at their test PSNR_Y (comparable with the published Set5 points) while the
    front is still the one chosen on the validation PSNR_Y.
    """
    x = _num(df, x_col) / x_div
    y_sel = _num(df, "psnr_y")
    on_test = "test_psnr_y" in df.columns and bool(np.isfinite(_num(df, "test_psnr_y")).any())
    y = _num(df, "test_psnr_y") if on_test else y_sel
    y_col = "test_psnr_y" if on_test else "psnr_y"
    status = df["status"].astype("string").fillna("running").to_numpy() if "status" in df else np.array([])
    infeasible = (status == "infeasible") & np.isfinite(x) & (x > 0)
    # The legend sits outside the axes, right of them, so it can hide no point or label: the figure is wider.
    fig, ax, strip = _new_axes((9.4, 4.8), strip=bool(infeasible.any()))
    # The draw order below fixes the legend's order.
    xs_all, ys_all = _draw_trials(ax, x, y, status, in_budget, y_sel=y_sel)
    _draw_references(ax, references, x_col=x_col, x_div=x_div, xs_all=xs_all, ys_all=ys_all, y_col=y_col)
    labels = _draw_published(ax, published, published_x, xs_all=xs_all, ys_all=ys_all)
    _draw_budget(ax, budget, x_div=x_div, xs_all=xs_all)
    if strip is not None:
        _draw_infeasible(strip, x[infeasible], xs_all=xs_all)
    _finish_axes(ax, xs_all, ys_all, x_label=x_label, x_unit_fmt=x_unit_fmt, title=title, strip=strip)
    ax.set_ylabel(f"PSNR_Y on the {'test' if on_test else 'validation'} set (dB)")
    _place_labels(ax, labels, color=_C_PUBLISHED)
    return fig


def _draw_trials(
    ax: Any, x: np.ndarray, y: np.ndarray, status: np.ndarray, in_budget: np.ndarray, *, y_sel: np.ndarray
) -> tuple[list[float], list[float]]:
    """Trained trials (at ``y``) and the step line of their front (chosen on ``y_sel``, the validation PSNR);
    returns the x and y values drawn (for the limits)."""
    good = np.isin(status, GOOD_STATUSES) & np.isfinite(x) & (x > 0) & np.isfinite(y) & np.isfinite(y_sel)
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
        front = pts[pareto_mask(np.column_stack([y_sel[cand], x[cand]]), ("max", "min"))]
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
    return xs_all, ys_all


def _draw_references(
    ax: Any,
    references: pd.DataFrame | None,
    *,
    x_col: str,
    x_div: float,
    xs_all: list[float],
    ys_all: list[float],
    y_col: str = "psnr_y",
) -> None:
    """The teacher as a star; bicubic (or a reference without this cost) as a dashed horizontal line."""
    if references is None or not len(references):
        return
    for _, r in references.iterrows():
        ry, rx = r.get(y_col), r.get(x_col)
        if ry is None or not np.isfinite(ry):
            continue
        ys_all.append(float(ry))
        if r["kind"] == "bicubic" or rx is None or not np.isfinite(rx) or rx <= 0:
            ax.axhline(float(ry), color=_C_BICUBIC, ls="--", lw=1.0, zorder=1)
            if r["kind"] == "bicubic":
                # A zero-cost model: its point belongs at x = 0, the left edge of the (log) axis. Every trial below
                # the line is dominated by it.
                ax.scatter(
                    [0.0],
                    [float(ry)],
                    marker="D",
                    s=50,
                    color=_C_BICUBIC,
                    edgecolors="black",
                    linewidths=0.6,
                    zorder=6,
                    clip_on=False,
                    transform=ax.get_yaxis_transform(),
                    label="bicubic (0 params, 0 MACs; left edge)",
                )
            ax.annotate(
                f"{r['kind']} {ry:.2f} dB" + (" (0 params)" if r["kind"] == "bicubic" else ""),
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
            # Under the published diamonds and half transparent: the teacher is often a published model itself
            # (IMDN), whose diamond must stay visible on top of the star rather than vanish under it.
            ax.scatter(
                [float(rx) / x_div],
                [float(ry)],
                marker="*",
                s=260,
                color=_C_TEACHER,
                alpha=0.7,
                edgecolors="black",
                linewidths=0.6,
                zorder=4.5,
                label=str(r["kind"]),
            )


def _draw_published(
    ax: Any,
    published: Sequence[Published],
    published_x: dict[str, float | None],
    *,
    xs_all: list[float],
    ys_all: list[float],
) -> list[tuple[float, float, str]]:
    """Published points (Set5) as diamonds; returns their labels, placed once the axes are final."""
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
    return labels


def _draw_budget(ax: Any, budget: float | None, *, x_div: float, xs_all: list[float]) -> None:
    if budget is None or budget <= 0:
        return
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


def _draw_infeasible(strip: Any, x: np.ndarray, *, xs_all: list[float]) -> None:
    """Infeasible draws (over budget, never trained, so no PSNR) as grey crosses on their own strip under the
    plot: at their cost, and nowhere on the PSNR axis."""
    xs_all.extend(x)
    strip.scatter(
        x, np.zeros(len(x)), marker="x", s=30, color=_C_INFEASIBLE, zorder=3, label="infeasible (not trained)"
    )
    strip.set_ylim(-1, 1)
    strip.set_yticks([])
    strip.set_ylabel("infeasible", fontsize=7, rotation=0, ha="right", va="center", color=_C_INFEASIBLE)
    strip.spines[["left"]].set_visible(False)


def _finish_axes(
    ax: Any,
    xs_all: list[float],
    ys_all: list[float],
    *,
    x_label: str,
    x_unit_fmt: str,
    title: str,
    strip: Any = None,
) -> None:
    from matplotlib.ticker import FuncFormatter  # deferred: matplotlib is heavy and only a report needs it

    if ys_all:
        lo, hi = min(ys_all), max(ys_all)
        span = max(hi - lo, 0.5)
        ax.set_ylim(lo - 0.08 * span, hi + 0.08 * span)
    if xs_all:
        ax.set_xscale("log")
        lo_x, hi_x = min(xs_all), max(xs_all)
        ax.set_xlim(lo_x / 1.6, hi_x * 1.9)  # room for the published labels right of their markers
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format(v, x_unit_fmt)))
    (strip if strip is not None else ax).set_xlabel(x_label)
    ax.set_ylabel("PSNR_Y (dB)")
    ax.set_title(title, fontsize=11, loc="left")
    handles, names = ax.get_legend_handles_labels()
    if strip is not None:
        more = strip.get_legend_handles_labels()
        handles, names = handles + more[0], names + more[1]
    # Outside the axes (right of them): a legend inside would hide whatever lies under it, as the bicubic label did.
    ax.legend(handles, names, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)


# Label offsets in points, tried in order: right-above, right-below, left-above, left-below, then further out
# (a leader line ties a label to its point, so a label moved away from a crowd still names the right one).
_LABEL_OFFSETS = (
    (6, 5, "left"),
    (6, -12, "left"),
    (-6, 5, "right"),
    (-6, -12, "right"),
    (10, 16, "left"),
    (10, -22, "left"),
    (-10, 16, "right"),
    (-10, -22, "right"),
    (22, 26, "left"),
    (22, -32, "left"),
    (-22, 26, "right"),
    (-22, -32, "right"),
)


def _text_box(text: Any, renderer: Any) -> Any:
    """The box of a text's letters: an annotation's own extent also spans its leader line, which by design
    reaches the marker it names."""
    from matplotlib.text import Annotation, Text  # deferred: matplotlib is heavy and only a report needs it

    if isinstance(text, Annotation):
        text.update_positions(renderer)  # where its offset puts the text (done at draw time otherwise)
    return Text.get_window_extent(text, renderer)


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
    for text in ax.texts:  # the reference and budget labels drawn already
        b = _text_box(text, renderer)
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

    named = np.array([ax.transData.transform((x, y)) for x, y, _ in labels])

    def misleading(b: Any, own: np.ndarray) -> float:
        """Penalty when another labelled point lies nearer the text than its own: a reader would pair them."""
        nearest = np.clip(named, [b.x0, b.y0], [b.x1, b.y1])  # each point's nearest spot on the box
        dist = np.hypot(*(named - nearest).T)
        own_dist = float(np.hypot(*(own - np.clip(own, [b.x0, b.y0], [b.x1, b.y1]))))
        return 400.0 * float((dist < own_dist - 1.0).sum())

    for i, (x, y, text) in enumerate(labels):
        best = None
        for dx, dy, ha in _LABEL_OFFSETS:
            ann = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                fontsize=8,
                color=color,
                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": color, "shrinkA": 0, "shrinkB": 3},
            )
            # Out of the constrained layout: a label must not resize the axes it was placed in (which would move
            # every marker relative to the labels placed before it).
            ann.set_in_layout(False)
            box = _text_box(ann, renderer)
            cost = overlap(box) + misleading(box, named[i])
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
    """Hypervolume of the first two objectives after each trial and its caption; None when nothing to plot."""
    hv = hypervolume_progress(df, objectives)
    if hv is None:
        return None
    (o1, m1), (o2, m2) = hv.objectives
    x, frac = hv.trial, hv.fraction
    fig, ax, _ = _new_axes((7.4, 3.2))
    ax.step(x, frac, where="post", color=_C_TRIAL, lw=1.6)
    gain = np.r_[frac[0] > 0, np.diff(frac) > 0]
    ax.scatter(x[gain], frac[gain], s=22, color=_C_FRONT, zorder=3, label="front improved")
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume (fraction of box)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Search progress: hypervolume of ({o1} {m1}, {o2} {m2})", fontsize=11, loc="left")
    ax.legend(fontsize=8, loc="lower right")
    caption = (
        f"hypervolume as a fraction of the box from the ideal point ({format_value(o1, hv.ideal[0])}, "
        f"{format_value(o2, hv.ideal[1])}) to the reference point ({format_value(o1, hv.ref[0])}, "
        f"{format_value(o2, hv.ref[1])})"
    )
    return fig, caption
