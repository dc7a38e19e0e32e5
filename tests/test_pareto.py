"""Pareto fronts and hypervolume (hand-computed and brute-force checks) and the MLflow trial query on a real
sqlite store holding a synthetic search."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from orchestrator.results.pareto import (
    GOOD_STATUSES,
    hypervolume_2d,
    hypervolume_history,
    mark_pareto,
    pareto_mask,
    pareto_models,
    parse_objectives,
    query_references,
    query_trials,
    search_front,
    search_trials,
)
from orchestrator.results.table import TRIALS_SCHEMA, read_trials_parquet, write_trials_parquet
from orchestrator.tracking import KIND_TAG, STATUS_TAG, Tracker
from search_spaces import parse_size
from sr.errors import UserError


# ------------------------------------------------------------------------------------------ brute force
def _brute_mask(points: np.ndarray, modes: list[str]) -> np.ndarray:
    sign = np.array([-1.0 if m == "max" else 1.0 for m in modes])
    q = points * sign
    n = len(q)
    out = np.zeros(n, dtype=bool)
    for i in range(n):
        if not np.isfinite(q[i]).all():
            continue
        dominated = False
        for j in range(n):
            if j == i or not np.isfinite(q[j]).all():
                continue
            if all(q[j, c] <= q[i, c] for c in range(q.shape[1])) and any(q[j, c] < q[i, c] for c in range(q.shape[1])):
                dominated = True
                break
        out[i] = not dominated
    return out


def _brute_hv(points: np.ndarray, modes: list[str], ref: list[float]) -> float:
    """Union of the boxes [p, ref] by cells of the coordinate grid (independent of the sweep)."""
    sign = np.array([-1.0 if m == "max" else 1.0 for m in modes])
    q = points * sign
    r = np.asarray(ref) * sign
    q = q[np.isfinite(q).all(axis=1)]
    xs = sorted(set(q[:, 0]) | {r[0]})
    ys = sorted(set(q[:, 1]) | {r[1]})
    area = 0.0
    for a in range(len(xs) - 1):
        for b in range(len(ys) - 1):
            if xs[a] >= r[0] or ys[b] >= r[1]:
                continue
            if any(p[0] <= xs[a] and p[1] <= ys[b] for p in q):
                area += (xs[a + 1] - xs[a]) * (ys[b + 1] - ys[b])
    return area


# ------------------------------------------------------------------------------------------------ pure maths
def test_pareto_mask_hand_computed_with_ties_and_nan():
    # (psnr max, macs min)
    pts = np.array(
        [
            [36.0, 1.0],  # front
            [36.0, 1.0],  # identical: kept too
            [35.0, 2.0],  # dominated by row 0
            [37.0, 3.0],  # front
            [37.0, 4.0],  # dominated by row 3 (equal psnr, more macs)
            [np.nan, 0.1],  # never on the front, dominates nothing
            [34.0, 0.5],  # front
        ]
    )
    got = pareto_mask(pts, ["max", "min"])
    assert got.tolist() == [True, True, False, True, False, False, True]
    # All-min and 3 objectives
    assert pareto_mask(np.array([[1, 2, 3], [1, 2, 3], [0, 5, 5], [2, 3, 4]]), ["min"] * 3).tolist() == [
        True,
        True,
        True,
        False,
    ]
    assert pareto_mask(np.zeros((0, 2)), ["max", "min"]).shape == (0,)


def test_pareto_mask_matches_brute_force_on_random_points():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 4))
        pts = rng.integers(0, 6, size=(n, k)).astype(float)  # small integers: many ties
        if trial % 3 == 0:
            pts[rng.random(n) < 0.2, 0] = np.nan
        modes = [("max", "min")[int(b)] for b in rng.integers(0, 2, size=k)]
        assert pareto_mask(pts, modes).tolist() == _brute_mask(pts, modes).tolist()


def test_hypervolume_2d_hand_computed():
    # psnr max, macs min; ref (30 dB, 10 G). Staircase: (36,1): 9 wide x 6 high = 54 minus overlaps ->
    # sweep over macs: [1,3) best psnr 36 -> 2*6=12; [3,10) best 37 -> 7*7=49; total 61.
    pts = np.array([[36.0, 1.0], [37.0, 3.0], [35.0, 2.0]])
    assert hypervolume_2d(pts, ["max", "min"], [30.0, 10.0]) == pytest.approx(61.0)
    # A point worse than ref (psnr below 30 or macs beyond 10) adds nothing; NaN too.
    more = np.vstack([pts, [[29.0, 0.5], [40.0, 11.0], [np.nan, 0.1]]])
    assert hypervolume_2d(more, ["max", "min"], [30.0, 10.0]) == pytest.approx(61.0)
    assert hypervolume_2d(np.zeros((0, 2)), ["max", "min"], [30.0, 10.0]) == 0.0


def test_hypervolume_matches_brute_force_and_history_is_monotone():
    rng = np.random.default_rng(1)
    for _ in range(25):
        n = int(rng.integers(1, 25))
        pts = np.column_stack([rng.uniform(30, 38, n), rng.uniform(0.1, 20, n)]).round(1)
        pts[rng.random(n) < 0.15] = np.nan
        ref = [31.0, 15.0]
        got = hypervolume_2d(pts, ["max", "min"], ref)
        assert got == pytest.approx(_brute_hv(pts, ["max", "min"], ref), abs=1e-9)
        hist = hypervolume_history(pts, ["max", "min"], ref)
        assert np.all(np.diff(hist) >= -1e-12)
        for i in (0, n // 2, n - 1):
            assert hist[i] == pytest.approx(_brute_hv(pts[: i + 1], ["max", "min"], ref), abs=1e-9)


def test_parse_objectives_and_size():
    assert parse_objectives("psnr_y:max, macs_720p:MIN") == [("psnr_y", "max"), ("macs_720p", "min")]
    for bad in ("psnr_y", "psnr_y:up", "", "a:max,a:min"):
        with pytest.raises(UserError):
            parse_objectives(bad)
    assert parse_size("100k") == 100_000
    assert parse_size("1.2M") == 1_200_000
    assert parse_size("20G") == 20_000_000_000
    assert parse_size("60_000") == 60_000
    assert parse_size(5e3) == 5000
    for bad in ("12x", "-3k", "k", "1..2M"):
        with pytest.raises(UserError, match="size"):
            parse_size(bad)


# ------------------------------------------------------------------------------------------ MLflow store
# name, status, C, L, B, psnr_y, params, GMACs 720p, latency device
TRIALS = [
    ("t00", "completed", 8, 1, 2, 36.0, 10_000, 1.0, "cpu"),
    ("t01", "completed", 12, 1, 2, 36.5, 20_000, 2.0, "cuda"),
    ("t02", "completed", 12, 1, 3, 36.4, 30_000, 3.0, "cpu"),
    ("t03", "completed", 16, 1, 4, 37.0, 61_000, 4.0, "cpu"),  # on the front unless max_params=60k
    ("t04", "completed", 16, 1, 3, 36.8, 50_000, 5.0, "cpu"),  # dominated by t03 only
    ("t05", "stopped-early", 24, 1, 4, 37.2, 90_000, 8.0, "cpu"),
    ("t06", "completed", 4, 1, 2, 35.0, 5_000, 0.5, "cpu"),
    ("t07", "completed", 8, 1, 1, 35.5, 9_000, 1.5, "cpu"),
    ("t08", "infeasible", 64, 2, 8, None, 200_000, 20.0, None),
    ("t09", "infeasible", 48, 2, 8, None, 150_000, 15.0, None),
    ("t10", "failed", 16, 2, 2, None, 40_000, 3.5, None),
    ("t11", "completed", 20, 1, 3, 36.9, 55_000, 6.0, "cpu"),  # dominated by t03 only
]
FRONT_ALL = {"t06", "t00", "t01", "t03"}  # t05 (stopped early, best PSNR) is never on a front
FRONT_60K = {"t06", "t00", "t01", "t04", "t11"}


def log_synthetic_search(tmp: Path, experiment: str = "job") -> tuple[Tracker, str, dict[str, str]]:
    """A parent search run with TRIALS as children plus teacher and bicubic reference runs."""
    tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", deadline_s=10)
    exp = tracker.experiment_id(experiment, artifact_location=str(tmp / "artifacts"))
    parent = tracker.start_run(exp, "search_edsr_x2", tags={KIND_TAG: "search"})
    ids = {}
    for i, (name, status, c, l, b, psnr, params, gmacs, dev) in enumerate(TRIALS):
        rid = tracker.start_run(
            exp, f"edsr_C{c}L{l}B{b}_x2_{name}", parent_run_id=parent, tags={KIND_TAG: "trial", STATUS_TAG: status}
        )
        ids[name] = rid
        tracker.log_params(
            rid,
            {
                "family": "edsr",
                "arch": "edsr",
                "C": c,
                "L": l,
                "B": b,
                "scale": 2,
                "w_gt": 1.0,
                "w_lap": 0.5,
                "w_hf": 0.1,
                "lr": 2e-4,
                "seed": i,
                "paper_rule": i % 2 == 0,
            },
        )
        metrics = {"params": params, "macs_720p": gmacs * 1e9, "macs_lr256": gmacs * 1e9 / 14}
        if psnr is not None:
            metrics |= {"psnr_y": psnr, "ssim_y": 0.9 + psnr / 1000, "latency_ms": 2.0 * gmacs, "train_time_s": 60}
            for step in range(3):
                tracker.log_metrics(rid, {"val_psnr_y": psnr - 1 + step * 0.4}, step=step)
        tracker.log_metrics(rid, metrics)
        tags = {"trial_number": i}
        if dev:
            tags |= {"latency_device": dev, "model_uri": f"runs:/{rid}/model"}
        tracker.set_tags(rid, tags)
        tracker.end_run(rid, "FAILED" if status == "failed" else "FINISHED")
    for kind, psnr, params, gmacs in (("teacher", 37.9, 1_369_859, 316.3), ("bicubic", 33.7, 0, 0.0)):
        rid = tracker.start_run(exp, kind, parent_run_id=parent, tags={KIND_TAG: kind})
        tracker.log_metrics(rid, {"psnr_y": psnr, "ssim_y": 0.93, "params": params, "macs_720p": gmacs * 1e9})
        tracker.end_run(rid)
    return tracker, parent, ids


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    tracker, parent, ids = log_synthetic_search(tmp)
    return tracker, parent, ids, tmp


@pytest.mark.mlflow
def test_query_trials_types_and_rows(search):
    tracker, parent, ids, _ = search
    df = query_trials(tracker.uri, "job")  # by URI: the same path a remote server would take
    assert len(df) == len(TRIALS)
    assert list(df["trial_number"]) == list(range(len(TRIALS)))
    assert set(df["parent_run_id"]) == {parent}
    assert dict(zip(df["run_id"], df["status"], strict=True)) == {ids[t[0]]: t[1] for t in TRIALS}
    for col in ("C", "L", "B", "scale", "params", "macs_720p", "trial_number"):
        assert str(df[col].dtype) == "Int64", col
    for col in ("psnr_y", "ssim_y", "lr", "w_lap", "latency_ms", "val_psnr_y"):
        assert df[col].dtype == np.float64, col
    assert str(df["paper_rule"].dtype) == "boolean"
    row = df[df["run_id"] == ids["t03"]].iloc[0]
    assert (row["C"], row["B"], row["params"], row["macs_720p"]) == (16, 4, 61_000, 4_000_000_000)
    assert row["psnr_y"] == pytest.approx(37.0)
    assert row["val_psnr_y"] == pytest.approx(36.8)  # the last step
    assert row["model_uri"] == f"runs:/{ids['t03']}/model"
    inf = df[df["status"] == "infeasible"]
    assert inf["psnr_y"].isna().all() and inf["params"].notna().all()
    refs = query_references(tracker, "job")
    assert sorted(refs["kind"]) == ["bicubic", "teacher"]
    assert refs.set_index("kind").loc["teacher", "psnr_y"] == pytest.approx(37.9)
    with pytest.raises(UserError, match="no MLflow experiment"):
        query_trials(tracker, "nope")


def _names(front: pd.DataFrame) -> set[str]:
    return {n.rsplit("_", 1)[1] for n in front["run_name"]}


@pytest.mark.mlflow
def test_pareto_models_front_and_budgets(search):
    tracker, *_ = search
    df = query_trials(tracker, "job")
    front = pareto_models(df, objectives="psnr_y:max,macs_720p:min")
    assert _names(front) == FRONT_ALL
    assert list(front["psnr_y"]) == sorted(front["psnr_y"], reverse=True)  # best first
    assert {"run_id", "run_name", "arch", "C", "L", "B", "psnr_y", "macs_720p", "model_uri"} <= set(front.columns)
    # t03 (61k params) would be on the front; the budget removes it BEFORE the front is computed, so t04 and
    # t11 (which only t03 dominated) join it.
    assert _names(pareto_models(df, objectives="psnr_y:max,macs_720p:min", max_params=60_000)) == FRONT_60K
    assert _names(pareto_models(df, objectives="psnr_y:max,macs_720p:min", max_macs=parse_size("4G"))) == {
        "t06",
        "t00",
        "t01",
        "t03",
    }
    assert _names(pareto_models(df, objectives="psnr_y:max,macs_720p:min", max_latency_ms=10)) == {
        "t06",
        "t00",
        "t01",
        "t03",
    }
    # t01's latency was measured on cuda: on cpu, t02 takes its place.
    assert _names(pareto_models(df, objectives="psnr_y:max,macs_720p:min", device="cpu")) == {
        "t06",
        "t00",
        "t02",
        "t03",
    }
    # A trial the scheduler stopped early is only on a front when asked for explicitly.
    assert "t05" in _names(pareto_models(df, objectives="psnr_y:max,macs_720p:min", statuses=GOOD_STATUSES))
    # Params as the cost: t04 and t11 have fewer params than t03, so they are on this front.
    by_params = pareto_models(df, objectives="psnr_y:max,params:min")
    assert _names(by_params) == {"t06", "t07", "t00", "t01", "t04", "t11", "t03"}
    with pytest.raises(UserError, match="not a logged metric"):
        pareto_models(df, objectives="psnr_y:max,flops:min")


@pytest.mark.mlflow
def test_search_front_is_the_budgeted_front_of_one_search(search, tmp_path):
    tracker, parent, ids, _ = search
    found = search_front(tracker.uri, "job", parent, objectives="psnr_y:max,macs_720p:min", max_params=60_000)
    assert _names(found.front) == FRONT_60K and len(found.trials) == len(TRIALS)
    assert _names(search_front(tracker, "job").front) == FRONT_ALL  # no parent: every trial of the experiment
    # Another search's trials in the same experiment stay out of this one's front.
    assert len(search_trials(tracker, "job", "0" * 32)) == 0
    assert len(search_front(tracker, "job", "0" * 32).front) == 0


@pytest.mark.mlflow
def test_mark_pareto_tags_every_trial(search):
    tracker, parent, ids, _ = search
    got = mark_pareto(tracker, "job", parent, "psnr_y:max,macs_720p:min", max_params=60_000)
    assert {n for n, r in ids.items() if r in got} == FRONT_60K
    df = query_trials(tracker, "job")
    tags = dict(zip(df["run_id"], df["pareto"], strict=True))
    assert all(tags[r] == (n in FRONT_60K) for n, r in ids.items())  # infeasible and failed get false too
    mark_pareto(tracker, "job", parent, "psnr_y:max,macs_720p:min")
    df = query_trials(tracker, "job")
    assert {n for n, r in ids.items() if df.set_index("run_id").loc[r, "pareto"]} == FRONT_ALL


@pytest.mark.mlflow
def test_parquet_round_trip_keeps_schema(search, tmp_path):
    tracker, *_ = search
    df = query_trials(tracker, "job")
    path = write_trials_parquet(df, tmp_path / "trials.parquet")
    assert pq.read_schema(path).equals(TRIALS_SCHEMA, check_metadata=True)
    back = read_trials_parquet(path)
    assert list(back.columns) == TRIALS_SCHEMA.names
    assert list(back["run_id"]) == list(df["run_id"])
    np.testing.assert_allclose(back["psnr_y"].to_numpy(float), df["psnr_y"].to_numpy(float, na_value=np.nan))
    assert back["macs_720p"].tolist() == df["macs_720p"].tolist()
    assert str(back["C"].dtype) == "Int32" and str(back["paper_rule"].dtype) == "boolean"
    # Missing columns become nulls; the schema is unchanged.
    small = pd.DataFrame({"run_id": ["a", "b"], "psnr_y": [30.0, None], "C": [8, None], "pareto": ["true", None]})
    p2 = write_trials_parquet(small, tmp_path / "small.parquet")
    t2 = pq.read_table(p2)
    assert t2.schema.equals(TRIALS_SCHEMA)
    assert t2.column("arch").null_count == 2 and t2.column("C").to_pylist() == [8, None]
    assert t2.column("pareto").to_pylist() == [True, None]
    with pytest.raises(ValueError, match="'C'"):
        write_trials_parquet(pd.DataFrame({"run_id": ["a"], "C": [3.5]}), tmp_path / "bad.parquet")


def test_pareto_mask_scales_to_many_points():
    rng = np.random.default_rng(2)
    pts = rng.random((3000, 2))
    mask = pareto_mask(pts, ["max", "min"])
    idx = rng.choice(3000, 200, replace=False)
    sub = pts[idx]
    # A point on the full front is on the front of any subset holding it.
    assert all(pareto_mask(sub, ["max", "min"])[mask[idx]])
    assert 0 < mask.sum() < 100
    # Independent 2-D check: sweep by psnr descending; a point is on the front iff its macs beats all before it.
    order = np.argsort(-pts[:, 0])
    best, sweep = np.inf, np.zeros(3000, dtype=bool)
    for i in order:
        sweep[i] = pts[i, 1] < best
        best = min(best, pts[i, 1])
    np.testing.assert_array_equal(mask, sweep)


def test_vs_bicubic_uses_one_set_for_every_row():
    """vs_bicubic_db is measured on the test set when the job has one (a trial without a test figure gets none,
    never a validation gain), else on the validation set; below_bicubic follows its sign."""
    from orchestrator.results.pareto import with_vs_bicubic

    df = pd.DataFrame({"run_id": ["a", "b", "c"], "psnr_y": [33.5, 32.0, 34.0], "test_psnr_y": [34.0, np.nan, 33.0]})
    ref = {"kind": "bicubic", "parent_run_id": "p", "psnr_y": 33.0, "test_psnr_y": 33.6}
    out = with_vs_bicubic(df, pd.DataFrame([ref]), "p")
    assert out["vs_bicubic_db"].round(3).tolist()[0::2] == [0.4, -0.6] and np.isnan(out["vs_bicubic_db"][1])
    assert out["below_bicubic"].tolist()[0::2] == [False, True] and out["below_bicubic"].isna()[1]
    no_test = with_vs_bicubic(df, pd.DataFrame([{**ref, "test_psnr_y": np.nan}]), "p")
    assert no_test["vs_bicubic_db"].round(3).tolist() == [0.5, -1.0, 1.0]
    assert with_vs_bicubic(df, None)["below_bicubic"].isna().all()  # no reference run: unknown, not False
