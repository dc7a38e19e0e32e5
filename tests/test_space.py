"""The define-by-run space of search_spaces: every shipped spec's space samples on an Optuna FixedTrial."""

from __future__ import annotations

import optuna
import pytest

import search_spaces
from search_spaces import (
    KD_DIMS,
    SpaceFn,
    clamp_to_space,
    is_range,
    job_space,
    load_job_spec,
    make_space_fn,
    smallest,
    smallest_knobs,
    student_knobs,
    suggest,
)
from sr.budget import Budget, price


def _fixed_point(space: dict) -> dict:
    """A value inside every searched dimension (the low end, or the first choice)."""
    return {k: (v["choices"][0] if "choices" in v else v["low"]) for k, v in space.items() if is_range(v)}


@pytest.mark.parametrize("name", search_spaces.names())
def test_every_shipped_space_samples_on_a_fixed_trial(name: str) -> None:
    spec = load_job_spec(search_spaces.path(name))
    space = job_space(spec)
    point = _fixed_point(space)
    cfg = suggest(optuna.trial.FixedTrial(point), space)
    assert set(cfg) == set(space)
    assert {k: cfg[k] for k in point} == point
    assert cfg["scale"] == spec.data.scale
    assert all(cfg[k] == v for k, v in space.items() if not is_range(v))  # fixed values pass through
    knobs = student_knobs(cfg, arch=spec.student.arch, scale=spec.data.scale, method=spec.student.method)
    assert not set(KD_DIMS) & set(knobs)
    if spec.student.method == "kd":
        # The low corner of a KD space is the cheapest student the spec allows.
        assert {k: knobs[k] for k in smallest_knobs(spec, space)} == smallest_knobs(spec, space)
    fn = make_space_fn(
        arch=spec.student.arch, space=space, budget=Budget(), scale=spec.data.scale, method=spec.student.method
    )
    out = fn(optuna.trial.FixedTrial(point))
    assert out["_price"] == price(spec.student.arch, **knobs).as_dict()
    assert out["_infeasible"] is False and out["_paper_rule"] is False


def test_space_fn_sets_budget_constraints() -> None:
    space = {"C": {"low": 8, "high": 32, "step": 8}, "L": 1, "B": {"low": 1, "high": 3}, "w_gt": 0.1, "scale": 2}
    fn = SpaceFn(arch="edsr_mini", space=space, budget=Budget(max_params=30_000))
    trial = optuna.trial.FixedTrial({"C": 32, "B": 3})
    cfg = fn(trial)
    assert cfg["_infeasible"] is True and cfg["w_gt"] == 0.1
    assert any(v > 0 for v in trial.constraints.values())  # over budget: a positive violation
    assert fn(optuna.trial.FixedTrial({"C": 8, "B": 1}))["_infeasible"] is False


def test_smallest_and_clamp() -> None:
    space = {"C": {"low": 8, "high": 32, "step": 8}, "B": {"choices": [4, 2]}, "w_gt": {"low": 0.01, "high": 1.0}}
    arch = {"C": space["C"], "L": {"low": 1, "high": 2}, "w_gt": space["w_gt"], "scale": 2}
    assert smallest(arch) == {"C": 8, "L": 1, "scale": 2}  # architecture at its low end; KD ranges dropped
    assert clamp_to_space({"C": 21, "B": 3, "w_gt": 5.0}, space) == {"C": 24, "w_gt": 1.0}
    assert clamp_to_space({"C": 100}, space) == {"C": 32}


def test_lap_weighting_is_a_categorical_kd_dimension(tmp_path):
    """kd_space.lap_weighting: fixed (the default: normalized) or searched ({choices}); the cdism specs keep the
    authors' weighting for a faithful reproduction."""
    assert "lap_weighting" in KD_DIMS
    assert job_space(load_job_spec(search_spaces.path("demo")))["lap_weighting"] == "normalized"
    for name in ("edsr_cdism", "swinir_cdism"):
        assert job_space(load_job_spec(search_spaces.path(name)))["lap_weighting"] == "authors"
    space = {"lap_weighting": {"choices": ["flat", "normalized"]}, "w_gt": 0.1}
    assert suggest(optuna.trial.FixedTrial({"lap_weighting": "flat"}), space)["lap_weighting"] == "flat"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {suggest(study.ask(), space)["lap_weighting"] for _ in range(12)}
    assert seen == {"flat", "normalized"}
