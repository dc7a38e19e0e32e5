"""What a job leaves in MLflow and in its log, read back from one real tiny job (``srcompress run`` in a subprocess:
its own local Ray, a sqlite store in a tmp dir): metric, param and tag names, the trial numbers, the parent run's
summary and description, readable log lines, and the driver log kept in storage and on the parent run."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST_RAY_ENV, write_tiny_job

from orchestrator.results.pareto import search_trials
from orchestrator.tracking import KIND_TAG, NOTE_TAG, Tracker

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One tiny job run as a user runs it; ``(tracker, experiment id, parent run, console output, storage)``."""
    tmp = tmp_path_factory.mktemp("hygiene")
    spec = write_tiny_job(tmp, **{"search.num_samples": 2})
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # Ray's own default, as for a user
    env.update({k: v for k, v in FAST_RAY_ENV.items() if k != "RAY_AUTH_MODE"}, PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--num-cpus", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=900,
        check=False,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    storage = tmp / "runs"
    tracker = Tracker(f"sqlite:///{storage}/mlflow.db")
    exp = tracker.find_experiment_id("tiny")
    (parent,) = tracker.find_runs(exp, f"tags.`{KIND_TAG}` = 'search'")
    return tracker, exp, parent, out, storage


@pytest.mark.ray
@pytest.mark.mlflow
@pytest.mark.slow
def test_metric_and_tag_names(job):
    tracker, exp, parent, _, _ = job
    runs = tracker.find_runs(exp)
    metric_keys = {k for r in runs for k in r.data.metrics}
    assert "params" not in metric_keys and "param_count" in metric_keys  # no metric reads as a run parameter
    # Bookkeeping is no measurement: the step is each metric's step, the flags are the status tag, the patch size
    # is in the spec; the resume point is a tag.
    assert metric_keys.isdisjoint({"step", "done_training", "infeasible", "hr_patch", "resumed_from_step"})
    trials = [r for r in runs if r.data.tags.get(KIND_TAG) == "trial"]
    for r in trials:
        history = tracker.client.get_metric_history(r.info.run_id, "param_count")
        assert len(history) == 1  # a constant of the model: one value, not a series
    for r in runs:
        outside = [k for k in r.data.tags if not k.startswith(("srcompress.", "mlflow."))]
        assert outside == [], (r.info.run_name, outside)
    numbers = sorted(int(r.data.tags["srcompress.trial_number"]) for r in trials)
    assert len(numbers) == len(set(numbers)) == len(trials) >= 2  # the Optuna draw number of every trial
    df = search_trials(tracker, "tiny", parent.info.run_id)
    assert df["trial_number"].notna().all() and df["params"].notna().all()  # read back under the code's names
    for _, row in df[df["status"] == "completed"].iterrows():
        record = json.loads(row["arch_record"])  # the trained weights' architecture record, as pareto returns it
        assert record["arch"] == "edsr_mini" and record["knobs"]["C"] == int(row["C"]) and record["scale"] == 2
        assert record["pixel_range"] == 1.0


@pytest.mark.ray
@pytest.mark.mlflow
@pytest.mark.slow
def test_parent_run_has_a_summary_and_a_description(job):
    tracker, _, parent, _, _ = job
    run = tracker.client.get_run(parent.info.run_id)
    m = run.data.metrics
    df = search_trials(tracker, "tiny", parent.info.run_id)
    done = df[df["status"] == "completed"]
    assert m["best_psnr_y"] == pytest.approx(float(done["psnr_y"].max()))
    assert m["front_size"] == int((df["pareto"] == True).sum()) >= 1  # noqa: E712 (nullable boolean column)
    assert 0.0 < m["hypervolume"] <= 1.0
    assert m["trials_completed"] == len(done) and m["trials_failed"] == 0
    note = run.data.tags[NOTE_TAG]
    assert "Pareto front" in note and f"{m['best_psnr_y']:.3f} dB" in note
    assert "G MACs" in note and "e+" not in note


@pytest.mark.ray
@pytest.mark.mlflow
@pytest.mark.slow
def test_log_is_readable_and_kept_in_storage(job):
    tracker, _, parent, out, storage = job
    assert "Budget(" not in out and "{'base_arch'" not in out
    assert not re.search(r"\d\.\d{9,}", out), re.search(r".*\d\.\d{9,}.*", out).group(0)  # no float reprs
    assert "budget params <= 60k" in out
    assert "Token authentication is enabled" not in out  # Ray's default set explicitly, so not warned about
    assert "pickle" not in out.lower()  # registered models are pt2 programs, so MLflow has no pickle to warn about
    log = storage / "tiny" / "driver.log"
    text = log.read_text()
    assert text.startswith("==== ") and "srcompress run" in text.splitlines()[0]
    for line in ("[srcompress] search:", "[srcompress] done in", "Trials (* = Pareto front"):
        assert line in text, line  # the driver's lines and the final table, as on the console
    logged = tracker.client.download_artifacts(parent.info.run_id, "logs/driver.log", str(storage / "dl"))
    assert "[srcompress] done in" in Path(logged).read_text()


def test_driver_log_waits_for_the_job_folder_and_keeps_earlier_lines(tmp_path):
    from orchestrator._driver_log import tee_to

    log = tmp_path / "job" / "driver.log"
    with tee_to(log, header="refused run", ready=lambda: (tmp_path / "job" / "job_state.json").is_file()):
        print("[srcompress] error before the job starts")
    assert not (tmp_path / "job").exists()  # a job refused at the start leaves no folder for its log
    with tee_to(log, header="run 1", ready=lambda: (tmp_path / "job" / "job_state.json").is_file()):
        print("before the state file")
        (tmp_path / "job").mkdir()
        (tmp_path / "job" / "job_state.json").write_text("{}")
        print("after it", file=sys.stderr)
    with tee_to(log, header="run 1 --resume"):
        print("resumed")
    lines = log.read_text().splitlines()
    assert lines[0].endswith(" run 1") and lines[1:3] == ["before the state file", "after it"]
    assert lines[3].endswith(" run 1 --resume") and lines[4] == "resumed"  # a resume appends
