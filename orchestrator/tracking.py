"""MLflow as the system of record: one experiment per job, a parent run per search, a child run per trial.

Every call goes through ``_retry``: a tracking server that disappears for a while (restart, network blip) costs
time, not data. Calls are retried with capped exponential backoff until ``deadline_s``; after that a
``TrackingUnavailable`` error says which server and how to fix it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from search_spaces import store_uri
from search_spaces._values import is_uri
from sr.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")

# MLflow's own HTTP retries would hide an outage for minutes per call; keep them short and retry here instead.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PARENT_TAG = "mlflow.parentRunId"
STATUS_TAG = "srcompress.status"  # completed | stopped-early | infeasible | failed | running
KIND_TAG = "srcompress.kind"  # search | trial | prune | cache
JOB_TAG = "srcompress.job"
# Every tag srcompress sets carries the ``srcompress.`` prefix (MLflow's own ``mlflow.*`` tags aside), so a filter
# such as ``tags.`srcompress.pareto` = 'true'`` never meets another tool's tag of the same name.
TRIAL_NUMBER_TAG = "srcompress.trial_number"  # the Optuna trial number of the draw
PARETO_TAG = "srcompress.pareto"  # true | false, set when the search ends
RAY_TRIAL_TAG = "srcompress.ray_trial_name"
LATENCY_DEVICE_TAG = "srcompress.latency_device"
RESUMED_FROM_TAG = "srcompress.resumed_from_step"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI

# A metric called "params" reads as a run parameter in the MLflow UI and in search filters (``metrics.params``
# beside ``params.*``): the parameter count is stored as "param_count". Code keeps the short name ("params" is
# the objective and column name everywhere); the mapping applies only at the MLflow boundary, both ways.
_MLFLOW_METRIC_NAMES = {"params": "param_count"}
_FROM_MLFLOW_METRIC_NAMES = {v: k for k, v in _MLFLOW_METRIC_NAMES.items()}
# Result keys that are bookkeeping, not measurements: the step is already each metric's step, the flags are what
# the status tag says, and the HR patch size follows from the spec's ``data.patch_sizes`` schedule (a parameter
# of the parent run); logged as metrics they were constant series.
_NOT_METRICS = frozenset({"step", "done_training", "infeasible", "trained", "hr_patch"})
# Result keys that describe the run rather than measure it: tags (mutable: a resumed trial updates them).
_TAG_KEYS = {"resumed_from_step": RESUMED_FROM_TAG, "latency_device": LATENCY_DEVICE_TAG}

# _MLFLOW_DEFERRED: mlflow takes seconds to import, and light code paths (``srcompress ui``, a results command
# resolving its store, ``orchestrator.ui``) import this module for its constants and URI helpers; so mlflow is
# imported where a call needs it.


def split_result(values: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """``(metrics, tags)`` of a trial's result dict as MLflow stores them: numbers become metrics (``params`` as
    ``param_count``), descriptive keys become ``srcompress.*`` tags, bookkeeping keys are left out."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for k, v in values.items():
        key = str(k)
        if key in _TAG_KEYS:
            if v is not None:
                tags[_TAG_KEYS[key]] = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
        elif key not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[_MLFLOW_METRIC_NAMES.get(key, key)] = float(v)
    return metrics, tags


def metrics_from_mlflow(metrics: Mapping[str, float]) -> dict[str, float]:
    """A run's metrics under the names the code uses (``param_count`` back to ``params``)."""
    out = dict(metrics)
    for stored, name in _FROM_MLFLOW_METRIC_NAMES.items():
        if stored in out:
            out[name] = out.pop(stored)
    return out


def srcompress_tag(tags: Mapping[str, str], name: str) -> str | None:
    """Tag ``srcompress.<name>``; stores written before every tag had the prefix hold it as ``<name>``."""
    return tags.get(f"srcompress.{name}", tags.get(name))


class TrackingUnavailable(UserError):
    """The tracking server stayed unreachable past the retry deadline."""


def default_tracking_uri(storage: str | Path) -> str:
    """Embedded default: a sqlite file under the job's storage folder (``store_uri`` of the folder)."""
    return store_uri(storage)


def default_artifact_root(storage: str | Path, tracking_uri: str | None = None) -> str | None:
    """Where a new experiment keeps its artifacts: ``<storage>/mlartifacts`` for a local (or ``file://``) storage
    folder; beside a sqlite store when the storage is remote (``s3://``: MLflow would need boto3 and the endpoint,
    so artifacts stay with the store they belong to); None (the server's own root) for a tracking server."""
    if tracking_uri is not None and tracking_uri.startswith(("http://", "https://")):
        return None
    text = str(storage)
    if not is_uri(text) or text.startswith("file://"):
        folder = Path(text.removeprefix("file://")).expanduser().resolve()
        return str(folder / "mlartifacts")
    db = tracking_uri[len("sqlite:///") :] if tracking_uri and tracking_uri.startswith("sqlite:///") else None
    return str(Path(db).parent / "mlartifacts") if db else None


def check_reachable(uri: str, *, timeout_s: float = 5.0) -> None:
    """One-line error when an http(s) tracking server does not answer; sqlite/file stores need no check."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
            if resp.status != 200:
                raise OSError(f"HTTP {resp.status}")
    except (OSError, urllib.error.URLError) as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({exc}); start it (srcompress ui) or fix --tracking-uri"
        ) from None


def _retry(fn: Callable[[], T], *, what: str, uri: str, deadline_s: float, first_wait_s: float = 0.5) -> T:
    start = time.monotonic()
    wait = first_wait_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not _is_transient(exc):
                raise
            elapsed = time.monotonic() - start
            if elapsed + wait > deadline_s:
                raise TrackingUnavailable(
                    f"MLflow at {uri} failed for {elapsed:.0f}s while trying to {what} ({type(exc).__name__}); "
                    "check that the tracking server is up, then rerun with --resume"
                ) from exc
            log.warning("mlflow %s failed (attempt %d: %s); retrying in %.1fs", what, attempt, exc, wait)
            time.sleep(wait)
            wait = min(wait * 2, 8.0)


def _is_transient(exc: Exception) -> bool:
    """Connection problems, server errors and sqlite lock contention are worth retrying; bad requests are not."""
    from mlflow.exceptions import MlflowException  # deferred: mlflow is heavy (see _MLFLOW_DEFERRED)

    text = str(exc).lower()
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    if isinstance(exc, MlflowException):
        code = getattr(exc, "error_code", "")
        if code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST"):
            return "database is locked" in text
        return True
    return any(s in text for s in ("database is locked", "connection", "max retries", "timed out", "503", "502"))


_INITIALISED: set[str] = set()


def _open_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``; a sqlite store's schema is created/migrated under an exclusive file lock,
    once per process.

    MLflow creates and migrates a sqlite schema when a process first opens the store, which ``MlflowClient``'s
    constructor already does. Two processes doing it at once on a new database (the job's driver starting while
    ``srcompress pareto`` / ``ui``, a poller or a worker opens the same file) break one of them mid-migration
    ("table ... already exists", "Online migration expected to match one row"). The lock serialises that first
    opening, the constructor included, across processes: the first one creates the schema, the others find it."""
    from mlflow.tracking import MlflowClient  # deferred: mlflow is heavy (see _MLFLOW_DEFERRED)

    if not uri.startswith("sqlite:///") or uri in _INITIALISED:
        return MlflowClient(tracking_uri=uri)
    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)

    def first_open() -> Any:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # the tracking store's tables
        client.search_registered_models(max_results=1)  # and the model registry's (same file)
        return client

    with open(db.with_name(db.name + ".init.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = _retry(first_open, what="open the tracking store", uri=uri, deadline_s=60.0)
    _INITIALISED.add(uri)
    return client


class Tracker:
    """A thin, retrying wrapper over ``MlflowClient`` for the calls srcompress makes."""

    def __init__(self, uri: str, *, deadline_s: float = 120.0) -> None:
        self.uri = uri
        self.deadline_s = deadline_s
        self.client = _open_client(uri)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return _retry(fn, what=what, uri=self.uri, deadline_s=self.deadline_s)

    # -- experiments and runs ----------------------------------------------------------------------------------
    def experiment_id(self, name: str, *, artifact_location: str | None = None) -> str:
        """Id of experiment ``name``, created (with ``artifact_location``) when it does not exist yet."""
        from mlflow.exceptions import MlflowException  # deferred: mlflow is heavy (see _MLFLOW_DEFERRED)

        def get_or_create() -> str:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    self.client.restore_experiment(exp.experiment_id)
                return exp.experiment_id
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location)
            except MlflowException as exc:  # another process created it since: use theirs
                again = self.client.get_experiment_by_name(name)
                if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS" or again is None:
                    raise
                return again.experiment_id

        return self._call(f"open experiment {name!r}", get_or_create)

    def find_experiment_id(self, name: str) -> str:
        exp = self._call(f"find experiment {name!r}", lambda: self.client.get_experiment_by_name(name))
        if exp is None:
            raise UserError(f"no MLflow experiment named {name!r} at {self.uri}; check --experiment/--tracking-uri")
        return exp.experiment_id

    def start_run(
        self,
        experiment_id: str,
        name: str,
        *,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self._call(
            f"create run {name!r}",
            lambda: self.client.create_run(experiment_id, run_name=name, tags=all_tags),
        )
        return run.info.run_id

    def find_runs(self, experiment_id: str, filter_string: str = "", max_results: int = 10_000) -> list:
        return self._call(
            "search runs",
            lambda: self.client.search_runs([experiment_id], filter_string=filter_string, max_results=max_results),
        )

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of every metric of a run (under the code's names, see ``metrics_from_mlflow``)."""
        return metrics_from_mlflow(self._call("read run", lambda: self.client.get_run(run_id)).data.metrics)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._call("end run", lambda: self.client.set_terminated(run_id, status=status))

    # -- logging ----------------------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param  # deferred: mlflow is heavy (see _MLFLOW_DEFERRED)

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            chunk = items[i : i + 100]
            self._call("log params", lambda c=chunk: self.client.log_batch(run_id, params=c))

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], *, step: int = 0) -> None:
        """Log a result dict as ``split_result`` sorts it: measurements as metrics at ``step``, descriptive keys as
        tags; bookkeeping keys and non-numbers are dropped."""
        from mlflow.entities import Metric, RunTag  # deferred: mlflow is heavy (see _MLFLOW_DEFERRED)

        now = int(time.time() * 1000)
        values, tags = split_result(metrics)
        items = [Metric(k, v, now, int(step)) for k, v in values.items()]
        tag_items = [RunTag(k, v) for k, v in tags.items()]
        if items or tag_items:
            self._call("log metrics", lambda: self.client.log_batch(run_id, metrics=items, tags=tag_items))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag  # deferred: mlflow is heavy (see _MLFLOW_DEFERRED)

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        self._call("set tags", lambda: self.client.log_batch(run_id, tags=items))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(
            f"upload {Path(path).name}",
            lambda: self.client.log_artifact(run_id, str(path), artifact_path=artifact_path),
        )

    def log_artifacts(self, run_id: str, folder: str | Path, artifact_path: str | None = None) -> None:
        self._call(
            f"upload {Path(folder).name}/",
            lambda: self.client.log_artifacts(run_id, str(folder), artifact_path=artifact_path),
        )
