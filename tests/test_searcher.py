"""The search's searcher (Ray Tune's OptunaSearch with budget constraints), driven without a cluster."""

from __future__ import annotations

from dataclasses import replace

from orchestrator.search import BudgetedOptunaSearch, SearchPlan, make_searcher, sampler_settings, trial_resources
from sr.budget import Budget, price

SPACE = {"C": {"low": 8, "high": 24, "step": 8}, "L": 1, "B": {"low": 1, "high": 3}, "w_gt": 0.1, "scale": 2}
BUDGET = 30_000


def _plan(**changes) -> SearchPlan:
    plan = SearchPlan(
        name="t",
        storage="unused",
        student_arch="edsr_mini",
        space=SPACE,
        budget=Budget(max_params=BUDGET),
        objectives=(("psnr_y", "max"), ("macs_720p", "min")),
        algorithm="random",
        num_samples=8,
        seed=1,
    )
    return replace(plan, **changes)


def _tell(searcher: BudgetedOptunaSearch, tid: str, cfg: dict) -> None:
    # A made-up PSNR that depends on the architecture (what a trained trial would report).
    psnr = 30.0 + cfg["C"] / 8 + cfg["B"] / 10
    searcher.on_trial_complete(tid, result={"psnr_y": psnr, "macs_720p": cfg["_price"]["macs_720p"]})


def test_infeasible_draws_are_answered_by_the_searcher():
    searcher = make_searcher(_plan())
    configs = []
    for i in range(6):
        cfg = searcher.suggest(f"t{i}")
        configs.append(cfg)
        assert not cfg["_infeasible"]  # every trial it hands out meets the budget
        assert price("edsr_mini", C=cfg["C"], L=1, B=cfg["B"], scale=2).params <= BUDGET
        _tell(searcher, f"t{i}", cfg)
    assert searcher.answered["infeasible"] >= 1  # C=24 with B >= 2 is over budget and random search draws it
    study = searcher._ot_study
    answered = [t for t in study.trials if any(v > 0 for v in (t.constraints or {}).values())]
    assert len(answered) == searcher.answered["infeasible"]  # Optuna knows them as infeasible


def test_without_skip_infeasible_draws_are_trials():
    searcher = make_searcher(_plan(skip_infeasible=False))
    flags = []
    for i in range(8):
        cfg = searcher.suggest(f"t{i}")
        flags.append(cfg["_infeasible"])
        _tell(searcher, f"t{i}", cfg)
    assert any(flags) and searcher.answered["infeasible"] == 0


def test_duplicates_are_answered_from_the_finished_trial():
    # Two feasible configurations in all: after both ran, further draws are answered without a trial until the
    # redraw limit hands one out again.
    space = {**SPACE, "C": 8, "B": {"low": 1, "high": 2}}
    searcher = make_searcher(_plan(space=space))
    seen = []
    for i in range(3):
        cfg = searcher.suggest(f"t{i}")
        seen.append(cfg["B"])
        _tell(searcher, f"t{i}", cfg)
    assert sorted(seen[:2]) == [1, 2] or searcher.answered["duplicate"] > 0
    assert searcher.answered["duplicate"] >= 1
    off = make_searcher(_plan(space=space, dedupe=False))
    for i in range(3):
        _tell(off, f"t{i}", off.suggest(f"t{i}"))
    assert off.answered["duplicate"] == 0


def test_sampler_settings_and_population_size():
    assert sampler_settings(_plan(algorithm="nsga2", num_samples=48)) == {"population_size": 16}
    assert sampler_settings(_plan(algorithm="nsga2", population_size=6)) == {"population_size": 6}
    assert sampler_settings(_plan(algorithm="motpe", num_samples=48)) == {"multivariate": True, "n_startup_trials": 6}
    assert make_searcher(_plan(algorithm="nsga2", population_size=6))._sampler.population_size == 6


def test_one_worker_trials_hold_the_worker_resources():
    assert trial_resources(_plan(cpus_per_worker=2)) == {"CPU": 2}
    assert trial_resources(_plan(use_gpu=True, gpus_per_worker=1.0)) == {"CPU": 1.0, "GPU": 1.0}
    # Several workers (or trial_runner: trainer): the trial only drives a TorchTrainer.
    assert set(trial_resources(_plan(workers_per_trial=2))) == {"srcompress_trial"}
    assert set(trial_resources(_plan(trial_runner="trainer"))) == {"srcompress_trial"}
