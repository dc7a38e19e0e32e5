"""Register a search's Pareto-optimal models in the MLflow Model Registry.

Each front member's folded model is logged with ``mlflow.pytorch.log_model`` into its own trial run (so the run
page shows it) and registered as a version of ``<experiment>_pareto``. The format is MLflow's ``pt2``
(``torch.export``), not a pickle: the signature ``(-1, 3, -1, -1)`` with a batch-2 input example makes batch, height
and width dynamic (measured with MLflow 3.17.2: reloaded and run at 24x32, 40x56 and 17x9, max difference 0), and
the logged model loads with ``mlflow.pytorch.load_model`` where srcompress is not installed (it needs torch only;
``tests/test_registry_pt2.py`` loads it in a process that cannot import ``sr`` or ``orchestrator``). The model
takes pixel values in [0, 1] (trained by srcompress). A run already registered adds no new version (a rerun or a
resumed job). Versions carry tags arch/C/L/B/scale/psnr_y/params/macs_720p, the trial run gets the tag
``model_uri=models:/<name>/<version>``, and the front gets aliases: ``best-psnr``, ``smallest`` (fewest params),
``fastest`` (when latencies were measured) and ``best-psnr-<budget>`` per budget (e.g. ``best-psnr-params-100k``).
Logging is slow (about 12 s per model), hence ``max_models``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from orchestrator.results._store import as_tracker
from orchestrator.results.export import load_run_model
from orchestrator.results.pareto import DEFAULT_OBJECTIVES, Objective, search_front
from orchestrator.tracking import Tracker
from sr.errors import UserError

log = logging.getLogger(__name__)

MODEL_URI_TAG = "srcompress.model_uri"  # every run tag srcompress sets has the srcompress. prefix
RUN_ID_TAG = "srcompress.run_id"  # on each version: the trial run its model came from
_VERSION_TAGS = ("arch", "C", "L", "B", "scale", "psnr_y", "ssim_y", "params", "macs_720p", "latency_ms")


def default_registered_name(experiment: str) -> str:
    """``<experiment>_pareto``: the registered model holding an experiment's front."""
    return f"{experiment}_pareto"


def pip_requirements() -> list[str]:
    """What the logged model needs: torch without its local ``+cpu`` tag (a ``pt2`` program needs no project
    code; MLflow adds its own pin)."""
    return [f"torch=={torch.__version__.split('+')[0]}"]


def _input_example() -> np.ndarray:
    # batch 2: a batch-1 example makes torch.export specialise the batch to 1 (MLflow's pt2 path uses Dim.AUTO);
    # 24x32 LR pixels pass every family's size guards (RFDN's ESA >= 15, SwinIR's multiple of its window 8)
    return np.random.default_rng(0).random((2, 3, 24, 32), dtype=np.float32)


def _signature() -> Any:
    # deferred: mlflow is heavy and only needed when a model is registered
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    # -1 = any size: batch, LR height and width; the output is (N, 3, s*H, s*W).
    spec = TensorSpec(np.dtype("float32"), (-1, 3, -1, -1))
    return ModelSignature(inputs=Schema([spec]), outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 3, -1, -1))]))


def _tag_value(v: Any) -> str | None:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, float):
        if math.isnan(v):
            return None
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for a block, then restore what was there (unset stays unset)."""
    import mlflow  # deferred: mlflow is heavy and only needed when a model is registered

    previous = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def log_registered_model(
    tracker: Tracker,
    run_id: str,
    model: nn.Module,
    *,
    registered_name: str,
    tags: dict[str, Any] | None = None,
) -> str:
    """Log ``model`` into run ``run_id`` as artifact ``model`` and register it; returns ``models:/name/version``.

    The run's status and end time are restored afterwards: re-opening a finished run to log into it must not
    make it look re-run.
    """
    # deferred: mlflow is heavy and only needed when a model is registered
    import mlflow
    import mlflow.pytorch

    run = tracker._call("get run", lambda: tracker.client.get_run(run_id))
    status, end_time = run.info.status, run.info.end_time
    try:
        with (
            using_tracking_uri(tracker.uri),
            mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None),
        ):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                registered_model_name=registered_name,
                serialization_format="pt2",
                signature=_signature(),
                input_example=_input_example(),
                pip_requirements=pip_requirements(),
            )
    finally:
        if status == "RUNNING":  # start_run's exit finished it; a run still in progress stays open
            tracker._call("restore run status", lambda: tracker.client.update_run(run_id, status="RUNNING"))
        else:
            tracker._call(
                "restore run status",
                lambda: tracker.client.set_terminated(run_id, status=status, end_time=end_time),
            )
    version = str(info.registered_model_version)
    client = tracker.client
    for key, value in (tags or {}).items():
        text = _tag_value(value)
        if text is not None:
            tracker._call(
                "tag model version", lambda k=key, t=text: client.set_model_version_tag(registered_name, version, k, t)
            )
    uri = f"models:/{registered_name}/{version}"
    tracker.set_tags(run_id, {MODEL_URI_TAG: uri})
    return uri


def registered_version(tracker: Tracker, registered_name: str, run_id: str) -> str | None:
    """``models:/<name>/<version>`` of the version of ``registered_name`` that holds run ``run_id``'s model (the
    oldest when several do), or None; matched by the version's source run or its ``srcompress.run_id`` tag."""

    def versions() -> list:
        return list(tracker.client.search_model_versions(f"name = '{registered_name}'"))

    found = [
        int(v.version)
        for v in tracker._call("search model versions", versions)
        if v.run_id == run_id or (v.tags or {}).get(RUN_ID_TAG) == run_id
    ]
    return f"models:/{registered_name}/{min(found)}" if found else None


def register_pareto_models(
    tracker: Tracker | str,
    experiment: str,
    parent_run_id: str,
    *,
    objectives: str | Sequence[Objective] = DEFAULT_OBJECTIVES,
    registered_name: str | None = None,
    max_models: int = 10,
    max_params: float | None = None,
    max_macs: float | None = None,
    max_latency_ms: float | None = None,
    device: str | None = None,
    alias_budgets: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Register the Pareto-optimal trials of one search (best first, at most ``max_models``) and alias them.

    Args:
        tracker: a ``Tracker`` or a tracking URI.
        experiment: experiment name (or id).
        parent_run_id: the search's parent run; only its trials are considered.
        objectives: e.g. ``"psnr_y:max,macs_720p:min"``.
        registered_name: registered model name; default ``<experiment>_pareto``.
        max_models: register at most this many front members (logging takes ~12 s each).
        max_params, max_macs, max_latency_ms, device: budgets applied before the front (see ``pareto_models``).
        alias_budgets: ``{column: limit}`` (``params``, ``macs_720p``, ``latency_ms``): one alias per budget
            naming the best-PSNR member within it, e.g. ``{"params": 100e3}`` -> ``best-psnr-params-100k``.

    Returns:
        One dict per front member: ``{run_id, run_name, model_uri}`` or ``{run_id, run_name, skipped: reason}``
        (a member without weights, e.g. one stopped early before logging them).
    """
    if max_models < 1:
        raise UserError(f"max_models={max_models} registers nothing; give 1 or more")
    tracker = as_tracker(tracker)
    name = registered_name or default_registered_name(experiment)
    front = search_front(
        tracker,
        experiment,
        parent_run_id,
        objectives=objectives,
        max_params=max_params,
        max_macs=max_macs,
        max_latency_ms=max_latency_ms,
        device=device,
    ).front.head(max_models)
    out: list[dict[str, Any]] = []
    for _, row in front.iterrows():
        run_id = str(row["run_id"])
        entry: dict[str, Any] = {"run_id": run_id, "run_name": row.get("run_name")}
        known = registered_version(tracker, name, run_id)
        if known is not None:  # a resumed or rerun job: this run's model is registered already
            out.append({**entry, "model_uri": known, "already_registered": True})
            continue
        try:
            model, meta = load_run_model(tracker, run_id)
        except UserError as exc:
            log.warning("not registering %s: %s", run_id, exc)
            out.append({**entry, "skipped": str(exc)})
            continue
        tags = {k: row.get(k) for k in _VERSION_TAGS if k in row.index}
        tags["arch"] = meta["arch"]
        tags["params"] = meta["params"]  # counted on the folded model just loaded
        tags["run_name"] = row.get("run_name")
        tags[RUN_ID_TAG] = run_id
        entry["model_uri"] = log_registered_model(tracker, run_id, model, registered_name=name, tags=tags)
        out.append(entry)
    aliases = front_aliases(front, {r["run_id"]: r["model_uri"] for r in out if r.get("model_uri")}, alias_budgets)
    for alias, uri in aliases.items():
        version = uri.rsplit("/", 1)[1]
        tracker._call("set alias", lambda a=alias, v=version: tracker.client.set_registered_model_alias(name, a, v))
    for r in out:
        r["aliases"] = sorted(a for a, uri in aliases.items() if uri == r.get("model_uri"))
    return out


def _plain(value: float) -> str:
    """A number without exponent or trailing zeros, ``.`` as ``p``: ``1e6`` -> ``1000000``, ``2.5`` -> ``2p5``."""
    text = str(int(value)) if float(value).is_integer() else f"{value:.6f}".rstrip("0").rstrip(".")
    return text.replace(".", "p").replace("-", "m")


def _size_label(value: float, unit: str) -> str:
    """``120000`` -> ``120k``, ``2e10`` -> ``20g``, latency ``50`` -> ``50ms``: alias-safe (letters, digits)."""
    if unit == "ms":
        return f"{_plain(value)}ms"
    for div, suffix in ((1e9, "g"), (1e6, "m"), (1e3, "k")):
        if value >= div:
            return f"{_plain(round(value / div, 6))}{suffix}"
    return _plain(value)


_BUDGET_NAMES = {"params": ("params", ""), "macs_720p": ("macs", ""), "latency_ms": ("latency", "ms")}


def front_aliases(
    front: pd.DataFrame, uris: Mapping[str, str], budgets: Mapping[str, float] | None = None
) -> dict[str, str]:
    """``alias -> models:/name/version`` over the registered members of ``front`` (``uris``: run id -> URI):
    ``best-psnr``, ``smallest``, ``fastest`` (with latencies) and ``best-psnr-<budget>`` per budget."""
    df = front[front["run_id"].isin(list(uris))]
    if not len(df):
        return {}

    def pick(rows: pd.DataFrame, col: str, largest: bool) -> str | None:
        vals = pd.to_numeric(rows[col], errors="coerce") if col in rows else None
        if vals is None or vals.isna().all():
            return None
        return uris[str(rows.loc[vals.idxmax() if largest else vals.idxmin(), "run_id"])]

    out = {"best-psnr": pick(df, "psnr_y", True), "smallest": pick(df, "params", False)}
    out["fastest"] = pick(df, "latency_ms", False)
    for col, limit in (budgets or {}).items():
        if col not in _BUDGET_NAMES or limit is None or col not in df:
            continue
        within = df[pd.to_numeric(df[col], errors="coerce") <= float(limit)]
        label, unit = _BUDGET_NAMES[col]
        out[f"best-psnr-{label}-{_size_label(float(limit), unit)}"] = pick(within, "psnr_y", True)
    return {k: v for k, v in out.items() if v is not None}
