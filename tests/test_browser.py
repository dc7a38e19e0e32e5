"""The MLflow UI of a search, in a real server (``orchestrator.ui.start_mlflow_server``) and headless Chromium."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import html
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from orchestrator.tracking import KIND_TAG, STATUS_TAG, Tracker
from orchestrator.ui import free_port, start_mlflow_server, stop_server

# Flags that work on this machine (STACK_NOTES.md, MLflow UI).
_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
    "--window-size=1400,1000",
]


def _chromium() -> str | None:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browse(exe: str, url: str, *extra: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run(
            [exe, *_FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    return res.stdout


def _text(dom: str) -> str:
    """Visible-ish text of a DOM dump: scripts and styles dropped, tags removed, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


@pytest.mark.browser
@pytest.mark.mlflow
def test_mlflow_ui_shows_the_search_and_its_trials(tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("needs chromium (/usr/bin/chromium or on PATH); absent on this machine")
    t0 = time.monotonic()
    port = free_port()
    proc = start_mlflow_server(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "mlartifacts", port=port, wait_s=120)
    t_up = time.monotonic() - t0
    try:
        assert proc.url == f"http://127.0.0.1:{port}"
        # A small search logged through the server, as a job with --tracking-uri http://... would.
        tracker = Tracker(proc.url, deadline_s=15)
        exp = tracker.experiment_id("browser_job")
        parent = tracker.start_run(exp, "search_browser_job", tags={KIND_TAG: "search"})
        children = [f"edsr_C{c}L1B2_x2_t{i}" for i, c in enumerate((8, 16, 24))]
        for i, name in enumerate(children):
            rid = tracker.start_run(exp, name, parent_run_id=parent, tags={KIND_TAG: "trial", STATUS_TAG: "completed"})
            tracker.log_metrics(rid, {"psnr_y": 35.0 + i, "params": 10_000 * (i + 1)})
            tracker.end_run(rid)
        tracker.end_run(parent)

        # The runs table nests children under their parent, collapsed: it shows the parent and the run count.
        runs = _text(_browse(exe, f"{proc.url}/#/experiments/{exp}/runs", "--dump-dom"))
        assert "search_browser_job" in runs, runs[:2000]
        assert "4 matching runs" in runs, runs[:2000]
        # The parent's run page lists every child by name (one browser run: DOM and screenshot).
        shot = tmp_path / "parent_run.png"
        page = _text(
            _browse(exe, f"{proc.url}/#/experiments/{exp}/runs/{parent}", "--dump-dom", f"--screenshot={shot}")
        )
        assert "Child runs" in page, page[:2000]
        for name in children:
            assert name in page, name
    finally:
        stop_server(proc)
    assert proc.returncode is not None  # the server (and its process group) is gone

    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (1000, 1400) and img.std() > 10  # a drawn page, not a blank one
    print(f"server up in {t_up:.1f}s; whole test {time.monotonic() - t0:.1f}s; screenshot {shot}")
