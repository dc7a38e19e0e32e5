"""Multi-node Ray on one machine (``ray.cluster_utils.Cluster``): a 0-CPU head that holds the trial-driver resource
and two 1-CPU worker nodes, like ``cluster/local.sh`` and the real clusters.

(a) a 2-worker TorchTrainer spreads its workers over both nodes; (b) a 2-trial search (Tune + Optuna, one
TorchTrainer per trial, a real MLflow sqlite store) completes on that cluster.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from orchestrator.search import TRIAL_RESOURCE  # noqa: E402
from orchestrator.tasks import DataRef, ModelRef, TrialTemplate  # noqa: E402
from sr.distill import KDConfig  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MB = 1024 * 1024
# Set before any node starts: raylets pass their environment to the workers (Train controller included).
_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",  # else every ray.train.report blocks ~1.8 s (STACK_NOTES)
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


@pytest.fixture(scope="module")
def cluster():
    """Head (0 CPUs, the trial resource) + 2 worker nodes (1 CPU each); Ray is shut down afterwards."""
    from ray.cluster_utils import Cluster

    # Another test's local Ray (ray.init(address="local")) must not be the one we talk to.
    if ray.is_initialized():
        ray.shutdown()
    mp = pytest.MonkeyPatch()
    for key, value in _ENV.items():
        mp.setenv(key, value)
    limits = {"object_store_memory": 100 * MB, "memory": 1024 * MB}
    c = None
    try:
        t0 = time.time()
        c = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 0, "resources": {TRIAL_RESOURCE: 100}, "include_dashboard": False, **limits},
        )
        for _ in range(2):
            c.add_node(num_cpus=1, **limits)
        c.wait_for_nodes()
        ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
        print(f"cluster up in {time.time() - t0:.1f}s: {ray.cluster_resources()}")
        yield c
    finally:
        ray.shutdown()
        if c is not None:
            c.shutdown()
        mp.undo()


def test_cluster_shape(cluster) -> None:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    cpus = sorted(n["Resources"].get("CPU", 0) for n in nodes)
    assert cpus == [0, 1, 1], cpus
    heads = [n for n in nodes if n["Resources"].get(TRIAL_RESOURCE)]
    assert len(heads) == 1 and heads[0]["Resources"].get("CPU", 0) == 0


def test_torch_trainer_spreads_over_nodes(cluster, tmp_path: Path) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def _node_loop(config: dict) -> None:
        # Nested so cloudpickle ships it by value: the workers cannot import this test module.
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        node = ray.get_runtime_context().get_node_id()
        Path(config["out"], f"rank{rank}.json").write_text(json.dumps({"rank": rank, "node": node}))
        ray.train.report({"rank": rank})

    out = tmp_path / "ranks"
    out.mkdir()
    t0 = time.time()
    trainer = TorchTrainer(
        _node_loop,
        train_loop_config={"out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="spread", storage_path=str(tmp_path / "train")),
    )
    result = trainer.fit()
    assert result.error is None
    ranks = {json.loads(p.read_text())["rank"]: json.loads(p.read_text())["node"] for p in out.glob("rank*.json")}
    worker_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) == 1}
    print(f"TorchTrainer 2 workers in {time.time() - t0:.1f}s; rank -> node {ranks}")
    assert sorted(ranks) == [0, 1]
    assert ranks[0] != ranks[1]  # one 1-CPU worker per node: they cannot share one
    assert set(ranks.values()) == worker_nodes  # and neither lands on the 0-CPU head


def test_two_trial_search_on_cluster(cluster, tmp_path: Path) -> None:
    from orchestrator.search import SearchPlan, make_tuner
    from orchestrator.tracking import KIND_TAG, STATUS_TAG, Tracker, default_tracking_uri
    from orchestrator.trial_tracking import make_status_callback
    from sr.budget import Budget

    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri)
    exp = tracker.experiment_id("multinode", artifact_location=str(tmp_path / "mlartifacts"))
    parent = tracker.start_run(exp, "search_multinode", tags={KIND_TAG: "search"})
    plan = SearchPlan(
        name="multinode",
        storage=str(tmp_path),
        student_arch="edsr_mini",
        space={
            "C": {"low": 8, "high": 16, "step": 8},
            "L": 1,
            "B": {"low": 1, "high": 3},
            "w_gt": 0.1,
            "w_lap": 1.0,
            "w_hf": 1.0,
            "lr": 5e-4,
            "scale": 2,
        },
        budget=Budget(max_params=1_000_000),  # loose: both trials train
        objectives=(("psnr_y", "max"), ("macs_720p", "min")),
        algorithm="random",
        num_samples=2,
        seed=0,
        worker=TrialTemplate(
            # A random-weight teacher and the scikit-image fallback images: no files needed.
            method="kd",
            teacher=ModelRef("edsr_mini", {"scale": 2, "C": 8, "B": 1}),
            data=DataRef(train=None, val=None),
            threads=1,
            kd=KDConfig(
                steps=10, batch_size=4, hr_patch=32, scale=2, val_every=5, log_every=5, ckpt_every=5, ema_decay=None
            ),
        ),
        max_failures=0,
        tracking={"uri": uri, "experiment_id": exp, "parent_run_id": parent},
        scale=2,
    )
    t0 = time.time()
    tuner, restored = make_tuner(plan, callbacks=[make_status_callback(plan)])
    results = tuner.fit()
    seconds = time.time() - t0
    assert not restored
    print(f"2-trial search on 2 worker nodes in {seconds:.1f}s")
    assert len(results) == 2
    assert results.num_errors == 0, [r.error for r in results]
    for r in results:
        assert r.metrics.get("infeasible", 0) != 1
        assert r.metrics.get("done_training") == 1
        assert r.metrics["psnr_y"] > 10.0  # a real validation PSNR, not the infeasible marker 0.0
    runs = tracker.find_runs(exp, f"tags.`mlflow.parentRunId` = '{parent}'")
    trial_runs = [r for r in runs if r.data.tags.get(KIND_TAG) == "trial"]
    assert len(trial_runs) == 2
    assert {r.data.tags.get(STATUS_TAG) for r in trial_runs} == {"completed"}
    assert all("psnr_y" in r.data.metrics for r in trial_runs)
    # Trial drivers hold the head's custom resource; it is all free again once they end (released asynchronously).
    deadline = time.time() + 15
    while ray.available_resources().get(TRIAL_RESOURCE) != 100 and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get(TRIAL_RESOURCE) == 100
