"""Trial runs in a real MLflow store: keyed by Optuna's draw number, never duplicated or overwritten."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from orchestrator import trial_tracking as tt
from orchestrator.tracking import STATUS_TAG, Tracker

pytestmark = pytest.mark.mlflow


@pytest.fixture
def plan(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.experiment_id("t", artifact_location=str(tmp_path / "art"))
    parent = tracker.start_run(exp, "search_t")
    return SimpleNamespace(
        tracking={"uri": uri, "experiment_id": exp, "parent_run_id": parent},
        student_arch="edsr_mini",
        seed=0,
        worker=SimpleNamespace(kd=SimpleNamespace(seed=0, steps=10)),
    )


def _open(plan, key, knobs):
    return tt.open_trial_run(plan, trial_id=key, name=f"n_{key}", knobs=knobs, kd={"w_gt": 0.1}, config={})


def test_a_redrawn_trial_reuses_its_run(plan):
    key = tt.trial_key("abc_00001", {"_draw": 3})
    assert key == "draw_00003" and tt.trial_key("abc_00001", {}) == "abc_00001"
    first = _open(plan, key, {"C": 8, "B": 2})
    # A resumed search draws number 3 again (same config) under a new Tune trial id: the same run.
    assert _open(plan, key, {"C": 8, "B": 2}) == first
    assert tt.finished_trial_metrics(plan, key, {"C": 8, "B": 2}) is None  # still running
    tt.close_trial_run(plan, first, status="completed", metrics={"psnr_y": 30.0, "step": 10})
    done = tt.finished_trial_metrics(plan, key, {"C": 8, "B": 2})
    assert done["psnr_y"] == 30.0 and done["done_training"] == 1


def test_another_config_under_the_same_key_keeps_the_finished_run(plan):
    key = "draw_00000"
    first = _open(plan, key, {"C": 8, "B": 2})
    tt.close_trial_run(plan, first, status="completed", metrics={"psnr_y": 30.0, "step": 10})
    # Not the same architecture: its recorded result is not this trial's, and the finished run is kept.
    assert tt.finished_trial_metrics(plan, key, {"C": 16, "B": 2}) is None
    second = _open(plan, key, {"C": 16, "B": 2})
    assert second != first
    tracker = Tracker(plan.tracking["uri"])
    old = tracker.client.get_run(first)
    assert old.data.tags[STATUS_TAG] == "completed" and old.data.metrics["psnr_y"] == 30.0
    assert old.data.tags[tt.TRIAL_ID_TAG].startswith(f"{key}_superseded_")
    found = tt.find_trial_run(tracker, plan.tracking["experiment_id"], plan.tracking["parent_run_id"], key)
    assert found.info.run_id == second


def test_an_unfinished_run_under_another_config_is_marked_interrupted(plan):
    first = _open(plan, "draw_00001", {"C": 8, "B": 2})
    second = _open(plan, "draw_00001", {"C": 8, "B": 3})
    assert second != first
    old = Tracker(plan.tracking["uri"]).client.get_run(first)
    assert old.data.tags[STATUS_TAG] == "interrupted" and old.info.status == "KILLED"
