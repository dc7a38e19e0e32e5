"""The search on a real local Ray cluster with a real MLflow store: budgets, fault tolerance, driver resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.pareto import query_trials

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def _trials(storage: Path, name: str = "tiny"):
    return query_trials(f"sqlite:///{storage / 'mlflow.db'}", name)


def test_no_infeasible_architecture_is_trained(ray_local, tiny_job, tmp_path):
    """Acceptance 7: count trainings vs sampled configs; every infeasible config stays untrained."""
    from orchestrator.job import run_job
    from sr.budget import price

    budget = 30_000
    spec = tiny_job(
        **{
            "budgets.max_params": budget,
            "student.space": {"C": {"low": 8, "high": 24, "step": 8}, "L": 1, "B": {"low": 1, "high": 3}},
            "search.num_samples": 5,
            "search.enqueue_paper_rule": False,
        }
    )
    summary = run_job(spec)
    df = summary["trials"]
    assert len(df) == 5  # every sampled config is visible in MLflow, infeasible ones included
    trained_dirs = {p.name for p in (tmp_path / "runs" / "tiny" / "train").iterdir() if p.is_dir()}
    infeasible = df[df["status"] == "infeasible"]
    trained = df[df["status"] == "completed"]
    print(f"sampled {len(df)}, trained {len(trained)}, infeasible {len(infeasible)}, Train runs {len(trained_dirs)}")
    assert len(infeasible) >= 1 and len(trained) >= 1
    assert trained_dirs == set(trained["run_name"])  # a Train run exists for exactly the feasible trials
    for _, r in df.iterrows():
        p = price("edsr_mini", C=int(r["C"]), L=1, B=int(r["B"]), scale=2).params
        assert int(r["params"]) == p
        assert (p > budget) == (r["status"] == "infeasible")


def _kill_train_worker_after(ckpt_root: Path, min_checkpoints: int, killed: list[int], timeout_s: float = 120) -> None:
    end = time.time() + timeout_s
    while time.time() < end:
        ckpts = list(ckpt_root.glob("*/checkpoint_*")) if ckpt_root.exists() else []
        if len(ckpts) >= min_checkpoints:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                if "RayTrainWorker" in cmd and "TrainController" not in cmd:
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
            if killed:
                return
        time.sleep(0.2)


def test_killed_worker_resumes_from_checkpoint(ray_local, tiny_job, tmp_path):
    """Acceptance 3: a Train worker is SIGKILLed mid-trial; FailureConfig restarts the group, which resumes from
    its last checkpoint (step > 0) and finishes."""
    from orchestrator.job import run_job

    spec = tiny_job(
        **{
            "search.num_samples": 1,
            "search.enqueue_paper_rule": False,
            "student.space": {"C": 8, "L": 1, "B": 2},
            "training.steps": 300,
            "training.val_every": 20,
            "training.log_every": 20,
            "training.ckpt_every": 20,
            "failure.max_failures": 2,
        }
    )
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_train_worker_after, args=(tmp_path / "runs" / "tiny" / "train", 2, killed), daemon=True
    )
    killer.start()
    summary = run_job(spec)
    killer.join(timeout=1)
    assert killed, "the test never found a Train worker to kill"
    row = summary["trials"].iloc[0]
    print(f"killed worker pids {killed}; trial {row['run_name']} resumed_from_step={row['resumed_from_step']}")
    assert row["status"] == "completed"
    assert row["resumed_from_step"] > 0
    assert int(row["step"]) == 300
    assert row["run_name"].startswith("edsr_C8L1B2_x2")  # fixed dimensions of the space reach the trial


def _wait_for_finished_trials(storage: Path, n: int, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    end = time.time() + timeout_s
    while time.time() < end:
        assert proc.poll() is None, "the driver ended before it could be killed"
        if (storage / "mlflow.db").exists():
            try:
                df = _trials(storage)
            except Exception:  # the driver may hold a write lock for a moment
                df = None
            if df is not None and len(df) and (df["status"].isin(["completed", "infeasible"])).sum() >= n:
                return
        time.sleep(1)
    raise AssertionError(f"fewer than {n} trials finished within {timeout_s}s")


def test_driver_killed_then_resume_runs_each_trial_once(tiny_job, tmp_path):
    """Acceptance 4: SIGKILL the driver after >= 2 finished trials; --resume ends with exactly num_samples
    trials, none duplicated (MLflow child runs and Tune's results agree)."""
    num_samples = 5
    spec = tiny_job(**{"search.num_samples": num_samples, "search.enqueue_paper_rule": False, "training.steps": 40})
    storage = tmp_path / "runs"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--num-cpus", "2"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            _wait_for_finished_trials(storage, 2, proc)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
            proc.wait()
    first = _trials(storage)
    print(f"before resume: {len(first)} trial runs, statuses {first['status'].value_counts().to_dict()}")
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    df = _trials(storage)
    print(f"after resume: {len(df)} trial runs, statuses {df['status'].value_counts().to_dict()}")
    assert len(df) == num_samples
    assert df["parent_run_id"].nunique() == 1
    assert set(df["status"]) <= {"completed", "infeasible"}
    # Trials finished before the kill keep their runs (same run ids, not re-created).
    finished_before = set(first[first["status"].isin(["completed", "infeasible"])]["run_id"])
    assert finished_before <= set(df["run_id"])
    state = json.loads((storage / "tiny" / "job_state.json").read_text())
    assert state["parent_run_id"] == df["parent_run_id"].iloc[0]
