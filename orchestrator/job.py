"""``srcompress run``: one job = teacher → [prune] → allocate → [cache] → search → Pareto, tracked in MLflow.

Distributed structure of a job (numbered as they run):
  [J1] connect to Ray (a local embedded cluster by default, or ``--address``);
  [J2] teacher: the given weights, or a small one trained briefly (a Ray task) when there are none;
  [J3] prune: a ``TorchTrainer(prune_worker)`` run → density (skipped when the spec gives ``prune.density``);
  [J4] allocate: the paper's C/L/B rule from the density (pure ``sr.allocate``), the search's first trial;
  [J5] cache: teacher outputs on a fixed patch pool, a Ray task writing onto the job's storage;
  [J6] search: ``orchestrator.search`` (Tune + Optuna, one TorchTrainer per trial);
  [J7] choose: Pareto front from MLflow, tagged on the runs and printed.
Stage outputs are recorded in ``<storage>/<name>/job_state.json`` so ``--resume`` skips finished stages and reuses
the same MLflow parent run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sr.errors import UserError

log = logging.getLogger(__name__)

# Ray settings measured in ../shared/STACK_NOTES.md: without a short health-check interval every
# ray.train.report blocks ~1.8 s; the preemption watcher and metrics add ~7 s of start-up per Train run.
_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Short in-trial runs checkpoint every few seconds; Tune then warns that it snapshots its state often (cheap
    # here: a local folder).
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


@dataclass
class JobState:
    """What finished stages produced; persisted so a resumed job does not redo them."""

    spec_hash: str = ""
    parent_run_id: str | None = None
    experiment_id: str | None = None
    teacher_weights: str | None = None
    density: float | None = None
    allocation: dict[str, Any] | None = None
    cache_dir: str | None = None
    references_logged: bool = False
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    @classmethod
    def load(cls, path: Path) -> JobState:
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        os.replace(tmp, path)


# -------------------------------------------------------------------------------------------------- [J1] ray
def connect_ray(address: str | None, *, num_cpus: int | None = None, verbose: bool = False) -> None:
    """Start a local Ray (default) or connect to ``address``; one-line error when it cannot be reached."""
    import ray

    from orchestrator.search import TRIAL_RESOURCE

    for k, v in _RAY_ENV.items():
        os.environ.setdefault(k, v)
    if address not in (None, "", "local", "auto"):
        _check_address(address)
    if ray.is_initialized():
        return
    if address in (None, "", "local"):
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            resources={TRIAL_RESOURCE: 1000},
            logging_level=logging.WARNING,
            # Worker logs are Ray Train's chatter; the driver prints one line per trial instead.
            log_to_driver=verbose,
        )
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=verbose)
    except Exception as exc:  # ConnectionError, TimeoutError, RuntimeError from the GCS client
        raise UserError(
            f"cannot connect to the Ray cluster at {address} ({type(exc).__name__}: {str(exc)[:150]}); "
            "start it (cluster/local.sh start) or fix --address"
        ) from None
    if TRIAL_RESOURCE not in ray.cluster_resources():
        raise UserError(
            f"the Ray cluster at {address} has no '{TRIAL_RESOURCE}' resource for trial drivers; start its head "
            f"with --resources='{{\"{TRIAL_RESOURCE}\": 1000}}' (see cluster/)"
        )


def _check_address(address: str) -> None:
    """Fail in seconds, with the fix, instead of letting ray.init retry an unreachable address for minutes."""
    import socket
    from urllib.parse import urlparse

    if address.startswith(("http://", "https://")):
        raise UserError(
            f"--address {address} is a Jobs API (dashboard) address; use 'srcompress submit' with it, or give "
            "ray://HOST:10001 / auto to run"
        )
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise UserError(f"--address {address!r} is not HOST:PORT or ray://HOST:PORT; e.g. ray://127.0.0.1:10001")
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it (cluster/local.sh start) "
            "or fix --address"
        ) from None


# ----------------------------------------------------------------------------------------------- helpers
def _objective_key(metric: str, macs_convention: str) -> str:
    return {"macs": f"macs_{macs_convention}"}.get(metric, metric)


def _plain_dim(dim: Any) -> Any:
    """A spec dimension (Range, Choice or fixed value) as the plain value ``search_spaces.sampling`` reads."""
    return {k: v for k, v in dim.model_dump().items() if v is not None} if hasattr(dim, "model_dump") else dim


def _space(spec: Any) -> dict[str, Any]:
    """The spec's student space + KD (or CSD) space as a plain mapping for ``search_spaces.sampling``."""
    space = {k: _plain_dim(v) for k, v in spec.student.space.items()}
    kd = spec.student.kd_space
    csd = spec.student.method == "csd"
    for name in ("lr",) if csd else ("w_gt", "w_lap", "w_hf", "lr"):
        dim = getattr(kd, name)
        space[name] = _plain_dim(spec.training.lr if dim is None else dim)
    if csd:
        # CSD's own loss weights replace the KD ones; width is the exported student's channel ratio.
        c = spec.csd_settings
        space.update(width=_plain_dim(c.width), lambda_c=_plain_dim(c.lambda_c), lambda_t=c.lambda_t)
    space.setdefault("scale", spec.data.scale)
    return space


def _smallest_knobs(spec: Any, space: dict[str, Any]) -> dict[str, Any]:
    """The cheapest corner of the student space as model knobs (CSD: of the exported student, C' = w*C)."""
    from search_spaces.sampling import is_range
    from sr.models import get_family, get_variant, resolve_knobs

    knobs = set(get_family(get_variant(spec.student.arch).family).knobs)
    out: dict[str, Any] = {}
    for k, v in space.items():
        if k not in knobs:
            continue
        if is_range(v) and "low" in v:
            v = v["low"]
        elif is_range(v):  # choices: the least when numeric, else the variant's default
            nums = [c for c in v["choices"] if isinstance(c, int | float) and not isinstance(c, bool)]
            if not nums:
                continue
            v = min(nums)
        out[k] = v
    if spec.student.method == "csd":
        width = min(spec.csd_settings.values("width"))
        out["C"] = round(width * int(out.get("C", resolve_knobs(spec.student.arch)["C"])))
    return out


def _teacher_spec(spec: Any, weights: str | None) -> dict[str, Any]:
    knobs = {**spec.teacher.set, "scale": spec.data.scale}
    return {"arch": spec.teacher.arch, "knobs": knobs, "weights": weights}


def _data_dict(spec: Any) -> dict[str, Any]:
    return {"train": spec.data.train, "val": spec.data.val, "skip_bad": False}


def _threads(spec: Any) -> int:
    return max(1, int(spec.resources.cpus_per_worker))


def _use_gpu(spec: Any) -> bool:
    import ray

    want = spec.resources.use_gpu
    if want == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(want)


# ------------------------------------------------------------------------------------------- [J2] teacher
def _train_fallback_teacher(spec: Any, out: Path) -> str:
    """A small teacher trained briefly on the training data (GT only), for machines without real weights."""
    import ray  # deferred: ray is heavy and only needed when the job runs

    fb = spec.teacher.fallback
    arch = fb.arch or spec.teacher.arch
    knobs = {**(spec.teacher.set if fb.arch is None else {}), "scale": spec.data.scale}
    train, scale, seed = spec.data.train, spec.data.scale, spec.seed

    @ray.remote(num_cpus=1)
    def train_teacher() -> str:
        import torch  # deferred: runs in the Ray task's process

        from sr.stages import fallback_teacher  # deferred: torch-heavy, needed only in the task

        torch.set_num_threads(1)
        path = fallback_teacher(
            arch,
            knobs,
            train=train,
            scale=scale,
            steps=fb.steps,
            batch_size=fb.batch_size,
            lr=fb.lr,
            seed=seed,
            out=out / "teacher_fallback.pth",
        )
        return str(path)

    print(f"[srcompress] no teacher weights: training a small {arch} teacher for {fb.steps} steps", flush=True)
    weights = ray.get(train_teacher.remote())
    spec_arch_note = "" if fb.arch is None else f" (fallback arch {arch})"
    print(f"[srcompress] teacher trained{spec_arch_note}: {weights}", flush=True)
    return weights


def resolve_teacher(spec: Any, out: Path) -> tuple[dict[str, Any], str | None]:
    """The teacher's arch/knobs/weights; trains the fallback when the spec has no usable weights."""
    weights = spec.teacher.weights
    if weights and not Path(weights).exists():
        if spec.teacher.if_missing == "train":
            weights = None
        else:
            raise UserError(f"teacher weights {weights} not found; fix teacher.weights or set if_missing: train")
    if weights is None:
        existing = out / "teacher_fallback.pth"
        weights = str(existing) if existing.exists() else _train_fallback_teacher(spec, out)
        fb_arch = spec.teacher.fallback.arch
        t = _teacher_spec(spec, weights)
        if fb_arch:
            t = {"arch": fb_arch, "knobs": {"scale": spec.data.scale}, "weights": weights}
        return t, weights
    return _teacher_spec(spec, weights), weights


# --------------------------------------------------------------------------------------------- [J3] prune
def run_prune(spec: Any, teacher: dict[str, Any], out: Path, tracking: dict[str, Any] | None) -> float:
    """A TorchTrainer pruning run of the teacher; returns the final density."""
    # deferred: ray and torch (the worker module, the model registry) are heavy; job.py loads with the light CLI
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.workers import prune_worker
    from sr.models import family_of

    p = spec.prune
    n_images = p.n_images or 0
    per_epoch = spec.data.samples_per_epoch
    config = {
        "teacher": teacher,
        "family": family_of(teacher["arch"]),
        "scale": spec.data.scale,
        "data": _data_dict(spec),
        "prune": {
            "steps": p.steps,
            "lr": p.lr,
            "lambda_": p.lambda_,
            "epsilon": p.epsilon,
            "batch_size": p.batch_size,
            "hr_patch": spec.data.patch_at(0),
            "milestones": list(p.milestones),
            "gamma": p.gamma,
            "np_epochs": p.np_epochs,
            "batches_per_epoch": max(1, per_epoch // p.batch_size) if per_epoch else None,
            "quirk_epoch_in_samples": p.quirk_epoch_in_samples,
            "seed": spec.seed,
            "log_every": max(1, p.steps // 10),
            "n_images": n_images or None,
        },
        "threads": _threads(spec),
        "output_dir": str(out / "prune"),
        "tracking": tracking,
    }
    trainer = TorchTrainer(
        prune_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=spec.resources.workers_per_trial,
            use_gpu=_use_gpu(spec),
            resources_per_worker={"CPU": spec.resources.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=f"{spec.name}_prune",
            storage_path=str((out / "train").resolve()),
            failure_config=FailureConfig(max_failures=max(0, spec.failure.max_failures)),
        ),
    )
    trainer.fit()
    return float(json.loads((out / "prune" / "density.json").read_text())["density"])


# --------------------------------------------------------------------------------------------- [J5] cache
def build_cache(spec: Any, teacher: dict[str, Any], out: Path) -> str:
    """Teacher outputs on a fixed patch pool, computed once per job by a Ray task and reused by every trial."""
    import ray  # deferred: ray is heavy and only needed when the job runs

    n, scale, seed, patch = spec.data.cache.n_patches, spec.data.scale, spec.seed, spec.data.patch_at(0)
    train = spec.data.train

    @ray.remote(num_cpus=1)
    def cache_task() -> str:
        import torch  # deferred: runs in the Ray task's process

        from sr.data import resolve_train_sources  # deferred: torch-heavy, needed only in the task
        from sr.stages import load_model, teacher_cache_stage

        torch.set_num_threads(1)
        model = load_model(teacher["arch"], teacher.get("knobs", {}), teacher.get("weights"))
        info = teacher_cache_stage(
            model,
            resolve_train_sources(train),
            scale=scale,
            hr_patch=patch,
            seed=seed,
            n_patches=n,
            out_dir=out / "cache",
            device="cpu",
        )
        return str(info.path)

    return ray.get(cache_task.remote())


# ------------------------------------------------------------------------------------------------- the job
def _reference_runs(spec: Any, teacher: dict[str, Any], tracker: Any, exp_id: str, parent: str) -> None:
    """Teacher and bicubic on the validation set as child runs: the report's reference markers."""
    from orchestrator.tracking import KIND_TAG, STATUS_TAG
    from orchestrator.workers import load_model, val_pairs
    from sr.budget import price
    from sr.evaluate import evaluate_bicubic, evaluate_model

    pairs = val_pairs(_data_dict(spec), spec.data.scale)
    t_model = load_model(teacher)
    t_res = evaluate_model(t_model, pairs, scale=spec.data.scale)
    p = price(teacher["arch"], **teacher["knobs"])
    for kind, name, res, extra in (
        ("teacher", f"teacher_{teacher['arch']}_x{spec.data.scale}", t_res, p.as_dict()),
        ("bicubic", f"bicubic_x{spec.data.scale}", evaluate_bicubic(pairs, scale=spec.data.scale), {"params": 0}),
    ):
        run_id = tracker.start_run(exp_id, name, parent_run_id=parent, tags={KIND_TAG: kind, STATUS_TAG: "completed"})
        tracker.log_metrics(run_id, {"psnr_y": res.psnr_y, "ssim_y": res.ssim_y, **extra})
        tracker.log_params(run_id, {"arch": teacher["arch"] if kind == "teacher" else "bicubic"})
        tracker.end_run(run_id)
    print(f"[srcompress] teacher {teacher['arch']}: psnr_y {t_res.psnr_y:.3f} on the validation set", flush=True)


def _stage_run(tracker: Any, exp_id: str, parent: str, kind: str, params: dict, metrics: dict) -> None:
    from orchestrator.tracking import KIND_TAG, STATUS_TAG

    run_id = tracker.start_run(exp_id, kind, parent_run_id=parent, tags={KIND_TAG: kind, STATUS_TAG: "completed"})
    tracker.log_params(run_id, params)
    tracker.log_metrics(run_id, metrics)
    tracker.end_run(run_id)


def plan_search(spec: Any, *, teacher: dict[str, Any], state: JobState, tracking: dict[str, Any] | None, out: Path):
    """The SearchPlan of a spec (pure apart from reading the cluster's GPU count)."""
    from orchestrator.search import SearchPlan
    from search_spaces.sampling import clamp_to_space
    from sr.budget import Budget

    b = spec.budgets
    budget = Budget(
        max_params=b.max_params,
        max_macs=b.max_macs,
        macs_convention=b.macs_convention,
        max_latency_ms=b.max_latency_ms,
        latency_device=b.latency_device,
    )
    space = _space(spec)
    objectives = tuple((_objective_key(o.metric, b.macs_convention), o.mode) for o in spec.objectives)
    paper_point = None
    method = spec.student.method
    if spec.search.enqueue_paper_rule and state.allocation and method == "kd":
        a = state.allocation
        point = {k: a[k] for k in ("C", "L", "B") if k in a and k in space}
        # The paper's KD weights (the authors' code) when the space allows them.
        point.update({"w_gt": 0.1, "w_lap": 1.0, "w_hf": 1.0})
        paper_point = clamp_to_space({k: v for k, v in point.items() if k in space}, space)
    tr = spec.training
    use_gpu = _use_gpu(spec)
    worker = {
        "method": method,
        "teacher": teacher,
        "data": {**_data_dict(spec), "cache_dir": state.cache_dir},
        "threads": _threads(spec),
        "kd": {
            "steps": tr.steps,
            "batch_size": tr.batch_size,
            "scale": spec.data.scale,
            "optimizer": tr.optimizer,
            "milestones": list(tr.milestones),
            "gamma": tr.gamma,
            "ema_decay": tr.ema_decay or None,
            "val_every": tr.val_every,
            "log_every": tr.val_every,  # reports carry the validation PSNR that ASHA and Optuna read
            "ckpt_every": tr.ckpt_every,
            "seed": spec.seed,
            "amp": use_gpu,
            **(
                {"hr_patch": spec.data.hr_patch}
                if spec.data.patch_sizes is None
                else {"patch_sizes": list(spec.data.patch_sizes), "patch_boundaries": list(spec.data.patch_boundaries)}
            ),
        },
    }
    if method == "csd":
        # Per trial, orchestrator.search adds the sampled width/lambda_c and the shared model's C.
        c = spec.csd_settings
        worker["csd"] = {"lambda_t": c.lambda_t, "vgg_weights": c.vgg_weights, "teacher_width": c.teacher_width}
    sched = spec.search.scheduler
    return SearchPlan(
        name=spec.name,
        storage=str(out),
        student_arch=spec.student.arch,
        space=space,
        budget=budget,
        objectives=objectives,
        algorithm=spec.search.algorithm,
        num_samples=spec.search.num_samples,
        max_concurrent_trials=spec.search.max_concurrent_trials,
        seed=spec.search_seed,
        asha=(
            {"grace_period": sched.grace_period * tr.val_every, "reduction_factor": sched.reduction_factor}
            if sched.type == "asha"
            else None
        ),
        paper_point=paper_point,
        worker=worker,
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
        trial_runner=spec.resources.trial_runner,
    )


def run_job(
    spec_path: str | Path,
    *,
    address: str | None = None,
    resume: bool = False,
    tracking_uri: str | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run a whole job; returns a summary (counts, density, allocation, Pareto rows)."""
    from orchestrator.search import make_tuner
    from orchestrator.spec import check_paths, load_job_spec
    from orchestrator.tracking import JOB_TAG, KIND_TAG, STATUS_TAG, Tracker, check_reachable
    from orchestrator.trial_tracking import make_status_callback
    from sr.budget import Budget, check_budget_reachable

    t_start = time.time()
    spec = load_job_spec(spec_path)
    spec = check_paths(spec, spec_path)  # applies the spec's fallbacks for absent weights/data
    space = _space(spec)
    # A budget no architecture can meet is an error before anything starts.
    b = spec.budgets
    check_budget_reachable(
        spec.student.arch,
        _smallest_knobs(spec, space),
        Budget(max_params=b.max_params, max_macs=b.max_macs, macs_convention=b.macs_convention),
    )
    csd = spec.csd_settings
    if spec.student.method == "csd" and csd.vgg_weights == "random" and max(csd.values("lambda_c")) > 0:
        print(
            "[srcompress] warning: csd.vgg_weights is 'random': the contrastive loss uses an untrained VGG19 and "
            "means nothing (a code-path check); use real VGG19 weights or lambda_c: 0 for results",
            flush=True,
        )
    uri = tracking_uri or spec.tracking_uri
    check_reachable(uri)
    out = Path(spec.storage.path).resolve() / spec.name
    state_path = out / "job_state.json"
    state = JobState.load(state_path) if resume else JobState()
    if not resume and state_path.exists():
        raise UserError(
            f"{out} already holds a job named {spec.name!r}; rerun with --resume to continue it, "
            "or change name/storage.path for a new one"
        )
    if resume and state.spec_hash and state.spec_hash != spec.spec_hash():
        print(f"[srcompress] warning: {spec_path} changed since the job started; resuming anyway", flush=True)
    state.spec_hash = spec.spec_hash()
    out.mkdir(parents=True, exist_ok=True)

    # [J1]
    connect_ray(address, num_cpus=num_cpus, verbose=verbose)
    # Tracking: experiment + parent run (reused on resume).
    from orchestrator.tracking import default_artifact_root

    tracker = Tracker(uri)
    exp_id = tracker.experiment_id(
        spec.experiment_name,
        artifact_location=None if uri.startswith("http") else default_artifact_root(out),
    )
    if state.parent_run_id is None:
        state.parent_run_id = tracker.start_run(
            exp_id, f"search_{spec.name}", tags={KIND_TAG: "search", STATUS_TAG: "running", JOB_TAG: spec.name}
        )
        tracker.log_params(state.parent_run_id, spec.to_flat_dict())
        if spec.source:
            tracker.log_artifact(state.parent_run_id, spec.source, "job")
    state.experiment_id = exp_id
    state.save(state_path)
    parent = state.parent_run_id
    tracking = {"uri": uri, "experiment_id": exp_id, "parent_run_id": parent}

    # [J2]
    t0 = time.time()
    teacher, state.teacher_weights = resolve_teacher(spec, out)
    state.stages.setdefault("teacher", time.time() - t0)
    state.save(state_path)
    if not state.references_logged:
        _reference_runs(spec, teacher, tracker, exp_id, parent)
        state.references_logged = True
        state.save(state_path)

    # [J3]
    if state.density is None:
        t0 = time.time()
        if spec.prune.density is not None:
            state.density = float(spec.prune.density)
        elif spec.prune.enabled:
            print(f"[srcompress] stage prune: OBProx-SG on {teacher['arch']} for {spec.prune.steps} steps", flush=True)
            state.density = run_prune(spec, teacher, out, None)
            _stage_run(
                tracker,
                exp_id,
                parent,
                "prune",
                {"arch": teacher["arch"], "steps": spec.prune.steps, "lambda": spec.prune.lambda_},
                {"density": state.density, "seconds": time.time() - t0},
            )
        state.stages["prune"] = time.time() - t0
        state.save(state_path)
        if state.density is not None:
            tracker.log_metrics(parent, {"density": state.density})
            print(f"[srcompress] density d = {state.density:.4f}", flush=True)

    # [J4]
    if state.allocation is None and state.density is not None and spec.search.enqueue_paper_rule:
        density = state.density
        if density <= 0:
            # Pruning removed every deep weight (too strong a penalty for this teacher): the rule then asks for the
            # smallest architecture, which is what the smallest positive density gives.
            print("[srcompress] warning: pruning zeroed every deep weight; lower prune.lambda/lr", flush=True)
            density = 1e-6
        state.allocation = paper_allocation(spec, teacher, density)
        if state.allocation is not None:
            tracker.log_params(parent, {f"allocation.{k}": v for k, v in state.allocation.items()})
            state.save(state_path)
            print(f"[srcompress] paper-rule allocation: {state.allocation}", flush=True)

    # [J5]
    if spec.data.cache.enabled and state.cache_dir is None:
        t0 = time.time()
        state.cache_dir = build_cache(spec, teacher, out)
        state.stages["cache"] = time.time() - t0
        _stage_run(
            tracker,
            exp_id,
            parent,
            "cache",
            {"n_patches": spec.data.cache.n_patches, "path": state.cache_dir},
            {"seconds": state.stages["cache"]},
        )
        tracker.log_params(parent, {"cache_dir": state.cache_dir})
        state.save(state_path)

    # [J6]
    plan = plan_search(spec, teacher=teacher, state=state, tracking=tracking, out=out)
    callback = make_status_callback(plan)
    tuner, restored = make_tuner(plan, callbacks=[callback], resume=resume)
    print(
        f"[srcompress] search: {plan.num_samples} trials of {plan.student_arch} ({plan.algorithm}"
        f"{', restored' if restored else ''}); budget {plan.budget}",
        flush=True,
    )
    results = tuner.fit()

    # [J7]
    summary = finish(spec, plan, tracker, exp_id, parent, results, out)
    summary.update(density=state.density, allocation=state.allocation, seconds=time.time() - t_start)
    tracker.set_tags(parent, {STATUS_TAG: "completed"})
    tracker.end_run(parent)
    return summary


def paper_allocation(spec: Any, teacher: dict[str, Any], density: float) -> dict[str, Any] | None:
    """The paper's rule applied to the student family's reference size (the teacher if same family).

    Returns None (no seed, with a printed note) when neither applies: a student family other than EDSR/SwinIR
    whose teacher has no C/B knobs.
    """
    # deferred: torch and the model registry are heavy, and job.py loads with the light CLI
    from sr.allocate import allocate, allocate_arch
    from sr.models import family_of, resolve_knobs

    t_family, s_family = family_of(teacher["arch"]), family_of(spec.student.arch)
    # Different families (e.g. IMDN teacher, EDSR student): allocate from the family's baseline variant.
    baselines = {"edsr": "edsr_baseline", "swinir": "swinir_light"}
    if t_family == s_family or s_family in baselines:
        base = teacher["arch"] if t_family == s_family else baselines[s_family]
        alloc, _ = allocate_arch(base, density)
        return {"base_arch": base, "C": alloc.C, "L": alloc.L, "B": alloc.B, "density": density}
    # Other families (RFDN, IMDN-CLB students): the rule on the pruned teacher's own C/L/B, clamped to the space.
    k = resolve_knobs(teacher["arch"], **teacher.get("knobs", {}))
    if "C" not in k or "B" not in k:
        print(
            f"[srcompress] note: no paper-rule seed: teacher {teacher['arch']} has no C/B knobs to allocate from "
            f"for a {s_family} student",
            flush=True,
        )
        return None
    alloc = allocate(C=k["C"], L=k.get("L", 1), B=k["B"], density=density, family=t_family, heads=k.get("heads"))
    return {"base_arch": teacher["arch"], "C": alloc.C, "L": alloc.L, "B": alloc.B, "density": density}


def finish(spec: Any, plan: Any, tracker: Any, exp_id: str, parent: str, results: Any, out: Path) -> dict:
    """Counts, Pareto tagging and the final table."""
    from orchestrator.pareto import mark_pareto, pareto_models, query_trials

    df = query_trials(tracker, spec.experiment_name)
    if "parent_run_id" in df.columns:
        df = df[df["parent_run_id"] == parent]
    if len(df) and "status" in df.columns:
        # Every trial has ended once the Tuner returns: a run still "running" lost its trial (a driver killed
        # before Tune snapshotted it; the resumed search drew it again under a new run). Record it as such.
        from orchestrator.tracking import STATUS_TAG

        for run_id in df.loc[df["status"] == "running", "run_id"]:
            tracker.set_tags(run_id, {STATUS_TAG: "interrupted"})
            tracker.end_run(run_id, "KILLED")
        df = df.assign(status=df["status"].replace({"running": "interrupted"}))
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    objectives = [f"{k}:{m}" for k, m in plan.objectives]
    front = pareto_models(df, objectives=",".join(objectives)) if len(df) else df
    mark_pareto(tracker, spec.experiment_name, parent, ",".join(objectives))
    if len(front):
        from orchestrator.registry import register_pareto_models

        # Pareto members become registered (folded) models, tagged with their architecture and metrics.
        registered = register_pareto_models(tracker, spec.experiment_name, parent, objectives=",".join(objectives))
        uris = {r["run_id"]: r.get("model_uri") for r in registered}
        front = front.assign(model_uri=[uris.get(i) for i in front["run_id"]])
    tracker.log_metrics(parent, {f"trials_{k.replace('-', '_')}": v for k, v in counts.items()})
    # Over-budget draws the searcher answered itself are MLflow runs but not Ray trials.
    ray_infeasible = sum(1 for r in results if (getattr(r, "metrics", None) or {}).get("infeasible"))
    answered = max(0, int(counts.get("infeasible", 0)) - ray_infeasible)
    return {"counts": counts, "front": front, "trials": df, "ray_trials": len(results), "answered": answered}
