"""Choosing models: Pareto fronts and hypervolume over the trials that a search logged to MLflow.

The pure part (``pareto_mask``, ``hypervolume_2d``, ``hypervolume_history``) works on plain arrays for any mix of
maximised and minimised objectives. The MLflow part reads the trial child runs of an experiment into one
DataFrame (``query_trials``), picks the Pareto-optimal models under budgets (``pareto_models``) and tags the
trial runs with ``pareto=true|false`` (``mark_pareto``). ``search_front`` is "the front of a search": one
search's trials from MLflow and their Pareto-optimal models, which the CLI, the report, the model registry and
``mark_pareto`` all read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from orchestrator.results._store import as_tracker
from orchestrator.tracking import (
    KIND_TAG,
    PARENT_TAG,
    PARETO_TAG,
    STATUS_TAG,
    Tracker,
    metrics_from_mlflow,
    srcompress_tag,
)
from sr.errors import ConfigError, UserError

if TYPE_CHECKING:
    from mlflow.entities import Run

Mode = Literal["max", "min"]
Objective = tuple[str, Mode]

DEFAULT_OBJECTIVES = "psnr_y:max,macs_720p:min"
GOOD_STATUSES = ("completed", "stopped-early")  # trained trials (drawn in the report)
# Trials a front may hold: a trial stopped early by the scheduler has a truncated PSNR and no uploaded weights.
FRONT_STATUSES = ("completed",)
REFERENCE_KINDS = ("teacher", "bicubic")

# Columns of a trial row, by type. Integer-valued ones use pandas' nullable Int64 (a trial may lack them).
_STR_PARAMS = ("family", "arch", "lap_weighting")
_INT_PARAMS = ("C", "L", "B", "scale", "seed")
_FLOAT_PARAMS = ("w_gt", "w_lap", "w_hf", "lr")
_BOOL_PARAMS = ("paper_rule",)
_INT_METRICS = ("params", "macs_720p", "macs_lr256")
_FLOAT_METRICS = (
    "psnr_y",
    "ssim_y",
    "val_psnr_y",
    "test_psnr_y",
    "test_ssim_y",
    "vs_bicubic_db",
    "latency_ms",
    "train_time_s",
)
# arch_record: the trained weights' architecture record (sr.arch_record, JSON), as their checkpoint holds it.
_STR_TAGS = ("latency_device", "model_uri", "arch_record")
TRIAL_COLUMNS: tuple[str, ...] = (
    "run_id",
    "run_name",
    "status",
    "parent_run_id",
    "trial_number",
    *_STR_PARAMS,
    *_INT_PARAMS,
    *_FLOAT_PARAMS,
    *_BOOL_PARAMS,
    *_FLOAT_METRICS,
    *_INT_METRICS,
    *_STR_TAGS,
    "below_bicubic",
    "pareto",
    "start_time_ms",
)
REFERENCE_COLUMNS: tuple[str, ...] = (
    "kind",
    "run_id",
    "run_name",
    "parent_run_id",
    "psnr_y",
    "ssim_y",
    "test_psnr_y",
    "test_ssim_y",
    "params",
    "macs_720p",
    "latency_ms",
)
_REF_METRICS = ("psnr_y", "ssim_y", "test_psnr_y", "test_ssim_y", "params", "macs_720p", "latency_ms")


# ------------------------------------------------------------------------------------------------- pure maths
def _as_minimisation(points: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Flip maximised columns so that smaller is better everywhere (float copy)."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise ValueError(f"points must be a 2-D array (n, k), got shape {pts.shape}")
    if len(modes) != pts.shape[1]:
        raise ValueError(f"{len(modes)} modes given for {pts.shape[1]} objective columns")
    bad = [m for m in modes if m not in ("max", "min")]
    if bad:
        raise ConfigError(f"objective mode {bad[0]!r} is not valid; use 'max' or 'min'")
    sign = np.array([-1.0 if m == "max" else 1.0 for m in modes])
    return pts * sign


def pareto_mask(points: np.ndarray, modes: Sequence[Mode]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points``.

    A row is dominated when another row is at least as good in every objective and strictly better in one.
    Identical rows do not dominate each other, so ties are all kept. Rows holding NaN or an infinity are never
    on the front and never dominate anything.

    Args:
        points: (n, k) objective values.
        modes: per column, ``"max"`` or ``"min"``.

    Returns:
        (n,) bool array, True on the front.
    """
    q = _as_minimisation(points, modes)
    n = q.shape[0]
    valid = np.isfinite(q).all(axis=1) if n else np.zeros(0, dtype=bool)
    mask = valid.copy()
    cand = q[valid]
    idx = np.flatnonzero(valid)
    # Chunks bound the (chunk, n, k) comparison tensor to a few MB for thousands of trials.
    chunk = max(1, 2_000_000 // max(1, cand.shape[0] * max(1, q.shape[1])))
    for start in range(0, cand.shape[0], chunk):
        block = cand[start : start + chunk]
        le = (cand[None, :, :] <= block[:, None, :]).all(axis=2)
        lt = (cand[None, :, :] < block[:, None, :]).any(axis=2)
        dominated = (le & lt).any(axis=1)
        mask[idx[start : start + chunk]] = ~dominated
    return mask


def hypervolume_2d(points: np.ndarray, modes: Sequence[Mode], ref: Sequence[float]) -> float:
    """Area dominated by ``points`` and bounded by the reference point ``ref`` (two objectives).

    Points that do not strictly dominate ``ref`` (worse than it in either objective, or NaN) contribute 0.
    Units are the product of the two objectives' units (e.g. dB x MACs).
    """
    q = _as_minimisation(points, modes)
    if q.shape[1] != 2:
        raise ValueError(f"hypervolume_2d needs 2 objectives, got {q.shape[1]}")
    r = _as_minimisation(np.asarray(ref, dtype=float).reshape(1, 2), modes)[0]
    if not np.isfinite(r).all():
        raise ValueError(f"reference point must be finite, got {ref}")
    keep = np.isfinite(q).all(axis=1) & (q[:, 0] < r[0]) & (q[:, 1] < r[1])
    q = q[keep]
    if q.shape[0] == 0:
        return 0.0
    # Sweep by the first objective; the running best of the second gives the staircase's height.
    order = np.lexsort((q[:, 1], q[:, 0]))
    q = q[order]
    area = 0.0
    best_y = r[1]
    xs = np.append(q[:, 0], r[0])
    for i in range(q.shape[0]):
        best_y = min(best_y, q[i, 1])
        area += (xs[i + 1] - xs[i]) * (r[1] - best_y)
    return float(area)


def reference_point(points: np.ndarray, modes: Sequence[Mode], *, margin: float = 0.05) -> np.ndarray:
    """A hypervolume reference point: the worst finite value per objective, pushed out by ``margin`` of its range.

    The margin lets the worst points still add area; with a zero range the reference moves by ``margin`` of the
    value itself (or by ``margin`` when the value is 0).
    """
    q = _as_minimisation(points, modes)
    finite = q[np.isfinite(q).all(axis=1)]
    if finite.shape[0] == 0:
        raise ValueError("no finite points to place a hypervolume reference point")
    worst = finite.max(axis=0)
    span = worst - finite.min(axis=0)
    span = np.where(span > 0, span, np.where(worst != 0, np.abs(worst), 1.0))
    r = worst + margin * span
    sign = np.array([-1.0 if m == "max" else 1.0 for m in modes])
    return r * sign


def hypervolume_history(points: np.ndarray, modes: Sequence[Mode], ref: Sequence[float] | None = None) -> np.ndarray:
    """Hypervolume of the first i+1 points, for every i (points in trial order).

    ``ref`` defaults to ``reference_point(points, modes)``. NaN rows (infeasible or failed trials) leave the
    value unchanged. Returns an (n,) float array that never decreases.
    """
    pts = np.asarray(points, dtype=float)
    n = pts.shape[0]
    out = np.zeros(n)
    if n == 0:
        return out
    if ref is None:
        if not np.isfinite(pts).all(axis=1).any():
            return out
        ref = reference_point(pts, modes)
    q = _as_minimisation(pts, modes)
    front = np.zeros((0, 2))
    front_raw = np.zeros((0, 2))
    hv = 0.0
    for i in range(n):
        p = q[i]
        if np.isfinite(p).all() and not ((front <= p).all(axis=1).any()):
            front = np.vstack([front, p])
            front_raw = np.vstack([front_raw, pts[i]])
            keep = pareto_mask(front, ("min", "min"))
            front, front_raw = front[keep], front_raw[keep]
            hv = hypervolume_2d(front_raw, modes, ref)
        out[i] = hv
    return out


# ------------------------------------------------------------------------------------------ parsing options
def parse_objectives(text: str | Sequence[Objective]) -> list[Objective]:
    """``"psnr_y:max,macs_720p:min"`` -> ``[("psnr_y", "max"), ("macs_720p", "min")]``.

    A list of (name, mode) pairs passes through after validation.
    """
    if isinstance(text, str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        pairs = []
        for item in items:
            name, sep, mode = item.partition(":")
            if not sep or not name.strip():
                raise UserError(f"objective {item!r} is not NAME:max|min; write e.g. psnr_y:max,macs_720p:min")
            pairs.append((name.strip(), mode.strip().lower()))
    else:
        pairs = [(str(n), str(m).lower()) for n, m in text]
    if not pairs:
        raise UserError("no objectives given; write e.g. --objectives psnr_y:max,macs_720p:min")
    for name, mode in pairs:
        if mode not in ("max", "min"):
            raise UserError(f"objective {name}:{mode} has mode {mode!r}; use max or min, e.g. psnr_y:max")
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise UserError(f"objectives {','.join(names)} repeat a name; give each metric once")
    return [(n, m) for n, m in pairs]  # type: ignore[misc]


# ------------------------------------------------------------------------------------------ reading MLflow
def _experiment_id(tracker: Tracker, experiment: str) -> str:
    """Experiment id from a name, or from an id when no experiment has that name."""
    try:
        return tracker.find_experiment_id(experiment)
    except UserError:
        if str(experiment).isdigit():
            exp = tracker._call("get experiment", lambda: tracker.client.get_experiment(str(experiment)))
            if exp is not None:
                return exp.experiment_id
        raise


def search_all_runs(tracker: Tracker, experiment_id: str, filter_string: str = "") -> list[Run]:
    """Every run matching ``filter_string`` in an experiment, following MLflow's page tokens."""
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = tracker._call(
            "search runs",
            lambda tok=token: tracker.client.search_runs(
                [experiment_id],
                filter_string=filter_string,
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=tok,
            ),
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _to_bool(value: Any) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    return None


def _typed_frame(rows: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """Rows -> DataFrame with the known columns first and typed; unknown extras follow as logged."""
    df = pd.DataFrame(rows)
    for col in columns:
        if col not in df.columns:
            df[col] = None
    extras = [c for c in df.columns if c not in columns]
    df = df[list(columns) + extras]
    for col in df.columns:
        if col in _INT_PARAMS or col in _INT_METRICS or col == "trial_number":
            num = pd.to_numeric(df[col], errors="coerce")
            df[col] = num.round().astype("Int64")
        elif col in _FLOAT_PARAMS or col in _FLOAT_METRICS:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        elif col in _BOOL_PARAMS or col in ("pareto", "below_bicubic"):
            df[col] = pd.array([_to_bool(v) for v in df[col]], dtype="boolean")
        elif col == "start_time_ms":
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
        elif col in columns:
            df[col] = df[col].astype("string")
    return df.reset_index(drop=True)


def _trial_row(run: Run) -> dict[str, Any]:
    tags = run.data.tags
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name or tags.get("mlflow.runName"),
        "status": tags.get(STATUS_TAG, "running"),
        "parent_run_id": tags.get(PARENT_TAG),
        "trial_number": srcompress_tag(tags, "trial_number"),
        "pareto": srcompress_tag(tags, "pareto"),
        "start_time_ms": run.info.start_time,
    }
    for tag in _STR_TAGS:
        # The trial's own tags are under srcompress.* (srcompress.latency_device: orchestrator.latency).
        row[tag] = srcompress_tag(tags, tag)
    resumed = srcompress_tag(tags, "resumed_from_step")  # a tag since it is a constant of the run, not a series
    if resumed is not None:
        row["resumed_from_step"] = int(float(resumed))
    for key, value in run.data.params.items():
        row.setdefault(key, value)
    for key, value in metrics_from_mlflow(run.data.metrics).items():
        row.setdefault(key, value)
    return row


def query_trials(tracker_or_uri: Tracker | str, experiment: str) -> pd.DataFrame:
    """One row per trial child run (tag ``srcompress.kind=trial``) of an experiment, in trial order.

    Columns: ``TRIAL_COLUMNS`` (run_id, run_name, status, parent_run_id, trial_number, the search params, the
    metrics and the tags latency_device/model_uri/pareto), then any other logged param or metric. Integer
    columns are nullable ``Int64``, paper_rule and pareto nullable ``boolean``; missing values are NA. Works with
    any tracking URI (sqlite file or a remote ``http(s)://`` server).
    """
    tracker = as_tracker(tracker_or_uri)
    exp_id = _experiment_id(tracker, experiment)
    runs = search_all_runs(tracker, exp_id, f"tags.`{KIND_TAG}` = 'trial'")
    df = _typed_frame([_trial_row(r) for r in runs], TRIAL_COLUMNS)
    if len(df):
        df = df.sort_values(["trial_number", "start_time_ms"], na_position="last", kind="stable")
    return df.reset_index(drop=True)


def query_references(tracker_or_uri: Tracker | str, experiment: str) -> pd.DataFrame:
    """The teacher and bicubic reference child runs of an experiment (columns ``REFERENCE_COLUMNS``)."""
    tracker = as_tracker(tracker_or_uri)
    exp_id = _experiment_id(tracker, experiment)
    # MLflow's filter grammar has no IN for tags: one search per kind.
    runs = [r for kind in REFERENCE_KINDS for r in search_all_runs(tracker, exp_id, f"tags.`{KIND_TAG}` = '{kind}'")]
    rows = []
    for r in runs:
        m = metrics_from_mlflow(r.data.metrics)
        rows.append(
            {
                "kind": r.data.tags.get(KIND_TAG),
                "run_id": r.info.run_id,
                "run_name": r.info.run_name,
                "parent_run_id": r.data.tags.get(PARENT_TAG),
                **{k: m.get(k) for k in _REF_METRICS},
            }
        )
    df = pd.DataFrame(rows, columns=list(REFERENCE_COLUMNS))
    for col in _REF_METRICS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def latest_search_run(tracker_or_uri: Tracker | str, experiment: str) -> str | None:
    """Run id of the most recently started search parent run (tag ``srcompress.kind=search``), if any."""
    tracker = as_tracker(tracker_or_uri)
    runs = search_all_runs(tracker, _experiment_id(tracker, experiment), f"tags.`{KIND_TAG}` = 'search'")
    return runs[-1].info.run_id if runs else None


# ------------------------------------------------------------------------------------------ choosing models
def objective_matrix(df: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    """(n, k) float array of the objective columns; NA becomes NaN."""
    missing = [n for n, _ in objectives if n not in df.columns]
    if missing:
        known = ", ".join(c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]))
        raise UserError(f"objective {missing[0]!r} is not a logged metric; choose from: {known}")
    cols = [pd.to_numeric(df[n], errors="coerce").to_numpy(dtype=float, na_value=np.nan) for n, _ in objectives]
    return np.column_stack(cols) if cols else np.zeros((len(df), 0))


def _budget_ok(values: pd.Series, limit: float | None) -> np.ndarray:
    if limit is None:
        return np.ones(len(values), dtype=bool)
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return np.isfinite(v) & (v <= float(limit))  # an unknown value cannot be shown to meet the budget


def apply_budgets(
    df: pd.DataFrame,
    *,
    max_params: float | None = None,
    max_macs: float | None = None,
    max_latency_ms: float | None = None,
    device: str | None = None,
    statuses: Iterable[str] | None = FRONT_STATUSES,
) -> pd.DataFrame:
    """Trials within the budgets (params, 720p MACs, latency in ms on ``device``) and of the given statuses."""
    for col in ("params", "macs_720p", "latency_ms", "latency_device", "status"):
        if col not in df.columns:
            df = df.assign(**{col: pd.NA})
    keep = _budget_ok(df["params"], max_params)
    keep &= _budget_ok(df["macs_720p"], max_macs)
    keep &= _budget_ok(df["latency_ms"], max_latency_ms)
    if device is not None:
        keep &= (df["latency_device"].astype("string").fillna("") == device).to_numpy(dtype=bool)
    if statuses is not None:
        keep &= df["status"].isin(list(statuses)).to_numpy(dtype=bool)
    return df[keep]


_FRONT_COLUMNS = (
    "run_id",
    "run_name",
    "arch",
    "C",
    "L",
    "B",
    "scale",
    "psnr_y",
    "ssim_y",
    "test_psnr_y",
    "test_ssim_y",
    "vs_bicubic_db",
    "below_bicubic",
    "params",
    "macs_720p",
    "latency_ms",
    "latency_device",
    "status",
    "model_uri",
)


def pareto_models(
    df: pd.DataFrame,
    *,
    objectives: str | Sequence[Objective] = DEFAULT_OBJECTIVES,
    max_params: float | None = None,
    max_macs: float | None = None,
    max_latency_ms: float | None = None,
    device: str | None = None,
    statuses: Iterable[str] | None = FRONT_STATUSES,
) -> pd.DataFrame:
    """The Pareto-optimal trials after the budget filters, best first by the first objective.

    Budgets are applied before the front is computed, so a model pushed out by a budget can no longer dominate
    others. A trial lacking a budgeted value (or an objective) is left out.

    Args:
        df: trials as from ``query_trials``.
        objectives: ``"psnr_y:max,macs_720p:min"`` or (name, mode) pairs.
        max_params: parameter budget (count).
        max_macs: compute budget in MACs for a 1280x720 output.
        max_latency_ms: latency budget in milliseconds.
        device: only trials whose latency was measured on this device (tag ``latency_device``).
        statuses: trial statuses to consider; None for all.

    Returns:
        The front's rows, columns run_id, run_name, arch, C, L, B, scale, the metrics and model_uri (plus any
        objective column not among them).
    """
    objs = parse_objectives(objectives)
    objective_matrix(df, objs)  # a clear error for an unknown objective even when the filters leave nothing
    kept = apply_budgets(
        df,
        max_params=max_params,
        max_macs=max_macs,
        max_latency_ms=max_latency_ms,
        device=device,
        statuses=statuses,
    )
    mask = pareto_mask(objective_matrix(kept, objs), [m for _, m in objs]) if len(kept) else np.zeros(0, bool)
    front = kept[mask]
    cols = [c for c in _FRONT_COLUMNS if c in front.columns]
    cols += [n for n, _ in objs if n not in cols]
    first, mode = objs[0]
    front = front.sort_values([first, "run_name"], ascending=[mode == "min", True], kind="stable")
    return front[cols].reset_index(drop=True)


def search_trials(tracker_or_uri: Tracker | str, experiment: str, parent_run_id: str | None = None) -> pd.DataFrame:
    """``query_trials``, restricted to the children of ``parent_run_id`` (one search) when it is given."""
    df = query_trials(tracker_or_uri, experiment)
    if parent_run_id is not None:
        df = df[df["parent_run_id"] == parent_run_id]
    refs = query_references(tracker_or_uri, experiment) if len(df) else None
    return with_vs_bicubic(df, refs, parent_run_id)


def with_vs_bicubic(df: pd.DataFrame, refs: pd.DataFrame | None, parent_run_id: str | None = None) -> pd.DataFrame:
    """``vs_bicubic_db`` (PSNR_Y gain over bicubic upsampling on the test set, else on the validation set) and
    ``below_bicubic`` (True when it is < 0: bicubic, with no parameters, dominates the model).

    A trial's own ``vs_bicubic_db`` metric (logged at the end of training) is kept; others are computed from the
    search's bicubic reference run (``parent_run_id``'s, else the latest one).
    """
    df = df.copy()
    if "vs_bicubic_db" not in df.columns:
        df["vs_bicubic_db"] = np.nan
    bic = refs[refs["kind"] == "bicubic"] if refs is not None and len(refs) else None
    if bic is not None and parent_run_id is not None and (bic["parent_run_id"] == parent_run_id).any():
        bic = bic[bic["parent_run_id"] == parent_run_id]
    if bic is not None and len(bic):
        ref = bic.iloc[-1]
        # One set for every row: the test set when the job has one, else the validation set.
        col = "test_psnr_y" if pd.notna(ref["test_psnr_y"]) else "psnr_y"
        if col in df.columns and pd.notna(ref[col]):
            gain = pd.to_numeric(df[col], errors="coerce") - float(ref[col])
            df["vs_bicubic_db"] = df["vs_bicubic_db"].fillna(gain)
    vs = pd.to_numeric(df["vs_bicubic_db"], errors="coerce").astype("float64")
    df["vs_bicubic_db"] = vs
    df["below_bicubic"] = pd.array([None if pd.isna(v) else bool(v < 0) for v in vs], dtype="boolean")
    return df


@dataclass(frozen=True, eq=False)
class SearchFront:
    """A search's trials (every one considered) and its Pareto-optimal models among them."""

    trials: pd.DataFrame
    front: pd.DataFrame


def search_front(
    tracker_or_uri: Tracker | str,
    experiment: str,
    parent_run_id: str | None = None,
    *,
    objectives: str | Sequence[Objective] = DEFAULT_OBJECTIVES,
    max_params: float | None = None,
    max_macs: float | None = None,
    max_latency_ms: float | None = None,
    device: str | None = None,
) -> SearchFront:
    """The front of a search: its trials read from MLflow, then ``pareto_models`` under the budgets.

    Without ``parent_run_id`` every trial of the experiment counts.
    """
    df = search_trials(tracker_or_uri, experiment, parent_run_id)
    front = pareto_models(
        df,
        objectives=objectives,
        max_params=max_params,
        max_macs=max_macs,
        max_latency_ms=max_latency_ms,
        device=device,
    )
    return SearchFront(trials=df, front=front)


def mark_pareto(
    tracker: Tracker | str,
    experiment: str,
    parent_run_id: str,
    objectives: str | Sequence[Objective] = DEFAULT_OBJECTIVES,
    *,
    max_params: float | None = None,
    max_macs: float | None = None,
    max_latency_ms: float | None = None,
    device: str | None = None,
) -> list[str]:
    """Tag every trial child of ``parent_run_id`` with ``pareto=true|false``; returns the front's run ids."""
    tracker = as_tracker(tracker)
    found = search_front(
        tracker,
        experiment,
        parent_run_id,
        objectives=objectives,
        max_params=max_params,
        max_macs=max_macs,
        max_latency_ms=max_latency_ms,
        device=device,
    )
    on_front = set(found.front["run_id"])
    for run_id in found.trials["run_id"]:
        tracker.set_tags(run_id, {PARETO_TAG: "true" if run_id in on_front else "false"})
    return list(found.front["run_id"])
