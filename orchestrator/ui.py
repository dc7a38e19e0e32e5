"""``srcompress ui``: a local MLflow tracking server (and its web UI) on a job's store.

The server binds to 127.0.0.1 unless told otherwise, runs one worker and no job-execution workers
(``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: 2 processes / 0.5 GB instead of 10 / 1.5 GB, see
STACK_NOTES.md), and is ready in 11-15 s on 2 CPUs. It runs in its own process group so that stopping it also
stops its worker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from orchestrator.tracking import default_artifact_root
from search_spaces import load_job_spec
from sr.errors import UserError

_SERVER_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_taken(host: str, port: int) -> bool:
    bind_host = "0.0.0.0" if host in ("", "0.0.0.0") else host
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the server itself does: a port whose old connections linger in TIME_WAIT is free to bind.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind_host, port))
        except OSError:
            return True
    return False


def _healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def log_tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return " | ".join(lines[-n:])[-400:] or "empty log"


def server_url(host: str, port: int) -> str:
    """The URL a browser on this machine opens for a server bound to ``host``."""
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    return f"http://{shown}:{port}"


# MLflow 3's UI opens an experiment on its GenAI overview (traces, an assistant panel), where no training run shows;
# the runs view with this workflow type is the "Model training" runs table, nested trials under their search
# (checked in headless Chromium against MLflow 3.17.2, tests/test_ui_link.py).
RUNS_VIEW = "#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def runs_url(base_url: str, experiment_id: str) -> str:
    """The deep link to an experiment's runs table in the MLflow UI at ``base_url``."""
    return base_url.rstrip("/") + "/" + RUNS_VIEW.format(experiment_id=experiment_id)


def experiments_with_runs(client: Any, only: str | None = None) -> list[tuple[str, str]]:
    """``(name, id)`` of the store's experiments that hold runs (``only``: just that one), newest first."""
    found = []
    for exp in client.search_experiments(order_by=["creation_time DESC"]):
        if only is not None and exp.name != only:
            continue
        if only is not None or client.search_runs([exp.experiment_id], max_results=1):
            found.append((exp.name, exp.experiment_id))
    return found


def start_mlflow_server(
    backend_uri: str,
    artifact_root: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    wait_s: float = 60.0,
    log_path: str | Path | None = None,
) -> subprocess.Popen:
    """Start ``mlflow server`` on ``backend_uri`` and wait until ``/health`` answers.

    Args:
        backend_uri: the tracking store, e.g. ``sqlite:////abs/path/mlflow.db``.
        artifact_root: ``--default-artifact-root`` (experiments srcompress creates carry their own location).
        host: interface to bind; 127.0.0.1 keeps the UI on this machine.
        port: TCP port.
        wait_s: how long to wait for ``/health`` (seconds).
        log_path: where the server's stdout/stderr go; default a temporary file (``proc.log_path``).

    Returns:
        The server process (``proc.url`` and ``proc.log_path`` are set); stop it with :func:`stop_server`.

    Raises:
        UserError: the port is taken, or the server exited or did not answer within ``wait_s`` (with the log tail).
    """
    if _port_taken(host, port):
        raise UserError(f"port {port} on {host} is already in use; pass another --port (or stop what holds it)")
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="srcompress_mlflow_", suffix=".log")
        os.close(fd)
        log_path = name
    log_path = Path(log_path)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--default-artifact-root",
        str(artifact_root),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, **_SERVER_ENV}
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
    url = server_url(host, port)
    proc.url = url  # type: ignore[attr-defined]
    proc.log_path = log_path  # type: ignore[attr-defined]
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(
                f"mlflow server exited with code {proc.returncode} before answering ({log_tail(log_path)}); "
                f"check --storage/--job and the log {log_path}"
            )
        if _healthy(url):
            return proc
        time.sleep(0.5)
    stop_server(proc)
    raise UserError(
        f"mlflow server at {url} did not answer /health within {wait_s:.0f}s ({log_tail(log_path)}); "
        f"see the log {log_path}"
    )


def stop_server(proc: subprocess.Popen, *, timeout_s: float = 10.0) -> None:
    """Stop a server from :func:`start_mlflow_server` and its worker (its process group): TERM, then KILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the group start_new_session made: the server and its worker
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(timeout=timeout_s)


def store_of_job(job_path: str | Path) -> tuple[str, str | None, str]:
    """``(backend_uri, artifact_root, experiment)`` of a job spec: its tracking URI (sqlite under
    ``storage.path`` by default) and where the job's experiment keeps its artifacts (``default_artifact_root``)."""
    spec = load_job_spec(job_path)
    out = f"{spec.storage.path.split('?')[0].rstrip('/')}/{spec.name}"  # the job's folder (no URI query needed)
    return spec.tracking_uri, default_artifact_root(out, spec.tracking_uri), spec.experiment_name


def sqlite_path(uri: str) -> Path | None:
    """The file behind a ``sqlite:///`` URI (None for other schemes)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])
