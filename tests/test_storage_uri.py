"""``storage.path`` as a URI (issue 10, defect 3): the demo-sized job on ``file://`` and on ``s3://``.

(a) On a ``ray.cluster_utils.Cluster`` of 2 nodes, the tiny job (pruning, teacher cache, 2 trials) runs with its
    storage on a ``file://`` URI: Ray gets the URI, the density comes back in the prune run's metrics, the pruned
    weights, cache and job state are in the store; at job start one task per node checked the shared inputs, and
    a path a node cannot see is a one-line error naming the node and the path.
(b) On ``s3://`` served by a local S3-compatible server (tests/_s3_server.py, in memory), the driver is SIGKILLed
    mid-search and ``srcompress run --resume`` finishes with exactly N trials (none lost, none twice); nothing of the
    job is written to a local folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from _s3_server import serve
from conftest import write_tiny_job

MB = 1024 * 1024
_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PYTHONUNBUFFERED": "1",
    # Any value: the test server checks no signature; pyarrow's S3 client wants credentials to exist.
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _trial_ids(uri: str) -> Counter:
    """MLflow trial runs per trial id (a duplicate counts 2) and their statuses."""
    from mlflow.tracking import MlflowClient

    from orchestrator.trial_tracking import TRIAL_ID_TAG

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    if exp is None:
        return Counter()
    runs = client.search_runs([exp.experiment_id], "tags.`srcompress.kind` = 'trial'")
    return Counter(r.data.tags[TRIAL_ID_TAG] for r in runs)


def _statuses(uri: str) -> Counter:
    from orchestrator.results.pareto import query_trials

    df = query_trials(uri, "tiny")
    return Counter(df["status"]) if len(df) else Counter()


# --------------------------------------------------------------------------------- the store's operations (fast)
@pytest.mark.parametrize("kind", ["folder", "file", "s3"])
def test_store_operations(kind: str, tmp_path: Path, monkeypatch) -> None:
    """join / write / read / list / upload / download / local_copy / delete on a folder, file:// and s3:// (the
    test server: ranged reads, listings, multipart upload of a 12 MB file)."""
    from orchestrator import storage

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.setenv(key, _ENV[key])
    with contextlib.ExitStack() as stack:
        if kind == "s3":
            import pyarrow.fs as pafs

            endpoint = stack.enter_context(serve())
            pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir("b")
            base = f"s3://b/p?endpoint_override={endpoint}&scheme=http"
            assert storage.join(base, "x", "y.json") == f"s3://b/p/x/y.json?endpoint_override={endpoint}&scheme=http"
        else:
            base = str(tmp_path / "store") if kind == "folder" else f"file://{tmp_path}/store"
        state = storage.join(base, "job", "state.json")
        assert not storage.exists(state) and storage.listdir(storage.join(base, "job")) == []
        storage.write_text(state, "{}")
        storage.write_text(state, '{"a": 1}')  # replaced whole
        assert storage.read_text(state) == '{"a": 1}' and storage.is_file(state)
        src = tmp_path / "src"
        (src / "sub").mkdir(parents=True)
        big = os.urandom(12 * MB)
        (src / "sub" / "big.bin").write_bytes(big)
        (src / "w.pth").write_bytes(b"weights")
        storage.upload(src, storage.join(base, "job", "cache"))
        assert storage.listdir(storage.join(base, "job")) == ["cache", "state.json"]
        back = storage.download(storage.join(base, "job", "cache"), tmp_path / "back")
        assert (back / "sub" / "big.bin").read_bytes() == big and (back / "w.pth").read_bytes() == b"weights"
        copy = storage.local_copy(storage.join(base, "job", "cache", "w.pth"))
        assert copy is not None and Path(copy).read_bytes() == b"weights"
        assert (storage.local_path(base) is None) == (kind == "s3")  # a remote file is copied, a local one is not
        with storage.staged_dir(storage.join(base, "job", "out")) as local:
            (local / "density.json").write_text("0.5")
        assert storage.read_text(storage.join(base, "job", "out", "density.json")) == "0.5"
        storage.delete(storage.join(base, "job", "cache"))
        assert storage.listdir(storage.join(base, "job")) == ["out", "state.json"]


# ------------------------------------------------------------------------------------------ (a) file:// on 2 nodes
@pytest.fixture
def two_nodes(monkeypatch):
    """Head (1 CPU, the trial-driver resource) + 1 worker node (1 CPU); shut down after the test."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from orchestrator.search import TRIAL_RESOURCE

    if ray.is_initialized():
        ray.shutdown()
    for key, value in _ENV.items():
        monkeypatch.setenv(key, value)
    limits = {"object_store_memory": 100 * MB, "memory": 1024 * MB}
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {TRIAL_RESOURCE: 100}, "include_dashboard": False, **limits},
    )
    try:
        c.add_node(num_cpus=1, **limits)
        c.wait_for_nodes()
        ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.mark.ray
@pytest.mark.mlflow
@pytest.mark.slow
def test_file_uri_job_on_two_nodes_and_the_node_path_check(two_nodes, tmp_path: Path) -> None:
    import ray

    from orchestrator import storage
    from orchestrator._job_state import JobState
    from orchestrator._preflight import check_node_paths
    from orchestrator.job import run_job
    from search_spaces import check_paths, load_job_spec
    from sr.errors import UserError

    store = f"file://{tmp_path}/store"
    spec_path = write_tiny_job(
        tmp_path,
        **{
            "storage.path": store,
            "tracking.uri": str(tmp_path / "track"),  # a folder: its mlflow.db
            # np_epochs 1: a Prox-SG epoch, then Orthant steps (4 steps are only 2 epochs: epochs/10 rounds to 0)
            "prune": {"enabled": True, "steps": 4, "batch_size": 2, "lr": 1e-3, "np_epochs": 1},
        },
    )
    t0 = time.time()
    summary = run_job(spec_path, address=two_nodes.address)
    print(f"file:// job on 2 nodes in {time.time() - t0:.0f}s: {summary['counts']}, density {summary['density']}")
    assert summary["counts"] == {"completed": 2} and summary["failed"] == 0

    job = storage.join(store, "tiny")
    state = JobState.load(storage.join(job, "job_state.json"))
    density = json.loads(storage.read_text(storage.join(job, "prune", "density.json")))["density"]
    assert state.density == summary["density"] == pytest.approx(density)  # reported == written by rank 0
    assert storage.is_file(storage.join(job, "prune", "pruned.pth"))
    assert state.cache_dir is not None and state.cache_dir.startswith(f"{job}/cache/")
    assert storage.listdir(state.cache_dir)  # the teacher cache every trial copied to its node
    assert "tuner.pkl" in storage.listdir(storage.join(job, "tune", "tiny"))
    assert state.tune_state_digests  # recorded through the URI, for --resume

    # The shared-input check ran on both nodes; a path one node cannot see is one line naming node and path.
    spec = check_paths(load_job_spec(spec_path), spec_path)
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert set(check_node_paths(spec, spec_path)) == alive and len(alive) == 2
    weights = Path(spec.teacher.weights)
    moved = weights.with_suffix(".away")
    weights.rename(moved)  # gone after the driver's own check: as on a node without the mount
    try:
        with pytest.raises(UserError) as err:
            check_node_paths(spec, spec_path)
    finally:
        moved.rename(weights)
    line = str(err.value)
    print(f"missing on a node: {line}")
    assert len(line.splitlines()) == 1 and "teacher.weights" in line and str(weights) in line
    assert "node " in line and "cannot see" in line and "every Ray node shares" in line


# ------------------------------------------------------------------------- (b) s3://, driver killed, --resume
@pytest.fixture
def ray_tmp():
    d = tempfile.mkdtemp(prefix="srs3", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _start(spec: Path, cwd: Path, log: Path, env: dict, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--num-cpus", "2", *args]
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=cwd)


def _wait_completed(uri: str, n: int, proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    end = time.time() + timeout_s
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the driver ended (exit {proc.returncode}) too soon:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(Exception):  # the store may not exist yet, or be locked for a moment
            if _statuses(uri)["completed"] >= n:
                return
        time.sleep(1)
    raise AssertionError(f"fewer than {n} trials completed in {timeout_s}s:\n{log.read_text()[-3000:]}")


@pytest.mark.ray
@pytest.mark.mlflow
@pytest.mark.slow
def test_s3_job_survives_a_killed_driver_with_exactly_n_trials(tmp_path: Path, ray_tmp: str, monkeypatch) -> None:
    import pyarrow.fs as pafs

    from orchestrator import storage

    n = 4
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.setenv(key, _ENV[key])  # this process reads the bucket too
    env = {**os.environ, **_ENV, "RAY_TMPDIR": ray_tmp}
    with serve() as endpoint:
        pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir("runs")
        store = f"s3://runs/jobs?endpoint_override={endpoint}&scheme=http"
        uri = f"sqlite:///{tmp_path / 'track' / 'mlflow.db'}"
        spec = write_tiny_job(
            tmp_path,
            **{"storage.path": store, "tracking.uri": uri, "search.num_samples": n, "search.enqueue_paper_rule": False},
        )

        # -- the driver alone is SIGKILLed once a trial has completed (the others still pending or running) ----------
        proc = _start(spec, cwd, tmp_path / "a.log", env)
        try:
            _wait_completed(uri, 1, proc, tmp_path / "a.log")
            left = psutil.Process(proc.pid).children(recursive=True)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(left, timeout=15)
        for p in alive:  # only the processes this driver started, by pid
            with contextlib.suppress(psutil.Error):
                p.kill()
        before = _statuses(uri)
        print(f"killed the driver with trials {dict(before)}")
        assert before["completed"] < n  # killed mid-search
        job = storage.join(store, "tiny")
        assert {"job_state.json", "tune", "cache"} <= set(storage.listdir(job))

        # -- --resume finishes the search: exactly N trials, one MLflow run each --------------------------------------
        proc = _start(spec, cwd, tmp_path / "b.log", env, "--resume")
        try:
            rc = proc.wait(timeout=400)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        log = (tmp_path / "b.log").read_text()
        assert rc == 0, log[-3000:]
        ids, statuses = _trial_ids(uri), _statuses(uri)
        print(f"after --resume: {dict(statuses)}; runs per trial id {sorted(ids.values())}")
        assert statuses == Counter({"completed": n}) and len(ids) == n and set(ids.values()) == {1}
        assert "tuner.pkl" in storage.listdir(storage.join(job, "tune", "tiny"))
    assert not list(cwd.iterdir())  # nothing of the job landed in a local folder (no "s3:" directory)
