"""KD twins: does distillation help this student? (``search.kd_twin``, run by ``orchestrator.job`` after [J6]).

Each chosen KD trial (every Pareto-optimal one by default, or the trials named in the spec) is trained again on the
ground truth alone: the trial's own task (``orchestrator.tasks.TrialTask``: student, steps, lr, seed, data and
teacher cache) with its KD weights replaced by ``w_gt=1, w_lap=0, w_hf=0``. ``sr.stages.distill_stage`` seeds the
student's init from ``kd.seed`` and the batch order from ``(kd.seed, step)``, so the twin starts from the same
weights and sees the same batches; only the loss differs.

Twins run like the trials ([T2]/[T3]): one Tune trial per twin running ``workers.kd_worker`` in the trial's process
(``run_in_trial``) or through the trial's TorchTrainer, holding the trial's resources. Each twin is an MLflow child
run of the search with kind ``twin`` (never a trial: ``query_trials`` reads kind ``trial`` only, so twins are not on
the front nor in trial counts) and the tag ``srcompress.twin_of`` = its trial's run id. The trial's run gets
``kd_gain_db`` = trial PSNR_Y - twin PSNR_Y (both the last validation PSNR, on the same set), and
``kd_gain_test_db`` when both runs hold ``test_psnr_y``. A completed twin is found by its tag and never retrained
(``--resume``). CSD students get no twin.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray import tune

from orchestrator import storage
from orchestrator.results.pareto import search_front
from orchestrator.search import SearchPlan, _fit_trainer, max_concurrent, trial_resources
from orchestrator.tasks import ModelRef, TrackingRef, TrialTask, trial_task
from orchestrator.tracking import KIND_TAG, PARENT_TAG, STATUS_TAG, Tracker
from orchestrator.workers import kd_worker, run_in_trial
from search_spaces import KD_DIMS, student_knobs
from sr.distill import KDConfig

TWIN_KIND = "twin"
TWIN_OF_TAG = "srcompress.twin_of"
GAIN_KEY = "kd_gain_db"
TEST_GAIN_KEY = "kd_gain_test_db"
GT_ONLY = {"w_gt": 1.0, "w_lap": 0.0, "w_hf": 0.0}


# ------------------------------------------------------------------------------------------------ pure parts
def gt_only(kd: KDConfig) -> KDConfig:
    """The trial's loop settings with the KD terms off: ground truth only; steps, lr, seed and schedule kept."""
    return dataclasses.replace(kd, **GT_ONLY)


def twin_task(task: TrialTask, *, tracking: TrackingRef | None) -> TrialTask:
    """The twin of a trial's task: the same task, GT-only weights, its own name and MLflow run."""
    return dataclasses.replace(task, name=f"{task.name}_twin", kd=gt_only(task.kd), tracking=tracking)


def _value(text: str) -> Any:
    """An MLflow param (text) as the value it was logged from (``str`` of an int/float/bool round-trips)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def trial_task_of(plan: SearchPlan, name: str, params: Mapping[str, str]) -> TrialTask:
    """A finished trial's task rebuilt from its run's params (knobs, sampled KD values, and the steps and seed it
    trained with, so a spec edited before ``--resume`` does not change them), as ``run_trial`` built it."""
    assert plan.worker is not None  # orchestrator.job.plan_search always sets the template
    config = {k: _value(v) for k, v in params.items()}
    knobs = student_knobs(config, arch=plan.student_arch, scale=plan.scale, method="kd")
    return trial_task(
        plan.worker,
        name=name,
        student=ModelRef(plan.student_arch, knobs),
        sampled={k: config[k] for k in (*KD_DIMS, "steps", "seed") if k in config},
    )


def kd_gains(trial: Mapping[str, float], twin: Mapping[str, float]) -> dict[str, float]:
    """``kd_gain_db`` (and ``kd_gain_test_db`` when both have a test PSNR) from the two runs' metrics."""
    out: dict[str, float] = {}
    for key, gain in (("psnr_y", GAIN_KEY), ("test_psnr_y", TEST_GAIN_KEY)):
        a, b = trial.get(key), twin.get(key)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            out[gain] = float(a) - float(b)
    return out


# ------------------------------------------------------------------------------------------- choosing trials
def chosen_trials(
    runs: Sequence[Any], selection: str | tuple[str, ...], front_ids: set[str]
) -> tuple[list[Any], list[str]]:
    """The completed trial runs that get a twin, and the names asked for that match no completed trial."""
    done = [r for r in runs if r.data.tags.get(STATUS_TAG) == "completed"]
    if selection == "pareto":
        short = sum(1 for r in runs if r.info.run_id in front_ids and r.data.tags.get(STATUS_TAG) != "completed")
        if short:
            print(f"[srcompress] note: no KD twin for {short} front trial(s) stopped early (fewer steps)", flush=True)
        return [r for r in done if r.info.run_id in front_ids], []
    by_name = {r.info.run_name: r for r in done}
    return [by_name[n] for n in selection if n in by_name], [n for n in selection if n not in by_name]


def _twin_runs(tracker: Tracker, exp_id: str, parent: str) -> dict[str, Any]:
    """The search's twin runs, by the trial run id they twin (a completed one wins over an unfinished one)."""
    runs = tracker.find_runs(exp_id, f"tags.`{KIND_TAG}` = '{TWIN_KIND}' and tags.`{PARENT_TAG}` = '{parent}'")
    out: dict[str, Any] = {}
    for r in runs:
        key = r.data.tags.get(TWIN_OF_TAG)
        if key and (key not in out or r.data.tags.get(STATUS_TAG) == "completed"):
            out[key] = r
    return out


# ------------------------------------------------------------------------------------------------ running
def _twin_trainable(config: dict[str, Any], plan: SearchPlan, tasks: Mapping[str, TrialTask]) -> None:
    """One twin as a Tune trial: the trial's worker function on the twin's task (it reports to Tune itself)."""
    task = tasks[config["twin"]]
    if plan.in_trial:
        run_in_trial(kd_worker, task)
    else:
        _fit_trainer(plan, kd_worker, task)


def _fit_twins(plan: SearchPlan, tasks: Mapping[str, TrialTask]) -> Any:
    """Every twin, as many at once as the trials ran; fresh Tune state (a finished twin is never rerun)."""
    name = f"{plan.name}_twins"
    storage.delete(storage.join(plan.tune_dir, name))  # a killed earlier attempt's state
    trainable = tune.with_resources(
        tune.with_parameters(_twin_trainable, plan=plan, tasks=dict(tasks)), trial_resources(plan)
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"twin": tune.grid_search(sorted(tasks))},
        tune_config=tune.TuneConfig(
            num_samples=1,
            max_concurrent_trials=max_concurrent(plan, ray.cluster_resources()),
            reuse_actors=plan.in_trial,
            trial_name_creator=lambda t: str(t.config["twin"]),
            trial_dirname_creator=lambda t: str(t.config["twin"]),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=plan.tune_dir,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=plan.max_failures if plan.in_trial else 0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    return tuner.fit()


def _open_twin(tracker: Tracker, exp_id: str, parent: str, trial: Any, task: TrialTask) -> str:
    """The twin's MLflow child run (kind ``twin``, tagged with its trial's run id), with its settings."""
    run_id = tracker.start_run(
        exp_id,
        task.name,
        parent_run_id=parent,
        tags={KIND_TAG: TWIN_KIND, STATUS_TAG: "running", TWIN_OF_TAG: trial.info.run_id},
    )
    kd = task.kd
    params = {**task.student.knobs, "arch": task.student.arch, "seed": kd.seed, "steps": kd.steps, "lr": kd.lr}
    tracker.log_params(run_id, {**params, **GT_ONLY, "twin_of": trial.info.run_name})
    return run_id


def _train_missing(
    plan: SearchPlan, tracker: Tracker, exp_id: str, parent: str, trials: Sequence[Any], twins: dict[str, Any]
) -> None:
    """Open, train and close a twin for each chosen trial without a completed one; fills ``twins``."""
    todo: dict[str, tuple[Any, TrialTask]] = {}
    for trial in trials:
        old = twins.get(trial.info.run_id)
        if old is not None and old.data.tags.get(STATUS_TAG) == "completed":
            continue
        if old is not None:  # a twin a killed job left unfinished: recorded as such, trained again
            superseded = {STATUS_TAG: "interrupted", TWIN_OF_TAG: f"superseded_{trial.info.run_id}"}
            tracker.set_tags(old.info.run_id, superseded)
            tracker.end_run(old.info.run_id, "KILLED")
        base = trial_task_of(plan, trial.info.run_name, trial.data.params)
        task = twin_task(base, tracking=None)
        run_id = _open_twin(tracker, exp_id, parent, trial, task)
        todo[task.name] = (trial, dataclasses.replace(task, tracking=TrackingRef(tracker.uri, run_id)))
    if not todo:
        return
    print(f"[srcompress] kd twins: training {len(todo)} GT-only twin(s) of {plan.student_arch}", flush=True)
    t0 = time.time()
    grid = _fit_twins(plan, {name: task for name, (_, task) in todo.items()})
    # Tune's last result of each twin says whether its worker reached the last step (not an MLflow metric).
    finished = {str(r.config["twin"]) for r in grid if r.error is None and (r.metrics or {}).get("done_training") == 1}
    for name, (_trial, task) in todo.items():
        assert task.tracking is not None  # set just above
        run_id = task.tracking.run_id
        metrics = tracker.run_metrics(run_id)
        ok = name in finished and "psnr_y" in metrics
        status = "completed" if ok else "failed"
        tracker.log_metrics(run_id, {"train_time_s": time.time() - t0})
        tracker.set_tags(run_id, {STATUS_TAG: status})
        tracker.end_run(run_id, "FINISHED" if status == "completed" else "FAILED")
    twins.update(_twin_runs(tracker, exp_id, parent))


def run_twins(spec: Any, plan: SearchPlan, tracker: Tracker, exp_id: str, parent: str) -> dict[str, dict[str, float]]:
    """Train the spec's KD twins (``search.kd_twin``) and log the gains on the trial runs; returns
    ``{trial run name: {"kd_gain_db": ..., ...}}`` (empty when the spec asks for none)."""
    selection = spec.search.twin_selection
    if selection is None:
        return {}
    if spec.student.method != "kd":
        print("[srcompress] note: search.kd_twin is ignored: CSD students get no KD twin", flush=True)
        return {}
    objectives = ",".join(f"{k}:{m}" for k, m in plan.objectives)
    front_ids = set(search_front(tracker, spec.experiment_name, parent, objectives=objectives).front["run_id"])
    runs = tracker.find_runs(exp_id, f"tags.`{KIND_TAG}` = 'trial' and tags.`{PARENT_TAG}` = '{parent}'")
    trials, unknown = chosen_trials(runs, selection, front_ids)
    if unknown:
        print(f"[srcompress] note: kd_twin names no completed trial {', '.join(unknown)}; no twin for it", flush=True)
    twins = _twin_runs(tracker, exp_id, parent)
    _train_missing(plan, tracker, exp_id, parent, trials, twins)
    gains: dict[str, dict[str, float]] = {}
    for trial in trials:
        twin = twins.get(trial.info.run_id)
        if twin is None or twin.data.tags.get(STATUS_TAG) != "completed":
            print(f"[srcompress] warning: the KD twin of {trial.info.run_name} failed; no kd_gain_db", flush=True)
            continue
        gain = kd_gains(tracker.run_metrics(trial.info.run_id), twin.data.metrics)
        if gain:
            tracker.log_metrics(trial.info.run_id, gain)
            gains[trial.info.run_name] = gain
            print(
                f"[srcompress] kd twin {trial.info.run_name}: KD gain {gain[GAIN_KEY]:+.3f} dB over GT-only",
                flush=True,
            )
    return gains


__all__ = ["GAIN_KEY", "TWIN_KIND", "TWIN_OF_TAG", "gt_only", "kd_gains", "run_twins", "trial_task_of", "twin_task"]
