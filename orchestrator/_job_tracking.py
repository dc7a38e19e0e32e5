"""The MLflow side of a job: its experiment and parent run, one child run per finished stage, and the closing
count and Pareto tagging ([J7])."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator._job_state import JobState
from orchestrator.results.model_registry import register_pareto_models
from orchestrator.results.pareto import mark_pareto, pareto_models, search_trials
from orchestrator.results.summary import describe_search, summary_metrics
from orchestrator.tasks import DataRef, ModelRef
from orchestrator.tracking import JOB_TAG, KIND_TAG, NOTE_TAG, STATUS_TAG, Tracker, default_artifact_root
from orchestrator.workers import load_model, test_metrics
from sr.budget import price
from sr.evaluate import evaluate_bicubic, evaluate_model


def open_parent_run(tracker: Tracker, spec: Any, state: JobState, *, out: str | Path) -> str:
    """The job's experiment id; starts the search's parent run unless ``state`` has one (a resumed job)."""
    exp_id = tracker.experiment_id(spec.experiment_name, artifact_location=default_artifact_root(out, tracker.uri))
    if state.parent_run_id is None:
        state.parent_run_id = tracker.start_run(
            exp_id, f"search_{spec.name}", tags={KIND_TAG: "search", STATUS_TAG: "running", JOB_TAG: spec.name}
        )
        tracker.log_params(state.parent_run_id, spec.to_flat_dict())
        if spec.source:
            tracker.log_artifact(state.parent_run_id, spec.source, "job")
    else:
        # A resumed job (after Ctrl-C, a kill or failed trials): its parent run is running again.
        parent = state.parent_run_id
        tracker.set_tags(parent, {STATUS_TAG: "running"})
        tracker._call("reopen the parent run", lambda: tracker.client.update_run(parent, status="RUNNING"))
    state.experiment_id = exp_id
    return exp_id


def log_reference_runs(
    tracker: Tracker,
    exp_id: str,
    parent: str,
    teacher: ModelRef,
    pairs: Any,
    *,
    scale: int,
    data: DataRef | None = None,
) -> dict[str, float]:
    """Teacher and bicubic as child runs, the report's reference markers: on the validation ``pairs``
    (``psnr_y``/``ssim_y``) and on ``data``'s test sets (``test_psnr_y``, ``test_psnr_y_<set>``, ...)."""
    t_model = load_model(teacher)
    t_res = evaluate_model(t_model, pairs, scale=scale)
    b_res = evaluate_bicubic(pairs, scale=scale)
    tests = (
        {"teacher": {}, "bicubic": {}}
        if data is None
        else {"teacher": test_metrics(t_model, data, scale, None), "bicubic": test_metrics(None, data, scale, None)}
    )
    p = price(teacher.arch, **teacher.knobs)
    for kind, name, res, extra in (
        ("teacher", f"teacher_{teacher.arch}_x{scale}", t_res, p.as_dict()),
        ("bicubic", f"bicubic_x{scale}", b_res, {"params": 0, "macs_720p": 0}),
    ):
        run_id = tracker.start_run(exp_id, name, parent_run_id=parent, tags={KIND_TAG: kind, STATUS_TAG: "completed"})
        tracker.log_metrics(run_id, {"psnr_y": res.psnr_y, "ssim_y": res.ssim_y, **extra, **tests[kind]})
        tracker.log_params(run_id, {"arch": teacher.arch if kind == "teacher" else "bicubic"})
        tracker.end_run(run_id)
    for kind, res in (("teacher " + teacher.arch, t_res), ("bicubic", b_res)):
        test = tests[kind.split()[0]].get("test_psnr_y")
        on_test = "" if test is None else f", {test:.3f} on the test set"
        print(f"[srcompress] {kind}: psnr_y {res.psnr_y:.3f} on the validation set{on_test}", flush=True)
    return {"teacher": t_res.psnr_y, "bicubic": b_res.psnr_y}


def fallback_note(spec: Any, scores: dict[str, float]) -> str | None:
    """What a job without the shared data/weights can reach: its fallback teacher caps every student."""
    if spec.teacher.weights is not None and spec.data.train is not None:
        return None
    fb = spec.teacher.fallback
    data = "the scikit-image sample images" if spec.data.train is None else "the training images"
    teacher = (
        f"the fallback teacher ({fb.steps} steps of {fb.arch or spec.teacher.arch} on {data})"
        if spec.teacher.weights is None
        else f"the teacher {spec.teacher.arch} (students train on {data})"
    )
    below = (
        ", so expect them below bicubic too (marked 'below bicubic')" if scores["teacher"] < scores["bicubic"] else ""
    )
    return (
        f"[srcompress] note: no shared weights/data: {teacher} scores "
        f"{scores['teacher']:.2f} dB on the validation set (bicubic {scores['bicubic']:.2f} dB); the students "
        f"are capped by it{below}. Set SRCOMPRESS_SHARED (official weights, T91/BSDS200/Set5) for real figures"
    )


def log_stage_run(tracker: Tracker, exp_id: str, parent: str, kind: str, params: dict, metrics: dict) -> None:
    """A completed child run for a finished stage (``prune``, ``cache``)."""
    run_id = tracker.start_run(exp_id, kind, parent_run_id=parent, tags={KIND_TAG: kind, STATUS_TAG: "completed"})
    tracker.log_params(run_id, params)
    tracker.log_metrics(run_id, metrics)
    tracker.end_run(run_id)


def write_search_summary(
    tracker: Tracker, parent: str, experiment: str, df: Any, front: Any, objectives: Any, counts: dict[str, int]
) -> dict[str, float]:
    """The parent run's summary metrics (best PSNR_Y, front size, hypervolume, trials by status) and its
    description (``mlflow.note.content``, shown by the UI); written again when a resumed search ends."""
    metrics = summary_metrics(df, front, objectives, counts)
    tracker.log_metrics(parent, metrics)
    report = f"Report: `srcompress report --experiment {experiment} -o report.html`."
    tracker.set_tags(parent, {NOTE_TAG: describe_search(experiment, df, front, objectives, metrics, extra=[report])})
    return metrics


def finish(spec: Any, plan: Any, tracker: Tracker, exp_id: str, parent: str, results: Any, out: str | Path) -> dict:
    """Counts, Pareto tagging and the final table."""
    df = search_trials(tracker, spec.experiment_name, parent)
    if len(df) and "status" in df.columns:
        # Every trial has ended once the Tuner returns: a run still "running" lost its trial (a driver killed
        # before Tune snapshotted it; the resumed search drew it again under a new run). Record it as such.
        for run_id in df.loc[df["status"] == "running", "run_id"]:
            tracker.set_tags(run_id, {STATUS_TAG: "interrupted"})
            tracker.end_run(run_id, "KILLED")
        df = df.assign(status=df["status"].replace({"running": "interrupted"}))
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    objectives = [f"{k}:{m}" for k, m in plan.objectives]
    front = pareto_models(df, objectives=",".join(objectives)) if len(df) else df
    mark_pareto(tracker, spec.experiment_name, parent, ",".join(objectives))
    if len(front):
        # Pareto members become registered (folded) models, tagged with their architecture and metrics.
        b = spec.budgets  # one alias per budget of the spec: the best model within it
        budgets = {"params": b.max_params, "macs_720p": b.max_macs, "latency_ms": b.max_latency_ms}
        registered = register_pareto_models(
            tracker, spec.experiment_name, parent, objectives=",".join(objectives), alias_budgets=budgets
        )
        uris = {r["run_id"]: r.get("model_uri") for r in registered}
        front = front.assign(model_uri=[uris.get(i) for i in front["run_id"]])
    write_search_summary(tracker, parent, spec.experiment_name, df, front, plan.objectives, counts)
    # Over-budget draws the searcher answered itself are MLflow runs but not Ray trials.
    ray_infeasible = sum(1 for r in results if (getattr(r, "metrics", None) or {}).get("infeasible"))
    answered = max(0, int(counts.get("infeasible", 0)) - ray_infeasible)
    return {
        "counts": counts,
        "front": front,
        "trials": df,
        "ray_trials": len(results),
        "answered": answered,
        "parent_run_id": parent,
        "tracking_uri": tracker.uri,
    }


__all__ = [
    "fallback_note",
    "finish",
    "log_reference_runs",
    "log_stage_run",
    "open_parent_run",
    "write_search_summary",
]
