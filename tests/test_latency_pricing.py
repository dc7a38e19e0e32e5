"""Latency priced before training (issue 10 defect 5): a Ray task on the node the spec names times each drawn
architecture once; the searcher answers over-latency draws; a latency objective works without a latency budget.

One ``ray.cluster_utils.Cluster`` for the module: a head with 2 CPUs (the trials) and a 0-CPU worker node that
alone offers the custom resource ``latency_node`` (the "target kind" the spec names).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import FAST_RAY_ENV

from sr.errors import ConfigError
from sr.latency import price_latency_ms

ray = pytest.importorskip("ray")

MB = 1024 * 1024
LATENCY_NODE = "latency_node"
# Set before any node starts: raylets pass their environment to the workers.
_ENV = {**FAST_RAY_ENV, "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}


# ------------------------------------------------------------------------------------------------ without Ray
def test_plain_pricing_records_its_context() -> None:
    r = price_latency_ms("edsr_mini", {"C": 8, "B": 1, "scale": 2}, (16, 16), threads=1, warmup=1, repeats=3)
    assert r.median_ms > 0 and r.iqr_ms >= 0 and r.repeats == 3
    assert (r.device, r.threads, r.dtype, r.torch_version) == ("cpu", 1, "float32", torch.__version__)
    assert r.memory_format in ("nchw", "channels_last") and r.lr_shape == (16, 16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU exists")
def test_cuda_without_a_gpu_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match="no CUDA device") as err:
        price_latency_ms("edsr_mini", {"C": 8, "B": 1, "scale": 2}, (16, 16), device="cuda")
    assert "\n" not in str(err.value) and "latency_device: cpu" in str(err.value)


def test_spec_checks_the_latency_target(tmp_path: Path) -> None:
    from conftest import write_tiny_job

    from search_spaces import load_job_spec
    from search_spaces._errors import SpecError

    ok = load_job_spec(write_tiny_job(tmp_path, **{"budgets.latency_resources": {LATENCY_NODE: 1}}))
    assert dict(ok.budgets.latency_resources) == {LATENCY_NODE: 1.0}
    bad = {
        "budgets.latency_resources": ({"latency_device": "cuda", "latency_resources": {LATENCY_NODE: 1}}, "add GPU"),
        "budgets.latency_dtype": ({"latency_dtype": "float16"}, "cuda only"),
    }
    for key, (budgets, fix) in bad.items():
        with pytest.raises(SpecError, match=fix) as err:
            load_job_spec(write_tiny_job(tmp_path, budgets={"max_params": "60k", **budgets}))
        assert key in str(err.value)


def test_task_options_hold_only_what_the_spec_names() -> None:
    from orchestrator.latency import LatencyTarget

    assert LatencyTarget().task_options() == {"num_cpus": 0, "num_gpus": 0, "resources": {}}
    gpu = LatencyTarget(device="cuda", label_selector=(("ray.io/accelerator-type", "H100"),)).task_options()
    assert gpu["num_gpus"] == 1 and gpu["label_selector"] == {"ray.io/accelerator-type": "H100"}
    node = LatencyTarget(resources=(("CPU", 2.0), (LATENCY_NODE, 1.0))).task_options()
    assert (node["num_cpus"], node["resources"]) == (2.0, {LATENCY_NODE: 1.0})


# -------------------------------------------------------------------------------------------------- on a cluster
@pytest.fixture(scope="module")
def cluster():
    """Head (2 CPUs, the trial-driver resource) + one 0-CPU node offering ``latency_node``; shut down afterwards."""
    from ray.cluster_utils import Cluster

    from orchestrator.search import TRIAL_RESOURCE

    if ray.is_initialized():  # another module's local Ray must not be the one we talk to
        ray.shutdown()
    mp = pytest.MonkeyPatch()
    for key, value in _ENV.items():
        mp.setenv(key, value)
    limits = {"object_store_memory": 100 * MB, "memory": 1024 * MB}
    c = None
    try:
        c = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 2, "resources": {TRIAL_RESOURCE: 100}, "include_dashboard": False, **limits},
        )
        node = c.add_node(num_cpus=0, resources={LATENCY_NODE: 1}, **limits)
        c.wait_for_nodes()
        ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
        yield node.node_id
    finally:
        ray.shutdown()
        if c is not None:
            c.shutdown()
        mp.undo()


def _searcher_plan(tmp_path: Path):
    from orchestrator.latency import LatencyTarget
    from orchestrator.search import SearchPlan
    from sr.budget import Budget

    return SearchPlan(
        name="lat",
        storage=str(tmp_path),
        student_arch="edsr_mini",
        # C=8 is about 60x cheaper than C=64 (MACs): one side of the budget each, whatever the machine's load.
        space={"C": {"choices": [8, 64]}, "L": 1, "B": 4, "w_gt": 0.1, "scale": 2},
        budget=Budget(max_latency_ms=1.0),
        objectives=(("psnr_y", "max"), ("latency_ms", "min")),
        algorithm="random",
        num_samples=4,
        seed=3,
        latency=LatencyTarget(lr_shape=(32, 32), resources=((LATENCY_NODE, 1.0),), wait_s=60),
    )


def test_over_latency_draws_are_answered_by_the_searcher(cluster, tmp_path: Path) -> None:
    from orchestrator.latency import time_latency
    from orchestrator.search import make_searcher

    plan = _searcher_plan(tmp_path)
    assert plan.latency is not None
    cheap = time_latency("edsr_mini", {"C": 8, "L": 1, "B": 4, "scale": 2}, plan.latency)["median_ms"]
    dear = time_latency("edsr_mini", {"C": 64, "L": 1, "B": 4, "scale": 2}, plan.latency)["median_ms"]
    print(f"latency at LR 32x32 on the latency node: C=8 {cheap:.2f} ms, C=64 {dear:.2f} ms")
    limit = (cheap * dear) ** 0.5  # between the two
    searcher = make_searcher(replace(plan, budget=replace(plan.budget, max_latency_ms=limit)))
    for i in range(4):
        cfg = searcher.suggest(f"t{i}")
        assert cfg["C"] == 8 and cfg["_price"]["latency_ms"] <= limit  # every trial handed out meets the budget
        assert cfg["_tags"]["srcompress.latency_node_id"] == cluster  # timed on the node the spec names
        searcher.on_trial_complete(f"t{i}", result={"psnr_y": 30.0, "latency_ms": cfg["_price"]["latency_ms"]})
    assert searcher.answered["infeasible"] >= 1  # random search draws C=64 (seeded): answered, never a trial
    study = searcher._ot_study
    over = [t for t in study.trials if (t.constraints or {}).get("latency_ms", 0) > 0]
    assert len(over) == searcher.answered["infeasible"] and all(t.state.name == "COMPLETE" for t in over)
    # Each architecture is timed once, however often it is drawn.
    assert searcher._latency.timed == 2 < len(study.trials)


def test_latency_objective_without_budget_completes(cluster, tmp_path: Path) -> None:
    from conftest import write_tiny_job

    from orchestrator.job import run_job
    from orchestrator.tracking import KIND_TAG, Tracker

    spec = write_tiny_job(
        tmp_path,
        **{
            "objectives": ["psnr_y", "latency_ms"],  # no budgets.max_latency_ms
            "budgets.latency_resources": {LATENCY_NODE: 1},
            "budgets.latency_lr_shape": [32, 32],
            "search.num_samples": 2,
            "training.steps": 10,
        },
    )
    t0 = time.time()
    summary = run_job(spec)
    print(f"2-trial job with a latency objective in {time.time() - t0:.1f}s: {summary['counts']}")
    assert summary["counts"] == {"completed": 2} and summary["failed"] == 0
    tracker = Tracker(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = [r for r in tracker.find_runs(tracker.experiment_id("tiny"), "") if r.data.tags.get(KIND_TAG) == "trial"]
    assert len(runs) == 2
    for run in runs:
        tags = run.data.tags
        assert tags["srcompress.latency_device"] == "cpu"
        assert (tags["srcompress.latency_threads"], tags["srcompress.latency_dtype"]) == ("1", "float32")
        assert tags["srcompress.latency_torch_version"] == torch.__version__
        assert tags["srcompress.latency_lr_shape"] == "32x32"
        assert tags["srcompress.latency_node_id"] == cluster  # the node offering latency_node, not the head
        assert run.data.metrics["latency_ms"] > 0
    # Optuna was told every result (today's bug: latency_ms missing from results left its trials RUNNING).
    exp_dir = tmp_path / "runs" / "tiny" / "tune" / "tiny"
    searcher = _restored_searcher(exp_dir)
    states = [t.state.name for t in searcher._ot_study.trials]
    assert states and set(states) == {"COMPLETE"}, states


def _restored_searcher(exp_dir: Path):
    """The job's searcher as Tune saved it (its Optuna study inside)."""
    from orchestrator.search import BudgetedOptunaSearch

    searcher = BudgetedOptunaSearch()
    searcher.restore_from_dir(str(exp_dir))
    return searcher
