"""What the report's figures show, read back from the drawn figure: the teacher does not hide a published point
(IMDN is both), every label is tied to the point it names, no legend covers a label, infeasible draws stay off the
PSNR axis, and captions give MACs in readable units. Plain pandas + matplotlib: no store, no Ray."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text

from orchestrator.results._figures import _hypervolume_figure, _tradeoff_figure
from orchestrator.results.report import _TRADEOFF_PLOTS, published_points, write_report

# A demo-like search at x2: an IMDN teacher (exactly the published IMDN point), bicubic, trials and infeasible draws.
TRIALS = pd.DataFrame(
    {
        "run_id": [f"r{i}" for i in range(6)],
        "run_name": [f"edsr_C{c}_t{i}" for i, c in enumerate((8, 16, 24, 24, 32, 48))],
        "status": ["completed", "completed", "completed", "stopped-early", "infeasible", "infeasible"],
        "trial_number": [0, 1, 2, 3, 4, 5],
        "psnr_y": [34.1, 34.6, 35.2, 34.9, np.nan, np.nan],
        "params": [11_539, 68_163, 74_235, 110_691, 152_355, 400_000],
        "macs_720p": [2.77e9, 15.9e9, 17.5e9, 25.8e9, 35.4e9, 92.0e9],
    }
)
IMDN = next(p for p in published_points(2) if p.label == "IMDN")
REFS = pd.DataFrame(
    [
        {"kind": "teacher", "psnr_y": IMDN.set5_psnr_y, "params": IMDN.params, "macs_720p": IMDN.macs_720p_g * 1e9},
        {"kind": "bicubic", "psnr_y": 33.66, "params": 0.0, "macs_720p": 0.0},
    ]
)


def _macs_figure():
    _, col, div, label, fmt, _, title = _TRADEOFF_PLOTS[0]
    pubs = published_points(2)
    fig = _tradeoff_figure(
        TRIALS,
        x_col=col,
        x_div=div,
        x_label=label,
        x_unit_fmt=fmt,
        budget=120e9,
        in_budget=np.ones(len(TRIALS), dtype=bool),
        references=REFS,
        published=pubs,
        published_x={p.label: p.macs_720p_g for p in pubs},
        title=title,
    )
    fig.canvas.draw()
    return fig, pubs


@pytest.fixture(scope="module")
def macs_figure():
    return _macs_figure()


def _pixel(fig, ax, x: float, y: float) -> np.ndarray:
    """RGB of the drawn figure at data point (x, y) of ``ax``."""
    px, py = ax.transData.transform((x, y))
    buf = np.asarray(fig.canvas.buffer_rgba())
    return buf[int(round(buf.shape[0] - py)), int(round(px)), :3].astype(int)


def test_teacher_star_leaves_the_published_imdn_marker_visible(macs_figure):
    fig, _ = macs_figure
    ax = fig.axes[0]
    # The centre pixel of the IMDN diamond is the diamond's near-black, not the teacher star's yellow (#f2b701).
    r, g, b = _pixel(fig, ax, IMDN.macs_720p_g, IMDN.set5_psnr_y)
    assert r + g + b < 3 * 110, (r, g, b)


def test_every_label_is_tied_to_the_point_it_names_and_covers_no_marker(macs_figure):
    fig, pubs = macs_figure
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    where = {p.label: (p.macs_720p_g, p.set5_psnr_y) for p in pubs if p.macs_720p_g}
    labels = [t for t in ax.texts if t.get_text() in where]
    assert {t.get_text() for t in labels} == set(where)
    markers = []
    for coll in ax.collections:
        r = 0.5 * np.sqrt(float(coll.get_sizes().max())) * fig.dpi / 72.0
        for xd, yd in coll.get_offset_transform().transform(np.asarray(coll.get_offsets(), dtype=float)):
            markers.append((xd - r, yd - r, xd + r, yd + r))
    for t in labels:
        assert np.allclose(t.xy, where[t.get_text()]), t.get_text()  # anchored on its own point ...
        assert t.arrow_patch is not None  # ... with a leader line from the text to it
        b = Text.get_window_extent(t, renderer)  # the letters (an annotation's extent spans its leader line too)
        hits = [m for m in markers if min(b.x1, m[2]) > max(b.x0, m[0]) and min(b.y1, m[3]) > max(b.y0, m[1])]
        assert hits == [], f"label {t.get_text()!r} covers a marker"
        # No other named point lies nearer the text than its own: a reader pairs each label with the right one.
        pts = {k: ax.transData.transform(v) for k, v in where.items()}
        dist = {k: float(np.hypot(*(p - np.clip(p, [b.x0, b.y0], [b.x1, b.y1])))) for k, p in pts.items()}
        assert min(dist, key=dist.get) == t.get_text() or dist[t.get_text()] <= min(dist.values()) + 1.0


def test_legend_sits_outside_the_plot_so_the_bicubic_label_shows(macs_figure):
    fig, _ = macs_figure
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.get_window_extent(renderer).x1 - 1  # right of the axes, over nothing drawn in them
    bicubic = next(t for t in ax.texts if t.get_text().startswith("bicubic"))
    bb = bicubic.get_window_extent(renderer)
    assert not (min(bb.x1, legend.x1) > max(bb.x0, legend.x0) and min(bb.y1, legend.y1) > max(bb.y0, legend.y0))
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "infeasible (not trained)" in names and "teacher" in names


def test_infeasible_crosses_are_drawn_under_the_psnr_axis_not_on_it(macs_figure):
    fig, _ = macs_figure
    ax, strip = fig.axes[0], fig.axes[1]
    crosses = [c for c in ax.collections if c.get_label() == "infeasible (not trained)"]
    assert crosses == []  # nothing infeasible inside the PSNR axes
    (on_strip,) = [c for c in strip.collections if c.get_label() == "infeasible (not trained)"]
    assert np.allclose(sorted(on_strip.get_offsets()[:, 0]), [35.4, 92.0])  # at their cost (GMACs)
    renderer = fig.canvas.get_renderer()
    assert strip.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0  # a strip below the plot
    assert strip.get_shared_x_axes().joined(ax, strip)


def test_hypervolume_caption_gives_macs_in_readable_units():
    fig, caption = _hypervolume_figure(TRIALS, [("psnr_y", "max"), ("macs_720p", "min")])
    assert "e+" not in caption and "G MACs" in caption and " dB" in caption
    assert "2.77 G MACs" in caption  # the ideal point's cost: the cheapest trained trial


def test_report_is_one_file_unless_assets_are_asked_for(tmp_path):
    one = write_report(TRIALS, tmp_path / "one" / "r.html", references=REFS, scale=2)
    assert one.figures == () and sorted(p.name for p in (tmp_path / "one").iterdir()) == ["r.html"]
    text = one.html.read_text()
    assert text.count('src="data:image/png;base64,') == 3  # PSNR vs MACs, vs params, hypervolume
    assert "e+09" not in text
