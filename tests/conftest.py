"""Shared fixtures: the ``../shared`` data/weights (skipped with a reason when absent) and small settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SRCOMPRESS_SHARED", REPO.parent / "shared"))

# Tests run on 2 CPUs shared with Ray workers; one intra-op thread per process keeps them from thrashing.
torch.set_num_threads(1)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the project's ../shared folder); absent on this machine")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def set5_dir() -> Path:
    return _need(SHARED / "data" / "Set5")


@pytest.fixture(scope="session")
def t91_dir() -> Path:
    return _need(SHARED / "data" / "T91")


@pytest.fixture(scope="session")
def imdn_x2_weights() -> Path:
    return _need(SHARED / "weights" / "IMDN_x2.pth")


# ------------------------------------------------------------------------------------------ Ray and job specs
FAST_RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


@pytest.fixture
def ray_local():
    """A real local Ray cluster (2 CPUs + the trial-driver resource), started once and shared by tests."""
    import ray

    from orchestrator.search import TRIAL_RESOURCE

    for k, v in FAST_RAY_ENV.items():
        os.environ.setdefault(k, v)
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            resources={TRIAL_RESOURCE: 100},
            object_store_memory=300 * 1024**2,
            log_to_driver=False,
        )
    yield ray


def write_tiny_job(tmp_path: Path, **overrides) -> Path:
    """A tiny, self-contained job spec (no ../shared): a random 8-channel EDSR teacher saved to tmp_path,
    scikit-image images, 2-trial search with a few steps. ``overrides`` are dotted keys, e.g.
    ``{"search.num_samples": 4}``."""
    import yaml

    from sr.checkpoint import save_checkpoint
    from sr.models import build

    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pth"
    if not teacher.exists():
        save_checkpoint(teacher, {"params": build("edsr_mini", C=8, B=1).state_dict()})
    spec = {
        "name": "tiny",
        "seed": 0,
        "teacher": {"arch": "edsr_mini", "weights": str(teacher), "set": {"C": 8, "B": 1}},
        "student": {
            "arch": "edsr_mini",
            "space": {"C": {"low": 8, "high": 16, "step": 8}, "L": 1, "B": {"low": 1, "high": 3}},
            "kd_space": {"w_gt": 0.1, "w_lap": 1.0, "w_hf": 1.0, "lr": 1e-3},
        },
        "budgets": {"max_params": "60k"},
        "data": {"train": None, "val": None, "scale": 2, "hr_patch": 32, "cache": {"enabled": True, "n_patches": 16}},
        "prune": {"enabled": False, "density": 0.05},
        "training": {
            "steps": 20,
            "batch_size": 4,
            "val_every": 10,
            "log_every": 10,
            "ckpt_every": 10,
            "ema_decay": 0.0,
        },
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "use_gpu": False},
        "search": {"algorithm": "random", "num_samples": 2, "scheduler": {"type": "none"}},
        "storage": {"path": str(tmp_path / "runs")},
        "failure": {"max_failures": 1},
    }
    for key, value in overrides.items():
        node = spec
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def tiny_job(tmp_path):
    return lambda **overrides: write_tiny_job(tmp_path, **overrides)


# ------------------------------------------------------------------------------------------ test order
def pytest_collection_modifyitems(config, items) -> None:
    """Modules that start a Ray cluster run first, each kept whole (module fixtures stay shared). ``make test``
    spreads whole modules over 2 xdist workers; with the long Ray modules queued first, the short ones fill the
    gaps at the end instead of one long module running alone after everything else."""
    heavy = {item.module.__name__ for item in items if item.get_closest_marker("ray") is not None and item.module}
    items.sort(key=lambda item: item.module is None or item.module.__name__ not in heavy)  # stable: order kept


def last_step(tracking_uri: str, run_id: str, metric: str = "val_psnr_y") -> int:
    """The last training step a run logged ``metric`` at (a step is each metric's step, not a metric of its own)."""
    from orchestrator.tracking import Tracker

    history = Tracker(tracking_uri).client.get_metric_history(run_id, metric)
    return max((m.step for m in history), default=-1)
