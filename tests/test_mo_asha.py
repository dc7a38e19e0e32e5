"""Multi-objective early stopping (issue 10, defect 4): MO-ASHA keeps the cheap end of a PSNR-vs-MACs front that
PSNR-only ASHA stops, its stopped trials are PRUNED in the Optuna study (never a result, never reused by dedupe),
and ``srcompress pareto`` never returns a stopped trial.

Synthetic objective: a trial of cost ``c`` (MACs) and quality penalty ``p`` reports, at step t of 8,
``psnr_y = 28 + 2 log2(c) - p + 0.1 t`` (higher cost, higher PSNR: every cheap trial is below every expensive
one at every rung). The 4 trials with p = 0 form the front; the 4 with p = 3 are each dominated. Trials run one at
a time, most expensive first, as a search that found the accurate end first would.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from ray import cloudpickle as ray_cloudpickle
from test_pareto import TRIALS, log_synthetic_search

from orchestrator.cli import main
from orchestrator.mo_asha import MOASHAScheduler, mo_order
from orchestrator.search import BudgetedOptunaSearch

ORDER = [(8, 0), (4, 0), (1, 0), (2, 0), (8, 3), (4, 3), (2, 3), (1, 3)]  # (cost, penalty), in run order
FRONT = {(8, 0), (4, 0), (2, 0), (1, 0)}
STEPS = 8
OBJECTIVES = (("psnr_y", "max"), ("macs_720p", "min"))


def _psnr(cost: int, penalty: int, step: int) -> float:
    return 28 + 2 * math.log2(cost) - penalty + 0.1 * step


def _synthetic_trial(config: dict) -> None:
    import ray.tune  # deferred: runs in the trial's worker process

    for step in range(1, STEPS + 1):
        result = {"step": step, "psnr_y": _psnr(config["cost"], config["penalty"], step), "macs_720p": config["cost"]}
        if step == STEPS:
            result["done_training"] = 1  # as the KD worker marks its last report
        ray.tune.report(result)


ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])  # trial workers cannot import this test module


def _space(trial: optuna.Trial) -> dict:
    trial.suggest_int("cost", 1, 8)
    trial.suggest_int("penalty", 0, 3)
    return {}


def _search(ray_local, tmp: Path, scheduler) -> tuple[optuna.Study, dict[tuple[int, int], str]]:
    """The 8 synthetic trials through Tune + the project's searcher (study in sqlite); (study, state by config)."""
    from ray import tune

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}/optuna.db")
    searcher = BudgetedOptunaSearch(
        space=_space,
        metric=[k for k, _ in OBJECTIVES],
        mode=[m for _, m in OBJECTIVES],
        sampler=optuna.samplers.RandomSampler(seed=0),
        points_to_evaluate=[{"cost": c, "penalty": p} for c, p in ORDER],
        storage=storage,
        study_name="synthetic",
        early_stopping=True,
    )
    tuner = tune.Tuner(
        tune.with_resources(_synthetic_trial, {"CPU": 1}),
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=len(ORDER), max_concurrent_trials=1, reuse_actors=True
        ),
        run_config=tune.RunConfig(name="synthetic", storage_path=str(tmp / "tune"), verbose=0),
    )
    tuner.fit()
    study = optuna.load_study(study_name="synthetic", storage=f"sqlite:///{tmp}/optuna.db")
    states = {(t.params["cost"], t.params["penalty"]): t.state.name for t in study.trials}
    return study, states


@pytest.mark.ray
def test_mo_asha_keeps_the_cheap_end_that_psnr_asha_stops(ray_local, tmp_path: Path) -> None:
    from ray.tune.schedulers import ASHAScheduler

    psnr_only = ASHAScheduler(time_attr="step", metric="psnr_y", mode="max", max_t=STEPS, grace_period=1,
                              reduction_factor=2)  # fmt: skip
    (tmp_path / "asha").mkdir()
    _, asha_states = _search(ray_local, tmp_path / "asha", psnr_only)
    print("PSNR-only ASHA:", asha_states)
    cheap = [k for k in FRONT if k[0] < 8]
    assert all(asha_states[k] == "PRUNED" for k in cheap)  # the synthetic case is the one the issue describes

    mo = MOASHAScheduler(OBJECTIVES, max_t=STEPS, grace_period=1, reduction_factor=2)
    (tmp_path / "mo").mkdir()
    study, states = _search(ray_local, tmp_path / "mo", mo)
    print("MO-ASHA:", states)
    assert {k for k, s in states.items() if s == "COMPLETE"} == FRONT  # the whole front, cheapest included
    assert {k for k, s in states.items() if s == "PRUNED"} == set(ORDER) - FRONT
    assert len(mo.stopped) == 4
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert all(t.values is None and t.user_attrs["srcompress_status"] == "stopped-early" for t in pruned)
    best = {(t.params["cost"], t.params["penalty"]) for t in study.best_trials}
    assert best == FRONT


def test_mo_order_puts_front_ends_first() -> None:
    pts = np.array([[-34, 8], [-32, 4], [-28, 1], [-31, 8], [-30, 2]], float)  # (−PSNR, MACs)
    order, fronts = mo_order(pts)
    assert list(fronts) == [0, 0, 0, 1, 0]
    assert set(order[:2].tolist()) == {0, 2} and order[-1] == 3  # the two ends, then the middle; dominated last


def test_dedupe_never_reuses_a_stopped_trial() -> None:
    searcher = BudgetedOptunaSearch(
        space=_space, metric=["psnr_y", "macs_720p"], mode=["max", "min"], early_stopping=True
    )
    cfg = searcher.suggest("a")
    searcher.on_trial_complete("a", result={"step": 2, "psnr_y": 30.0, "macs_720p": 1.0})  # no done_training
    assert searcher._done == {}
    assert searcher._ot_study.trials[0].state == optuna.trial.TrialState.PRUNED
    searcher.suggest("b")
    searcher.on_trial_complete("b", result={"step": 8, "psnr_y": 31.0, "macs_720p": 1.0, "done_training": 1})
    assert list(searcher._done.values()) == [[31.0, 1.0]] and cfg is not None


@pytest.mark.mlflow
def test_pareto_cli_never_returns_a_stopped_trial(tmp_path: Path, capsys) -> None:
    tracker, _, ids = log_synthetic_search(tmp_path)
    stopped = {ids[name] for name, status, *_ in TRIALS if status == "stopped-early"}
    assert stopped  # t05: the highest PSNR of the synthetic search, stopped early
    for objectives in ("psnr_y:max,macs_720p:min", "psnr_y:max,params:min"):
        argv = ["pareto", "--experiment", "job", "--tracking-uri", tracker.uri, "--json", "--objectives", objectives]
        assert main(argv) == 0
        models = json.loads(capsys.readouterr().out)["models"]
        assert models and not {m["run_id"] for m in models} & stopped
        assert {m["status"] for m in models} == {"completed"}
