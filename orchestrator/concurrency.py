"""How many search trials run at once: now, and once an autoscaling cluster has grown to its maximum.

Tune is given the larger figure (``search.max_concurrent_trials`` when the spec sets it): the trials that do not fit
yet wait as pending resource requests (placement groups), which is what makes Ray's autoscaler add nodes. A
figure taken from the resources present when the Tuner is built would be 1 on a cluster whose GPU workers start
at zero replicas, and the search would run serially.

The autoscaler's maximum is read from Ray:
  1. the cluster config the autoscaler reports to the GCS (autoscaler v2, KubeRay):
     ``ray._private.state.state.get_max_resources_from_cluster_config()``;
  2. else the config file of the v1 autoscaler (``ray up`` / ``ray start --autoscaling-config``), named on the
     command line of its monitor process (pid in the GCS's ``__autoscaling_status``), readable on the head node
     where the job's driver runs, or ``~/ray_bootstrap_config.yaml`` there;
  3. else no autoscaler is known and the maximum is what the cluster has now.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
import ray
import ray._private.state  # autoscaler_max_resources reads the cluster config the GCS holds
import yaml

log = logging.getLogger(__name__)

_BOOTSTRAP_CONFIG = Path.home() / "ray_bootstrap_config.yaml"  # where `ray up` puts the config on the head


def trial_demand(plan: Any) -> dict[str, float]:
    """CPUs/GPUs one trial occupies on worker nodes (its own, or its TorchTrainer workers'); the trial-driver
    custom resource of a TorchTrainer trial lives on the head and does not limit concurrency."""
    workers = 1 if plan.in_trial else plan.workers_per_trial
    demand = {"CPU": workers * plan.cpus_per_worker}
    if plan.use_gpu and plan.gpus_per_worker:
        demand["GPU"] = workers * plan.gpus_per_worker
    return demand


def trials_that_fit(demand: Mapping[str, float], resources: Mapping[str, float]) -> int:
    """Whole trials of ``demand`` that ``resources`` hold (pooled over nodes; the figure Tune's limit needs)."""
    counts = [math.floor(float(resources.get(k, 0)) / v + 1e-9) for k, v in demand.items() if v > 0]
    return min(counts) if counts else sys.maxsize


def _node_types_max(config: Mapping[str, Any]) -> dict[str, float]:
    """Resources of a v1 autoscaler config at its maximum: every worker type at ``max_workers`` nodes (the
    cluster-wide ``max_workers`` caps the node count), plus the head."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    cap = int(config.get("max_workers", sys.maxsize))
    total: dict[str, float] = {}
    for name, node_type in types.items():
        count = 1 if name == head else min(int(node_type.get("max_workers", 0)), cap)
        for key, value in (node_type.get("resources") or {}).items():
            total[key] = total.get(key, 0.0) + count * float(value)
    return total


def _v1_config_path() -> Path | None:
    """The v1 autoscaler's config file, when this node runs its monitor (the head) or holds `ray up`'s copy."""
    from ray.experimental.internal_kv import _internal_kv_get  # deferred: needs a connected Ray

    status = _internal_kv_get(b"__autoscaling_status")
    pid = json.loads(status).get("monitor_pid") if status else None
    if pid:
        try:
            for arg in psutil.Process(int(pid)).cmdline():
                if arg.startswith("--autoscaling-config="):
                    return Path(arg.split("=", 1)[1])
        except (psutil.Error, ValueError):  # the monitor runs on another node, or has just restarted
            pass
    return _BOOTSTRAP_CONFIG if _BOOTSTRAP_CONFIG.exists() else None


def autoscaler_max_resources() -> dict[str, float] | None:
    """Resources of the connected cluster at its autoscaling maximum, or None when no autoscaler is known."""
    try:
        reported = ray._private.state.state.get_max_resources_from_cluster_config()
    except Exception as exc:  # an older GCS without the autoscaler state service
        log.debug("no cluster config in the GCS: %s", exc)
        reported = None
    if reported:
        return {k: float(v) for k, v in reported.items()}
    path = _v1_config_path()
    if path is None:
        return None
    try:
        config = yaml.safe_load(path.read_text())  # JSON is YAML too
    except (OSError, yaml.YAMLError) as exc:
        log.warning("cannot read the autoscaler config %s (%s); concurrency from the present nodes only", path, exc)
        return None
    return _node_types_max(config) if isinstance(config, dict) else None


def concurrency(
    plan: Any,
    *,
    cluster: Mapping[str, float] | None = None,
    at_max_resources: Mapping[str, float] | None = None,
) -> tuple[int, int]:
    """Trials at once ``(now, at_max)``: what the cluster's present resources hold, and what it can hold at its
    autoscaling maximum (never less than now). Both are at least 1 and at most ``plan.num_samples``; the spec's
    ``max_concurrent_trials``, when set, is ``at_max`` and caps ``now``. Tune runs ``at_max`` at once.

    Args:
        plan: the search plan (``orchestrator.search.SearchPlan``).
        cluster: present resources; default ``ray.cluster_resources()`` of the connected cluster.
        at_max_resources: resources at the autoscaling maximum; default ``autoscaler_max_resources()``.
    """
    cluster = ray.cluster_resources() if cluster is None else cluster
    grown = autoscaler_max_resources() if at_max_resources is None else at_max_resources
    demand = trial_demand(plan)
    n = plan.num_samples
    now = max(1, min(trials_that_fit(demand, cluster), n))
    if plan.max_concurrent_trials:
        return min(now, plan.max_concurrent_trials), plan.max_concurrent_trials
    at_max = max(now, min(trials_that_fit(demand, grown), n)) if grown else now
    return now, at_max


__all__ = ["autoscaler_max_resources", "concurrency", "trial_demand", "trials_that_fit"]
