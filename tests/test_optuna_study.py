"""The search's Optuna study lives in an RDB (issue 13, item 3): sqlite under the job's storage by default, opened
by ``optuna.load_study``; over-budget draws show as infeasible through their constraints; a resumed searcher
continues the same study without duplicate or dangling trials; a new job never writes into another's study."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from test_searcher import _plan as searcher_plan

from orchestrator import _optuna_study as ost
from orchestrator.search import SearchPlan, make_searcher
from sr.budget import Budget
from sr.errors import UserError


def _plan(tmp: Path, **changes) -> SearchPlan:
    """test_searcher's plan (edsr_mini, 30k-parameter budget, random sampler), stored under ``tmp``."""
    return replace(searcher_plan(), name="job", storage=str(tmp / "runs" / "job"), seed=3, **changes)


def _searcher(plan: SearchPlan):
    storage = ost.open_storage(plan)
    return make_searcher(plan, storage=storage)


def _tell(searcher, tid: str, cfg: dict) -> None:
    psnr = 30.0 + cfg["C"] / 8 + cfg["B"] / 10  # what a trained trial would report
    result = {"psnr_y": psnr, "macs_720p": cfg["_price"]["macs_720p"], "done_training": 1}
    searcher.on_trial_complete(tid, result=result)


def test_default_storage_is_sqlite_under_the_job(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert ost.storage_url(plan) == f"sqlite:///{tmp_path / 'runs' / 'job' / 'optuna.db'}"
    assert ost.storage_url(replace(plan, storage=f"file://{tmp_path}/j")) == f"sqlite:///{tmp_path}/j/optuna.db"
    assert ost.storage_url(replace(plan, optuna_storage="sqlite:////elsewhere/o.db")) == "sqlite:////elsewhere/o.db"
    # A bucket store keeps the sqlite file locally, one per storage location: same job name, two buckets, two files.
    in_a = ost.storage_url(replace(plan, storage="s3://bucket/runs/job"))
    in_b = ost.storage_url(replace(plan, storage="s3://other/runs/job"))
    assert "/.srcompress/optuna/job-" in in_a and in_a.endswith(".db") and in_a != in_b


def test_infeasible_draws_show_through_constraints(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    searcher = _searcher(plan)
    for i in range(5):
        cfg = searcher.suggest(f"t{i}")
        assert not cfg["_infeasible"]  # the searcher answered every over-budget draw itself
        _tell(searcher, f"t{i}", cfg)
    study = optuna.load_study(study_name="job", storage=ost.storage_url(plan))
    trials = study.get_trials()
    infeasible = [t for t in trials if t.user_attrs.get(ost.STATUS_ATTR) == "infeasible"]
    trained = [t for t in trials if t.user_attrs.get(ost.STATUS_ATTR) == "completed"]
    print(f"study {study.study_name}: {len(trials)} trials, {len(infeasible)} infeasible, {len(trained)} trained")
    for t in trials:
        print(f"  #{t.number} {t.state.name:<8} {t.params} constraints={t.constraints} {t.user_attrs}")
    assert len(trained) == 5 and infeasible, "seed 3 draws over-budget configurations"
    assert all(max(t.constraints.values()) > 0 for t in infeasible)  # params over budget: infeasible
    assert all(max(t.constraints.values()) <= 0 for t in trained)
    # Optuna's front holds feasible trials only (trained ones, and repeats answered with their result by dedupe).
    assert study.best_trials and not {t.number for t in study.best_trials} & {t.number for t in infeasible}
    assert searcher.answered["infeasible"] == len(infeasible)


def test_resumed_searcher_continues_the_study_without_duplicates(tmp_path: Path) -> None:
    plan = _plan(tmp_path, budget=Budget(), dedupe=False)  # every draw is a trial
    first = _searcher(plan)
    cfg0 = first.suggest("a")
    _tell(first, "a", cfg0)
    cfg1 = first.suggest("b")  # running when Tune snapshots the searcher
    snapshot = tmp_path / "searcher.pkl"
    first.save(str(snapshot))
    lost = [first.suggest(t) for t in ("c", "d")]  # drawn after the snapshot; then the driver is killed

    resumed = _searcher(plan)
    resumed.restore(str(snapshot))
    again = [resumed.suggest(t) for t in ("c2", "d2")]  # new Tune trial ids, the same study trials
    assert [(c["_draw"], c["C"], c["B"]) for c in again] == [(c["_draw"], c["C"], c["B"]) for c in lost]
    _tell(resumed, "b", cfg1)
    for tid, cfg in zip(("c2", "d2"), again, strict=True):
        _tell(resumed, tid, cfg)
    fresh = resumed.suggest("e")
    assert fresh["_draw"] == 4
    study = optuna.load_study(study_name="job", storage=ost.storage_url(plan))
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE"] * 4 + ["RUNNING"]  # nothing dangling, nothing drawn twice


def test_a_new_job_never_writes_into_an_existing_study(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    _searcher(plan).suggest("a")
    storage = ost.open_storage(plan)
    with pytest.raises(UserError, match="already holds a study named 'job'.*--resume"):
        ost.prepare_study(plan, storage, resume=False)
    ost.prepare_study(plan, storage, resume=True)  # a resume whose Tune state was lost starts over
    assert optuna.study.get_all_study_names(storage) == []


def test_bad_storage_url_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot open the Optuna storage.*search.optuna_storage"):
        ost.open_storage(_plan(tmp_path, optuna_storage="nosuchdb://x"))
