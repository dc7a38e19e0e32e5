"""The other seed systems through ``srcompress run``: RFDN and IMDN-CLB students (KD) and CSD on EDSR.

Fast tests check the shipped specs and CSD's spec rules; the ``slow`` ones run real jobs (local Ray, sqlite
MLflow, a tiny random teacher, 2 trials of 20 steps) and read back MLflow and the HTML report.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import search_spaces
from orchestrator.tasks import CSDSettings, DataRef, ModelRef, TrialTemplate, trial_task
from search_spaces import SpecError, check_paths, load_job_spec
from sr.distill import KDConfig


def _csd_template() -> TrialTemplate:
    """A CSD search's shared task settings (random weights and the built-in images: no files needed)."""
    return TrialTemplate(
        method="csd",
        teacher=ModelRef("edsr_baseline", {"scale": 2}),
        data=DataRef(train=None, val=None),
        threads=1,
        kd=KDConfig(steps=10, hr_patch=32),
        csd=CSDSettings(lambda_t=1.0, teacher_width=1.0, vgg_weights=None),
    )


NEW_SPECS = ("rfdn", "imdn_clb", "csd_edsr")


# ---------------------------------------------------------------------------------------------------- specs
@pytest.mark.parametrize("name", NEW_SPECS)
def test_new_specs_validate_and_fall_back(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRCOMPRESS_SHARED", str(tmp_path / "absent"))
    monkeypatch.delenv("SRCOMPRESS_VGG19", raising=False)
    spec = load_job_spec(search_spaces.path(name))
    run = check_paths(spec)  # the CPU fallbacks: a briefly trained teacher, scikit-image images
    assert run.teacher.weights is None and run.data.train is None
    assert spec.resources.use_gpu is False and spec.training.steps <= 300 and spec.search.num_samples <= 8
    assert spec.student.method == ("csd" if name == "csd_edsr" else "kd")
    if name == "imdn_clb":
        assert spec.budgets.max_latency_ms and spec.budgets.max_params
        assert spec.data.patch_sizes == [32, 64] and not spec.data.cache.enabled
    if name == "csd_edsr":
        assert spec.csd_settings.vgg_weights == "random"  # documented: untrained VGG19, not meaningful


@pytest.mark.parametrize(
    ("text_from", "text_to", "key", "fragment"),
    [
        ("arch: edsr_baseline", "arch: rfdn", "student.method", "family rfdn"),
        ('vgg_weights: "${SRCOMPRESS_VGG19:-random}"', "vgg_weights: null", "csd.vgg_weights", "lambda_c: 0"),
        ("width: {choices: [0.25, 0.5]}", "width: {choices: [0.3]}", "csd.width", "not a whole number"),
        ("prune:\n  enabled: false", "prune:\n  enabled: true", "prune.enabled", "CSD does not"),
    ],
)
def test_csd_spec_errors_name_the_key(tmp_path: Path, text_from: str, text_to: str, key: str, fragment: str) -> None:
    text = search_spaces.path("csd_edsr").read_text()
    assert text_from in text
    path = tmp_path / "job.yaml"
    path.write_text(text.replace(text_from, text_to, 1))
    with pytest.raises(SpecError) as info:
        load_job_spec(path)
    msg = str(info.value)
    print(msg)
    assert info.value.key == key and fragment in msg and "\n" not in msg


def test_csd_section_needs_csd_method(tmp_path: Path) -> None:
    text = search_spaces.path("rfdn").read_text() + "csd:\n  lambda_c: 0\n"
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_job_spec(path)
    assert info.value.key == "csd"


def test_lambda_c_zero_needs_no_vgg(tmp_path: Path) -> None:
    text = search_spaces.path("csd_edsr").read_text()
    text = text.replace("lambda_c: {low: 0.0, high: 200.0}", "lambda_c: 0").replace(
        'vgg_weights: "${SRCOMPRESS_VGG19:-random}"', "vgg_weights: null"
    )
    path = tmp_path / "job.yaml"
    path.write_text(text)
    spec = load_job_spec(path)
    assert spec.csd_settings.values("lambda_c") == [0]


def test_csd_budgets_price_the_exported_student() -> None:
    """The priced/named architecture of a CSD trial is the exported C' = w*C student, not the shared model."""
    from orchestrator.search import SearchPlan, trial_name
    from search_spaces import job_space, smallest_knobs, student_knobs
    from sr.budget import Budget, price

    spec = load_job_spec(search_spaces.path("csd_edsr"))
    space = job_space(spec)
    assert {"width", "lambda_c", "lambda_t", "lr"} <= set(space) and "w_gt" not in space
    assert smallest_knobs(spec, space)["C"] == 8  # 0.25 * 32
    plan = SearchPlan(
        name="x", storage="/tmp/x", student_arch="edsr_baseline", space=space, budget=Budget(), objectives=(),
        worker=_csd_template(),
    )  # fmt: skip
    knobs = student_knobs(
        {"C": 32, "L": 1, "B": 3, "width": 0.5, "lambda_c": 10.0, "scale": 2},
        arch="edsr_baseline",
        scale=2,
        method="csd",
    )
    assert knobs["C"] == 16 and knobs["B"] == 3
    assert price("edsr_baseline", **knobs).params == 26_403  # EDSR C16 L1 B3 x2, counted by hand in the yaml
    assert trial_name({"C": 32, "L": 1, "B": 3, "width": 0.5, "scale": 2}, plan, "abcdef").startswith(
        "edsr_C16L1B3_x2_csd_"
    )


def test_paper_rule_for_other_families_uses_the_teachers_rule() -> None:
    """RFDN/IMDN-CLB students: the paper's rule on the pruned teacher's own C/L/B (IMDN C64 B6 at d = 0.05)."""
    from orchestrator.job import paper_allocation
    from sr.allocate import allocate

    for name in ("rfdn", "imdn_clb"):
        spec = load_job_spec(search_spaces.path(name))
        alloc = paper_allocation(spec, ModelRef("imdn", {"scale": 2}), 0.05)
        want = allocate(C=64, L=1, B=6, density=0.05, family="imdn")
        print(name, alloc)
        assert alloc == {"base_arch": "imdn", "C": want.C, "L": want.L, "B": want.B, "density": 0.05}


# ------------------------------------------------------------------------------------------------ real jobs
def _completed(df):
    return df[df["status"] == "completed"]


def _check_job(summary: dict, tmp_path: Path, *, prefix: str) -> object:
    """Every trial is in MLflow as completed/infeasible, and the HTML report counts them and names the Pareto
    front's runs (the report lists front members by name; the others are plot points). Returns the trials."""
    from orchestrator.results.report import report_for_experiment

    df, front = summary["trials"], summary["front"]
    print(df[[c for c in ("run_name", "status", "params", "psnr_y", "latency_ms") if c in df.columns]])
    assert len(df) == 2 and set(df["status"]) <= {"completed", "infeasible"}
    assert len(_completed(df)) >= 1 and all(n.startswith(prefix) for n in df["run_name"])
    html = report_for_experiment(
        f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}",
        "tiny",
        tmp_path / "report.html",
        objectives="psnr_y:max,macs_720p:min",  # the tiny job's objectives
        log_to_mlflow=False,
    )
    text = Path(html).read_text()
    assert len(front) >= 1 and set(front["run_name"]) <= set(df["run_name"])
    for run_name in front["run_name"]:
        assert run_name in text
    for status, n in df["status"].value_counts().items():
        assert f"{status}: {n}</span>" in text
    return df


@pytest.mark.ray
@pytest.mark.mlflow
@pytest.mark.slow
def test_rfdn_search(ray_local, tiny_job, tmp_path: Path) -> None:
    from orchestrator.job import run_job
    from sr.budget import price

    spec = tiny_job(
        **{
            "student.arch": "rfdn",
            "student.space": {
                "C": {"choices": [8, 12]},
                "B": {"low": 1, "high": 2},
                "dist_rate": {"low": 0.25, "high": 0.5},
                "attention": {"choices": ["esa", "cca"]},
            },
        }
    )
    summary = run_job(spec)
    # Cross-family paper rule (edsr teacher C8 L1 B1, d = 0.05): the seed is C8 B1, the first trial.
    assert summary["allocation"]["base_arch"] == "edsr_mini" and summary["allocation"]["C"] == 8
    df = _check_job(summary, tmp_path, prefix="rfdn_C")
    seed = df[df["paper_rule"].astype(str).str.lower() == "true"]
    assert len(seed) == 1 and int(seed["C"].iloc[0]) == 8 and int(seed["B"].iloc[0]) == 1
    for _, r in df.iterrows():
        knobs = dict(C=int(r["C"]), B=int(r["B"]), dist_rate=float(r["dist_rate"]), attention=r["attention"])
        assert int(r["params"]) == price("rfdn", scale=2, **knobs).params


@pytest.mark.ray
@pytest.mark.mlflow
@pytest.mark.slow
def test_imdn_clb_search_prices_the_folded_model(ray_local, tiny_job, tmp_path: Path) -> None:
    from orchestrator.job import run_job
    from sr.complexity import count_params
    from sr.models import build
    from sr.reparam import deploy_model

    spec = tiny_job(
        **{
            "student.arch": "imdn_clb",
            "student.space": {
                "C": {"choices": [16, 24]},
                "B": {"low": 1, "high": 2},
                "distilled": 4,
                "clb": "parallel",
            },
            "budgets.max_latency_ms": 1.0e6,  # measured on every feasible trial, never binding here
            "data.hr_patch": None,
            "data.patch_sizes": [16, 32],  # the two-stage curriculum, teacher run on the fly
            "data.patch_boundaries": [10],
            "data.cache": {"enabled": False},
        }
    )
    summary = run_job(spec)
    df = _check_job(summary, tmp_path, prefix="imdn_clb_C")
    for _, r in _completed(df).iterrows():
        model = build("imdn_clb", C=int(r["C"]), B=int(r["B"]), distilled=4, scale=2)
        folded, unfolded = count_params(deploy_model(model)), count_params(model)
        print(f"{r['run_name']}: logged params {int(r['params'])}, folded {folded}, training-time {unfolded}")
        assert int(r["params"]) == folded < unfolded
        assert float(r["latency_ms"]) > 0


@pytest.mark.ray
@pytest.mark.mlflow
@pytest.mark.slow
def test_csd_search_exports_the_width_w_student(ray_local, tiny_job, tmp_path: Path) -> None:
    from orchestrator.job import run_job
    from orchestrator.results.export import load_run_model
    from sr.complexity import count_params
    from sr.models import build

    spec = tiny_job(
        **{
            "student.arch": "edsr_baseline",
            "student.method": "csd",
            "student.space": {"C": 16, "L": 1, "B": {"low": 1, "high": 2}},
            "student.kd_space": {"lr": 1.0e-3},
            "csd": {
                "width": {"choices": [0.25, 0.5]},
                "lambda_c": {"low": 0.0, "high": 200.0},
                "vgg_weights": "random",  # tests only: an untrained VGG19 exercises the contrastive path
            },
            "data.cache": {"enabled": False},
            "search.enqueue_paper_rule": False,
        }
    )
    summary = run_job(spec)
    df = _check_job(summary, tmp_path, prefix="edsr_C")
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    for _, r in _completed(df).iterrows():
        width, C_shared = float(r["width"]), int(r["shared_C"])
        c_student = round(width * C_shared)
        fresh = count_params(build("edsr_baseline", C=c_student, L=1, B=int(r["B"]), scale=2))
        model, meta = load_run_model(uri, r["run_id"])  # what `srcompress export RUN_ID` loads
        print(f"{r['run_name']}: width {width} of C={C_shared} -> C'={c_student}, params {meta['params']} / {fresh}")
        assert C_shared == 16 and int(r["C"]) == c_student and r["run_name"].startswith(f"edsr_C{c_student}L1")
        assert meta["params"] == fresh == int(r["params"])
        assert meta["knobs"]["C"] == c_student
        assert 0 < float(r["psnr_y"]) < 60 and 0 < float(r["teacher_val_psnr_y"]) < 60
        with torch.inference_mode():
            assert model(torch.rand(1, 3, 12, 12)).shape == (1, 3, 24, 24)


@pytest.mark.ray
@pytest.mark.slow
def test_csd_worker_resumes_from_its_checkpoint(ray_local, tmp_path: Path) -> None:
    """10 steps, then the same Train run name continued to 20, equals 20 uninterrupted steps (weights and all)."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.csd_worker import STATE_FILE, csd_worker

    def config(steps: int) -> dict:
        kd = KDConfig(steps=steps, batch_size=2, scale=2, hr_patch=16, lr=1e-3, seed=0, val_every=10, log_every=5)
        kd = dataclasses.replace(kd, ckpt_every=5, milestones=(12,), gamma=0.5, optimizer="adam")
        template = dataclasses.replace(_csd_template(), kd=kd)
        task = trial_task(
            template,
            name="csd",
            student=ModelRef("edsr_baseline", {"C": 2, "L": 1, "B": 1, "scale": 2}),
            sampled={"width": 0.25, "lambda_c": 0.0, "lambda_t": 1.0},
            shared_channels=8,
        )
        return {"task": task}

    def fit(name: str, steps: int):
        return TorchTrainer(
            csd_worker,
            train_loop_config=config(steps),
            scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(
                name=name, storage_path=str(tmp_path / "train"), checkpoint_config=CheckpointConfig(num_to_keep=2)
            ),
        ).fit()

    def weights(result) -> dict:
        with result.checkpoint.as_directory() as d:
            return torch.load(Path(d) / STATE_FILE, weights_only=True)["model"]

    straight = fit("straight", 20)
    fit("resumed", 10)
    resumed = fit("resumed", 20)  # same name + storage: Ray restores the step-10 checkpoint
    print("straight", straight.metrics, "resumed", resumed.metrics)
    assert resumed.metrics["resumed_from_step"] == 10 and resumed.metrics["step"] == 20
    assert straight.metrics["resumed_from_step"] == 0
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["val_psnr_y"] == pytest.approx(straight.metrics["val_psnr_y"])
