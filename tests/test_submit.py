"""``srcompress submit / status / logs / stop`` (orchestrator.submit, orchestrator.cli.cluster).

Fast tests check what would be submitted and the one-line errors without a cluster. The ``ray``/``slow`` test
starts ``cluster/local.sh`` (0-CPU head + 2 one-CPU worker nodes, token auth on, its own ports and folder), submits
a tiny copy of ``search_spaces/demo.yaml`` through the Jobs API and polls ``status`` until SUCCEEDED.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from orchestrator import submit as sub
from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[1]
LOCAL_SH = REPO / "cluster" / "local.sh"
DEMO = REPO / "search_spaces" / "demo.yaml"
UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing listens there


def _tiny_spec(folder: Path, storage: Path, *, name: str = "tiny_submit") -> Path:
    """demo.yaml with tiny numbers: 2 trials of 20 steps, 5 pruning steps, 32 cached patches, storage in tmp."""
    d = yaml.safe_load(DEMO.read_text())
    d["name"] = name
    # No shared weights/data on purpose: the fallbacks (a 10-step teacher, scikit-image images) keep it fast.
    d["teacher"]["weights"] = None
    d["teacher"]["fallback"]["steps"] = 10
    d["data"]["train"] = None
    d["data"]["val"] = None
    d["data"].pop("val_first", None)  # the held-out split needs a validation folder
    d["data"].pop("test", None)
    d["data"]["cache"]["n_patches"] = 32
    d["prune"]["steps"] = 5
    d["training"].update(steps=20, milestones=[10], val_every=10, log_every=10, ckpt_every=10)
    d["search"]["num_samples"] = 2
    d["storage"]["path"] = str(storage)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def _run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------------ no cluster
def test_plan_for_repo_spec_uploads_repo_root_without_venv() -> None:
    plan = sub.plan_submission(DEMO)
    assert plan.working_dir == REPO
    assert plan.spec_in_working_dir == "search_spaces/demo.yaml"
    assert plan.entrypoint == "python -m orchestrator.cli run search_spaces/demo.yaml --address auto"
    env = plan.runtime_env
    assert env["working_dir"] == str(REPO) and "py_modules" not in env  # the code is in the working dir
    assert {".venv", ".git", "srcompress_runs"} <= set(env["excludes"])
    assert env["env_vars"]["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]  # fast reports on the cluster's workers too
    assert plan.submission_id.startswith(f"srcompress-{yaml.safe_load(DEMO.read_text())['name']}-")
    assert plan.metadata["srcompress.spec"] == "search_spaces/demo.yaml"


def test_repo_upload_is_small(tmp_path: Path) -> None:
    """What Ray would upload for the repository root (its own packager, with our excludes and .gitignore)."""
    from ray._private.runtime_env.packaging import create_package

    zip_path = tmp_path / "pkg.zip"
    create_package(str(REPO), zip_path, include_gitignore=True, excludes=list(sub.EXCLUDES))
    size_mb = zip_path.stat().st_size / 2**20
    print(f"working_dir package: {size_mb:.2f} MiB")
    assert size_mb < 5.0  # the venv alone is GBs


def test_plan_for_spec_outside_repo_ships_code_as_py_modules(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SRCOMPRESS_SHARED", "/data/shared")
    spec = _tiny_spec(tmp_path, tmp_path / "runs")
    plan = sub.plan_submission(spec, env=["EXTRA=1"])
    assert plan.working_dir == tmp_path and plan.spec_in_working_dir == spec.name
    mods = [Path(p) for p in plan.runtime_env["py_modules"]]
    assert [m.name for m in mods] == ["orchestrator", "search_spaces", "sr"]
    assert all((m / "__init__.py").is_file() for m in mods)
    assert plan.runtime_env["env_vars"]["SRCOMPRESS_SHARED"] == "/data/shared"
    assert plan.runtime_env["env_vars"]["EXTRA"] == "1"


def test_local_cluster_gets_the_shared_folder_the_spec_resolves_here(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SRCOMPRESS_SHARED", raising=False)
    (tmp_path / "shared").mkdir()
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    spec = _tiny_spec(jobs, tmp_path / "runs")
    spec.write_text(spec.read_text().replace("val: null", "val: ${SRCOMPRESS_SHARED:-../shared}/data/Set5"))
    local = sub.plan_submission(spec, same_machine=True)
    assert local.runtime_env["env_vars"]["SRCOMPRESS_SHARED"] == str(tmp_path / "shared")
    assert local.notes and "SRCOMPRESS_SHARED" in local.notes[0]
    remote = sub.plan_submission(spec, same_machine=False)  # another machine: its own paths, nothing forwarded
    assert "SRCOMPRESS_SHARED" not in remote.runtime_env["env_vars"] and not remote.notes
    assert sub.is_loopback("http://127.0.0.1:8265") and sub.is_loopback("localhost:8265")
    assert not sub.is_loopback("http://10.0.0.5:8265") and not sub.is_loopback("http://head.example:8265")


def test_bad_spec_fails_before_contacting_the_cluster(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(re.sub(r"num_samples: \d+", "num_samples: -3", DEMO.read_text()))
    rc, out, err = _run_cli(capsys, "submit", str(bad), "--address", UNREACHABLE)
    print(err)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "search.num_samples" in lines[0] and "bad.yaml" in lines[0]
    assert "Jobs API" not in err  # the spec error came first


def test_unreachable_address_is_one_line_exit_2(capsys) -> None:
    for args in (["submit", str(DEMO)], ["status", "x"], ["logs", "x"], ["stop", "x"]):
        rc, out, err = _run_cli(capsys, *args, "--address", UNREACHABLE)
        assert rc == 2, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "cannot reach the Ray Jobs API at http://127.0.0.1:9" in lines[0], err


def test_bad_env_option(capsys) -> None:
    rc, _, err = _run_cli(capsys, "submit", str(DEMO), "--env", "NOVALUE", "--address", UNREACHABLE)
    assert rc == 2 and "KEY=VALUE" in err


def test_auth_headers_follow_rays_token_lookup(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc123")
    assert sub.auth_headers() == {"Authorization": "Bearer abc123"}
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text("fromfile\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert sub.auth_headers() == {"Authorization": "Bearer fromfile"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert sub.auth_headers() == {}
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(sub.UserError, match="RAY_AUTH_TOKEN_PATH"):
        sub.auth_headers()


def test_address_option_beats_ray_address(monkeypatch, capsys) -> None:
    # JobSubmissionClient would take RAY_ADDRESS over its argument; --address must win.
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8")
    rc, _, err = _run_cli(capsys, "status", "x", "--address", UNREACHABLE)
    assert rc == 2 and "127.0.0.1:9" in err
    assert sub.default_address() == "http://127.0.0.1:8"
    assert os.environ["RAY_ADDRESS"] == "http://127.0.0.1:8"  # restored


# ------------------------------------------------------------------------------------------- local cluster
def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _pick_ports() -> tuple[int, int]:
    """A GCS port with PORT+1 and PORT+10..12 free (local.sh uses them) and a dashboard port, away from 6379/8265."""
    rng = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(200):
        port = rng.randrange(20000, 30000, 20)
        dash = port + 15
        if all(_free(p) for p in (port, port + 1, port + 10, port + 11, port + 12, dash)):
            return port, dash
    pytest.skip("no free ports for a local Ray cluster")


@pytest.fixture
def local_cluster(monkeypatch):
    """cluster/local.sh with 2 worker nodes, token auth and a token file of its own; stopped afterwards."""
    if shutil.which("bash") is None or not Path("/proc/self").exists():
        pytest.skip("cluster/local.sh needs bash and Linux /proc")
    folder = Path(tempfile.mkdtemp(prefix="srq-", dir="/tmp"))  # short: Ray's socket paths are limited
    port, dash = _pick_ports()
    env = {
        **os.environ,
        "SRCOMPRESS_LOCAL_DIR": str(folder / "ray"),
        "SRCOMPRESS_LOCAL_PORT": str(port),
        "SRCOMPRESS_LOCAL_DASHBOARD_PORT": str(dash),
        "SRCOMPRESS_LOCAL_WORKERS": "2",
        "SRCOMPRESS_LOCAL_OBJECT_STORE_MB": "100",
        "SRCOMPRESS_LOCAL_MEMORY_MB": "1536",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(folder / "token"),
    }
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    try:
        t0 = time.time()
        started = subprocess.run(["bash", str(LOCAL_SH), "start"], env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        print(f"local.sh start: {time.time() - t0:.1f}s; {started.stdout.strip().splitlines()[-2]}")
        # This process is a client of that cluster: same token file, no stray RAY_ADDRESS.
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", env["RAY_AUTH_TOKEN_PATH"])
        monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        yield {"address": f"http://127.0.0.1:{dash}", "dir": folder, "env": env}
    finally:
        stopped = subprocess.run(["bash", str(LOCAL_SH), "stop"], env=env, capture_output=True, text=True, timeout=120)
        print(stopped.stdout.strip())
        # Ray's processes exit asynchronously after `ray stop`; on a loaded machine that can take a few seconds.
        deadline = time.time() + 20
        while (
            left := subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True).stdout.split()
        ) and (time.time() < deadline):
            time.sleep(0.5)
        shutil.rmtree(folder, ignore_errors=True)
        assert not left, f"local.sh stop left processes {left}"


@pytest.mark.ray
@pytest.mark.slow
def test_submit_tiny_demo_to_local_cluster(local_cluster, tmp_path: Path, capsys) -> None:
    from orchestrator.tracking import KIND_TAG, STATUS_TAG, Tracker, default_tracking_uri

    address = local_cluster["address"]
    storage = tmp_path / "runs"
    spec = _tiny_spec(tmp_path, storage)

    # Without the token the cluster refuses: one line, exit 2.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        rc, _, err = _run_cli(capsys, "status", "nope", "--address", address)
    finally:
        del os.environ["RAY_AUTH_MODE"]
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "refused" in err, err

    t0 = time.time()
    rc, out, err = _run_cli(capsys, "submit", str(spec), "--address", address, "--no-wait")
    assert rc == 0, err
    job_id = out.strip().splitlines()[-1]
    assert job_id.startswith("srcompress-tiny_submit-")
    with capsys.disabled():
        print(f"\nsubmitted {job_id} in {time.time() - t0:.1f}s")

    seen = []
    status = ""
    deadline = time.time() + 360
    while time.time() < deadline:
        rc, out, err = _run_cli(capsys, "status", job_id, "--address", address)
        assert rc == 0, err
        status = out.strip().splitlines()[-1]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(3)
    seconds = time.time() - t0
    rc, logs, _ = _run_cli(capsys, "logs", job_id, "--address", address)
    with capsys.disabled():
        print(f"statuses {seen}; {status} after {seconds:.0f}s")
    assert rc == 0
    assert status == "SUCCEEDED", logs[-4000:]
    assert set(seen) <= {"PENDING", "RUNNING", "SUCCEEDED"}
    # The final table of `srcompress run`, printed by the job's driver on the cluster.
    assert "[srcompress] done in" in logs and "Trials (* = Pareto front" in logs
    assert "tiny_submit" in logs and "python -m orchestrator.cli run tiny_submit.yaml --address auto" in logs

    # The job ran for real: its MLflow store (storage in tmp) holds both trials under the search's parent run.
    tracker = Tracker(default_tracking_uri(storage))  # tracking.uri null: sqlite:///<storage.path>/mlflow.db
    exp = tracker.find_experiment_id("tiny_submit")
    trials = [r for r in tracker.find_runs(exp) if r.data.tags.get(KIND_TAG) == "trial"]
    assert {r.data.tags.get(STATUS_TAG) for r in trials} <= {"completed", "infeasible", "stopped-early"}
    print(sorted((r.info.run_name, r.data.tags.get(STATUS_TAG)) for r in trials))
    # num_samples = 2 Tune trials (the paper-rule seed may be over budget with the fallback teacher's density, and
    # is then recorded infeasible); over-budget draws the searcher answered itself are extra runs named *_drawNNNNN.
    tune_trials = [r for r in trials if "_draw" not in r.info.run_name]
    assert len(tune_trials) == 2
    assert any(r.data.tags.get(STATUS_TAG) == "completed" for r in tune_trials)

    rc, out, _ = _run_cli(capsys, "stop", job_id, "--address", address)
    assert rc == 0 and "already ended (SUCCEEDED)" in out
