"""The shipped GPU specs (edsr/swinir/imdn_cdism.yaml), scaled down by ``search_spaces/overrides/cpu_smoke.yaml``,
run end to end through ``srcompress run --override ... --address <cluster>`` on a ``ray.cluster_utils.Cluster``:
a 0-CPU head holding the trial-driver resource and 2 worker nodes of 2 CPUs, so each trial's 2 DDP ranks (gloo)
and the 2 trials at once can only run on the worker nodes.

Per spec: the prune run's MLflow params show Prox-SG steps > 0 and the switch at Np epochs (Np = epochs/10), every
trial run completed, and the Ray Train workers lived on the worker nodes. Times are printed. Measured on this
2-CPU machine while other engineers' tests ran (load average ~6): edsr 88-107 s, swinir 134-178 s (the slowest),
imdn 68-127 s, the module 5.7-7.1 min: over the ~3 minutes aimed at. Each job starts three 2-rank Ray Train runs
(pruning, then 2 trials at once), ~20 s of start-up each on 2 CPUs, which the tiny step counts cannot shorten.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from orchestrator.cli import main  # noqa: E402
from orchestrator.search import TRIAL_RESOURCE  # noqa: E402
from orchestrator.tracking import KIND_TAG, STATUS_TAG, Tracker, default_tracking_uri  # noqa: E402
from search_spaces import load_job_spec, path  # noqa: E402
from tests.conftest import FAST_RAY_ENV  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

OVERLAY = str(Path(__file__).resolve().parents[1] / "search_spaces" / "overrides" / "cpu_smoke.yaml")
GPU_SPECS = ("edsr_cdism", "swinir_cdism", "imdn_cdism")
MB = 1024 * 1024
# Set before any node starts: raylets pass their environment to the workers (Train controller included).
_ENV = {**FAST_RAY_ENV, "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}


@pytest.fixture(scope="module")
def cluster():
    """Head (0 CPUs, the trial resource) + 2 worker nodes (2 CPUs each); only this cluster is shut down after."""
    from ray.cluster_utils import Cluster  # deferred: after importorskip, like the rest of ray

    if ray.is_initialized():  # another module's local Ray must not be the one the job attaches to
        ray.shutdown()
    mp = pytest.MonkeyPatch()
    for key, value in _ENV.items():
        mp.setenv(key, value)
    limits = {"object_store_memory": 100 * MB, "memory": 1536 * MB}
    c = None
    try:
        c = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 0, "resources": {TRIAL_RESOURCE: 100}, "include_dashboard": False, **limits},
        )
        workers = {c.add_node(num_cpus=2, **limits).node_id for _ in range(2)}
        c.wait_for_nodes()
        ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
        yield c, workers
    finally:
        ray.shutdown()
        if c is not None:
            c.shutdown()
        mp.undo()


def _train_workers() -> dict[str, str]:
    """Ray Train worker actors ever started -> their node (the GCS actor table keeps dead actors)."""
    # ray.util.state needs the dashboard, which this cluster does not start; the GCS table is what it reads
    actors = ray._private.state.actors()  # noqa: SLF001
    return {k: a["Address"]["NodeID"] for k, a in actors.items() if "TrainWorker" in a.get("ActorClassName", "")}


@pytest.mark.parametrize("name", GPU_SPECS)
def test_gpu_spec_scaled_down_runs_on_two_worker_nodes(name, cluster, tmp_path, capsys) -> None:
    c, worker_nodes = cluster
    spec_file = str(path(name))
    sets = ["--set", f"storage.path={tmp_path}"]
    spec = load_job_spec(spec_file)
    before = _train_workers()
    t0 = time.time()
    rc = main(["run", spec_file, "--override", OVERLAY, *sets, "--address", c.address])
    seconds = time.time() - t0
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    assert "pruning schedule:" in out  # printed at job start

    tracker = Tracker(default_tracking_uri(tmp_path))
    runs = tracker.find_runs(tracker.experiment_id(spec.experiment_name))
    (prune,) = [r for r in runs if r.data.tags.get(KIND_TAG) == "prune"]
    p = prune.data.params
    prox, switch, np_epochs, epochs, bpe = (
        int(p[f"schedule.{k}"]) for k in ("prox_steps", "switch_step", "np_epochs", "epochs", "batches_per_epoch")
    )
    assert p["arch"] == spec.teacher.arch  # the spec's own family and teacher, only smaller
    assert prox > 0 and int(p["schedule.orthant_steps"]) > 0
    assert np_epochs == epochs // 10 >= 1 and switch == np_epochs * bpe == prox
    assert int(p["schedule.n_images"]) == 4

    # Over-budget draws are answered by the searcher and recorded as infeasible runs, never trained.
    trials = [r for r in runs if r.data.tags.get(KIND_TAG) == "trial" and r.data.tags.get(STATUS_TAG) != "infeasible"]
    assert len(trials) == 2  # search.num_samples of the overlay
    assert {r.data.tags.get(STATUS_TAG) for r in trials} == {"completed"}
    # A real validation, not the infeasible marker 0.0 (4 KD steps from random init: low, but measured).
    assert all(0 < r.data.metrics.get("psnr_y", 0) < 100 for r in trials)
    assert all(r.data.params.get("arch", spec.student.arch) == spec.student.arch for r in trials)
    started = {k: node for k, node in _train_workers().items() if k not in before}
    used = set(started.values())
    assert len(started) >= 2 * 2 and used <= worker_nodes, (started, worker_nodes)  # 2 trials x 2 ranks
    print(
        f"{name}: {seconds:.0f}s; prune {p['schedule.steps']} steps, {epochs} epochs of {bpe} batches, Np {np_epochs}, "
        f"Prox-SG steps {prox}, switch at step {switch}; trials {[r.data.tags.get(STATUS_TAG) for r in trials]}, "
        f"psnr_y {[round(r.data.metrics['psnr_y'], 2) for r in trials]}; {len(started)} Train workers on "
        f"{len(used)} worker node(s)"
    )
