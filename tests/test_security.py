"""Nothing runs code from the job's storage, and the embedded Ray listens on loopback only (issue items 12-13).

A real tiny job runs once (CLI, its own local Ray, a real MLflow sqlite store); its Tune state is then tampered
with in several ways and ``--resume`` / the digest check must refuse it before anything is unpickled. A legitimate
resume after SIGKILLing the driver is tests/test_search_ray.py::test_driver_killed_then_resume_runs_each_trial_once
(it goes through the same check).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import write_tiny_job

from orchestrator import _state_digest as sd
from sr.errors import UserError

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
KEY = "test-state-key-0123456789"


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", sd.KEY_ENV: KEY, **extra}
    env.pop(sd.TRUST_ENV, None)
    return env


class _Payload:
    """Unpickling it creates the marker file (what a crafted tuner.pkl on a shared folder would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory) -> tuple[Path, Path]:
    """(spec, storage) of a tiny 2-trial job run to completion through the CLI; tests copy its storage."""
    root = tmp_path_factory.mktemp("secjob")
    spec = write_tiny_job(root, **{"training.steps": 10, "data.cache.enabled": False})
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(spec), "--num-cpus", "2"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return spec, root / "runs"


def _copy_job(finished_job: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    """A private copy of the finished job: (spec pointing at it, its job folder, its Tune experiment folder)."""
    spec, storage = finished_job
    shutil.copytree(storage, tmp_path / "runs")
    text = spec.read_text().replace(str(storage), str(tmp_path / "runs"))
    (tmp_path / "tiny.yaml").write_text(text)
    shutil.copy(spec.parent / "teacher.pth", tmp_path / "teacher.pth")
    job = tmp_path / "runs" / "tiny"
    # The copy is the user's job now: its state names its own store (a resume refuses another tracking URI).
    state = job / "job_state.json"
    state.write_text(state.read_text().replace(str(storage), str(tmp_path / "runs")))
    return tmp_path / "tiny.yaml", job, job / "tune" / "tiny"


def test_crafted_tuner_pkl_is_refused_before_it_is_unpickled(finished_job, tmp_path):
    """Acceptance 3: tuner.pkl replaced by a pickle that would create a marker file: ``run --resume`` exits 2
    with one stderr line naming the file and the fix, and the marker never appears."""
    spec, job, exp = _copy_job(finished_job, tmp_path)
    recorded = json.loads((job / "job_state.json").read_text())["tune_state_digests"]
    print(f"recorded digests: { {name: len(d) for name, d in recorded.items()} }")
    assert "tuner.pkl" in recorded and any(n.startswith("experiment_state-") for n in recorded)
    assert any(n.startswith("searcher-state-") for n in recorded)
    marker = tmp_path / "PWNED"
    (exp / "tuner.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    done = subprocess.run(
        # --allow-changed-spec: the copy's paths differ from the finished job's; the digest check still applies.
        [sys.executable, "-m", "orchestrator", "run", str(spec), "--num-cpus", "2", "--resume", "--allow-changed-spec"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    print(f"exit {done.returncode}; stderr: {lines}")
    assert done.returncode == 2
    assert not marker.exists(), "the crafted tuner.pkl was unpickled"
    assert "Traceback" not in done.stderr
    refusal = [ln for ln in lines if ln.startswith("srcompress: error:")]
    assert len(refusal) == 1 and "tuner.pkl" in refusal[0] and sd.TRUST_ENV in refusal[0]


def test_digest_check_refuses_every_tampering(finished_job, tmp_path, monkeypatch):
    """The check itself (no Ray): the untouched state passes; a changed byte, an extra state file, a digest the
    attacker wrote into job_state.json, or another machine's key are refused; SRCOMPRESS_TRUST_STORAGE skips it."""
    monkeypatch.setenv(sd.KEY_ENV, KEY)
    monkeypatch.delenv(sd.TRUST_ENV, raising=False)
    _, job, exp = _copy_job(finished_job, tmp_path)
    state_path = job / "job_state.json"
    sd.check_tune_state(exp, state_path)  # what the job wrote is accepted
    cases = 0

    def refused(why: str) -> None:
        nonlocal cases
        with pytest.raises(UserError, match="does not match a digest") as err:
            sd.check_tune_state(exp, state_path)
        cases += 1
        print(f"{why}: {str(err.value)[:90]}...")

    (experiment_state,) = exp.glob("experiment_state-*.json")
    original = experiment_state.read_bytes()
    experiment_state.write_bytes(original.replace(b'"', b"'", 1))
    refused("one byte of experiment_state changed")
    experiment_state.write_bytes(original)

    extra = exp / "searcher-state-9999-12-31_23-59-59.pkl"  # newer by name: Tune would restore this one
    extra.write_bytes(pickle.dumps(_Payload(tmp_path / "PWNED")))
    refused("an extra searcher state")
    # Whoever can write the folder can write job_state.json too: a plain sha256 of their file does not help.
    state = json.loads(state_path.read_text())
    state["tune_state_digests"][extra.name] = [hashlib.sha256(extra.read_bytes()).hexdigest()]
    state_path.write_text(json.dumps(state))
    refused("the attacker's own sha256 in job_state.json")
    extra.unlink()

    sd.check_tune_state(exp, state_path)
    monkeypatch.setenv(sd.KEY_ENV, "another-machine")
    refused("the same files under another machine's key")
    monkeypatch.setenv(sd.TRUST_ENV, "1")
    sd.check_tune_state(exp, state_path)  # the user's explicit opt-out
    assert cases == 4 and not (tmp_path / "PWNED").exists()


PROBE = textwrap.dedent(
    """
    import json, os, time
    import psutil, ray
    from orchestrator._ray_connect import connect_ray

    connect_ray(None, num_cpus=1)

    @ray.remote
    class Actor:
        def pid(self):
            return os.getpid()

    @ray.remote
    def task():
        return os.getpid()

    actor = Actor.remote()
    ray.get([actor.pid.remote(), task.remote()])
    time.sleep(1)
    me = psutil.Process()
    found = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            for c in proc.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    found.append([proc.name(), c.laddr.ip, c.laddr.port])
        except psutil.Error:
            pass
    print("LISTEN " + json.dumps(found))
    """
)


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1, a dual-stack socket bound to loopback
    return addr.is_loopback


def test_embedded_ray_listens_on_loopback_only(tmp_path):
    """Acceptance 3: every listening socket of the embedded cluster (driver, GCS, raylet, agents, workers) that
    ``connect_ray`` starts is on 127.0.0.1 / ::1; README names no exception."""
    env = _env()
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("LISTEN ")]
    sockets = json.loads(line.removeprefix("LISTEN "))
    for name, ip, port in sockets:
        print(f"{name:<22} {ip}:{port}")
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), names
    exposed = [(name, f"{ip}:{port}") for name, ip, port in sockets if not _loopback(ip)]
    assert not exposed, f"listening beyond loopback: {exposed}"
