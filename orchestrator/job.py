"""``srcompress run``: one job = teacher → [prune] → allocate → [cache] → search → Pareto, tracked in MLflow.

Distributed structure of a job (numbered as they run; ``run_job`` calls one step function per stage):
  [J1] connect to Ray (a local embedded cluster by default, or ``--address``): ``orchestrator._ray_connect``;
  [J2] teacher: the given weights, or a small one trained briefly (a Ray task) when there are none;
  [J3] prune: a ``TorchTrainer(prune_worker)`` run → density (skipped when the spec gives ``prune.density``);
  [J4] allocate: the paper's C/L/B rule from the density (pure ``sr.allocate``), the search's first trial;
  [J5] cache: teacher outputs on a fixed patch pool, a Ray task writing onto the job's storage;
  [J6] search: ``orchestrator.search`` (Tune + Optuna, one TorchTrainer per trial);
  [J6b] KD twins (``search.kd_twin``): chosen students retrained on ground truth alone (``orchestrator._kd_twin``);
  [J7] choose: Pareto front from MLflow, tagged on the runs and printed (``orchestrator._job_tracking.finish``).
Stage outputs are recorded in ``<storage>/<name>/job_state.json`` (``JobState``) so ``--resume`` skips finished
stages and reuses the same MLflow parent run. The job's folder ``out`` is a location of ``orchestrator.storage`` (a
local path or a URI such as ``s3://...``): tasks on any node write their outputs there and read them back from
there (``storage.staged_dir`` / ``storage.local_copy``), never through a path of the driver.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from orchestrator import storage
from orchestrator._job_state import JobState, spec_diff
from orchestrator._job_tracking import fallback_note, finish, log_reference_runs, log_stage_run, open_parent_run
from orchestrator._kd_twin import run_twins
from orchestrator._log_text import describe_allocation, describe_budget
from orchestrator._preflight import check_node_paths, preflight, prune_schedule, undo_new_dirs
from orchestrator._ray_connect import connect_ray
from orchestrator.latency import check_latency_reachable, latency_target
from orchestrator.search import SearchPlan, make_tuner
from orchestrator.tasks import ModelRef, TrackingRef, data_ref, prune_task, teacher_ref, trial_template
from orchestrator.tracking import PARENT_TAG, STATUS_TAG, Tracker, check_reachable
from orchestrator.trial_tracking import make_status_callback, search_interrupted, search_starts
from orchestrator.workers import load_model, prune_worker, val_pairs
from search_spaces import Overrides, check_paths, clamp_to_space, job_space, load_job_spec, smallest_knobs
from sr.allocate import allocate, allocate_arch
from sr.budget import Budget, check_budget_reachable
from sr.data import resolve_train_sources
from sr.errors import UserError
from sr.models import family_of, resolve_knobs
from sr.prune_schedule import PruneSchedule
from sr.stages import fallback_teacher, teacher_cache_stage

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- helpers
def _objective_key(metric: str, macs_convention: str) -> str:
    return {"macs": f"macs_{macs_convention}"}.get(metric, metric)


def _use_gpu(spec: Any) -> bool:
    want = spec.resources.use_gpu
    if want == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(want)


# ------------------------------------------------------------------------------------------- [J2] teacher
def _train_fallback_teacher(spec: Any, out: str) -> str:
    """A small teacher trained briefly on the training data (GT only), for machines without real weights."""
    fb = spec.teacher.fallback
    arch = fb.arch or spec.teacher.arch
    knobs = {**(spec.teacher.set if fb.arch is None else {}), "scale": spec.data.scale}
    train, scale, seed = data_ref(spec).train, spec.data.scale, spec.seed  # held-out validation images left out
    where = storage.join(out, "teacher_fallback.pth")

    @ray.remote(num_cpus=1)
    def train_teacher() -> str:
        torch.set_num_threads(1)
        with storage.staged_dir(out) as local:  # the job's store, seen from whichever node runs this task
            fallback_teacher(
                arch,
                knobs,
                train=train,
                scale=scale,
                steps=fb.steps,
                batch_size=fb.batch_size,
                lr=fb.lr,
                seed=seed,
                out=local / "teacher_fallback.pth",
            )
        return where

    print(f"[srcompress] no teacher weights: training a small {arch} teacher for {fb.steps} steps", flush=True)
    weights = ray.get(train_teacher.remote())
    spec_arch_note = "" if fb.arch is None else f" (fallback arch {arch})"
    print(f"[srcompress] teacher trained{spec_arch_note}: {weights}", flush=True)
    return weights


def resolve_teacher(spec: Any, out: str) -> tuple[ModelRef, str | None]:
    """The teacher's arch/knobs/weights; trains the fallback when the spec has no usable weights."""
    weights = spec.teacher.weights
    if weights and not Path(weights).exists():
        if spec.teacher.if_missing == "train":
            weights = None
        else:
            raise UserError(f"teacher weights {weights} not found; fix teacher.weights or set if_missing: train")
    if weights is None:
        existing = storage.join(out, "teacher_fallback.pth")
        weights = existing if storage.exists(existing) else _train_fallback_teacher(spec, out)
        fb_arch = spec.teacher.fallback.arch
        if fb_arch:
            return ModelRef(fb_arch, {"scale": spec.data.scale}, weights), weights
    return teacher_ref(spec, weights), weights


# --------------------------------------------------------------------------------------------- [J3] prune
def run_prune(
    spec: Any, teacher: ModelRef, out: str, tracking: TrackingRef | None, schedule: PruneSchedule | None = None
) -> float:
    """[J3] A TorchTrainer pruning run of the teacher ([W1] ``prune_worker`` on each rank); returns the density,
    which the workers report (rank 0 also writes ``pruned.pth`` and ``density.json`` to ``<out>/prune``)."""
    task = prune_task(spec, teacher=teacher, out=storage.join(out, "prune"), tracking=tracking, schedule=schedule)
    trainer = TorchTrainer(
        prune_worker,
        train_loop_config={"task": task},
        scaling_config=ScalingConfig(
            num_workers=spec.resources.workers_per_trial,
            use_gpu=_use_gpu(spec),
            resources_per_worker={"CPU": spec.resources.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=f"{spec.name}_prune",
            storage_path=storage.join(out, "train"),
            failure_config=FailureConfig(max_failures=max(0, spec.failure.max_failures)),
        ),
    )
    return float(trainer.fit().metrics["density"])


# --------------------------------------------------------------------------------------------- [J5] cache
def build_cache(spec: Any, teacher: ModelRef, out: str) -> str:
    """Teacher outputs on a fixed patch pool, computed once per job by a Ray task and reused by every trial;
    returns its location in the job's store (``<out>/cache/<key>``), which trials copy to their node."""
    n, scale, seed, patch = spec.data.cache.n_patches, spec.data.scale, spec.seed, spec.data.patch_at(0)
    train, skip_bad = data_ref(spec).train, spec.data.skip_bad  # held-out validation images left out

    @ray.remote(num_cpus=1)
    def cache_task() -> str:
        torch.set_num_threads(1)
        model = load_model(teacher)
        with storage.staged_dir(storage.join(out, "cache")) as local:
            info = teacher_cache_stage(
                model,
                resolve_train_sources(train),
                scale=scale,
                hr_patch=patch,
                seed=seed,
                n_patches=n,
                out_dir=local,
                skip_bad=skip_bad,
                device="cpu",
            )
        return storage.join(out, "cache", Path(info.path).name)

    return ray.get(cache_task.remote())


# ------------------------------------------------------------------------------------------------- the job
def _budget(spec: Any) -> Budget:
    b = spec.budgets
    return Budget(
        max_params=b.max_params,
        max_macs=b.max_macs,
        macs_convention=b.macs_convention,
        max_latency_ms=b.max_latency_ms,
        latency_device=b.latency_device,
    )


def _paper_point(spec: Any, state: JobState, space: dict[str, Any]) -> dict[str, Any] | None:
    """The paper-rule allocation as the search's first draw (KD only), clamped to the space."""
    if not (spec.search.enqueue_paper_rule and state.allocation and spec.student.method == "kd"):
        return None
    a = state.allocation
    point: dict[str, Any] = {k: a[k] for k in ("C", "L", "B") if k in a and k in space}
    # The paper's KD weights (the authors' code) when the space allows them. Its lap_weighting is not set here: it
    # comes from the space (the spec's fixed value, or sampled like any draw when kd_space searches it).
    point.update({"w_gt": 0.1, "w_lap": 1.0, "w_hf": 1.0})
    return clamp_to_space({k: v for k, v in point.items() if k in space}, space)


def plan_search(
    spec: Any, *, teacher: ModelRef, state: JobState, tracking: dict[str, Any] | None, out: str
) -> SearchPlan:
    """The SearchPlan of a spec (pure apart from reading the cluster's GPU count)."""
    space = job_space(spec)
    use_gpu = _use_gpu(spec)
    sched = spec.search.scheduler
    return SearchPlan(
        name=spec.name,
        storage=out,
        student_arch=spec.student.arch,
        space=space,
        budget=_budget(spec),
        objectives=tuple((_objective_key(o.metric, spec.budgets.macs_convention), o.mode) for o in spec.objectives),
        algorithm=spec.search.algorithm,
        num_samples=spec.search.num_samples,
        max_concurrent_trials=spec.search.max_concurrent_trials,
        seed=spec.search_seed,
        asha=(
            {"grace_period": sched.grace_period * spec.training.val_every, "reduction_factor": sched.reduction_factor}
            if sched.type == "asha"
            else None
        ),
        paper_point=_paper_point(spec, state, space),
        worker=trial_template(spec, teacher=teacher, cache_dir=state.cache_dir, use_gpu=use_gpu),
        workers_per_trial=spec.resources.workers_per_trial,
        cpus_per_worker=spec.resources.cpus_per_worker,
        gpus_per_worker=(spec.resources.gpus_per_worker or (1.0 if use_gpu else 0.0)),
        use_gpu=use_gpu,
        max_failures=spec.failure.max_failures,
        tracking=tracking,
        scale=spec.data.scale,
        population_size=spec.search.population_size,
        skip_infeasible=spec.search.skip_infeasible,
        dedupe=spec.search.dedupe,
        optuna_storage=spec.search.optuna_storage,
        trial_runner=spec.resources.trial_runner,
        latency=latency_target(spec),
    )


@dataclass
class _Job:
    """One running job: its spec, folder, persisted state and MLflow parent run (what every stage step needs)."""

    spec: Any
    out: str  # the job's folder in its store (orchestrator.storage location)
    state: JobState
    tracker: Tracker
    exp_id: str

    @property
    def parent(self) -> str:
        assert self.state.parent_run_id is not None  # set by open_parent_run
        return self.state.parent_run_id

    @property
    def tracking(self) -> dict[str, Any]:
        """What a trial needs to open its child run under the parent."""
        return {"uri": self.tracker.uri, "experiment_id": self.exp_id, "parent_run_id": self.parent}

    def save(self) -> None:
        self.state.save(storage.join(self.out, "job_state.json"))

    def stage_run(self, kind: str, params: dict, metrics: dict) -> None:
        log_stage_run(self.tracker, self.exp_id, self.parent, kind, params, metrics)


# ------------------------------------------------------------------------------------- run_job, step by step
def _checked_spec(spec_path: str | Path, overrides: Overrides | None = None) -> Any:
    """The validated spec with its fallbacks applied; a budget no architecture meets, an unusable image or
    teacher checkpoint (``orchestrator._preflight``) fails here, before Ray and before anything is written."""
    spec = load_job_spec(spec_path, overrides)
    spec = check_paths(spec, spec_path)  # applies the spec's fallbacks for absent weights/data
    b = spec.budgets
    check_budget_reachable(
        spec.student.arch,
        smallest_knobs(spec, job_space(spec)),
        Budget(max_params=b.max_params, max_macs=b.max_macs, macs_convention=b.macs_convention),
    )
    csd = spec.csd_settings
    if spec.student.method == "csd" and csd.vgg_weights == "random" and max(csd.values("lambda_c")) > 0:
        print(
            "[srcompress] warning: csd.vgg_weights is 'random': the contrastive loss uses an untrained VGG19 and "
            "means nothing (a code-path check); use real VGG19 weights or lambda_c: 0 for results",
            flush=True,
        )
    preflight(spec, spec_path)
    schedule = prune_schedule(spec, spec_path)  # a schedule without a Prox-SG phase fails here
    if schedule is not None:
        print(f"[srcompress] pruning schedule: {schedule.describe()}", flush=True)
    return spec


def _open_state(
    spec: Any,
    spec_path: str | Path,
    out: str,
    *,
    resume: bool,
    uri: str | None = None,
    allow_changed_spec: bool = False,
) -> JobState:
    """The job's state: fresh, or the recorded one on ``--resume``; a fresh job never overwrites another.

    A resumed job must log where it started (same experiment, same tracking URI: else its trials would be split
    and the finished ones retrained) and run the spec it started with (else trials before and after the resume
    would mix settings on one front): a change is refused with what changed, unless ``allow_changed_spec``.
    Nothing is written here: the job's folder appears once Ray is connected (``_Job.save``). ``uri`` is the
    tracking URI the job logs to (default: the spec's)."""
    uri = uri or spec.tracking_uri
    state_path = storage.join(out, "job_state.json")
    state = JobState.load(state_path) if resume else JobState()
    if not resume and storage.exists(state_path):
        raise UserError(
            f"{out} already holds a job named {spec.name!r}; rerun with --resume to continue it, "
            "or change name/storage.path for a new one"
        )
    if resume:
        _check_same_tracking(spec, state, uri)
        _check_same_spec(spec, spec_path, state, allow_changed_spec=allow_changed_spec)
    state.spec_hash = spec.spec_hash()
    state.spec_flat = spec.to_flat_dict()
    state.experiment_name, state.tracking_uri = spec.experiment_name, uri
    return state


def _check_same_tracking(spec: Any, state: JobState, uri: str) -> None:
    """Refuse to resume a job into another MLflow experiment or store than the one its runs are in."""
    if state.experiment_name is not None and state.experiment_name != spec.experiment_name:
        raise UserError(
            f"job {spec.name!r} logs to MLflow experiment {state.experiment_name!r} but the spec now says "
            f"{spec.experiment_name!r}; set tracking.experiment back to {state.experiment_name!r} to resume it, "
            "or start a new job (another name) for the new experiment"
        )
    if state.tracking_uri is not None and state.tracking_uri != uri:
        raise UserError(
            f"job {spec.name!r} logs to MLflow at {state.tracking_uri} but this run would log to {uri}; resume "
            f"with --tracking-uri {state.tracking_uri} (or that tracking.uri), or start a new job (another name)"
        )


def _check_same_spec(spec: Any, spec_path: str | Path, state: JobState, *, allow_changed_spec: bool) -> None:
    """Refuse (or, when allowed, announce) a spec that changed since the job started, naming what changed."""
    if not state.spec_hash or state.spec_hash == spec.spec_hash():
        return
    diff = spec_diff(state.spec_flat, spec.to_flat_dict()) if state.spec_flat is not None else "(not recorded)"
    if not allow_changed_spec:
        raise UserError(
            f"{spec_path} changed since job {spec.name!r} started: {diff}; undo the change to resume, start a new "
            "job (another name), or pass --allow-changed-spec to resume with it (see srcompress run --help)"
        )
    print(f"[srcompress] warning: resuming with a changed spec (--allow-changed-spec): {diff}", flush=True)


def _teacher_step(job: _Job) -> ModelRef:
    """[J2] The teacher (trained when the spec has no weights) and, once, its reference runs."""
    t0 = time.time()
    teacher, job.state.teacher_weights = resolve_teacher(job.spec, job.out)
    job.state.stages.setdefault("teacher", time.time() - t0)
    job.save()
    if not job.state.references_logged:
        data = data_ref(job.spec)
        pairs = val_pairs(data, job.spec.data.scale)
        scores = log_reference_runs(
            job.tracker, job.exp_id, job.parent, teacher, pairs, scale=job.spec.data.scale, data=data
        )
        note = fallback_note(job.spec, scores)
        if note:
            print(note, flush=True)
        job.state.references_logged = True
        job.save()
    return teacher


def _prune_step(job: _Job, teacher: ModelRef) -> None:
    """[J3] The density: given by the spec, or measured by a pruning run of the teacher."""
    spec, state = job.spec, job.state
    if state.density is not None:
        return
    t0 = time.time()
    if spec.prune.density is not None:
        state.density = float(spec.prune.density)
    elif spec.prune.enabled:
        print(f"[srcompress] stage prune: OBProx-SG on {teacher.arch} for {spec.prune.steps} steps", flush=True)
        schedule = prune_schedule(spec)
        state.density = run_prune(spec, teacher, job.out, None, schedule)
        job.stage_run(
            "prune",
            {
                "arch": teacher.arch,
                "steps": spec.prune.steps,
                "lambda": spec.prune.lambda_,
                **(schedule.as_params() if schedule is not None else {}),
            },
            {"density": state.density, "seconds": time.time() - t0},
        )
    state.stages["prune"] = time.time() - t0
    job.save()
    if state.density is not None:
        job.tracker.log_metrics(job.parent, {"density": state.density})
        print(f"[srcompress] density d = {state.density:.4f}", flush=True)


def _allocate_step(job: _Job, teacher: ModelRef) -> None:
    """[J4] The paper rule's C/L/B from the density: the search's first draw."""
    state = job.state
    if state.allocation is not None or state.density is None or not job.spec.search.enqueue_paper_rule:
        return
    density = state.density
    if density <= 0:
        # Pruning removed every deep weight (too strong a penalty for this teacher): the rule then asks for the
        # smallest architecture, which is what the smallest positive density gives.
        print("[srcompress] warning: pruning zeroed every deep weight; lower prune.lambda/lr", flush=True)
        density = 1e-6
    state.allocation = paper_allocation(job.spec, teacher, density)
    if state.allocation is not None:
        job.tracker.log_params(job.parent, {f"allocation.{k}": v for k, v in state.allocation.items()})
        job.save()
        print(f"[srcompress] paper-rule allocation: {describe_allocation(state.allocation)}", flush=True)


def _cache_step(job: _Job, teacher: ModelRef) -> None:
    """[J5] The teacher-output cache every trial reads (when the spec enables it)."""
    spec, state = job.spec, job.state
    if not spec.data.cache.enabled or state.cache_dir is not None:
        return
    t0 = time.time()
    state.cache_dir = build_cache(spec, teacher, job.out)
    state.stages["cache"] = time.time() - t0
    job.stage_run(
        "cache",
        {"n_patches": spec.data.cache.n_patches, "path": state.cache_dir},
        {"seconds": state.stages["cache"]},
    )
    job.tracker.log_params(job.parent, {"cache_dir": state.cache_dir})
    job.save()


def _search_step(job: _Job, teacher: ModelRef, *, resume: bool) -> tuple[SearchPlan, Any]:
    """[J6] The Tune search (restored from the job's storage on ``--resume``); returns its plan and results."""
    plan = plan_search(job.spec, teacher=teacher, state=job.state, tracking=job.tracking, out=job.out)
    if plan.latency is not None:  # [L1] the timing node exists and the latency budget is reachable
        knobs = smallest_knobs(job.spec, plan.space)
        check_latency_reachable(plan.student_arch, knobs, plan.latency, plan.budget.max_latency_ms)
    tuner, restored = make_tuner(plan, callbacks=[make_status_callback(plan)], resume=resume, state=job.state)
    print(
        f"[srcompress] search: {plan.num_samples} trials of {plan.student_arch} ({plan.algorithm}"
        f"{', restored' if restored else ''}); budget {describe_budget(plan.budget)}",
        flush=True,
    )
    search_starts(plan)
    return plan, tuner.fit()


def _twin_step(job: _Job, plan: SearchPlan) -> None:
    """[J6b] KD twins (``search.kd_twin``): the chosen KD students trained again on ground truth alone, and
    ``kd_gain_db`` on their trial runs (``orchestrator._kd_twin``); a finished twin is never retrained."""
    if job.spec.search.twin_selection is None:
        return
    t0 = time.time()
    gains = run_twins(job.spec, plan, job.tracker, job.exp_id, job.parent)
    job.state.stages["kd_twin"] = job.state.stages.get("kd_twin", 0.0) + time.time() - t0
    job.save()
    if gains:
        mean = sum(g["kd_gain_db"] for g in gains.values()) / len(gains)
        job.tracker.log_metrics(job.parent, {"kd_gain_db_mean": mean})


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the job: its parent run is marked interrupted and ``--resume`` continues it."""


def _interrupted(job: _Job) -> JobInterrupted:
    """Record an interrupted job in MLflow (the parent run and its unfinished trials: status tag ``interrupted``,
    MLflow status KILLED) and return the exception that tells the caller."""
    tracker = job.tracker
    for run in tracker.find_runs(job.exp_id, f"tags.`{PARENT_TAG}` = '{job.parent}'"):
        if run.data.tags.get(STATUS_TAG) == "running":  # a trial Tune stopped mid-training; --resume retrains it
            tracker.set_tags(run.info.run_id, {STATUS_TAG: "interrupted"})
            tracker.end_run(run.info.run_id, "KILLED")
    tracker.set_tags(job.parent, {STATUS_TAG: "interrupted"})
    tracker.end_run(job.parent, "KILLED")
    return JobInterrupted(f"job {job.spec.name!r} interrupted; its state is saved")


def run_job(
    spec_path: str | Path,
    *,
    address: str | None = None,
    resume: bool = False,
    tracking_uri: str | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
    allow_changed_spec: bool = False,
    overrides: Overrides | None = None,
) -> dict[str, Any]:
    """Run a whole job (the spec at ``spec_path`` with ``overrides`` applied); returns a summary (counts, density,
    allocation, Pareto rows; ``failed``: trials that ended in error, which ``--resume`` retries from their last
    checkpoint).

    Raises:
        UserError: a bad spec, or a ``--resume`` whose spec/experiment/store differ from the job's.
        JobInterrupted: Ctrl-C; the job is recorded as interrupted and ``--resume`` continues it.
    """
    t_start = time.time()
    spec = _checked_spec(spec_path, overrides)
    uri = tracking_uri or spec.tracking_uri
    check_reachable(uri)
    out = storage.join(spec.storage.path, spec.name)
    with undo_new_dirs(out):  # a start that fails here leaves no empty job folder behind
        state = _open_state(spec, spec_path, out, resume=resume, uri=uri, allow_changed_spec=allow_changed_spec)
        connect_ray(address, num_cpus=num_cpus, verbose=verbose)  # [J1]
        check_node_paths(spec, spec_path)  # every node sees the shared-filesystem inputs
    tracker = Tracker(uri)
    job = _Job(spec, out, state, tracker, open_parent_run(tracker, spec, state, out=out))
    job.save()

    try:
        teacher = _teacher_step(job)  # [J2]
        _prune_step(job, teacher)  # [J3]
        _allocate_step(job, teacher)  # [J4]
        _cache_step(job, teacher)  # [J5]
        plan, results = _search_step(job, teacher, resume=resume)  # [J6]
        if search_interrupted(plan):  # Tune caught the Ctrl-C itself and returned early
            raise KeyboardInterrupt
        _twin_step(job, plan)  # [J6b]
        summary = finish(spec, plan, tracker, job.exp_id, job.parent, results, out)  # [J7]
    except KeyboardInterrupt:
        raise _interrupted(job) from None
    summary.update(density=state.density, allocation=state.allocation, seconds=time.time() - t_start)
    summary["failed"] = int(summary["counts"].get("failed", 0))
    tracker.set_tags(job.parent, {STATUS_TAG: "completed" if not summary["failed"] else "failed-trials"})
    tracker.end_run(job.parent, "FINISHED" if not summary["failed"] else "FAILED")
    return summary


def paper_allocation(spec: Any, teacher: ModelRef, density: float) -> dict[str, Any] | None:
    """The paper's rule applied to the student family's reference size (the teacher if same family).

    Returns None (no seed, with a printed note) when neither applies: a student family other than EDSR/SwinIR
    whose teacher has no C/B knobs.
    """
    t_family, s_family = family_of(teacher.arch), family_of(spec.student.arch)
    # Different families (e.g. IMDN teacher, EDSR student): allocate from the family's baseline variant.
    baselines = {"edsr": "edsr_baseline", "swinir": "swinir_light"}
    if t_family == s_family or s_family in baselines:
        base = teacher.arch if t_family == s_family else baselines[s_family]
        alloc, _ = allocate_arch(base, density)
        return {"base_arch": base, "C": alloc.C, "L": alloc.L, "B": alloc.B, "density": density}
    # Other families (RFDN, IMDN-CLB students): the rule on the pruned teacher's own C/L/B, clamped to the space.
    k = resolve_knobs(teacher.arch, **teacher.knobs)
    if "C" not in k or "B" not in k:
        print(
            f"[srcompress] note: no paper-rule seed: teacher {teacher.arch} has no C/B knobs to allocate from "
            f"for a {s_family} student",
            flush=True,
        )
        return None
    alloc = allocate(C=k["C"], L=k.get("L", 1), B=k["B"], density=density, family=t_family, heads=k.get("heads"))
    return {"base_arch": teacher.arch, "C": alloc.C, "L": alloc.L, "B": alloc.B, "density": density}


__all__ = [
    "JobInterrupted",
    "JobState",
    "connect_ray",
    "finish",
    "paper_allocation",
    "plan_search",
    "resolve_teacher",
    "run_job",
]
