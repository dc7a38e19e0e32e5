"""The report's HTML: one page built from plain strings, CSS inline; each figure's ``src`` is a ``data:`` URI (one
self-contained file) or a path relative to the page (``--assets DIR``)."""

from __future__ import annotations

import base64
import datetime as _dt
import html
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.results.pareto import Objective
from sr.published import Published

STATUS_ORDER = ("completed", "stopped-early", "infeasible", "failed", "running")

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
_FRONT_HEADERS = (
    "#",
    "run",
    "arch",
    "C/L/B",
    "val PSNR_Y (dB)",
    "val SSIM_Y",
    "test PSNR_Y (dB)",
    "vs bicubic (dB)",
    "params",
    "MACs 720p",
    "latency (ms)",
    "run id",
    "model URI",
)


# ---------------------------------------------------------------------------------------------- formatting
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


def png_src(png: bytes) -> str:
    """A PNG as a ``data:`` URI, so the page needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(src: str, alt: str, caption: str) -> str:
    return f'<figure><img alt="{html.escape(alt)}" src="{html.escape(src)}"><figcaption>{caption}</figcaption></figure>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="l">{c}</td>' if i in left else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ------------------------------------------------------------------------------------------------ sections
def _page(
    df: pd.DataFrame,
    *,
    front: pd.DataFrame,
    objs: Sequence[Objective],
    figures: list[tuple[str, str, str]],
    hv_caption: str,
    references: pd.DataFrame | None,
    pubs: Sequence[Published],
    scale: int,
    title: str,
    subtitle: str,
    budgets: dict[str, Any],
) -> str:
    parts = _header(df, objs=objs, scale=scale, title=title, subtitle=subtitle, budgets=budgets)
    parts += _status_section(df)
    parts += _front_section(front)
    parts += _figures_section(figures, hv_caption)
    parts += _references_section(references, pubs)
    parts += _failed_section(df)
    parts.append(
        "<p class='note'>MACs are multiply-accumulates for a 1280x720 output. Infeasible trials exceeded a budget"
        " and were never trained; they appear as grey crosses on a strip under each plot, at their cost.</p>"
        "</body></html>"
    )
    return "\n".join(parts)


def _header(
    df: pd.DataFrame, *, objs: Sequence[Objective], scale: int, title: str, subtitle: str, budgets: dict[str, Any]
) -> list[str]:
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    obj_txt = ", ".join(f"{n} ({m})" for n, m in objs)
    budget_txt = ", ".join(
        f"{k} ≤ {v:,}" if isinstance(v, (int, float)) else f"{k} = {v}" for k, v in budgets.items() if v is not None
    )
    return [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<div class='meta'>{html.escape(subtitle) + ' · ' if subtitle else ''}x{scale} · {len(df)} trials · "
        f"objectives: {html.escape(obj_txt)}{' · budgets: ' + html.escape(budget_txt) if budget_txt else ''}"
        f" · generated {html.escape(now)}</div>",
    ]


def _status_section(df: pd.DataFrame) -> list[str]:
    counts = df["status"].astype("string").fillna("running").value_counts()
    order = [s for s in STATUS_ORDER if s in counts] + sorted(s for s in counts.index if s not in STATUS_ORDER)
    parts = ["<h2>Trials by status</h2><div>"]
    for s in order:
        parts.append(
            f"<span class='badge' style='background:{_BADGE.get(s, '#777')}'>{html.escape(s)}: {counts[s]}</span>"
        )
    parts.append("</div>")
    return parts


def _front_section(front: pd.DataFrame) -> list[str]:
    parts = [f"<h2>Pareto front ({len(front)} models)</h2>"]
    if not len(front):
        parts.append("<p class='note'>No completed trial meets the budgets.</p>")
        return parts
    # KD gain over the student's GT-only twin (search.kd_twin), shown when a front model has one.
    gain = "kd_gain_db" in front.columns and bool(pd.to_numeric(front["kd_gain_db"], errors="coerce").notna().any())
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
                _fmt(r.get("test_psnr_y"), ".3f"),
                _fmt(r.get("vs_bicubic_db"), "+.3f")
                + (" <b>below bicubic</b>" if r.get("below_bicubic") is True else ""),
                *([_fmt(r.get("kd_gain_db"), "+.3f")] if gain else []),
                _fmt(r.get("params"), ",.0f"),
                _fmt(r.get("macs_720p"), ".2f", 1e9, "G"),
                lat,
                f"<code>{_s(r.get('run_id'))}</code>",
                f"<code>{_s(r.get('model_uri'))}</code>",
            ]
        )
    if gain:
        headers = (*_FRONT_HEADERS[:8], "KD gain (dB)", *_FRONT_HEADERS[8:])
        parts.append(_table(headers, rows, left=(1, 2, 12, 13)))
    else:
        parts.append(_table(_FRONT_HEADERS, rows, left=(1, 2, 11, 12)))
    parts.append(
        "<p class='note'>Selected on the validation set; test figures are reported only. vs bicubic = PSNR_Y minus"
        " bicubic upsampling's on the test set (else the validation set); a model below bicubic is dominated by it"
        " (bicubic has no parameters).</p>"
    )
    if gain:
        parts.append("<p class='note'>KD gain: PSNR_Y minus that of the same student trained on ground truth alone")
        parts[-1] += " (same steps, init and batches; search.kd_twin).</p>"
    return parts


def _figures_section(figures: list[tuple[str, str, str]], hv_caption: str) -> list[str]:
    if not figures:
        return []
    parts = ["<h2>Trade-offs</h2><div class='grid'>"]
    for name, src, caption in figures:
        cap = html.escape(caption)
        if name == "hypervolume" and hv_caption:
            cap += " · " + html.escape(hv_caption)
        elif name != "hypervolume":
            cap += (
                " · front = non-dominated trials in these two axes (within budgets) · published PSNR is on Set5"
                " from the papers"
            )
        parts.append(_img(src, name, cap))
    parts.append("</div>")
    return parts


def _references_section(references: pd.DataFrame | None, pubs: Sequence[Published]) -> list[str]:
    parts = ["<h2>References</h2>"]
    ref_rows = []
    if references is not None:
        for _, r in references.iterrows():
            ref_rows.append(
                [
                    _s(r.get("kind")),
                    _s(r.get("run_name")),
                    "this job's validation set",
                    _fmt(r.get("psnr_y"), ".3f"),
                    _fmt(r.get("ssim_y"), ".4f"),
                    _fmt(r.get("test_psnr_y"), ".3f"),
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
                _fmt(p.set5_psnr_y, ".2f"),
                _fmt(p.params, ",.0f"),
                _fmt(p.macs_720p_g, ".1f", 1.0, "G"),
            ]
        )
    if ref_rows:
        parts.append(
            _table(
                ["kind", "name", "measured on", "PSNR_Y (dB)", "SSIM_Y", "test PSNR_Y (dB)", "params", "MACs 720p"],
                ref_rows,
                (0, 1, 2),
            )
        )
    else:
        parts.append("<p class='note'>No reference runs or published points at this scale.</p>")
    return parts


def _failed_section(df: pd.DataFrame) -> list[str]:
    failed = df[df["status"] == "failed"]
    parts = [f"<h2>Failed trials ({len(failed)})</h2>"]
    if not len(failed):
        parts.append("<p class='note'>None.</p>")
        return parts
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
    return parts
