"""KD twins (``search.kd_twin``): each front student retrained on ground truth alone, ``kd_gain_db`` on its run.

Real local Ray + a real MLflow sqlite store; the tiny job of ``tests/conftest.py`` (2 trials, 20 steps).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from orchestrator._kd_twin import GAIN_KEY, TWIN_KIND, TWIN_OF_TAG, gt_only, kd_gains, twin_task
from orchestrator.tasks import DataRef, ModelRef, TrackingRef, TrialTask
from orchestrator.tracking import KIND_TAG, STATUS_TAG, Tracker
from search_spaces import load_job_spec
from sr.distill import KDConfig
from sr.errors import UserError


def _task() -> TrialTask:
    kd = KDConfig(steps=7, batch_size=3, hr_patch=32, scale=2, lr=3e-4, seed=11, w_gt=0.1, w_lap=1.0, w_hf=1.0)
    return TrialTask(
        name="edsr_C8L1B1_x2_kd_abcde",
        method="kd",
        student=ModelRef("edsr_mini", {"C": 8, "L": 1, "B": 1, "scale": 2}),
        teacher=ModelRef("edsr_mini", {"C": 8, "B": 1, "scale": 2}, "t.pth"),
        data=DataRef(train=None, val=None, cache_dir="/cache"),
        threads=1,
        kd=kd,
    )


def test_twin_task_changes_only_the_loss_weights():
    task = _task()
    twin = twin_task(task, tracking=TrackingRef("sqlite:///x.db", "run2"))
    assert (twin.kd.w_gt, twin.kd.w_lap, twin.kd.w_hf) == (1.0, 0.0, 0.0)
    # Same student, seed (init and batch order), steps, lr, schedule and data (the teacher cache's patches).
    assert dataclasses.replace(twin.kd, w_gt=0.1, w_lap=1.0, w_hf=1.0) == task.kd
    assert (twin.student, twin.data, twin.teacher, twin.threads) == (task.student, task.data, task.teacher, 1)
    assert twin.name == f"{task.name}_twin" and twin.tracking == TrackingRef("sqlite:///x.db", "run2")
    assert gt_only(task.kd) == twin.kd


def test_kd_gains():
    assert kd_gains({"psnr_y": 30.5}, {"psnr_y": 30.25}) == {GAIN_KEY: 0.25}
    both = kd_gains({"psnr_y": 30.0, "test_psnr_y": 29.0}, {"psnr_y": 30.5, "test_psnr_y": 28.5})
    assert both == {GAIN_KEY: -0.5, "kd_gain_test_db": 0.5}
    assert kd_gains({"psnr_y": 30.0}, {}) == {}


def _run(run_id: str, name: str, status: str):
    from types import SimpleNamespace

    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id, run_name=name), data=SimpleNamespace(tags={STATUS_TAG: status})
    )


def test_chosen_trials_front_or_names(capsys):
    from orchestrator._kd_twin import chosen_trials

    runs = [_run("r1", "a", "completed"), _run("r2", "b", "completed"), _run("r3", "c", "failed")]
    runs.append(_run("r4", "d", "stopped-early"))
    front, unknown = chosen_trials(runs, "pareto", {"r2", "r4"})
    assert [r.info.run_id for r in front] == ["r2"] and unknown == []  # a stopped-early trial gets no twin
    assert "no KD twin for 1 front trial(s) stopped early" in capsys.readouterr().out
    named, unknown = chosen_trials(runs, ("a", "c", "zz"), set())
    assert [r.info.run_id for r in named] == ["r1"] and unknown == ["c", "zz"]


@pytest.mark.parametrize("bad", ["all", [], ["a", "a"], 3])
def test_kd_twin_spec_rejects_bad_values(tiny_job, bad):
    with pytest.raises(UserError, match="kd_twin"):
        load_job_spec(tiny_job(**{"search.kd_twin": bad}))


def _runs(tracker: Tracker, exp_id: str, kind: str) -> list:
    return tracker.find_runs(exp_id, f"tags.`{KIND_TAG}` = '{kind}'")


@pytest.mark.ray
@pytest.mark.mlflow
def test_kd_twin_search_logs_gain_and_twins_stay_off_the_front(ray_local, tiny_job, tmp_path, capsys):
    from orchestrator._kd_twin import run_twins, trial_task_of
    from orchestrator.cli import main
    from orchestrator.job import run_job
    from orchestrator.results.pareto import query_trials
    from orchestrator.results.report import write_report
    from orchestrator.workers import val_pairs
    from sr import stages

    spec_path = tiny_job(**{"search.kd_twin": True})
    summary = run_job(spec_path)
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp_id = tracker.find_experiment_id("tiny")

    front, trials = summary["front"], summary["trials"]
    assert len(trials) == 2 and sum(summary["counts"].values()) == 2  # twins are not trials
    assert len(front) >= 1
    twins = {r.data.tags[TWIN_OF_TAG]: r for r in _runs(tracker, exp_id, TWIN_KIND)}
    assert set(twins) == set(front["run_id"])  # one twin per front model, none for the others
    for run_id in front["run_id"]:
        trial_m, twin = tracker.run_metrics(run_id), twins[run_id]
        assert twin.data.tags[STATUS_TAG] == "completed" and twin.data.tags[KIND_TAG] == TWIN_KIND
        assert (twin.data.params["w_gt"], twin.data.params["w_lap"], twin.data.params["w_hf"]) == ("1.0", "0.0", "0.0")
        gain = trial_m[GAIN_KEY]
        with capsys.disabled():
            print(
                f"\ntrial {run_id[:8]} psnr_y {trial_m['psnr_y']:.4f}, twin psnr_y {twin.data.metrics['psnr_y']:.4f}"
                f", kd_gain_db {gain:+.4f}"
            )
        assert abs(gain - (trial_m["psnr_y"] - twin.data.metrics["psnr_y"])) < 1e-6
        assert twin.data.metrics["psnr_y"] != trial_m["psnr_y"]  # trained with another loss
    # Nothing outside kind=trial is counted or listed.
    capsys.readouterr()
    assert main(["pareto", "--experiment", "tiny", "--tracking-uri", uri, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["n_trials"] == 2
    assert {m["run_id"] for m in listed["models"]} == set(front["run_id"])
    assert not any(m["run_name"].endswith("_twin") for m in listed["models"])
    # The report's front table shows the gain.
    html = write_report(trials, tmp_path / "report.html").html.read_text()
    assert "KD gain (dB)" in html and f"{tracker.run_metrics(front['run_id'][0])[GAIN_KEY]:+.3f}" in html

    # Resume (what [J6b] does again on --resume): completed twins are found by their tag and not trained again;
    # one a killed job left unfinished (simulated: its status set back to running) is recorded as interrupted and
    # trained again, to the same PSNR (same task, same init and batches).
    spec, plan, parent = _job_plan(spec_path, ray_local)
    cut_trial = front["run_id"][0]
    cut = twins[cut_trial]
    tracker.set_tags(cut.info.run_id, {STATUS_TAG: "running"})
    gains = run_twins(spec, plan, tracker, exp_id, parent)
    out = capsys.readouterr().out
    assert "training 1 GT-only twin(s)" in out and set(gains) == set(front["run_name"])
    after = _runs(tracker, exp_id, TWIN_KIND)
    assert len(after) == len(twins) + 1
    old = next(r for r in after if r.info.run_id == cut.info.run_id)
    assert old.data.tags[STATUS_TAG] == "interrupted" and old.data.tags[TWIN_OF_TAG] != cut_trial
    (new,) = [r for r in after if r.data.tags[TWIN_OF_TAG] == cut_trial]
    assert new.info.run_id != cut.info.run_id and new.data.tags[STATUS_TAG] == "completed"
    assert new.data.metrics["psnr_y"] == pytest.approx(cut.data.metrics["psnr_y"], abs=1e-6)
    assert len(query_trials(uri, "tiny")) == 2
    assert run_twins(spec, plan, tracker, exp_id, parent) == gains  # all done: nothing trained, same gains
    assert "GT-only twin" not in capsys.readouterr().out

    # The twin's task is the trial's own: rebuilt from the trial's MLflow params and trained in this process with
    # its KD weights unchanged, it gives the trial's PSNR again (so the twin differs from it only in the loss).
    (trial,) = [r for r in _runs(tracker, exp_id, "trial") if r.info.run_id == cut_trial]
    task = trial_task_of(plan, trial.info.run_name, trial.data.params)
    threads = torch.get_num_threads()
    torch.set_num_threads(task.threads)  # the trial's worker ran with these
    try:
        res = stages.distill_stage(
            task.kd,
            student_arch=task.student.arch,
            student_knobs=task.student.knobs,
            teacher=None,
            cache_dir=task.data.cache_dir,
            val_pairs=val_pairs(task.data, task.kd.scale),
        )
    finally:
        torch.set_num_threads(threads)
    with capsys.disabled():
        print(f"\ntrial psnr_y {trial.data.metrics['psnr_y']:.5f}, rebuilt task {res.metrics['val_psnr_y']:.5f}")
    assert abs(res.metrics["val_psnr_y"] - trial.data.metrics["psnr_y"]) < 1e-3


def _job_plan(spec_path: Path, ray_local):
    """The finished job's spec, SearchPlan and parent run id, as ``run_job`` builds them."""
    from orchestrator._job_state import JobState
    from orchestrator.job import plan_search
    from search_spaces import check_paths

    spec = check_paths(load_job_spec(spec_path), spec_path)
    out = Path(spec.storage.path).resolve() / spec.name
    state = JobState.load(out / "job_state.json")
    teacher = ModelRef("edsr_mini", {"C": 8, "B": 1, "scale": 2}, state.teacher_weights)
    return spec, plan_search(spec, teacher=teacher, state=state, tracking=None, out=out), state.parent_run_id
