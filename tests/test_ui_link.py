"""``srcompress ui`` prints the deep link to a job's runs view and opens it with ``--open``; in headless Chromium the
link shows the search's runs table (MLflow 3's "Model training" view), not the GenAI overview."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.tracking import KIND_TAG, STATUS_TAG, Tracker
from orchestrator.ui import free_port, runs_url
from tests.test_browser import _browse, _chromium, _text

ROOT = Path(__file__).resolve().parents[1]


def test_runs_url_is_the_model_training_runs_view():
    url = runs_url("http://127.0.0.1:5000/", "7")
    assert url == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with one search (a parent and two trials) in experiment ``uijob``, beside an empty experiment."""
    tmp = tmp_path_factory.mktemp("ui_store")
    tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", deadline_s=10)
    tracker.experiment_id("empty_one", artifact_location=str(tmp / "mlartifacts"))
    exp = tracker.experiment_id("uijob", artifact_location=str(tmp / "mlartifacts"))
    parent = tracker.start_run(exp, "search_uijob", tags={KIND_TAG: "search"})
    for i in range(2):
        rid = tracker.start_run(exp, f"edsr_C8L1B{i + 1}_x2_t{i}", parent_run_id=parent, tags={KIND_TAG: "trial"})
        tracker.set_tags(rid, {STATUS_TAG: "completed"})
        tracker.end_run(rid)
    tracker.end_run(parent)
    return tmp, exp


def _read_until(proc: subprocess.Popen, marker: str, timeout_s: float) -> str:
    out = ""
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        out += line
        if marker in line:
            return out
    raise AssertionError(f"no {marker!r} within {timeout_s}s; output: {out}")


@pytest.mark.mlflow
@pytest.mark.browser
def test_ui_prints_and_opens_the_deep_link_to_the_runs_view(store, tmp_path):
    storage, exp = store
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"  # what $BROWSER names is what Python's webbrowser runs, with the URL
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    port = free_port()
    env = {**os.environ, "BROWSER": str(browser), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "orchestrator.cli", "ui", "--storage", str(storage), "--port", str(port), "--open"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        out = _read_until(proc, "Ctrl-C stops it", timeout_s=150)
        link = f"http://127.0.0.1:{port}/#/experiments/{exp}/runs?workflowType=machine_learning"
        assert f"runs of uijob: {link}" in out, out
        assert "empty_one" not in out  # an experiment without runs gets no link
        assert opened.read_text().strip() == link  # --open handed the browser the deep link
        exe = _chromium()
        if exe is None:
            pytest.skip("needs chromium (/usr/bin/chromium or on PATH) for the rendered view; absent here")
        page = _text(_browse(exe, link, "--dump-dom"))
        assert "search_uijob" in page, page[:2000]  # the search's parent run is in the table ...
        assert "3 matching runs" in page, page[:2000]  # ... with its trials nested under it
        assert "Model training" in page  # the training view, not the GenAI overview
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0  # Ctrl-C stops the server cleanly
