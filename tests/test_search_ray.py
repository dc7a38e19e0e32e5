"""The search on a real local Ray cluster with a real MLflow store: budgets, fault tolerance, driver resume."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import last_step

from orchestrator.results.pareto import query_trials

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def _trials(storage: Path, name: str = "tiny"):
    return query_trials(f"sqlite:///{storage / 'mlflow.db'}", name)


def test_no_infeasible_architecture_is_trained(ray_local, tiny_job, tmp_path):
    """Acceptance 7 (search.skip_infeasible: false, TorchTrainer trials): count trainings vs sampled configs;
    every infeasible config is a trial that stays untrained."""
    from orchestrator.job import run_job
    from sr.budget import price

    budget = 30_000
    spec = tiny_job(
        **{
            "budgets.max_params": budget,
            "student.space": {"C": {"low": 8, "high": 24, "step": 8}, "L": 1, "B": {"low": 1, "high": 3}},
            "search.num_samples": 5,
            "search.enqueue_paper_rule": False,
            "search.skip_infeasible": False,
            "resources.trial_runner": "trainer",
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


def test_searcher_answers_infeasible_draws_and_every_trial_trains(ray_local, tiny_job, tmp_path):
    """The default (skip_infeasible, in-trial training): over-budget draws are answered by the searcher and
    recorded as infeasible runs that were never trained; all num_samples trials train feasible students."""
    from mlflow.tracking import MlflowClient

    from orchestrator.job import run_job
    from orchestrator.trial_tracking import ANSWERED_TAG
    from sr.budget import price

    budget = 30_000
    spec = tiny_job(
        **{
            "budgets.max_params": budget,
            "student.space": {"C": {"low": 8, "high": 24, "step": 8}, "L": 1, "B": {"low": 1, "high": 3}},
            "search.num_samples": 4,
            "search.enqueue_paper_rule": False,
        }
    )
    summary = run_job(spec)
    df = summary["trials"]
    trained, infeasible = df[df["status"] == "completed"], df[df["status"] == "infeasible"]
    print(f"trained {len(trained)}, answered infeasible {len(infeasible)}, statuses {summary['counts']}")
    assert len(trained) == 4 and summary["ray_trials"] == 4  # no trial slot went to an infeasible draw
    assert len(infeasible) >= 1  # C=24 with B>=2 is over budget: random search draws some
    assert not (tmp_path / "runs" / "tiny" / "train").exists()  # one worker: trained inside the Tune trial
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    for _, r in df.iterrows():
        p = price("edsr_mini", C=int(r["C"]), L=1, B=int(r["B"]), scale=2).params
        assert int(r["params"]) == p and (p > budget) == (r["status"] == "infeasible")
        run = client.get_run(r["run_id"])
        if r["status"] == "infeasible":
            assert run.data.tags.get(ANSWERED_TAG) == "searcher"
            assert "val_psnr_y" not in run.data.metrics  # never trained
            assert not client.list_artifacts(r["run_id"])
        else:
            # Trained to the end: the last validation is at step 20 (the step is each metric's step, not a metric).
            assert client.get_metric_history(r["run_id"], "val_psnr_y")[-1].step == 20
    parent = client.get_run(df["parent_run_id"].iloc[0])
    # Every answered draw is counted; each distinct over-budget configuration has one run.
    assert parent.data.metrics["draws_answered_infeasible"] >= len(infeasible)
    assert not infeasible.duplicated(["C", "B"]).any()
    # The Optuna study persists beside the job (issue 13): every draw, infeasible ones marked by constraints.
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'runs' / 'tiny' / 'optuna.db'}")
    status = {t.number: t.user_attrs.get("srcompress_status") for t in study.trials}
    assert sum(s == "completed" for s in status.values()) == 4 and "RUNNING" not in {t.state.name for t in study.trials}
    over = [t for t in study.trials if status[t.number] == "infeasible"]
    assert len(over) >= len(infeasible) and all(max(t.constraints.values()) > 0 for t in over)


def _kill_after_checkpoints(
    ckpt_glob: str, root: Path, min_checkpoints: int, killed: list[int], match: str, timeout_s: float = 120
) -> None:
    """SIGKILL every descendant process whose command line holds ``match`` once ``min_checkpoints`` exist
    under ``root``."""
    end = time.time() + timeout_s
    while time.time() < end:
        ckpts = list(root.glob(ckpt_glob)) if root.exists() else []
        if len(ckpts) >= min_checkpoints:
            # Only this test's own Ray (descendants of this process): other Ray clusters may share the machine.
            for proc in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    cmd = " ".join(proc.cmdline())
                    if match in cmd and "TrainController" not in cmd:
                        os.kill(proc.pid, signal.SIGKILL)
                        killed.append(proc.pid)
            if killed:
                return
        time.sleep(0.2)


# One 300-step trial that checkpoints every 20 steps, restarted at most twice: long enough to be killed mid-run.
LONG_TRIAL = {
    "search.num_samples": 1,
    "search.enqueue_paper_rule": False,
    "student.space": {"C": 8, "L": 1, "B": 2},
    "training.steps": 300,
    "training.val_every": 20,
    "training.log_every": 20,
    "training.ckpt_every": 20,
    "failure.max_failures": 2,
}


def _run_killing(spec: Path, ckpt_glob: str, root: Path, match: str) -> tuple[dict, list[int]]:
    """``run_job(spec)`` while a thread SIGKILLs the ``match`` processes once 2 checkpoints exist under ``root``."""
    from orchestrator.job import run_job

    killed: list[int] = []
    killer = threading.Thread(target=_kill_after_checkpoints, args=(ckpt_glob, root, 2, killed, match), daemon=True)
    killer.start()
    summary = run_job(spec)
    killer.join(timeout=1)
    return summary, killed


def test_killed_worker_resumes_from_checkpoint(ray_local, tiny_job, tmp_path):
    """Acceptance 3: a Train worker is SIGKILLed mid-trial; FailureConfig restarts the group, which resumes from
    its last checkpoint (step > 0) and finishes."""
    spec = tiny_job(**LONG_TRIAL, **{"resources.trial_runner": "trainer"})
    summary, killed = _run_killing(spec, "*/checkpoint_*", tmp_path / "runs" / "tiny" / "train", "RayTrainWorker")
    assert killed, "the test never found a Train worker to kill"
    row = summary["trials"].iloc[0]
    print(f"killed worker pids {killed}; trial {row['run_name']} resumed_from_step={row['resumed_from_step']}")
    assert row["status"] == "completed"
    assert row["resumed_from_step"] > 0
    assert last_step(summary["tracking_uri"], row["run_id"]) == 300
    assert row["run_name"].startswith("edsr_C8L1B2_x2")  # fixed dimensions of the space reach the trial


def _wait_for_finished_trials(
    storage: Path, n: int, proc: subprocess.Popen, log_path: Path, timeout_s: float = 300
) -> None:
    end = time.time() + timeout_s
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(
                f"the driver ended (exit {proc.returncode}) before it could be killed; its log ends:\n"
                + log_path.read_text()[-3000:]
            )
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
            _wait_for_finished_trials(storage, 2, proc, tmp_path / "first.log")
        finally:
            with contextlib.suppress(ProcessLookupError):
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
    # One Optuna study across the kill: nothing left RUNNING, each trained trial told once.
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{storage / 'tiny' / 'optuna.db'}")
    assert "RUNNING" not in {t.state.name for t in study.trials}
    assert sum(t.user_attrs.get("srcompress_status") == "completed" for t in study.trials) == num_samples


def test_killed_trial_process_resumes_from_checkpoint(ray_local, tiny_job, tmp_path):
    """The in-trial runner (one worker, the default): the Tune trial's process is SIGKILLed mid-training; Tune's
    FailureConfig restarts the trial, which resumes from its last checkpoint and finishes in the same MLflow run."""
    spec = tiny_job(**LONG_TRIAL)
    summary, killed = _run_killing(spec, "*/*/checkpoint_*", tmp_path / "runs" / "tiny" / "tune", "ImplicitFunc")
    assert killed, "the test never found a trial process to kill"
    df = summary["trials"]
    assert len(df) == 1  # the restarted trial reused its run
    row = df.iloc[0]
    print(f"killed trial pids {killed}; trial {row['run_name']} resumed_from_step={row['resumed_from_step']}")
    assert row["status"] == "completed"
    assert row["resumed_from_step"] > 0
    assert last_step(summary["tracking_uri"], row["run_id"]) == 300
