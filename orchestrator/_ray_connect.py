"""[J1] Connecting a job's driver to Ray: the environment it runs under and the trial-driver resource.

Kept apart from ``orchestrator.job`` so ``orchestrator.submit`` can forward ``RAY_ENV`` to a submitted job, and
``orchestrator.search`` can name ``TRIAL_RESOURCE``, without importing the job's stages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

from sr.errors import UserError

TRIAL_RESOURCE = "srcompress_trial"  # custom resource held by each trial driver (not by its Train workers)

# Ray settings measured in ../shared/STACK_NOTES.md: without a short health-check interval every
# ray.train.report blocks ~1.8 s; the preemption watcher and metrics add ~7 s of start-up per Train run.
RAY_ENV = {
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


def connect_ray(address: str | None, *, num_cpus: int | None = None, verbose: bool = False) -> None:
    """Start a local Ray (default) or connect to ``address``; one-line error when it cannot be reached."""
    import ray  # deferred: `srcompress submit` imports RAY_ENV from here and never starts Ray itself

    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    if address not in (None, "", "local", "auto"):
        _check_address(address)
    if ray.is_initialized():
        return
    if address in (None, "", "local"):
        with _loopback_node():
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


# Ray 2.60 turns a node IP of 127.0.0.1 given to ray.init into the host's outward IP, and then binds GCS, raylet,
# workers and agents to every interface. Only a "cluster-less" node (this switch, meant for macOS/Windows) takes the
# loopback address as its IP, and each of its servers then listens on 127.0.0.1 only.
_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While the embedded cluster starts: its node IP is 127.0.0.1, so nothing of it listens on another interface.

    The environment variable reaches the processes ray.init spawns; the module constant is the driver's copy, read
    when ray was imported. Both are put back afterwards so a later ``--address`` connection in this process finds
    its outward IP as usual."""
    from ray._private import ray_constants  # deferred: `srcompress submit` imports this module without Ray

    saved_env, saved_const = os.environ.get(_SINGLE_NODE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_NODE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_const
        if saved_env is None:
            os.environ.pop(_SINGLE_NODE_ENV, None)
        else:
            os.environ[_SINGLE_NODE_ENV] = saved_env


def _check_address(address: str) -> None:
    """Fail in seconds, with the fix, instead of letting ray.init retry an unreachable address for minutes."""
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


__all__ = ["RAY_ENV", "TRIAL_RESOURCE", "connect_ray"]
