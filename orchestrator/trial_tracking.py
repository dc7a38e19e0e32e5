"""MLflow child runs of search trials: opened by the trial, closed by the trial or, if Tune stopped it, by the
driver's ``TrialStatusCallback``. A trial that is restarted (driver resume, retry) reuses its run, found by the
Ray trial id tag, so nothing is duplicated.

``orchestrator.search`` calls this module, never the other way: what a run records about a draw (its name, model
knobs and KD settings) is computed by the caller. ``plan`` is an ``orchestrator.search.SearchPlan`` (typed ``Any``
here so the dependency stays one-way).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ray.tune import Callback

from orchestrator.tracking import (
    KIND_TAG,
    RAY_TRIAL_TAG,
    STATUS_TAG,
    TRIAL_NUMBER_TAG,
    Tracker,
    metrics_from_mlflow,
)
from sr.models import family_of

log = logging.getLogger(__name__)

TRIAL_ID_TAG = "srcompress.trial_id"
# A trial whose run holds one of these is done for good: a restored search reports its recorded result instead
# of training it again. A "failed" (or "interrupted") run is not: ``--resume`` restarts its trial (Tune's
# ``restart_errored``) from its last checkpoint, in the same run.
FINISHED = ("completed", "stopped-early", "infeasible")
TERMINAL = (*FINISHED, "failed")  # what the driver's callback counts


def _tracker(plan: Any) -> Tracker | None:
    if not plan.tracking:
        return None
    return Tracker(plan.tracking["uri"])


def trial_key(tune_trial_id: str, config: Mapping[str, Any]) -> str:
    """The id a trial's MLflow run is tagged with: ``draw_<Optuna trial number>`` (stable when a resumed search
    draws a trial again after a driver kill), else Ray's trial id."""
    draw = config.get("_draw")
    return f"draw_{int(draw):05d}" if draw is not None else tune_trial_id


def find_trial_run(tracker: Tracker, experiment_id: str, parent_run_id: str, trial_id: str):
    runs = tracker.find_runs(
        experiment_id, f"tags.`{TRIAL_ID_TAG}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )
    return runs[0] if runs else None


def open_trial_run(
    plan: Any,
    *,
    trial_id: str,
    name: str,
    knobs: Mapping[str, Any],
    kd: Mapping[str, Any],
    config: Mapping[str, Any],
) -> str | None:
    """Create (or find, after a restart) the child run of a trial and log its params; returns the run id."""
    tracker = _tracker(plan)
    if tracker is None:
        return None
    exp, parent = plan.tracking["experiment_id"], plan.tracking["parent_run_id"]
    existing = find_trial_run(tracker, exp, parent, trial_id)
    if existing is not None:
        if _same_knobs(existing, knobs):
            run_id = existing.info.run_id
            if existing.data.tags.get(STATUS_TAG) not in FINISHED:  # a retried failed / interrupted trial
                tracker.set_tags(run_id, {STATUS_TAG: "running"})
                tracker._call("reopen run", lambda: tracker.client.update_run(run_id, status="RUNNING"))
            return run_id
        # The same draw number with another configuration (a resumed search drew differently): free the key;
        # a finished run keeps its status and metrics, an unfinished one is recorded as interrupted.
        tags = {TRIAL_ID_TAG: f"{trial_id}_superseded_{existing.info.run_id[:8]}"}
        if existing.data.tags.get(STATUS_TAG) not in TERMINAL:
            tags[STATUS_TAG] = "interrupted"
            tracker.end_run(existing.info.run_id, "KILLED")
        tracker.set_tags(existing.info.run_id, tags)
    tags = {KIND_TAG: "trial", STATUS_TAG: "running", TRIAL_ID_TAG: trial_id, RAY_TRIAL_TAG: name}
    if config.get("_draw") is not None:  # the Optuna trial number: the report's x axis, the table's trial column
        tags[TRIAL_NUMBER_TAG] = str(int(config["_draw"]))
    # A draw's own tags (``_tags``: what its latency figure means, orchestrator.latency) come with it.
    tags.update(config.get("_tags") or {})
    run_id = tracker.start_run(exp, name, parent_run_id=parent, tags=tags)
    params = {
        **{k: v for k, v in knobs.items()},
        **dict(kd),
        "family": family_of(plan.student_arch),
        "arch": plan.student_arch,
        "seed": plan.worker.kd.seed if plan.worker is not None else plan.seed,
        "paper_rule": bool(config.get("_paper_rule", False)),
        "steps": plan.worker.kd.steps if plan.worker is not None else None,
    }
    tracker.log_params(run_id, params)
    return run_id


def _same_knobs(run: Any, knobs: Mapping[str, Any]) -> bool:
    """Whether a run's logged architecture params are ``knobs`` (MLflow keeps params as text)."""
    return all(run.data.params.get(k) in (None, str(v)) for k, v in knobs.items())


def finished_trial_metrics(plan: Any, trial_id: str, knobs: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Final metrics of a trial whose MLflow run already ended (a driver resumed after it finished), else None
    (also when that run is of another architecture than ``knobs``)."""
    tracker = _tracker(plan)
    if tracker is None:
        return None
    run = find_trial_run(tracker, plan.tracking["experiment_id"], plan.tracking["parent_run_id"], trial_id)
    if run is None or run.data.tags.get(STATUS_TAG) not in FINISHED:
        return None
    if knobs is not None and not _same_knobs(run, knobs):
        return None
    status = run.data.tags[STATUS_TAG]
    return {
        **metrics_from_mlflow(run.data.metrics),
        "infeasible": int(status == "infeasible"),
        "done_training": int(status == "completed"),
    }


def close_trial_run(plan: Any, run_id: str | None, *, status: str, metrics: Mapping[str, Any]) -> None:
    """Log the final metrics and the status tag, and end the run."""
    tracker = _tracker(plan)
    if tracker is None or run_id is None:
        return
    step = int(metrics.get("step", 0) or 0)
    # The rank-0 worker already logged the step metrics; log only what the run lacks (or has stale), so the
    # metric history holds each step once.
    logged = tracker.run_metrics(run_id)
    tracker.log_metrics(run_id, {k: v for k, v in metrics.items() if logged.get(k) != v}, step=step)
    tracker.set_tags(run_id, {STATUS_TAG: status})
    tracker.end_run(run_id, "FAILED" if status == "failed" else "FINISHED")


ANSWERED_TAG = "srcompress.answered_by"


def record_answered_draw(
    plan: Any,
    draw_id: str,
    config: Mapping[str, Any],
    *,
    name: str,
    knobs: Mapping[str, Any],
    kd: Mapping[str, Any],
    reason: str,
    answered: Mapping[str, int],
) -> None:
    """A draw the searcher answered itself (``skip_infeasible`` / ``dedupe``): an over-budget one gets a child run
    ``name`` with status ``infeasible`` (priced, never trained), so every sampled configuration stays visible; a
    duplicate or a repeated infeasible draw (``reason="repeat"``) gets none (its twin is on record). All are counted
    on the parent run (``draws_answered_*``)."""
    tracker = _tracker(plan)
    if tracker is None:
        return
    exp, parent = plan.tracking["experiment_id"], plan.tracking["parent_run_id"]
    if reason == "infeasible":
        existing = find_trial_run(tracker, exp, parent, draw_id)
        if existing is None or existing.data.tags.get(STATUS_TAG) not in TERMINAL:
            run_id = open_trial_run(plan, trial_id=draw_id, name=name, knobs=knobs, kd=kd, config=config)
            tracker.set_tags(run_id, {ANSWERED_TAG: "searcher"})
            close_trial_run(plan, run_id, status="infeasible", metrics=dict(config.get("_price") or {}))
            print(
                f"[srcompress] draw  {name[:34]:<34} infeasible    (over budget; answered by the searcher)", flush=True
            )
    tracker.log_metrics(parent, {f"draws_answered_{k}": v for k, v in answered.items()})


# What the search loop of each search (by name; a driver runs one at a time) saw last, written by its
# TrialStatusCallback. Kept here, not on the callback: a restored Tuner runs the callback it unpickles from its
# saved state, not the one ``make_status_callback`` made for the resumed driver.
_LOOPS: dict[str, dict[str, Any]] = {}


def _loop_key(plan: Any) -> str:
    return str(plan.name)  # not the storage path: a restored callback keeps the path the search started with


def search_starts(plan: Any) -> None:
    """Forget what an earlier search loop of ``plan`` saw (call before ``Tuner.fit``)."""
    _LOOPS[_loop_key(plan)] = {"statuses": [], "stepped": False}


def search_interrupted(plan: Any) -> bool:
    """Whether ``plan``'s search loop ended before every trial did (Tune caught a Ctrl-C / SIGINT and returned
    early): a trial still pending, running or paused at its last step, or fewer than ``num_samples`` trials."""
    statuses = _LOOPS.get(_loop_key(plan), {}).get("statuses", [])
    return any(s not in ("TERMINATED", "ERROR") for s in statuses) or len(statuses) < plan.num_samples


class TrialStatusCallback(Callback):
    """A Tune Callback on the driver that closes runs Tune ended itself (ASHA stop -> stopped-early, error ->
    failed), keeping the trial's last metrics, and prints one progress line per finished trial."""

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        self.counts = {s: 0 for s in TERMINAL}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # Snapshotted on every step because Tune, when Ctrl-C ends its loop, stops the live trials as TERMINATED
        # before the last callback (``on_experiment_end``) runs; the state it saved still has them unfinished.
        _LOOPS[_loop_key(self.plan)] = {"statuses": [t.status for t in trials], "stepped": True}

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        loop = _LOOPS.setdefault(_loop_key(self.plan), {"statuses": [], "stepped": False})
        if not loop["stepped"]:  # a restored search with nothing left to run ends without a single step
            loop["statuses"] = [t.status for t in trials]

    def _close(self, trial: Any, status: str) -> None:
        plan = self.plan
        result = dict(trial.last_result or {})
        if result.get("infeasible"):
            status = "infeasible"
        elif status == "completed" and result.get("done_training") != 1:
            # Tune stopped it (ASHA) before its TorchTrainer finished.
            status = "stopped-early"
        tracker = _tracker(plan)
        if tracker is not None:
            run = find_trial_run(
                tracker,
                plan.tracking["experiment_id"],
                plan.tracking["parent_run_id"],
                trial_key(trial.trial_id, trial.config),
            )
            if run is not None and run.data.tags.get(STATUS_TAG) not in TERMINAL:
                close_trial_run(plan, run.info.run_id, status=status, metrics=result)
            elif run is not None:
                status = run.data.tags.get(STATUS_TAG, status)
        self.counts[status] = self.counts.get(status, 0) + 1
        psnr = result.get("psnr_y")
        seed_mark = " (paper rule)" if trial.config.get("_paper_rule") else ""
        print(
            f"[srcompress] trial {str(trial)[:34]:<34} {status:<13}{seed_mark} "
            f"psnr_y={psnr if psnr is None else round(float(psnr), 3)} "
            f"params={result.get('params')} | done: " + ", ".join(f"{k} {v}" for k, v in self.counts.items() if v),
            flush=True,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "completed")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "failed")


def make_status_callback(plan: Any) -> TrialStatusCallback:
    """The driver's ``TrialStatusCallback`` for ``plan``'s trials."""
    return TrialStatusCallback(plan)
