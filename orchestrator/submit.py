"""Ray Jobs API client behind ``srcompress submit / status / logs / stop``.

Distributed structure of a submitted job (numbered as they run):
  [S1] here: validate the spec (a bad spec fails before anything is uploaded);
  [S2] here: ``JobSubmissionClient.submit_job`` uploads the working dir (the repository root when the spec lies in
       it; else the spec's folder, with the ``orchestrator``/``search_spaces``/``sr`` packages as ``py_modules``)
       and starts the entrypoint ``python -m orchestrator.cli run <spec> --address auto``;
  [S3] on the head: Ray's job supervisor runs that driver, i.e. ``orchestrator.job.run_job`` attached to the
       cluster ([J1]..[J7]); its stdout is the job's log;
  [S4] here: ``status``/``logs``/``stop`` query the same API by submission id.
What travels: code and the spec, never data, weights or results. Paths in the spec must exist on the cluster's
nodes: ``SRCOMPRESS_SHARED`` is forwarded when set here, and for a cluster on this machine (loopback address) the
spec's ``${SRCOMPRESS_SHARED:-default}`` is resolved here, as ``srcompress run`` would. A relative ``storage.path``
lands inside the job's working dir on the head; give an absolute one (or a URI) to keep results elsewhere.

Authentication: Ray 2.60 clusters started with ``RAY_AUTH_MODE=token`` (``cluster/local.sh`` does) refuse requests
without ``Authorization: Bearer <token>``. The token is read as Ray reads it: ``RAY_AUTH_TOKEN``, else the file
``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``; ``RAY_AUTH_MODE=disabled`` sends none.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import re
import secrets
import shlex
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import orchestrator
from orchestrator._ray_connect import RAY_ENV
from search_spaces import Overrides, load_job_spec
from sr.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
# Never uploaded: the venv (GBs), results, VCS data and caches. Ray also skips what .gitignore lists.
EXCLUDES = (
    ".venv",
    "venv",
    ".git",
    "srcompress_runs",
    "mlruns",
    "mlartifacts",
    "mlflow.db",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "*.pth",
    "*.pt",
    "*.pt2",
    "*.onnx",
)
_CODE_PACKAGES = ("orchestrator", "search_spaces", "sr")
# Environment the spec may expand (``${SRCOMPRESS_SHARED:-...}``): forwarded to the job when set here.
_FORWARDED_ENV = ("SRCOMPRESS_SHARED",)
_SHARED_DEFAULT_RE = re.compile(r"\$\{SRCOMPRESS_SHARED:-([^}]*)\}")
_CHATTY_LOGGERS = ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk", "ray._private.runtime_env")


@dataclass(frozen=True)
class Submission:
    """What ``submit`` sends: built by :func:`plan_submission` without contacting the cluster."""

    job_name: str
    spec_path: Path  # absolute, on this machine
    working_dir: Path
    spec_in_working_dir: str  # the spec's path relative to working_dir (POSIX), as the job sees it
    entrypoint: str
    runtime_env: dict[str, Any] = field(default_factory=dict)
    submission_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # what submit tells the user about the job's environment


# ------------------------------------------------------------------------------------------------- addressing
def default_address() -> str:
    """``RAY_ADDRESS`` when set, else the local dashboard ``http://127.0.0.1:8265``."""
    return os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def _read_token() -> str | None:
    """The cluster token, looked up in Ray's order (env, env-named file, ~/.ray/auth_token)."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path_env:
        try:
            token = Path(path_env).expanduser().read_text().strip()
        except OSError as exc:
            raise UserError(
                f"cannot read the Ray auth token file RAY_AUTH_TOKEN_PATH={path_env} ({exc.strerror}); "
                "fix the variable or unset it"
            ) from None
        if not token:
            raise UserError(f"the Ray auth token file {path_env} is empty; point RAY_AUTH_TOKEN_PATH at the token")
        return token
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip() or None
    return None


def auth_headers() -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}`` when a token is found and auth is not disabled, else ``{}``."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        return {}
    token = _read_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextlib.contextmanager
def _address_env_removed() -> Iterator[None]:
    # JobSubmissionClient lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override its address argument; --address wins.
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _quiet_ray_sdk() -> None:
    # The SDK logs every package upload and websocket close at INFO; submit prints its own one-line summary.
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Warns on every submit that .git/.venv are now skipped by default; EXCLUDES skips them anyway.
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)


def connect(address: str | None = None):
    """A ``JobSubmissionClient`` for ``address`` (default :func:`default_address`), with the auth token.

    Raises:
        UserError: the Jobs API does not answer, or refuses the token (one line each).
    """
    from ray.job_submission import JobSubmissionClient  # deferred: ray is heavy; plan_submission never needs it

    address = (address or default_address()).rstrip("/")
    _quiet_ray_sdk()
    with _address_env_removed():
        return _call(lambda: JobSubmissionClient(address, headers=auth_headers()), address=address)


def _call(fn: Any, *, address: str, job_id: str | None = None) -> Any:
    """Run one Jobs API call; turn connection, auth and unknown-job failures into one-line UserErrors."""
    # deferred: ray (and requests, which it brings) are heavy; only a call to the cluster needs them
    import requests
    from ray.exceptions import AuthenticationError

    try:
        return fn()
    except AuthenticationError as exc:
        first = str(exc).split(":", 1)[0].strip() or "unauthorized"
        raise UserError(
            f"the Ray cluster at {address} refused the request ({first}); give it the cluster's token: "
            "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (cluster/local.sh prints which)"
        ) from None
    except (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise UserError(
            f"cannot reach the Ray Jobs API at {address} ({type(exc).__name__}); start the cluster "
            "(cluster/local.sh start) or fix --address / RAY_ADDRESS (the dashboard, e.g. http://HEAD:8265)"
        ) from None
    except (ValueError, requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as exc:
        raise UserError(f"--address {address!r} is not usable ({exc}); use http://HEAD:8265") from None
    except RuntimeError as exc:
        text = str(exc)
        if job_id is not None and ("404" in text or "does not exist" in text):
            raise UserError(
                f"no job {job_id!r} on the Ray cluster at {address}; check the id (`ray job list --address {address}`)"
            ) from None
        raise


# ------------------------------------------------------------------------------------------------ submission
def _repo_root() -> Path | None:
    """The source checkout this code runs from (holds pyproject.toml next to the packages), else None."""
    root = Path(orchestrator.__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "sr").is_dir() else None


def _package_dirs() -> list[str]:
    # __path__, not __file__: an editable install may import search_spaces as a namespace package (no __file__).
    return [str(Path(next(iter(importlib.import_module(p).__path__))).resolve()) for p in _CODE_PACKAGES]


def _parse_env(items: list[str] | Mapping[str, str] | None) -> dict[str, str]:
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return {str(k): str(v) for k, v in items.items()}
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--env {item!r} is not KEY=VALUE; write e.g. --env SRCOMPRESS_SHARED=/data/shared")
        out[key.strip()] = value
    return out


def is_loopback(address: str) -> bool:
    """Whether a Jobs API address points at this machine (then the cluster sees this machine's files)."""
    host = urlsplit(address if "://" in address else f"//{address}").hostname or ""
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _local_shared_dir(text: str, spec_dir: Path) -> str | None:
    """The folder ``${SRCOMPRESS_SHARED:-default}`` in the spec resolves to here, when it exists."""
    for default in _SHARED_DEFAULT_RE.findall(text):
        folder = (spec_dir / os.path.expanduser(default)).resolve() if default else None
        if folder is not None and folder.is_dir():
            return str(folder)
    return None


def plan_submission(
    spec_path: str | Path,
    *,
    working_dir: str | Path | None = None,
    env: list[str] | Mapping[str, str] | None = None,
    same_machine: bool = False,
    overrides: Overrides | None = None,
) -> Submission:
    """[S1] Validate the spec here and build the entrypoint and runtime_env (contacts no cluster).

    Args:
        spec_path: the job spec YAML.
        working_dir: folder to upload; default the repository root when the spec lies in it, else the spec's
            folder (the code then travels as ``py_modules``). It must contain the spec.
        env: extra environment for the job (``KEY=VALUE`` strings or a mapping).
        same_machine: the cluster runs on this machine (a loopback address). Then a spec's
            ``${SRCOMPRESS_SHARED:-<relative default>}`` is resolved here, as ``srcompress run`` would, and
            forwarded: relative to the uploaded copy of the spec it would point nowhere.
        overrides: ``--override``/``--set``, validated here and passed on to the job's ``srcompress run``;
            overlay files must lie in working_dir (they travel with it).

    Raises:
        UserError: an invalid spec (its one-line ``file:line: key: ...`` error), or a spec outside working_dir.
    """
    overrides = overrides or Overrides()
    spec = load_job_spec(spec_path, overrides)
    # deferred: _preflight pulls in torch, which `srcompress status/logs/stop` never need
    from orchestrator._preflight import prune_schedule

    prune_schedule(spec, spec_path)  # the same spec errors as `run` and `plan`, before anything is uploaded
    path = Path(spec_path).resolve()
    repo = _repo_root()
    if working_dir is not None:
        wd = Path(working_dir).expanduser().resolve()
        if not wd.is_dir():
            raise UserError(f"--working-dir {working_dir} is not a folder; pass the folder to upload")
    elif repo is not None and path.is_relative_to(repo):
        wd = repo
    else:
        wd = path.parent
    if not path.is_relative_to(wd):
        raise UserError(
            f"the spec {spec_path} is outside the uploaded folder {wd}; move it there or pass --working-dir"
        )
    rel = path.relative_to(wd).as_posix()
    run_args = [rel, *_uploaded_overrides(overrides, wd).cli_args()]
    if wd == Path.home() or wd == Path(wd.anchor):
        raise UserError(f"refusing to upload {wd} as the job's working dir; keep the spec in a project folder")
    env_vars = {
        **RAY_ENV,
        "PYTHONUNBUFFERED": "1",  # the job's log is its stdout: stream it as it comes
        **{k: os.environ[k] for k in _FORWARDED_ENV if os.environ.get(k)},
        **_parse_env(env),
    }
    notes: list[str] = []
    if same_machine and "SRCOMPRESS_SHARED" not in env_vars:
        shared = _local_shared_dir(path.read_text(encoding="utf-8"), path.parent)
        if shared is not None:
            env_vars["SRCOMPRESS_SHARED"] = shared
            notes.append(f"cluster on this machine: SRCOMPRESS_SHARED={shared} as the spec resolves it here")
    runtime_env: dict[str, Any] = {"working_dir": str(wd), "excludes": list(EXCLUDES), "env_vars": env_vars}
    if wd != repo:
        # The job runs the code of this checkout, not whatever version the cluster has installed.
        runtime_env["py_modules"] = _package_dirs()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Submission(
        job_name=spec.name,
        spec_path=path,
        working_dir=wd,
        spec_in_working_dir=rel,
        entrypoint=f"python -m orchestrator.cli run {shlex.join(run_args)} --address auto",
        runtime_env=runtime_env,
        submission_id=f"srcompress-{spec.name}-{stamp}-{secrets.token_hex(2)}",
        metadata={"srcompress.job": spec.name, "srcompress.spec": rel},
        notes=tuple(notes),
    )


def _uploaded_overrides(overrides: Overrides, wd: Path) -> Overrides:
    """``overrides`` with each overlay file as the job sees it: its path inside the uploaded working dir."""
    files = []
    for f in overrides.files:
        p = Path(f).resolve()
        if not p.is_relative_to(wd):
            raise UserError(f"--override {f} is outside the uploaded folder {wd}; move it there or pass --working-dir")
        files.append(p.relative_to(wd).as_posix())
    return replace(overrides, files=tuple(files))


def submit(
    spec_path: str | Path,
    *,
    address: str | None = None,
    working_dir: str | Path | None = None,
    env: list[str] | Mapping[str, str] | None = None,
    overrides: Overrides | None = None,
) -> str:
    """[S2] Validate, upload and submit a job spec (with ``overrides``); returns the submission id."""
    address = address or default_address()
    sub = plan_submission(
        spec_path, working_dir=working_dir, env=env, same_machine=is_loopback(address), overrides=overrides
    )
    client = connect(address)
    for note in sub.notes:
        print(f"[srcompress] {note}", file=sys.stderr)
    print(f"[srcompress] uploading {sub.working_dir} and submitting {sub.spec_in_working_dir}", file=sys.stderr)
    return _call(
        lambda: client.submit_job(
            entrypoint=sub.entrypoint,
            runtime_env=sub.runtime_env,
            submission_id=sub.submission_id,
            metadata=sub.metadata,
        ),
        address=address,
    )


# -------------------------------------------------------------------------------------------- status / logs
def job_status(job_id: str, *, address: str | None = None) -> str:
    """[S4] PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    address = address or default_address()
    client = connect(address)
    status = _call(lambda: client.get_job_status(job_id), address=address, job_id=job_id)
    return str(getattr(status, "value", status))


def job_message(job_id: str, *, address: str | None = None) -> str:
    """[S4] The cluster's one-line reason for the job's status (e.g. why it failed); may be empty."""
    address = address or default_address()
    client = connect(address)
    info = _call(lambda: client.get_job_info(job_id), address=address, job_id=job_id)
    # A failed entrypoint's message repeats the log's tail after this marker; `srcompress logs` shows it whole.
    message = str(info.message or "").split(", last available logs", 1)[0]
    return " ".join(message.split())[:300]


def job_logs(job_id: str, *, address: str | None = None) -> str:
    """[S4] The job's whole log so far (the driver's stdout and stderr)."""
    address = address or default_address()
    client = connect(address)
    return _call(lambda: client.get_job_logs(job_id), address=address, job_id=job_id)


def follow_logs(job_id: str, *, address: str | None = None, out: TextIO | None = None) -> str:
    """[S4] Stream the job's log to ``out`` (stdout) until the job ends; returns its final status."""
    address = address or default_address()
    client = connect(address)
    stream = out or sys.stdout

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            stream.write(chunk)
            stream.flush()

    # Raise an unknown id here, where the error names the job, not inside the websocket.
    _call(lambda: client.get_job_status(job_id), address=address, job_id=job_id)
    _call(lambda: asyncio.run(tail()), address=address, job_id=job_id)
    # The log stream closes when the driver exits; the status turns terminal a moment later.
    for _ in range(60):
        status = job_status(job_id, address=address)
        if status in TERMINAL_STATUSES:
            return status
        time.sleep(0.5)
    return status


def wait_for(job_id: str, *, address: str | None = None, timeout_s: float = 3600.0, poll_s: float = 2.0) -> str:
    """Poll until the job ends or ``timeout_s`` passes; returns the last status seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = job_status(job_id, address=address)
        if status in TERMINAL_STATUSES or time.monotonic() > deadline:
            return status
        time.sleep(poll_s)


def stop_job(job_id: str, *, address: str | None = None) -> bool:
    """[S4] Ask the cluster to stop the job; False when it had already ended."""
    address = address or default_address()
    client = connect(address)
    return bool(_call(lambda: client.stop_job(job_id), address=address, job_id=job_id))


__all__ = [
    "DEFAULT_ADDRESS",
    "EXCLUDES",
    "Submission",
    "TERMINAL_STATUSES",
    "auth_headers",
    "connect",
    "default_address",
    "follow_logs",
    "is_loopback",
    "job_logs",
    "job_message",
    "job_status",
    "plan_submission",
    "stop_job",
    "submit",
    "wait_for",
]
