"""Resume and faults: nothing lost, nothing duplicated (issue items 6-11).

Tiny real jobs on a real local Ray and a real MLflow sqlite store. After each fault (a SIGKILLed driver, Ctrl-C, a
killed trial, a changed spec or experiment, resuming a finished job) the job ends with exactly N trials: one
MLflow child run per trial id, and one registered model version per Pareto run.
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
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import last_step

from orchestrator.cli import main
from orchestrator.results.pareto import query_trials

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------- helpers
def _uri(storage: Path) -> str:
    return f"sqlite:///{storage / 'mlflow.db'}"


def _trials(storage: Path):
    return query_trials(_uri(storage), "tiny")


def _trial_ids(storage: Path, experiment: str = "tiny") -> Counter:
    """How many MLflow trial runs hold each trial id tag (a duplicate shows as a count of 2)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.trial_tracking import TRIAL_ID_TAG

    client = MlflowClient(_uri(storage))
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`srcompress.kind` = 'trial'")
    return Counter(r.data.tags[TRIAL_ID_TAG] for r in runs)


def _versions(storage: Path) -> list:
    from mlflow.tracking import MlflowClient

    return list(MlflowClient(_uri(storage)).search_model_versions("name = 'tiny_pareto'"))


def _assert_exactly(storage: Path, n: int) -> None:
    """``n`` trials in MLflow, one run per trial id, every one finished; no run registered twice."""
    df, ids = _trials(storage), _trial_ids(storage)
    assert len(df) == n and len(ids) == n and set(ids.values()) == {1}, (len(df), ids)
    assert set(df["status"]) <= {"completed", "infeasible"}, df["status"].value_counts().to_dict()
    runs = [v.run_id for v in _versions(storage)]
    assert len(runs) == len(set(runs)), f"a run registered twice: {runs}"


def _edit(spec: Path, **changes) -> str:
    """Apply dotted-key ``changes`` to the spec file; returns its previous text (to put back)."""
    text = spec.read_text()
    data = yaml.safe_load(text)
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    return text


@pytest.fixture
def ray_tmp():
    """A Ray temp dir of this test only (short: Ray's socket paths must fit 107 bytes), removed afterwards."""
    d = tempfile.mkdtemp(prefix="srrt", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _env(ray_tmp: str) -> dict[str, str]:
    return {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        "RAY_TMPDIR": ray_tmp,
    }


def _start(spec: Path, log: Path, env: dict, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--num-cpus", "2", *args]
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=REPO)


def _wait_finished(storage: Path, n: int, proc: subprocess.Popen, log: Path, timeout_s: float = 240) -> None:
    """Until ``n`` trials of the running driver have finished (read from MLflow, as a user would)."""
    end = time.time() + timeout_s
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the driver ended (exit {proc.returncode}) too soon:\n{log.read_text()[-3000:]}")
        if (storage / "mlflow.db").exists():
            with contextlib.suppress(Exception):  # the driver may hold a write lock for a moment
                df = _trials(storage)
                if len(df) and df["status"].isin(["completed", "infeasible"]).sum() >= n:
                    return
        time.sleep(1)
    raise AssertionError(f"fewer than {n} trials finished within {timeout_s}s:\n{log.read_text()[-3000:]}")


def _reap(procs: list[psutil.Process], grace_s: float = 10) -> list[str]:
    """Wait for the processes a killed driver left; SIGKILL the ones still alive after ``grace_s`` (only these,
    by pid) and return what they were."""
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    names = []
    for p in alive:
        with contextlib.suppress(psutil.Error):
            names.append(" ".join(p.cmdline())[:60] or p.name())
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    return names


def _run(spec: Path, log: Path, env: dict, *args: str, timeout_s: float = 300) -> tuple[int, str]:
    proc = _start(spec, log, env, *args)
    try:
        rc = proc.wait(timeout=timeout_s)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return rc, log.read_text()


# ------------------------------------------------------------------------------ items 9, 11, 6, 7, 10 (one job)
def test_kill_ctrl_c_changed_spec_and_finished_resume_keep_exactly_n_trials(tiny_job, tmp_path, ray_tmp):
    """One job of N trials through every driver-side fault: SIGKILL of the driver alone, resume, Ctrl-C
    (exit 130, parent run interrupted), resume to the end; then a renamed experiment and a changed spec are
    refused with one line, and resuming the finished job trains and registers nothing new."""
    from mlflow.tracking import MlflowClient

    # 8 short trials, 2 at a time: when the Ctrl-C lands (after one more trial has finished), trials are still
    # pending even on an idle machine, so the search is really interrupted (with 4, all could end first).
    n = 8
    spec = tiny_job(**{"search.num_samples": n, "search.enqueue_paper_rule": False, "training.steps": 40})
    storage, env = tmp_path / "runs", _env(ray_tmp)

    # -- a SIGKILLed driver (the driver alone, as the OOM killer would) -------------------------------------------
    proc = _start(spec, tmp_path / "a.log", env)
    try:
        _wait_finished(storage, 1, proc, tmp_path / "a.log")
        left = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    survivors = _reap(left)
    before = _trials(storage)
    done_before = set(before[before["status"] == "completed"]["run_id"])
    print(f"SIGKILL: {len(before)} trial runs {before['status'].value_counts().to_dict()}; outlived it: {survivors}")

    # -- resume, then Ctrl-C (SIGINT to the whole foreground group, as a terminal sends it) --------------------
    proc = _start(spec, tmp_path / "b.log", env, "--resume")
    try:
        _wait_finished(storage, len(done_before) + 1, proc, tmp_path / "b.log")
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    log_b = (tmp_path / "b.log").read_text()
    print(f"Ctrl-C: exit {rc}; last line: {log_b.strip().splitlines()[-1]}")
    assert rc == 130, log_b[-3000:]
    assert "--resume" in log_b.strip().splitlines()[-1] and "Traceback" not in log_b
    assert "Tuner.restore" not in log_b  # Tune's advice (not a command a user can run) is left out
    assert "Error handling checkpoint" not in log_b  # this run resumed the SIGKILLed one
    assert "internal error" not in log_b and "done in" not in log_b  # no summary of a search that did not end
    client = MlflowClient(_uri(storage))
    parent = client.get_run(_trials(storage)["parent_run_id"].iloc[0])
    assert parent.data.tags["srcompress.status"] == "interrupted" and parent.info.status == "KILLED"
    assert "running" not in set(_trials(storage)["status"])  # its unfinished trials are marked interrupted too

    # -- resume to the end: exactly N trials, the ones finished before the faults kept (not retrained) ------------
    rc, log_c = _run(spec, tmp_path / "c.log", env, "--resume")
    assert rc == 0, log_c[-3000:]
    assert "Error handling checkpoint" not in log_c
    _assert_exactly(storage, n)
    df = _trials(storage)
    assert done_before <= set(df["run_id"]) and df["parent_run_id"].nunique() == 1
    assert client.get_run(df["parent_run_id"].iloc[0]).data.tags["srcompress.status"] == "completed"
    versions = _versions(storage)
    assert versions, "the front was not registered"
    assert all(v.tags.get("srcompress.run_id") == v.run_id for v in versions)  # each version names its run
    print(f"after resume: {len(df)} trials {df['status'].value_counts().to_dict()}, {len(versions)} model versions")

    # -- item 6: another experiment name is refused before anything runs ------------------------------------------
    original = _edit(spec, **{"tracking.experiment": "renamed"})
    rc, err = _main_err(["run", str(spec), "--resume"])
    print(f"renamed experiment: exit {rc}: {err.strip()}")
    assert rc == 2 and err.count("\n") == 1 and "'tiny'" in err and "'renamed'" in err
    assert client.get_experiment_by_name("renamed") is None
    spec.write_text(original)

    # -- item 7: a changed spec is refused with what changed ------------------------------------------------------
    _edit(spec, **{"search.num_samples": 3, "training.steps": 60})
    rc, err = _main_err(["run", str(spec), "--resume"])
    print(f"changed spec: exit {rc}: {err.strip()}")
    assert rc == 2 and err.count("\n") == 1 and "--allow-changed-spec" in err
    assert f"search.num_samples {n} -> 3" in err and "training.steps 40 -> 60" in err
    spec.write_text(original)
    _assert_exactly(storage, n)

    # -- item 10 (+ the flag of item 7 with a safe change): resuming the finished job adds nothing -----------------
    _edit(spec, **{"failure.max_failures": 2})
    rc, log_d = _run(spec, tmp_path / "d.log", env, "--resume", "--allow-changed-spec")
    assert rc == 0, log_d[-3000:]
    assert "failure.max_failures 1 -> 2" in log_d
    _assert_exactly(storage, n)
    again = _versions(storage)
    print(f"finished job resumed: {len(again)} model versions (were {len(versions)})")
    assert sorted(v.version for v in again) == sorted(v.version for v in versions)
    assert set(_trials(storage)["run_id"]) == set(df["run_id"])


def _main_err(argv: list[str]) -> tuple[int, str]:
    """``srcompress argv`` in this process; (exit code, what it wrote on stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        rc = main(argv)
    return rc, err.getvalue()


# ----------------------------------------------------------------------------------------------------- item 8
def test_failed_trial_exits_3_and_resume_retries_it_from_its_checkpoint(ray_local, tiny_job, tmp_path, capsys):
    """``failure.max_failures: 0`` and a trial process SIGKILLed mid-training: ``run`` ends with exit 3 and says
    how many failed and how to retry; ``--resume`` retries that trial from its last checkpoint in the same run."""
    n, steps = 2, 200
    spec = tiny_job(
        **{
            "search.num_samples": n,
            "search.enqueue_paper_rule": False,
            "student.space": {"C": 8, "L": 1, "B": {"low": 1, "high": 2}},
            "training.steps": steps,
            "training.val_every": 20,
            "training.log_every": 20,
            "training.ckpt_every": 20,
            "failure.max_failures": 0,
        }
    )
    storage = tmp_path / "runs"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_one_trial, args=(storage / "tiny" / "tune", killed), daemon=True)
    killer.start()
    rc = main(["run", str(spec), "--num-cpus", "2"])
    killer.join(timeout=1)
    out, err = capsys.readouterr()
    assert killed, "the test never found a trial process to kill"
    print(f"killed trial pid {killed}; exit {rc}: {err.strip().splitlines()[-1]}")
    assert rc == 3, (out[-2000:], err[-2000:])
    assert f"1 of {n} trials failed" in err and "--resume" in err
    first = _trials(storage)
    assert sorted(first["status"]) == ["completed", "failed"]
    failed_run = first[first["status"] == "failed"]["run_id"].iloc[0]

    rc = main(["run", str(spec), "--num-cpus", "2", "--resume"])
    out, err = capsys.readouterr()
    assert rc == 0, (out[-2000:], err[-2000:])
    _assert_exactly(storage, n)
    row = _trials(storage).set_index("run_id").loc[failed_run]  # the same run, not a new one
    step = last_step(_uri(storage), failed_run)
    print(f"retried trial {row['run_name']}: resumed_from_step={row['resumed_from_step']} step={step}")
    assert row["status"] == "completed" and step == steps and row["resumed_from_step"] > 0


def _kill_one_trial(tune_dir: Path, killed: list[int], timeout_s: float = 180) -> None:
    """SIGKILL the process of the first trial whose second checkpoint the driver has recorded (its ``result.json``
    holds 2 results; each carries the trial process's pid), checking it is a process of this test's Ray."""
    end = time.time() + timeout_s
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    while time.time() < end and not killed:
        for results in tune_dir.glob("*/*/result.json") if tune_dir.exists() else []:
            lines = results.read_text().splitlines()
            if len(lines) >= 2:
                pid = int(json.loads(lines[-1])["pid"])
                ours |= {p.pid for p in psutil.Process().children(recursive=True)}
                assert pid in ours, f"trial pid {pid} is not a process of this test"
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------------- item 11
def test_unreachable_ray_address_leaves_no_job_folder(tiny_job, tmp_path):
    rc, err = _main_err(["run", str(tiny_job()), "--address", "ray://127.0.0.1:9"])
    assert rc == 2 and err.count("\n") == 1 and "cannot reach the Ray cluster" in err
    assert not (tmp_path / "runs" / "tiny").exists()


_CACHE_BUILD = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_distill import _images
from sr.data import PatchDataset
from sr.models import build
from sr.teacher_cache import build_teacher_cache
torch.set_num_threads(1)
ds = PatchDataset(_images(), scale=2, hr_patch=32, augment=False, samples_per_epoch={n}, seed=0)
build_teacher_cache(build("edsr_mini", C=8, B=1), ds, n_patches={n}, out_dir={out!r}, batch_size=4, device="cpu")
"""


def test_killed_cache_build_leaves_no_tmp_folder_after_the_next_build(tmp_path):
    """A teacher-cache build SIGKILLed mid-way leaves its ``.tmp-*`` folder; the next build removes it (a live
    build's folder is kept)."""
    import torch

    from sr.data import PatchDataset
    from sr.models import build
    from sr.teacher_cache import build_teacher_cache

    root = tmp_path / "cache"
    code = _CACHE_BUILD.format(tests=str(REPO / "tests"), n=5000, out=str(root))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        end = time.time() + 120
        while time.time() < end and not list(root.glob(".tmp-*")) and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(0.5)  # mid-way through writing
        proc.kill()
        proc.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    stale = list(root.glob(".tmp-*"))
    assert stale, "the killed build left no temporary folder (it finished or never started)"
    live = root / f".tmp-{'0' * 16}-{_host()}-{os.getpid()}-live0000"  # a build running now (this process)
    live.mkdir()
    size = sum(f.stat().st_size for d in stale for f in d.iterdir())

    sys.path.insert(0, str(REPO / "tests"))
    from test_distill import _images

    torch.manual_seed(0)
    ds = PatchDataset(_images(), scale=2, hr_patch=32, augment=False, samples_per_epoch=4, seed=0)
    info = build_teacher_cache(build("edsr_mini", C=8, B=1), ds, n_patches=4, out_dir=root, batch_size=4, device="cpu")
    print(f"killed build left {[d.name for d in stale]} ({size / 1e6:.1f} MB); after the next build: "
          f"{sorted(p.name for p in root.iterdir())}")  # fmt: skip
    assert info.built and not any(d.exists() for d in stale)
    assert live.exists()  # not stale: its process is alive


def _host() -> str:
    from sr.teacher_cache import _host as host

    return host()


# ------------------------------------------------------------------------------------------- the sqlite store
_OPEN_STORE = """
import os, sys, time
from orchestrator.tracking import Tracker
import mlflow.tracking
open(sys.argv[2] + sys.argv[3], "w").close()  # ready: imported
while not os.path.exists(sys.argv[2] + "go"):
    time.sleep(0.002)
t = Tracker(sys.argv[1])
exp = t.experiment_id("race")
t.end_run(t.start_run(exp, "r" + sys.argv[3]))
print("ok")
"""


def test_three_processes_open_one_new_store_at_once(tmp_path):
    """Three processes create and migrate one new sqlite store at the same moment: none fails, one experiment."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    flags = str(tmp_path / "flag_")  # each process touches flag_<i> once imported, then waits for flag_go
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_STORE, uri, flags, str(i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    end = time.time() + 120
    while time.time() < end and not all(Path(f"{flags}{i}").exists() for i in range(3)):
        time.sleep(0.05)
    Path(f"{flags}go").touch()
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("race")
    assert len(client.search_runs([exp.experiment_id])) == 3
    print("3 processes created one new store at once: 3 runs in one experiment, no process failed")


# ------------------------------------------------------------------------------------------ item 9 (summary)
def test_summary_prints_missing_values_as_dashes(capsys):
    """A trial without metrics (nullable Int64 / Float64 NA, as ``query_trials`` types them) prints as "-"; it
    crashed with "boolean value of NA is ambiguous" before."""
    import pandas as pd

    from orchestrator.cli.core import print_summary

    trials = pd.DataFrame(
        {
            "run_id": ["a", "b"],
            "run_name": ["edsr_C8L1B1_x2_kd_1", "edsr_C8L1B2_x2_kd_2"],
            "status": ["completed", "interrupted"],
            "paper_rule": pd.array([False, pd.NA], dtype="boolean"),
            "psnr_y": pd.array([30.5, pd.NA], dtype="Float64"),
            "ssim_y": pd.array([0.9, pd.NA], dtype="Float64"),
            "params": pd.array([5000, pd.NA], dtype="Int64"),
            "macs_720p": pd.array([1_000_000_000, pd.NA], dtype="Int64"),
        }
    )
    print_summary({"counts": {"completed": 1, "interrupted": 1}, "front": trials.head(1), "trials": trials})
    out = capsys.readouterr().out
    assert "30.500" in out and "5,000" in out and "edsr_C8L1B2_x2_kd_2" in out
    row = next(line for line in out.splitlines() if "edsr_C8L1B2_x2_kd_2" in line)
    assert row.count(" - ") >= 4  # PSNR, SSIM, params, MACs


def test_run_help_says_what_allow_changed_spec_does_and_the_exit_codes(capsys):
    with contextlib.suppress(SystemExit):
        rc = main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert rc == 0 and "--allow-changed-spec" in out and "resources.*" in out and "failure.*" in out
    assert "3 the search ended with failed trials" in out and "130 interrupted" in out
