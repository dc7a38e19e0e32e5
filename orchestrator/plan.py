"""``srcompress plan JOB.yaml``: what ``run`` would do, without training anything or loading any weights.

It resolves the spec as ``run`` does and reports: the stages, the pruning schedule (``sr.prune_schedule``), the
trial count and per-trial resources (``orchestrator.search.trial_resources``), the concurrency, the storage and
tracking URIs, the budgets with how many configurations of the search space meet them (priced on the meta
device, ``sr.budget.price``) and the paper-rule seed (``orchestrator.job.paper_allocation``). A spec error that
``run``/``submit`` would refuse (a schedule without a Prox-SG phase, a budget no configuration meets) is the same
one-line error here; a path missing on this machine (teacher weights, data on the cluster's shared filesystem)
is only a warning, as the plan never reads it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ray

from orchestrator import storage
from orchestrator._preflight import prune_schedule
from orchestrator._ray_connect import connect_ray
from orchestrator.concurrency import autoscaler_max_resources, concurrency
from orchestrator.job import _budget, paper_allocation, plan_search
from orchestrator.search import SearchPlan, trial_resources
from orchestrator.tasks import teacher_ref
from search_spaces import JobSpec, Overrides, check_paths, job_space, load_job_spec, smallest_knobs, student_knobs
from search_spaces._space import is_range
from search_spaces._values import is_uri
from sr.budget import Budget, check_budget_reachable, is_feasible, price
from sr.errors import UserError
from sr.models import family_of, get_family, get_variant

__all__ = ["count_feasible", "make_plan", "print_plan", "trial_concurrency"]

# Published densities of the paper (REFERENCE.md §1): the seed is shown at them while the job's own is unknown.
_PUBLISHED_DENSITY = {"edsr": 0.03, "swinir": 0.089}
_MAX_GRID = 20_000  # larger spaces are not counted (each price is a meta-device model build)


def make_plan(
    spec_path: str | os.PathLike[str], *, address: str | None = None, overrides: Overrides | None = None
) -> dict[str, Any]:
    """The plan of a job spec (``overrides`` applied) as one JSON-ready dict (see the module docstring).

    Raises:
        UserError: the one-line spec errors ``run`` gives before it starts (bad YAML, schedule, budget).
    """
    spec = load_job_spec(spec_path, overrides)
    warnings = _missing_paths(spec)
    try:
        spec = check_paths(spec, spec_path)  # the fallbacks `run` applies (e.g. data.if_missing: builtin)
    except UserError:
        if not warnings:
            raise  # a defect of a path that is here (e.g. a folder without images): run refuses it too
    schedule = prune_schedule(spec, spec_path)
    space = job_space(spec)
    budget = _budget(spec)
    check_budget_reachable(spec.student.arch, smallest_knobs(spec, space), budget)
    cluster, grown = _cluster_resources(address)
    search = _search_plan(spec, cluster)
    teacher = teacher_ref(spec, spec.teacher.weights)
    return {
        "spec": str(spec_path),
        "name": spec.name,
        "stages": _stages(spec),
        "prune_schedule": None
        if schedule is None
        else {k.removeprefix("schedule."): v for k, v in schedule.as_params().items()},
        "trials": spec.search.num_samples,
        "per_trial_resources": trial_resources(search),
        "workers_per_trial": spec.resources.workers_per_trial,
        # What each of a trial's TorchTrainer workers holds (a one-worker trial trains in the trial itself).
        "per_worker_resources": {
            "CPU": search.cpus_per_worker,
            **({"GPU": search.gpus_per_worker} if search.use_gpu else {}),
        },
        "cluster": dict(cluster),
        "cluster_at_autoscaling_max": grown,
        "concurrency": trial_concurrency(search, cluster, grown),
        "storage": storage.join(spec.storage.path, spec.name),
        "tracking_uri": spec.tracking_uri,
        "budgets": _budgets(budget),
        "space": count_feasible(spec, space, budget),
        "paper_rule_seed": _seed(spec, teacher),
        "warnings": warnings,
    }


# -------------------------------------------------------------------------- what run resolves, one place each
def trial_concurrency(
    plan: SearchPlan, cluster: Mapping[str, float], grown: Mapping[str, float] | None
) -> dict[str, int]:
    """Trials at once: ``now`` on the cluster's present resources, ``at_autoscaling_max`` once the autoscaler has
    added every node it may (what Tune runs at once: ``orchestrator.concurrency``)."""
    now, at_max = concurrency(plan, cluster=cluster, at_max_resources=grown or {})
    return {"now": now, "at_autoscaling_max": at_max}


def _cluster_resources(address: str | None) -> tuple[dict[str, float], dict[str, float] | None]:
    """The cluster's resources now and at its autoscaling maximum (None: no autoscaler): ``address``'s
    (connecting to it), else the local Ray ``run`` would start."""
    if address in (None, "", "local"):
        import torch  # deferred: only the local case counts GPUs itself

        return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}, None
    connect_ray(address)
    try:
        now = {k: float(v) for k, v in ray.cluster_resources().items()}
        return now, autoscaler_max_resources()
    finally:
        ray.shutdown()


def _search_plan(spec: JobSpec, cluster: Mapping[str, float]) -> SearchPlan:
    """``run``'s SearchPlan, with ``use_gpu: auto`` decided from ``cluster`` (plan_search would ask Ray)."""
    if spec.resources.use_gpu == "auto":
        resources = spec.resources.model_copy(update={"use_gpu": cluster.get("GPU", 0) > 0})
        spec = spec.model_copy(update={"resources": resources})
    from orchestrator._job_state import JobState  # deferred: only the plan needs a blank state

    return plan_search(spec, teacher=teacher_ref(spec, None), state=JobState(), tracking=None, out=Path("."))


def _stages(spec: JobSpec) -> list[dict[str, Any]]:
    p, cache = spec.prune, spec.data.cache
    return [
        {"stage": "teacher", "arch": spec.teacher.arch, "weights": spec.teacher.weights},
        {
            "stage": "prune",
            "runs": p.runs,
            "note": "OBProx-SG fine-tune" if p.runs else f"density {p.density} given" if p.density else "skipped",
        },
        {"stage": "allocate", "runs": spec.search.enqueue_paper_rule and spec.student.method == "kd"},
        {"stage": "cache", "runs": cache.enabled},
        {
            "stage": "search",
            "student": spec.student.arch,
            "method": spec.student.method,
            "algorithm": spec.search.algorithm,
            "trials": spec.search.num_samples,
            "steps_per_trial": spec.training.steps,
        },
        {"stage": "twin", "runs": bool(spec.search.kd_twin)},
    ]


def _budgets(b: Budget) -> dict[str, Any]:
    return {
        "max_params": b.max_params,
        "max_macs": b.max_macs,
        "macs_convention": b.macs_convention,
        "max_latency_ms": b.max_latency_ms,
    }


def _seed(spec: JobSpec, teacher: Any) -> dict[str, Any] | None:
    """The paper rule's C/L/B: at ``prune.density`` when given, else at the paper's published density."""
    if not spec.search.enqueue_paper_rule or spec.student.method != "kd":
        return None
    density, source = spec.prune.density, "prune.density"
    if density is None:
        density, source = (
            _PUBLISHED_DENSITY.get(family_of(spec.teacher.arch)),
            "published (the job's comes from pruning)",
        )
    if density is None:
        return {"density": None, "note": "computed from the density the pruning stage measures"}
    seed = paper_allocation(spec, teacher, float(density))
    return None if seed is None else {**seed, "density_source": source}


def _missing_paths(spec: JobSpec) -> list[str]:
    """Paths the spec names that are not on this machine (the plan reads none of them)."""
    named: list[tuple[str, Any]] = [("teacher.weights", spec.teacher.weights)]
    named += [(f"data.train[{i}]", p) for i, p in enumerate(spec.data.train or [])]
    named += [("data.val", spec.data.val)] + [(f"data.test[{i}]", p) for i, p in enumerate(spec.data.test or [])]
    return [
        f"{key}: {p} is not on this machine (run needs it on every node that reads it)"
        for key, p in named
        if p is not None and not is_uri(str(p)) and not Path(str(p)).exists()
    ]


# ------------------------------------------------------------------------------------------ feasible configs
def _values(dim: Any) -> list[Any] | None:
    """Every value of a space dimension, or None for a continuous range."""
    if not is_range(dim):
        return [dim]
    if "choices" in dim:
        return list(dim["choices"])
    low, high, step = dim["low"], dim["high"], dim.get("step") or 1
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high, step)):
        return None
    return list(range(low, high + 1, step))


def count_feasible(spec: JobSpec, space: Mapping[str, Any], budget: Budget) -> dict[str, Any]:
    """How many architecture configurations of ``space`` meet ``budget`` (KD weights do not change the price).

    Params and MACs grow with C, L and B (as ``check_budget_reachable`` relies on), so along ``C`` the feasible
    values are a prefix: a binary search per combination of the other knobs, bounded by the prefixes of the cheaper
    neighbouring combinations, prices a few models per combination, not all.
    """
    arch = spec.student.arch
    knob_names = set(get_family(get_variant(arch).family).knobs) | (
        {"width"} if spec.student.method == "csd" else set()
    )
    dims = {k: _values(v) for k, v in space.items() if k in knob_names and k != "scale"}
    if any(v is None for v in dims.values()):
        return {"configurations": None, "feasible": None, "note": "a continuous size dimension: not counted"}
    # Sorted, so that along each knob the cost grows (choices may be listed in any order).
    values: dict[str, list[Any]] = {k: sorted(v) for k, v in dims.items() if v is not None}
    total = 1
    for v in values.values():
        total *= len(v)
    if total > _MAX_GRID:
        return {"configurations": total, "feasible": None, "note": f"more than {_MAX_GRID} configurations: not counted"}
    line = "C" if len(values.get("C", [])) > 1 else None
    cs = sorted(values.pop(line)) if line else [None]
    names = list(values)
    sizes = {"L", "B", "width"} & set(names)  # the knobs the price grows with (others, e.g. IMDN's distilled, may not)
    feasible = priced = 0

    def ok(point: dict[str, Any], c: Any) -> bool:
        nonlocal priced
        priced += 1
        point = {**point, line: c} if line else point
        knobs = student_knobs(point, arch=arch, scale=spec.data.scale, method=spec.student.method)
        return is_feasible(price(arch, **knobs), budget)

    bound: dict[tuple[int, ...], int] = {}  # feasible prefix length per combination (as value indices)
    for idx in itertools.product(*(range(len(values[n])) for n in names)):
        point = {n: values[n][i] for n, i in zip(names, idx, strict=True)}
        # A combination with one size knob a value lower costs less: its feasible prefix bounds this one's.
        hi = min(
            [len(cs)]
            + [bound[(*idx[:j], i - 1, *idx[j + 1 :])] for j, i in enumerate(idx) if i > 0 and names[j] in sizes]
        )
        bound[idx] = n = _feasible_prefix(cs[:hi], lambda c, point=point: ok(point, c))
        feasible += n
    return {
        "configurations": total,
        "feasible": feasible,
        "priced": priced,
        "dims": {**values, **({line: cs} if line else {})},
    }


def _feasible_prefix(items: Sequence[Any], ok: Any) -> int:
    """Length of the prefix of ``items`` on which the monotone predicate ``ok`` holds (binary search)."""
    lo, hi = 0, len(items)  # ok holds on items[:lo]; fails from items[hi] on
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(items[mid]):
            lo = mid + 1
        else:
            hi = mid
    return lo


# ----------------------------------------------------------------------------------------------------- print
def print_plan(plan: Mapping[str, Any]) -> None:
    """The plan as a few readable lines."""
    print(f"plan of {plan['spec']} (job {plan['name']}): nothing is trained")
    for s in plan["stages"]:
        rest = ", ".join(f"{k}={v}" for k, v in s.items() if k != "stage")
        print(f"  stage {s['stage']}: {rest}")
    sched = plan["prune_schedule"]
    if sched is not None:
        print(
            f"  pruning: {sched['steps']} steps of batch {sched['batch_size']} on {sched['n_images']} images; "
            f"{sched['batches_per_epoch']} batches/epoch, {sched['epochs']} epochs, Np {sched['np_epochs']}; "
            f"Prox-SG steps {sched['prox_steps']}, Orthant steps {sched['orthant_steps']} "
            f"(switch at step {sched['switch_step']})"
        )
    conc = plan["concurrency"]
    print(
        f"  trials: {plan['trials']}, each holding {plan['per_trial_resources']} with {plan['workers_per_trial']} "
        f"worker(s) of {plan['per_worker_resources']}; "
        f"at once: {conc['now']} now (cluster {plan['cluster']}), at the autoscaling maximum: "
        f"{conc['at_autoscaling_max'] if conc['at_autoscaling_max'] is not None else 'not known'}"
    )
    print(f"  storage: {plan['storage']}\n  tracking: {plan['tracking_uri']}")
    sp = plan["space"]
    print(f"  budgets: {plan['budgets']}; feasible configurations: {sp.get('feasible')} of {sp.get('configurations')}")
    print(f"  paper-rule seed: {plan['paper_rule_seed']}")
    for w in plan["warnings"]:
        print(f"  warning: {w}")
