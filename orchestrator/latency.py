"""Latency priced before training, like MACs: [L1] one Ray task per architecture times it on a node of the target kind.

Latency depends on the architecture, not on the weights, so the searcher prices a draw before any trial starts
(``orchestrator.search.BudgetedOptunaSearch``): ``time_latency`` sends [L1] ``_time_on_node`` (a thin shell over
``sr.latency.price_latency_ms``) to a node that offers the spec's ``budgets.latency_resources`` and carries its
``budgets.latency_label_selector`` (``cuda`` asks for a GPU), and ``LatencyPricer`` keeps each architecture's
figure, so a repeated draw is not timed again. Its cache is part of the searcher's pickled state, so a resumed
search keeps it.

What a trial's MLflow run records of it: the metrics ``latency_ms``/``latency_iqr_ms`` and the tags
``srcompress.latency_*`` (device, device name, threads, dtype, memory format, LR shape, torch version, and the node
that timed it); ``pareto --device`` and the report read ``srcompress.latency_device``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray

from sr.complexity import lr_shape_for
from sr.errors import ConfigError, UserError
from sr.latency import price_latency_ms

# Untimed passes before each format's probe, then timed single passes of the faster format (median and IQR over
# these): 2 x (1 + 1) + 1 + 5 = 10 forward passes per architecture, seconds even for a big model on a CPU.
WARMUP, REPEATS = 1, 5
TAG_PREFIX = "srcompress.latency_"


@dataclass(frozen=True)
class LatencyTarget:
    """Where and how a draw's latency is timed (frozen: it crosses the Ray boundary unchanged)."""

    device: str = "cpu"
    threads: int = 1
    dtype: str = "float32"
    lr_shape: tuple[int, int] = (360, 640)
    resources: tuple[tuple[str, float], ...] = ()  # Ray resources the timing task holds
    label_selector: tuple[tuple[str, str], ...] = ()  # Ray node labels the timing node must carry
    wait_s: float = 600.0  # how long to wait for such a node before a one-line error

    def task_options(self) -> dict[str, Any]:
        """Ray task options: only what the spec names (default none, so a busy cluster cannot starve the timing of
        a CPU); CUDA timing holds one GPU unless the spec says otherwise (a task without one sees no GPU)."""
        res = dict(self.resources)
        if self.device == "cuda":
            res.setdefault("GPU", 1.0)
        opts: dict[str, Any] = {"num_cpus": res.pop("CPU", 0), "num_gpus": res.pop("GPU", 0), "resources": res}
        if self.label_selector:
            opts["label_selector"] = dict(self.label_selector)
        return opts


def latency_target(spec: Any) -> LatencyTarget | None:
    """The spec's latency target, or None when neither an objective nor a budget needs latency."""
    b = spec.budgets
    if b.max_latency_ms is None and not any(o.metric == "latency_ms" for o in spec.objectives):
        return None
    shape = b.latency_lr_shape or lr_shape_for(b.macs_convention, spec.data.scale)
    return LatencyTarget(
        device=b.latency_device,
        threads=b.latency_threads,
        dtype=b.latency_dtype,
        lr_shape=(int(shape[0]), int(shape[1])),
        resources=tuple(sorted(b.latency_resources.items())),
        label_selector=tuple(sorted(b.latency_label_selector.items())),
        wait_s=b.latency_wait_s,
    )


@ray.remote(max_retries=1)
def _time_on_node(arch: str, knobs: dict[str, Any], target: LatencyTarget) -> dict[str, Any]:
    """[L1] Time ``arch``/``knobs`` on this node (random weights, folded, the faster memory format)."""
    r = price_latency_ms(
        arch,
        knobs,
        target.lr_shape,
        device=target.device,
        threads=target.threads,
        dtype=target.dtype,
        warmup=WARMUP,
        repeats=REPEATS,
    )
    return {**r.as_dict(), "node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}


def time_latency(arch: str, knobs: Mapping[str, Any], target: LatencyTarget) -> dict[str, Any]:
    """[L1] The latency of one architecture, timed by a Ray task on a node of the target kind.

    A node that never comes (within ``wait_s``) or CUDA asked for where torch sees none is a one-line error.
    """
    opts = target.task_options()
    ref = _time_on_node.options(**opts).remote(arch, dict(knobs), target)
    try:
        return ray.get(ref, timeout=target.wait_s)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        want = {k: v for k, v in opts.items() if v}
        raise ConfigError(
            f"no node offering {want} came up within {target.wait_s:g} s to time latency; add such a node, or change "
            "budgets.latency_resources / latency_label_selector (or raise budgets.latency_wait_s)"
        ) from None
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, UserError):
            raise e.cause from None
        raise


class LatencyPricer:
    """Each architecture's latency, timed once (``timed`` counts the Ray tasks sent)."""

    def __init__(self, target: LatencyTarget) -> None:
        self.target = target
        self.cache: dict[str, dict[str, Any]] = {}
        self.timed = 0

    def price(self, arch: str, knobs: Mapping[str, Any]) -> dict[str, Any]:
        key = json.dumps([arch, dict(knobs)], sort_keys=True, default=str)
        if key not in self.cache:
            self.cache[key] = time_latency(arch, knobs, self.target)
            self.timed += 1
        return self.cache[key]


def latency_metrics(measured: Mapping[str, Any]) -> dict[str, float]:
    """The run metrics of a timing (ms): ``latency_ms`` is the median (the objective and the budget's value)."""
    return {"latency_ms": float(measured["median_ms"]), "latency_iqr_ms": float(measured["iqr_ms"])}


def latency_tags(measured: Mapping[str, Any]) -> dict[str, str]:
    """What a latency figure means: device, threads, dtype, format, LR shape, torch version, and where it ran."""
    h, w = measured["lr_shape"]
    fields = ("device", "device_name", "threads", "dtype", "memory_format", "torch_version", "node_id", "hostname")
    return {**{TAG_PREFIX + f: str(measured[f]) for f in fields}, TAG_PREFIX + "lr_shape": f"{h}x{w}"}


def check_latency_reachable(
    arch: str, smallest_knobs: Mapping[str, Any], target: LatencyTarget, max_latency_ms: float | None
) -> dict[str, Any]:
    """Time the space's smallest corner before the search (the cheapest point, as for params and MACs): the
    target node exists and works, and the latency budget is reachable, else a one-line error."""
    measured = time_latency(arch, smallest_knobs, target)
    if max_latency_ms is not None and measured["median_ms"] > max_latency_ms:
        raise ConfigError(
            f"no architecture in the search space meets the latency budget: max_latency_ms {max_latency_ms:g} < "
            f"smallest achievable {measured['median_ms']:.3g} ms on {measured['device']} (at {dict(smallest_knobs)}); "
            "raise budgets.max_latency_ms or lower the space's minimums"
        )
    return measured
