"""The HTML search report on a real MLflow sqlite store: self-contained, complete, logged to the parent run."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.results.pareto import pareto_models, query_trials
from orchestrator.results.report import published_points, report_for_experiment, write_report
from orchestrator.tracking import KIND_TAG, STATUS_TAG, Tracker

# name, status, C, B, psnr_y, params, GMACs 720p
TRIALS = [
    ("a", "completed", 8, 2, 36.0, 10_000, 1.0),
    ("b", "completed", 12, 2, 36.5, 20_000, 2.0),
    ("c", "completed", 12, 3, 36.4, 30_000, 3.0),  # dominated by b
    ("d", "completed", 16, 4, 37.0, 61_000, 4.0),  # over the 60k budget
    ("e", "completed", 16, 3, 36.8, 50_000, 5.0),  # on the front once d is out
    ("f", "stopped-early", 24, 4, 37.2, 90_000, 8.0),
    ("g", "infeasible", 64, 8, None, 200_000, 20.0),
    ("h", "failed", 16, 2, None, 40_000, 3.5),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow_report")
    tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", deadline_s=10)
    exp = tracker.experiment_id("job", artifact_location=str(tmp / "artifacts"))
    parent = tracker.start_run(exp, "search_edsr_x2", tags={KIND_TAG: "search"})
    ids = {}
    for i, (name, status, c, b, psnr, params, gmacs) in enumerate(TRIALS):
        rid = tracker.start_run(
            exp, f"edsr_C{c}L1B{b}_x2_{name}", parent_run_id=parent, tags={KIND_TAG: "trial", STATUS_TAG: status}
        )
        ids[name] = rid
        tracker.log_params(rid, {"family": "edsr", "arch": "edsr", "C": c, "L": 1, "B": b, "scale": 2})
        m = {"params": params, "macs_720p": gmacs * 1e9}
        if psnr is not None:
            m |= {"psnr_y": psnr, "ssim_y": 0.95, "latency_ms": 3.0 * gmacs}
        tracker.log_metrics(rid, m)
        tracker.set_tags(rid, {"trial_number": i, "model_uri": f"runs:/{rid}/model", "latency_device": "cpu"})
    for kind, psnr, params, gmacs in (("teacher", 37.9, 1_369_859, 316.3), ("bicubic", 33.7, 0, 0.0)):
        rid = tracker.start_run(exp, kind, parent_run_id=parent, tags={KIND_TAG: kind})
        tracker.log_metrics(rid, {"psnr_y": psnr, "ssim_y": 0.93, "params": params, "macs_720p": gmacs * 1e9})
    return tracker, parent, ids, tmp


def _external_refs(text: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, flags=re.IGNORECASE)


@pytest.mark.mlflow
def test_report_for_experiment_is_complete_and_logged(store, tmp_path):
    tracker, parent, ids, _ = store
    out = report_for_experiment(tracker.uri, "job", tmp_path / "report.html", max_params=60_000)
    # One file, nothing beside it, and the store only read (--log is off by default).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    assert tracker.client.list_artifacts(parent) == []
    text = out.read_text(encoding="utf-8")
    assert _external_refs(text) == [] and "<script" not in text and "<link" not in text
    assert "http://" not in text and "https://" not in text
    assert text.count('src="data:image/png;base64,') == 4  # MACs, latency, params, hypervolume
    for label in ("EDSRmini", "SwinIRmini", "IMDN", "EDSR_baseline", "SRCNN"):
        assert label in text, label
    front = pareto_models(query_trials(tracker, "job"), objectives="psnr_y:max,macs_720p:min", max_params=60_000)
    assert {n.rsplit("_", 1)[1] for n in front["run_name"]} == {"a", "b", "e"}
    for run_id in front["run_id"]:
        assert run_id in text
    assert ids["d"] not in text and ids["c"] not in text  # not on the budgeted front, not failed
    assert ids["h"] in text  # the failed trial is listed
    assert "failed: 1" in text and "infeasible: 1" in text and "completed: 5" in text
    assert "teacher" in text and "bicubic" in text

    # Asked for: the figures as files (linked, not inlined), the trials table, and the whole logged to the parent.
    linked = report_for_experiment(
        tracker.uri,
        "job",
        tmp_path / "linked" / "report.html",
        max_params=60_000,
        assets_dir=tmp_path / "linked" / "assets",
        parquet=tmp_path / "linked" / "report_trials.parquet",
        log_to_mlflow=True,
    )
    linked_text = linked.read_text(encoding="utf-8")
    assert "data:image/png" not in linked_text and linked_text.count('src="assets/') == 4
    assert all((linked.parent / src).is_file() for src in re.findall(r'src="(assets/[^"]+)"', linked_text))
    logged = {f.path for f in tracker.client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/report_trials.parquet", "report/figures"} <= logged
    figs = {f.path for f in tracker.client.list_artifacts(parent, "report/figures")}
    assert figs == {
        f"report/figures/{n}.png" for n in ("psnr_vs_macs", "psnr_vs_latency", "psnr_vs_params", "hypervolume")
    }
    got = Path(tracker.client.download_artifacts(parent, "report/report.html", str(tmp_path / "dl")))
    assert got.read_bytes() == linked.read_bytes()


def test_write_report_without_latency_references_or_results(tmp_path):
    df = pd.DataFrame(
        {
            "run_id": ["r1", "r2", "r3"],
            "run_name": ["x_C8", "x_C16", "x_C64"],
            "status": ["completed", "failed", "infeasible"],
            "scale": [4, 4, 4],
            "psnr_y": [30.1, np.nan, np.nan],
            "params": [10_000, 20_000, 900_000],
            "macs_720p": [1e9, 2e9, 90e9],
        }
    )
    files = write_report(df, tmp_path / "r.html", objectives="psnr_y:max,macs_720p:min", assets_dir=tmp_path / "a")
    text = files.html.read_text()
    assert [p.name for p in files.figures] == ["psnr_vs_macs.png", "psnr_vs_params.png", "hypervolume.png"]
    assert all(p.stat().st_size > 5000 for p in files.figures)
    assert "r1" in text and "r2" in text  # the front's only model; the failed one
    assert published_points(4) == []  # no x4 row carries a Set5 PSNR, so no published markers
    assert "No reference runs or published points" in text
    empty = write_report(df.iloc[:0], tmp_path / "empty.html")
    assert "No completed trial meets the budgets" in empty.html.read_text()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.mlflow
def test_report_renders_in_headless_chromium(store, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("needs chromium (apt-get install chromium); absent on this machine")
    tracker, *_ = store
    out = report_for_experiment(tracker, "job", tmp_path / "report.html", log_to_mlflow=False)
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1200,1600",
                out.as_uri(),
            ],
            capture_output=True,
            timeout=90,
            check=False,
        )
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (1600, 1200)
    assert img.std() > 10  # not a blank page: text, tables and figures drew


def test_report_marks_models_below_bicubic_and_draws_bicubic_at_zero_cost(tmp_path):
    """A model below bicubic (which has no parameters, so dominates it) is marked in the front table; test figures
    sit beside validation ones; bicubic is a labelled zero-cost point."""
    from orchestrator.results.pareto import with_vs_bicubic

    df = pd.DataFrame(
        {
            "run_id": ["r1", "r2"],
            "run_name": ["x_C8", "x_C32"],
            "status": ["completed", "completed"],
            "scale": [2, 2],
            "psnr_y": [32.5, 34.9],
            "test_psnr_y": [33.1, 35.2],
            "params": [10_000, 90_000],
            "macs_720p": [1e9, 9e9],
        }
    )
    refs = pd.DataFrame(
        {
            "kind": ["bicubic"],
            "run_id": ["b"],
            "run_name": ["bicubic_x2"],
            "parent_run_id": [None],
            "psnr_y": [33.0],
            "ssim_y": [0.9],
            "test_psnr_y": [33.6],
            "test_ssim_y": [0.93],
            "params": [0.0],
            "macs_720p": [0.0],
            "latency_ms": [np.nan],
        }
    )
    df = with_vs_bicubic(df, refs)
    assert df["vs_bicubic_db"].round(3).tolist() == [-0.5, 1.6]  # on the test set, not validation
    assert df["below_bicubic"].tolist() == [True, False]
    files = write_report(df, tmp_path / "r.html", objectives="psnr_y:max,macs_720p:min", references=refs)
    text = files.html.read_text()
    assert text.count("below bicubic</b>") == 1 and "+1.600" in text and "-0.500" in text
    assert "test PSNR_Y (dB)" in text and "33.600" in text  # the bicubic reference's test figure
