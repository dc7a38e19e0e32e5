"""Concurrency on an autoscaling cluster (issue 10, defect 2): a search submitted to a cluster that starts with no
worker nodes must not run serially.

The cluster is Ray's fake multi-node autoscaler on this machine: a 0-CPU head started with ``ray start --head
--autoscaling-config`` (not ``AutoscalingCluster``: its ``start()`` runs ``ray stop --force``, which would kill
every Ray on the machine, and the wheel lacks its base config; STACK_NOTES) and a worker type with min 0, max 3
nodes of 1 CPU + 1 GPU (fake: no device is touched). ``concurrency`` reads the autoscaler's maximum (3 trials) while
nothing fits yet (now = 1); a 6-trial Tune search at that limit queues its trials as resource requests, the
autoscaler adds nodes, and the trials' own start/end times show >= 2 running at once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

ray = pytest.importorskip("ray")

from ray import tune  # noqa: E402

from orchestrator.concurrency import autoscaler_max_resources, concurrency  # noqa: E402
from orchestrator.search import SearchPlan, trial_resources  # noqa: E402
from sr.budget import Budget  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MB = 1024 * 1024
_BIN = Path(sys.executable).parent  # the venv's bin/: `ray` and the fake nodes' python
_ENV = {
    "RAY_FAKE_CLUSTER": "1",
    "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _autoscaler_config(gcs_address: str) -> dict:
    """The fake provider's config; empty cluster-launcher fields are required by its monitor (STACK_NOTES)."""
    return {
        "cluster_name": "srcompress-autoscale-test",
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "launch_multiple": True,  # start the requested nodes together, not one per update
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,  # not the default 6379, which another Ray on the machine may hold
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {
                "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 80 * MB},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 3,
            },
        },
        "head_node_type": "ray.head.default",
        "max_workers": 3,
        "upscaling_speed": 10,
        "idle_timeout_minutes": 5,
        "docker": {},
        "auth": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands")},
        **{k: [] for k in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},
    }


def _cluster_pids(temp_dir: str) -> list[int]:
    """This cluster's processes: every one carries its own temp dir on its command line."""
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(temp_dir in arg for arg in proc.info["cmdline"] or ()):
            pids.append(proc.info["pid"])
    return pids


def _stop(temp_dir: str) -> None:
    """Ends this cluster's processes by pid (never ``ray stop``, which ends every Ray on the machine)."""
    procs = [psutil.Process(p) for p in _cluster_pids(temp_dir)]
    for p in procs:
        p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        p.kill()  # raylets of fake nodes ignore SIGTERM while their GCS is gone


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    if ray.is_initialized():  # another test's local Ray must not be the one we talk to
        ray.shutdown()
    tmp = tmp_path_factory.mktemp("autoscale")
    temp_dir = f"/tmp/srcas_{os.getpid()}_{tmp.name}"  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    gcs = f"{ray._private.services.get_node_ip_address()}:{port}"
    config = tmp / "autoscaler.json"
    config.write_text(json.dumps(_autoscaler_config(gcs)))
    mp = pytest.MonkeyPatch()
    for key, value in _ENV.items():
        mp.setenv(key, value)
    mp.setenv("PATH", f"{_BIN}:{os.environ['PATH']}")
    try:
        t0 = time.time()
        subprocess.run(
            [str(_BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=0", f"--temp-dir={temp_dir}",
             f"--autoscaling-config={config}", "--include-dashboard=false", f"--object-store-memory={80 * MB}"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        ray.init(address=gcs, logging_level="WARNING", log_to_driver=False)
        print(f"head up in {time.time() - t0:.1f}s: {ray.cluster_resources()}")
        yield tmp
    finally:
        ray.shutdown()
        _stop(temp_dir)
        mp.undo()


def _plan(storage: Path) -> SearchPlan:
    """A one-worker GPU trial (1 CPU + 1 GPU), 6 trials, no concurrency set in the spec."""
    return SearchPlan(
        name="autoscale",
        storage=str(storage),
        student_arch="edsr",
        space={},
        budget=Budget(),
        objectives=(("val_psnr_y", "max"),),
        num_samples=6,
        use_gpu=True,
        gpus_per_worker=1.0,
    )


def _sleepy_trial(config: dict) -> None:
    """A trial that holds its node 4 s; sent by value (the fake nodes' workers cannot import this test module)."""
    start = time.time()
    time.sleep(4.0)
    ray.tune.report({"start": start, "end": time.time(), "node": ray.get_runtime_context().get_node_id()})


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an end at the same instant as a start does not overlap it)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    peak = running = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_search_grows_with_the_autoscaler(autoscaling_cluster: Path) -> None:
    plan = _plan(autoscaling_cluster)
    grown = autoscaler_max_resources()
    assert grown is not None and grown.get("GPU") == 3 and grown.get("CPU") == 3, grown
    now, at_max = concurrency(plan)
    print(f"concurrency now={now} at_max={at_max}")
    assert (now, at_max) == (1, 3)  # nothing fits on the 0-CPU head; 3 GPU nodes at the maximum

    t0 = time.time()
    tuner = tune.Tuner(
        tune.with_resources(_sleepy_trial, trial_resources(plan)),
        tune_config=tune.TuneConfig(num_samples=plan.num_samples, max_concurrent_trials=at_max),
        # A trial whose fake node dies under load is retried, as a search's failure.max_failures does.
        run_config=tune.RunConfig(
            name="autoscale",
            storage_path=str(autoscaling_cluster / "tune"),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=2),
        ),
    )
    results = tuner.fit()
    rows = [r.metrics for r in results]
    assert len(rows) == 6 and not results.errors
    peak = peak_overlap([(m["start"], m["end"]) for m in rows])
    nodes = {m["node"] for m in rows}
    print(f"peak concurrency: {peak} trials at once on {len(nodes)} autoscaled nodes ({time.time() - t0:.0f}s)")
    assert peak >= 2 and len(nodes) >= 2


def test_spec_concurrency_wins() -> None:
    plan = _plan(Path("/nonexistent"))
    cluster = {"CPU": 8.0, "GPU": 1.0}
    assert concurrency(plan, cluster=cluster, at_max_resources={"CPU": 8.0, "GPU": 4.0}) == (1, 4)
    assert concurrency(plan, cluster=cluster, at_max_resources={}) == (1, 1)  # no autoscaler: what fits now
    assert concurrency(replace(plan, max_concurrent_trials=5), cluster=cluster, at_max_resources={}) == (1, 5)
    assert peak_overlap([(0, 2), (1, 3), (2, 4)]) == 2
