"""Overhead of the orchestrator per search trial: the same KD work through Tune (-> TorchTrainer) -> MLflow vs plain.

The orchestrated side is the real search path: a job spec (fixed student ``edsr_mini`` C16 B8, fixed KD weights,
teacher IMDN x2 with the official weights when present, else ``edsr_baseline`` with random weights; T91 / Set5
when present, else the scikit-image images) validated by ``search_spaces``, turned into a ``SearchPlan`` by
``orchestrator.job.plan_search``, run by ``orchestrator.search.make_tuner`` with ``max_concurrent_trials=1`` on a
local Ray started by ``orchestrator.job.connect_ray(None, num_cpus=2)``, each trial tracked in MLflow (sqlite)
under a parent run, exactly as ``srcompress run`` does. The plain side runs what ``kd_worker`` runs (build student,
teacher, ``PatchDataset``, validation pairs; ``sr.distill.fit_kd`` with the same ``KDConfig``, validations and
checkpoints) in this process, without Ray or MLflow. Each trial has ``steps`` steps with 3 reports (validation +
checkpoint every ``steps / 3`` steps, like the demo job); ``steps`` is calibrated so the plain run takes about
``--work-s`` seconds of training on this machine (or given with ``--steps``).

K orchestrated trials and K plain runs alternate (rounds rotate the order; one Tuner per trial). Per trial: wall
time, all-in (Tuner built -> Tuner done: the trial's actor start and the Tuner's own start/stop included, which a
job with many trials pays partly once; Tune's own trial start -> completion, from a driver callback, is given as
the lower bound ``trial_wall_s``), the training time inside (the sum of the report windows ``steps / it_per_s``,
as ``fit_kd`` counts it), time to first step (-> ``fit_kd``'s training loop entered, derived from the first
MLflow metric timestamp minus its window and the validation + checkpoint time measured in the plain runs), where
the difference goes (before the loop: trial actor, MLflow run, TorchTrainer worker group, worker set-up; inside
it: reports, checkpoint persisting, CPU taken by Ray's processes; after the last report: final artifacts,
shutdown), and CPU seconds of this process and of every process it started, by kind (``_CpuSampler``). Overhead
is taken outside training (``_paired``): the training time of identical work varied 2.5x between rounds on the
shared machine, so (wall - training) of the trial minus that of the plain run of the same round; it is a fixed cost
per trial, so its share of a 2-minute trial is ``overhead_s / 120``.

The orchestrated side uses the job's default runner (``resources.trial_runner: auto``: a one-worker trial trains
inside its Tune trial). With ``--trainer`` (default, not with ``--quick``) a third side runs the same trial with
``trial_runner: trainer`` (every trial launches a TorchTrainer, the runner of multi-worker trials). With ``--job``
(default, not with ``--quick``) the K orchestrated trials also run as one search of K trials in one Tuner, as
``srcompress run`` does, where the trial actor is reused (``reuse_actors``): its per-trial overhead is the job's
(wall - training) / K minus the plain runs' median (wall - training).

Run ``python -m bench.overhead`` (3 trials of ~60 s) or ``--quick`` (2 trials of ~10 s).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench._common import REPO, bench_main, log, make_parser
from orchestrator.tasks import ModelRef, TrialTask, teacher_ref, trial_task
from search_spaces import KD_DIMS, student_knobs

NAME = "overhead"
SHARED = Path(os.environ.get("SRCOMPRESS_SHARED", REPO.parent / "shared"))
IMDN_WEIGHTS = SHARED / "weights" / "IMDN_x2.pth"
T91 = SHARED / "data" / "T91"
SET5 = SHARED / "data" / "Set5"
FULL = {"trials": 3, "work_s": 60.0}
QUICK = {"trials": 2, "work_s": 10.0}
REPORTS = 3  # validations = checkpoints = reports per trial, as in the demo job (300 steps, every 100)
GOAL_FRACTION = 0.05  # the goal: overhead <= 5% of a 2-minute trial
GOAL_TRIAL_S = 120.0


def _parse_args(argv: Sequence[str]) -> Any:
    p = make_parser(NAME, "Per-trial overhead of Tune (-> TorchTrainer) -> MLflow vs the same fit_kd work plain.")
    p.add_argument("--trials", type=int, default=None, help="K trials per side (default 3; quick 2)")
    p.add_argument("--work-s", type=float, default=None, help="training seconds per trial (default 60; quick 10)")
    p.add_argument("--steps", type=int, default=None, help="steps per trial (skips calibration; rounded to 3 reports)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--hr-patch", type=int, default=64, help="HR patch side, a multiple of 16 (default 64)")
    p.add_argument(
        "--teacher",
        default="auto",
        help="auto: IMDN x2 with the official weights when present, else edsr_baseline with random weights; "
        "or a registered arch name (random weights)",
    )
    p.add_argument("--student-c", type=int, default=16, help="student edsr_mini channels (default 16)")
    p.add_argument("--student-b", type=int, default=8, help="student edsr_mini residual blocks (default 8)")
    p.add_argument(
        "--data",
        choices=("auto", "builtin"),
        default="auto",
        help="auto: T91 / Set5 from the shared folder when present; builtin: the scikit-image images",
    )
    p.add_argument("--calib-steps", type=int, default=4, help="plain steps timed to calibrate --work-s (default 4)")
    p.add_argument(
        "--trainer",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run each trial with trial_runner: trainer (a TorchTrainer per trial) (default: on; off with "
        "--quick)",
    )
    p.add_argument(
        "--job",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the K trials as one search in one Tuner (actor reuse) (default: on; off with --quick)",
    )
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key in ("trials", "work_s"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    for key in ("trainer", "job"):
        if getattr(args, key) is None:
            setattr(args, key, not args.quick)
    if args.trials < 1 or args.work_s <= 0 or args.batch < 1 or args.calib_steps < 1:
        p.error("--trials, --work-s, --batch and --calib-steps must be positive")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be positive")
    if args.hr_patch % 16 or args.hr_patch < 16:
        p.error(f"--hr-patch {args.hr_patch} must be a positive multiple of 16 (Laplacian loss)")
    return args


# ---------------------------------------------------------------------------------------------- the job


def _teacher_entry(choice: str, tmp: Path) -> tuple[dict[str, Any], str]:
    """The spec's ``teacher`` section and a description (which model, which weights)."""
    from sr.checkpoint import save_checkpoint
    from sr.models import build

    if choice == "auto" and IMDN_WEIGHTS.is_file():
        return {"arch": "imdn", "weights": str(IMDN_WEIGHTS)}, f"imdn x2 (official weights {IMDN_WEIGHTS})"
    arch = "edsr_baseline" if choice == "auto" else choice
    torch.manual_seed(0)
    path = tmp / f"{arch}_random.pth"
    save_checkpoint(path, {"params": build(arch, scale=2).state_dict()})
    return {"arch": arch, "weights": str(path)}, f"{arch} x2 (random weights)"


def _spec_dict(args: Any, *, name: str, steps: int, teacher: dict[str, Any], storage: Path) -> dict[str, Any]:
    every = steps // REPORTS
    shared = args.data == "auto" and T91.is_dir() and SET5.is_dir()
    return {
        "name": name,
        "seed": 0,
        "teacher": teacher,
        "student": {
            "arch": "edsr_mini",
            "space": {"C": args.student_c, "L": 1, "B": args.student_b},
            "kd_space": {"w_gt": 0.1, "w_lap": 1.0, "w_hf": 1.0, "lr": 1e-3},
        },
        "data": {
            "train": [str(T91)] if shared else None,
            "val": str(SET5) if shared else None,
            "scale": 2,
            "hr_patch": args.hr_patch,
        },
        "prune": {"enabled": False},
        "training": {
            "steps": steps,
            "batch_size": args.batch,
            "val_every": every,
            "log_every": every,
            "ckpt_every": every,
            "ema_decay": 0.0,
        },
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "use_gpu": False},
        "search": {
            "algorithm": "random",
            "num_samples": 1,
            "max_concurrent_trials": 1,
            "scheduler": {"type": "none"},
            "enqueue_paper_rule": False,
            "dedupe": False,  # every trial is the same fixed configuration: train it each time
        },
        "storage": {"path": str(storage)},
        "failure": {"max_failures": 0},
    }


def _make_plan(spec_dict: dict[str, Any], tmp: Path, tracking_uri: str | None) -> tuple[Any, Any]:
    """Validate the spec like ``srcompress run`` and build its SearchPlan (and the MLflow parent run)."""
    import yaml

    from orchestrator.job import JobState, plan_search
    from orchestrator.tracking import JOB_TAG, KIND_TAG, STATUS_TAG, Tracker, default_artifact_root
    from search_spaces import check_paths, load_job_spec

    path = tmp / f"{spec_dict['name']}.yaml"
    path.write_text(yaml.safe_dump(spec_dict, sort_keys=False))
    spec = check_paths(load_job_spec(path), path)
    out = Path(spec.storage.path).resolve() / spec.name
    out.mkdir(parents=True, exist_ok=True)
    tracking = None
    if tracking_uri is not None:
        tracker = Tracker(tracking_uri)
        exp = tracker.experiment_id(spec.experiment_name, artifact_location=default_artifact_root(out))
        parent = tracker.start_run(
            exp, f"search_{spec.name}", tags={KIND_TAG: "search", STATUS_TAG: "running", JOB_TAG: spec.name}
        )
        tracking = {"uri": tracking_uri, "experiment_id": exp, "parent_run_id": parent}
    teacher = teacher_ref(spec, spec.teacher.weights)
    return plan_search(spec, teacher=teacher, state=JobState(), tracking=tracking, out=out), spec


def _worker_config(plan: Any) -> TrialTask:
    """The task ``orchestrator.search`` hands a trial of this (fixed) space."""
    config = dict(plan.space)  # every dimension is fixed, so the sampled config is the space itself
    knobs = student_knobs(config, arch=plan.student_arch, scale=plan.scale, method="kd")
    sampled = {k: config[k] for k in KD_DIMS if k in config}
    return trial_task(plan.worker, name="plain", student=ModelRef(plan.student_arch, knobs), sampled=sampled)


# ---------------------------------------------------------------------------------------------- plain side


def _plain_trial(
    task: TrialTask, *, steps: int | None = None, report: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """What ``kd_worker`` does on one rank, in this process: build everything, then ``fit_kd``. ``steps``: a
    calibration run (that many steps, a report after each, no validation or checkpoint); ``report``: also hand
    every report (plus ``fit_start_unix``) to it."""
    from orchestrator.workers import load_model, patch_datasets, val_pairs
    from sr.data import clear_lr_cache
    from sr.distill import fit_kd

    t0 = time.perf_counter()
    clear_lr_cache()  # a fresh Ray worker has no LR images in memory either
    torch.set_num_threads(task.threads)
    kd = task.kd
    if steps:  # calibration: no validation/checkpoint, a window per step
        kd = dataclasses.replace(kd, steps=steps, val_every=0, log_every=1, ckpt_every=0)
    student = load_model(task.student)
    teacher = load_model(task.teacher)
    data = task.data
    train_data = patch_datasets(data, kd)

    pairs = None if steps else val_pairs(data, kd.scale)
    reports: list[tuple[float, dict[str, Any]]] = []
    local = Path(tempfile.mkdtemp(prefix="overhead_plain_"))
    t_fit, t_fit_unix = time.perf_counter(), time.time()

    def on_report(m: dict[str, Any], _ckpt: str | None) -> None:
        reports.append((time.perf_counter(), dict(m)))
        if report is not None:
            report({**{k: v for k, v in m.items() if isinstance(v, int | float)}, "fit_start_unix": t_fit_unix})

    try:
        res = fit_kd(
            kd,
            student=student,
            teacher=teacher,
            train_data=train_data,
            val_pairs=pairs,
            report=on_report,
            checkpoint_dir=None if steps else local,
            device="cpu",
        )
    finally:
        shutil.rmtree(local, ignore_errors=True)
    t_end = time.perf_counter()
    windows = _windows([m for _, m in reports])
    first_t, _ = reports[0]
    return {
        "wall_s": t_end - t0,
        "to_first_step_s": t_fit - t0,
        "train_s": sum(windows),
        "loop_span_s": reports[-1][0] - t_fit,  # loop entered -> last report
        "after_last_report_s": t_end - reports[-1][0],
        # validation + first checkpoint (+ fit_kd's own set-up) before the first report
        "first_val_ckpt_s": first_t - t_fit - windows[0],
        # steady step time: the first window also builds the PatchDataset (decodes and downsamples the images)
        "step_s": statistics.median(windows[1:] if len(windows) > 1 else windows) / (res.steps_run / len(windows)),
        "steps": res.steps_run,
        "val_psnr_y": res.metrics.get("val_psnr_y"),
        "loss": res.metrics.get("loss"),
    }


def _windows(metrics: Sequence[dict[str, Any]]) -> list[float]:
    """Training seconds of each report window: steps since the previous report / its ``it_per_s``."""
    out, prev = [], 0
    for m in metrics:
        out.append((int(m["step"]) - prev) / float(m["it_per_s"]))
        prev = int(m["step"])
    return out


class _CpuSampler:
    """CPU seconds used by this process and by every process it started (the local Ray: GCS, raylet, agents, the
    trial's actors and Train workers), by process kind, while a block runs. Samples ``/proc`` every
    ``period_s``, so a process that exits between samples loses at most ``period_s`` of its CPU time. CPU
    seconds do not depend on how many other processes share the machine, unlike wall time."""

    def __init__(self, period_s: float = 0.5) -> None:
        import psutil

        self._psutil, self.period_s = psutil, period_s
        self._me = psutil.Process()
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._kind: dict[int, str] = {}
        self._stop = False
        self._thread: Any = None

    @staticmethod
    def _kind_of(proc: Any) -> str:
        try:
            cmd = proc.cmdline()
        except Exception:
            return "?"
        head = cmd[0] if cmd else proc.name()
        if head.startswith("ray::"):
            return head.split(".")[0].split(" ")[0]  # ray::RayTrainWorker.init_train_context -> ray::RayTrainWorker
        text = " ".join(cmd[:3])
        for key in ("gcs_server", "raylet", "dashboard/agent.py", "runtime_env/agent", "monitor.py", "log_monitor"):
            if key in text:
                return key.split("/")[0]
        return Path(head).name or "?"

    def _sample(self, first: bool = False) -> None:
        procs = [self._me]
        with contextlib.suppress(Exception):
            procs += self._me.children(recursive=True)
        for proc in procs:
            try:
                t = proc.cpu_times()
                cpu = t.user + t.system
            except Exception:
                continue
            pid = proc.pid
            if first:
                self._first[pid] = cpu
            elif pid not in self._first:
                self._first[pid] = 0.0  # started during the block: all of its CPU counts
            self._last[pid] = cpu
            kind = "driver (this process)" if proc is self._me else self._kind_of(proc)
            if kind not in ("ray::IDLE", "?") or pid not in self._kind:  # keep an actor's name once known
                self._kind[pid] = kind

    def _loop(self) -> None:
        while not self._stop:
            time.sleep(self.period_s)
            self._sample()

    def __enter__(self) -> _CpuSampler:
        import threading

        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop = True
        self._thread.join()
        self._sample()

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        full = {k for k in self._kind.values() if len(k) > 15}
        for pid, last in self._last.items():
            kind = self._kind.get(pid, "?")
            # /proc's comm name is cut at 15 characters (ray::ImplicitFu): use the full name seen elsewhere
            kind = next((f for f in full if len(kind) == 15 and f.startswith(kind)), kind)
            out[kind] = out.get(kind, 0.0) + max(0.0, last - self._first.get(pid, 0.0))
        return dict(sorted(((k, round(v, 2)) for k, v in out.items() if v >= 0.005), key=lambda kv: -kv[1]))

    @property
    def total_s(self) -> float:
        return sum(max(0.0, v - self._first.get(p, 0.0)) for p, v in self._last.items())


# ------------------------------------------------------------------------------------------ orchestrated side


def _timeline_callback():
    """A Tune callback on the driver that stamps each trial's start, results and completion (epoch seconds)."""
    from ray.tune import Callback

    class Timeline(Callback):
        def __init__(self) -> None:
            self.trials: dict[str, dict[str, Any]] = {}

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.trials[trial.trial_id] = {"start": time.time(), "results": [], "end": None, "config": trial.config}

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.trials[trial.trial_id]["results"].append((time.time(), dict(result)))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.trials[trial.trial_id]["end"] = time.time()

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.trials[trial.trial_id]["end"] = time.time()
            self.trials[trial.trial_id]["error"] = True

    return Timeline()


def _orchestrated_trial(plan: Any, *, first_val_ckpt_s: float) -> dict[str, Any]:
    """One Tuner with one trial through the real search path; its timeline from Tune and MLflow."""
    import mlflow

    from orchestrator.search import make_tuner
    from orchestrator.trial_tracking import TRIAL_ID_TAG, make_status_callback, trial_key

    plan = _with_new_parent(plan)
    timeline = _timeline_callback()
    t0 = time.time()
    tuner, _ = make_tuner(plan, callbacks=[make_status_callback(plan), timeline])
    with contextlib.redirect_stdout(sys.stderr):  # the status callback prints a line per trial; stdout is JSON
        results = tuner.fit()
    t_fit_end = time.time()
    if results.errors:
        raise RuntimeError(f"the orchestrated trial failed: {results.errors[0]!r}")
    ((trial_id, tl),) = timeline.trials.items()
    client = mlflow.MlflowClient(plan.tracking["uri"])
    (run,) = client.search_runs(
        [plan.tracking["experiment_id"]],
        f"tags.`{TRIAL_ID_TAG}` = '{trial_key(trial_id, tl['config'])}' and "
        f"tags.`mlflow.parentRunId` = '{plan.tracking['parent_run_id']}'",
    )
    # Rank 0 logs each report's metrics to MLflow just before ray.train.report; closing the run logs the last
    # ones again: keep the first timestamp of each step.
    logged: dict[int, float] = {}
    for m in client.get_metric_history(run.info.run_id, "it_per_s"):
        logged[m.step] = min(logged.get(m.step, math.inf), m.timestamp / 1e3)
    history = [logged[s] for s in sorted(logged)]
    first_metric_t, last_metric_t = history[0], history[-1]
    results_m = [r for _, r in tl["results"] if "it_per_s" in r]
    windows = _windows(results_m)
    loop_start = first_metric_t - windows[0] - first_val_ckpt_s
    last = results_m[-1]
    # Times from t0 (before the Tuner is built): Tune's own "trial start" comes after the trial's actor is up.
    return {
        "wall_s": t_fit_end - t0,  # all-in: Tuner build, trial actor start, the trial, Tuner teardown
        "trial_wall_s": tl["end"] - tl["start"],  # Tune's trial start -> completion
        "train_s": sum(windows),
        "to_trial_start_s": tl["start"] - t0,
        "to_mlflow_run_s": run.info.start_time / 1e3 - t0,  # trial actor up, MLflow child run created
        "to_first_step_s": loop_start - t0,
        "to_first_report_s": tl["results"][0][0] - t0,
        "loop_span_s": last_metric_t - loop_start,
        "after_last_report_s": t_fit_end - last_metric_t,  # final artifacts, worker group and Tuner shutdown
        "report_delivery_s": statistics.median(t - h for (t, _), h in zip(tl["results"], history, strict=False)),
        "steps": int(last["step"]),
        "val_psnr_y": last.get("val_psnr_y"),
        "loss": last.get("loss"),
    }


def _with_new_parent(plan: Any) -> Any:
    """``plan`` under a new MLflow parent run: each Tuner is a search of its own (trial runs are keyed by Optuna's
    trial number within one search)."""
    from orchestrator.search import with_plan
    from orchestrator.tracking import KIND_TAG, STATUS_TAG, Tracker

    t = plan.tracking
    parent = Tracker(t["uri"]).start_run(
        t["experiment_id"], f"search_{plan.name}", tags={KIND_TAG: "search", STATUS_TAG: "running"}
    )
    return with_plan(plan, tracking={**t, "parent_run_id": parent})


def _orchestrated_job(plan: Any, trials: int) -> dict[str, Any]:
    """One search of ``trials`` trials in one Tuner (the trial actor reused, as ``srcompress run`` runs them)."""
    from orchestrator.search import make_tuner
    from orchestrator.trial_tracking import make_status_callback

    plan = _with_new_parent(plan)

    timeline = _timeline_callback()
    t0 = time.time()
    tuner, _ = make_tuner(plan, callbacks=[make_status_callback(plan), timeline])
    with contextlib.redirect_stdout(sys.stderr):
        results = tuner.fit()
    wall = time.time() - t0
    if results.errors:
        raise RuntimeError(f"the orchestrated job failed: {results.errors[0]!r}")
    if len(timeline.trials) != trials:
        raise RuntimeError(f"the orchestrated job ran {len(timeline.trials)} trials, not {trials}")
    train = sum(sum(_windows([r for _, r in tl["results"] if "it_per_s" in r])) for tl in timeline.trials.values())
    return {"wall_s": wall, "train_s": train, "trials": trials}


# -------------------------------------------------------------------------------------------------- figures


def _paired(rows: list[dict[str, Any]], plain: list[dict[str, Any]]) -> dict[str, Any]:
    """Overhead of ``rows`` over the plain runs of the same rounds. The training time of identical work varied
    up to 2.5x between rounds on the shared machine, so the wall overhead is taken outside training: (wall -
    training time) of the trial minus that of the plain run; CPU seconds are compared as they are."""
    pairs = list(zip(rows, plain, strict=True))
    non_train = [(r["wall_s"] - r["train_s"]) - (p["wall_s"] - p["train_s"]) for r, p in pairs]
    return {
        "overhead_s": statistics.median(non_train),
        "overhead_s_per_trial": [round(x, 2) for x in non_train],
        "raw_wall_fraction_per_trial": [round((r["wall_s"] - p["wall_s"]) / p["wall_s"], 4) for r, p in pairs],
        "train_time_ratio": statistics.median(r["train_s"] / p["train_s"] for r, p in pairs),
        "overhead_cpu_s": statistics.median(r["cpu_s"] - p["cpu_s"] for r, p in pairs),
        "to_first_step_s": statistics.median(r["to_first_step_s"] for r in rows),
    }


def run(args: Any) -> dict[str, Any]:
    """Start Ray, calibrate the steps, alternate plain and orchestrated trials, gather the figures."""
    import ray

    from orchestrator.job import connect_ray
    from orchestrator.search import with_plan

    for k, v in {"RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
        os.environ.setdefault(k, v)  # a throwaway local cluster, as in the tests
    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    try:
        teacher, teacher_desc = _teacher_entry(args.teacher, tmp)
        t0 = time.perf_counter()
        connect_ray(None, num_cpus=2)
        ray_init_s = time.perf_counter() - t0
        log(f"ray.init {ray_init_s:.1f} s; teacher {teacher_desc}")

        # Calibration (and warm-up of the plain path): a few steps, no validation.
        base = _spec_dict(args, name="calib", steps=REPORTS, teacher=teacher, storage=tmp / "runs")
        plan0, spec0 = _make_plan(base, tmp, None)
        calib = None
        if args.steps is None:
            calib = _plain_trial(_worker_config(plan0), steps=args.calib_steps)
            step_s = calib["step_s"]
            steps = max(REPORTS, REPORTS * math.ceil(args.work_s / step_s / REPORTS))
            log(f"calibration: {step_s:.2f} s/step -> {steps} steps for ~{args.work_s:.0f} s of training")
        else:
            steps = max(REPORTS, REPORTS * math.ceil(args.steps / REPORTS))
        spec_d = _spec_dict(args, name="overhead", steps=steps, teacher=teacher, storage=tmp / "runs")
        plan, spec = _make_plan(spec_d, tmp, f"sqlite:///{tmp / 'runs' / 'mlflow.db'}")
        task = _worker_config(plan)

        rows: dict[str, list[dict[str, Any]]] = {"plain": [], "orch": [], "trainer": []}
        plain, orch, trainer = rows["plain"], rows["orch"], rows["trainer"]
        sides = ["plain", "orch"] + (["trainer"] if args.trainer else [])
        for i in range(args.trials):
            k = i % len(sides)
            for side in sides[k:] + sides[:k]:  # rotate; round 0 starts with plain
                with _CpuSampler() as cpu:
                    if side == "plain":
                        r = _plain_trial(task)
                    else:
                        # Validation + checkpoint before the first report, as measured in the plain runs (round 0
                        # runs plain first, so there is always one).
                        vc = statistics.median(p["first_val_ckpt_s"] for p in plain)
                        runner = "auto" if side == "orch" else "trainer"
                        r = _orchestrated_trial(
                            with_plan(plan, name=f"overhead_{side}_{i}", trial_runner=runner), first_val_ckpt_s=vc
                        )
                r.update(cpu_s=cpu.total_s, cpu_by_kind=cpu.by_kind())
                rows[side].append(r)
                log(
                    f"trial {i + 1}/{args.trials} {side}: wall {r['wall_s']:.1f} s, train {r['train_s']:.1f} s, "
                    f"to first step {r['to_first_step_s']:.1f} s, CPU {r['cpu_s']:.1f} s "
                    f"(load {os.getloadavg()[0]:.1f}); CPU by process: {r['cpu_by_kind']}"
                )
        job = None
        if args.job:
            job = _orchestrated_job(with_plan(plan, name="overhead_job", num_samples=args.trials), args.trials)
            log(f"job of {args.trials} trials in one Tuner: wall {job['wall_s']:.1f} s, train {job['train_s']:.1f} s")
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(float(r[key]) for r in rows)

    keys = ("wall_s", "train_s", "to_first_step_s", "after_last_report_s", "cpu_s")
    p_med = {k: med(plain, k) for k in keys}
    o_med = {k: med(orch, k) for k in keys}
    o = _paired(orch, plain)

    def kinds(rows: list[dict[str, Any]]) -> dict[str, float]:
        names = {k for r in rows for k in r["cpu_by_kind"]}
        med_k = {k: statistics.median(r["cpu_by_kind"].get(k, 0.0) for r in rows) for k in names}
        return dict(sorted(((k, round(v, 2)) for k, v in med_k.items()), key=lambda kv: -kv[1]))

    def rnd(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]

    in_loop = statistics.median(
        (r["loop_span_s"] - r["train_s"]) - (p["loop_span_s"] - p["train_s"]) for r, p in zip(orch, plain, strict=True)
    )
    figures: dict[str, Any] = {
        "quick": bool(args.quick),
        "trials": args.trials,
        "steps_per_trial": steps,
        "reports_per_trial": REPORTS,
        "work_s_target": args.work_s if args.steps is None else None,
        "calibration_s_per_step": round(calib["step_s"], 3) if calib else None,
        "teacher": teacher_desc,
        "student": f"edsr_mini C{args.student_c} L1 B{args.student_b}",
        "batch": args.batch,
        "hr_patch": args.hr_patch,
        "data": "T91 / Set5" if spec.data.train else "scikit-image sample images",
        "threads_per_worker": task.threads,
        "ray_init_s": round(ray_init_s, 2),
        "plain": rnd(plain),
        "orchestrated": rnd(orch),
        "plain_wall_s": round(p_med["wall_s"], 2),
        "orch_wall_s": round(o_med["wall_s"], 2),
        "plain_train_s": round(p_med["train_s"], 2),
        "orch_train_s": round(o_med["train_s"], 2),
        # per trial, outside training (see _paired); the fraction is of this run's plain wall time
        "overhead_s": round(o["overhead_s"], 2),
        "overhead_s_per_trial": o["overhead_s_per_trial"],
        "overhead_fraction": round(o["overhead_s"] / p_med["wall_s"], 4),
        "raw_wall_fraction_per_trial": o["raw_wall_fraction_per_trial"],
        "train_time_ratio": round(o["train_time_ratio"], 3),
        "plain_to_first_step_s": round(p_med["to_first_step_s"], 2),
        "orch_to_first_step_s": round(o_med["to_first_step_s"], 2),
        # CPU seconds of this process and every process it started (Ray included), per trial: much less
        # sensitive to other processes' load. The orchestrated figure includes its Tuner's start/stop.
        "plain_cpu_s": round(p_med["cpu_s"], 2),
        "orch_cpu_s": round(o_med["cpu_s"], 2),
        "overhead_cpu_s": round(o["overhead_cpu_s"], 2),
        "plain_cpu_by_process": kinds(plain),
        "orch_cpu_by_process": kinds(orch),
        "orch_to_trial_start_s": round(med(orch, "to_trial_start_s"), 2),
        "orch_to_mlflow_run_s": round(med(orch, "to_mlflow_run_s"), 2),
        "orch_trial_wall_s": round(med(orch, "trial_wall_s"), 2),  # Tune's trial start -> end (a lower bound)
        "breakdown_s": {
            "before_first_step": round(o_med["to_first_step_s"] - p_med["to_first_step_s"], 2),
            "in_loop": round(in_loop, 2),
            "after_last_report": round(o_med["after_last_report_s"] - p_med["after_last_report_s"], 2),
            "report_delivery_median": round(med(orch, "report_delivery_s"), 3),
        },
        # The overhead is a fixed cost per trial (start, reports, end): its share of a 2-minute trial.
        "fraction_at_2min": round(o["overhead_s"] / GOAL_TRIAL_S, 4),
        "cpu_fraction_at_2min": round(o["overhead_cpu_s"] / GOAL_TRIAL_S, 4),
        "goal_fraction": GOAL_FRACTION,
        "goal_met": o["overhead_s"] / GOAL_TRIAL_S <= GOAL_FRACTION,
    }
    if trainer:
        t = _paired(trainer, plain)
        figures.update(
            trainer=rnd(trainer),
            trainer_wall_s=round(med(trainer, "wall_s"), 2),
            trainer_overhead_s=round(t["overhead_s"], 2),
            trainer_overhead_s_per_trial=t["overhead_s_per_trial"],
            trainer_to_first_step_s=round(t["to_first_step_s"], 2),
            trainer_cpu_s=round(med(trainer, "cpu_s"), 2),
            trainer_overhead_cpu_s=round(t["overhead_cpu_s"], 2),
            trainer_fraction_at_2min=round(t["overhead_s"] / GOAL_TRIAL_S, 4),
            trainer_cpu_by_process=kinds(trainer),
        )
    if job is not None:
        plain_non_train = statistics.median(p["wall_s"] - p["train_s"] for p in plain)
        per_trial = (job["wall_s"] - job["train_s"]) / job["trials"] - plain_non_train
        figures.update(
            job_wall_s=round(job["wall_s"], 2),
            job_train_s=round(job["train_s"], 2),
            job_overhead_s_per_trial=round(per_trial, 2),
            job_fraction_at_2min=round(per_trial / GOAL_TRIAL_S, 4),
        )
    figures.update(
        load_avg_1min=round(os.getloadavg()[0], 2), cpus=os.cpu_count(), wall_s=round(time.perf_counter() - t_all, 1)
    )
    return figures


def _summary(fig: dict[str, Any]) -> str:
    b = fig["breakdown_s"]
    parts = [
        f"{fig['trials']} trials x {fig['steps_per_trial']} steps ({fig['teacher'].split(' (')[0]} -> "
        f"{fig['student']}, batch {fig['batch']}, HR {fig['hr_patch']}, {fig['data']})",
        f"ray.init {fig['ray_init_s']:.1f} s once",
        f"per trial wall plain {fig['plain_wall_s']:.1f} s vs orchestrated {fig['orch_wall_s']:.1f} s "
        f"(train {fig['plain_train_s']:.1f} vs {fig['orch_train_s']:.1f} s)",
        f"overhead outside training {fig['overhead_s']:.1f} s per trial {fig['overhead_s_per_trial']} = "
        f"{100 * fig['overhead_fraction']:.1f}% of this run's plain trial, {100 * fig['fraction_at_2min']:.1f}% of "
        f"a 2-min trial (goal <= {100 * fig['goal_fraction']:.0f}%: {fig['goal_met']})",
        f"to first step {fig['plain_to_first_step_s']:.1f} s plain vs {fig['orch_to_first_step_s']:.1f} s "
        f"orchestrated (Tune trial start at {fig['orch_to_trial_start_s']:.1f} s, MLflow run at "
        f"{fig['orch_to_mlflow_run_s']:.1f} s)",
        f"overhead before first step {b['before_first_step']:.1f} s, in loop {b['in_loop']:.1f} s, after last "
        f"report {b['after_last_report']:.1f} s, report delivery {b['report_delivery_median']:.2f} s",
        f"CPU per trial plain {fig['plain_cpu_s']:.1f} s vs orchestrated {fig['orch_cpu_s']:.1f} s "
        f"(+{fig['overhead_cpu_s']:.1f} CPU s)",
        "orchestrated CPU by process: "
        + ", ".join(f"{k} {v:.1f}" for k, v in list(fig["orch_cpu_by_process"].items())[:8]),
    ]
    if "trainer_wall_s" in fig:
        parts.append(
            "same trial with trial_runner: trainer (a TorchTrainer per trial): overhead "
            f"{fig['trainer_overhead_s']:.1f} s {fig['trainer_overhead_s_per_trial']} = "
            f"{100 * fig['trainer_fraction_at_2min']:.1f}% of a 2-min trial, to first step "
            f"{fig['trainer_to_first_step_s']:.1f} s, +{fig['trainer_overhead_cpu_s']:.1f} CPU s"
        )
    if "job_wall_s" in fig:
        parts.append(
            f"{fig['trials']} trials as one search (one Tuner, trial actor reused): overhead "
            f"{fig['job_overhead_s_per_trial']:.1f} s per trial = {100 * fig['job_fraction_at_2min']:.1f}% of a "
            "2-min trial"
        )
    parts.append(f"1-min load {fig['load_avg_1min']} on {fig['cpus']} CPUs")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return bench_main(NAME, argv, _parse_args, run, _summary)


if __name__ == "__main__":
    main()
