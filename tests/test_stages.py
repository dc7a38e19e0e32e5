"""sr.stages: the CLI (``orchestrator.cli.method``) and the Ray prune worker run the same stage, same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from orchestrator.tasks import DataRef, ModelRef, PruneTask, TrialTemplate, trial_task
from sr.checkpoint import read_state_dict, save_checkpoint
from sr.models import build
from sr.prune import PruneConfig


@pytest.mark.ray
def test_prune_stage_cli_and_ray_worker_give_the_same_outputs(ray_local, t91_dir: Path, tmp_path: Path) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.cli.method_run import run_prune_stage
    from orchestrator.workers import prune_worker

    knobs = {"C": 8, "L": 1, "B": 2}
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pth"
    save_checkpoint(teacher, {"params": build("edsr_baseline", scale=2, **knobs).state_dict()})
    settings = dict(steps=6, batch_size=2, hr_patch=32, lr=0.05, lambda_=0.05, epsilon=1e-4, np_epochs=1, seed=3)

    cli = run_prune_stage(
        arch="edsr_baseline",
        knobs=knobs,
        weights=str(teacher),
        data=str(t91_dir),
        val=None,
        scale=2,
        batches_per_epoch=3,
        log_every=2,
        out=tmp_path / "cli",
        quiet=True,
        **settings,
    )
    prune = {k: settings[k] for k in ("steps", "batch_size", "lr", "lambda_", "epsilon", "np_epochs")}
    task = PruneTask(
        teacher=ModelRef("edsr_baseline", {**knobs, "scale": 2}, str(teacher)),
        prune=PruneConfig(family="edsr", **prune, seed=3, batches_per_epoch=3, log_every=2, ema_decay=None),
        hr_patch=32,
        scale=2,
        data=DataRef(train=(str(t91_dir),), val=None),
        output_dir=str(tmp_path / "ray"),
        threads=1,
    )
    TorchTrainer(
        prune_worker,
        train_loop_config={"task": task},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="prune_both_ways", storage_path=str(tmp_path / "train")),
    ).fit()

    ray_summary = json.loads((tmp_path / "ray" / "density.json").read_text())
    assert 0 < cli["density"] < 1
    assert ray_summary["density"] == pytest.approx(cli["density"], abs=1e-6)
    assert [s for s, _ in ray_summary["history"]] == [s for s, _ in cli["history"]] == [0, 2, 4, 6]
    assert [d for _, d in ray_summary["history"]] == pytest.approx([d for _, d in cli["history"]], abs=1e-6)
    a = read_state_dict(tmp_path / "cli" / "pruned.pth")
    b = read_state_dict(tmp_path / "ray" / "pruned.pth")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.ray
def test_distill_stage_cli_and_ray_worker_give_the_same_outputs(ray_local, t91_dir: Path, tmp_path: Path) -> None:
    """``srcompress distill``'s stage and the Ray ``kd_worker`` both run ``sr.stages.distill_stage``: same seed,
    same student weights and validation PSNR."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.cli.method_run import run_distill_stage
    from orchestrator.workers import kd_worker
    from sr.distill import KDConfig

    t_knobs, s_knobs = {"C": 8, "L": 1, "B": 2}, {"C": 4, "L": 1, "B": 1}
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pth"
    save_checkpoint(teacher, {"params": build("edsr_baseline", scale=2, **t_knobs).state_dict()})
    cfg = KDConfig(steps=4, batch_size=2, hr_patch=32, scale=2, lr=1e-3, ema_decay=None, log_every=2, seed=5)

    cli = run_distill_stage(
        cfg=cfg,
        student_arch="edsr_baseline",
        student_knobs=s_knobs,
        teacher_arch="edsr_baseline",
        teacher_knobs=t_knobs,
        teacher_weights=str(teacher),
        data=str(t91_dir),
        val=None,
        out=tmp_path / "cli",
        quiet=True,
    )
    template = TrialTemplate(
        method="kd",
        teacher=ModelRef("edsr_baseline", {**t_knobs, "scale": 2}, str(teacher)),
        data=DataRef(train=(str(t91_dir),), val=None),
        threads=1,
        kd=cfg,
    )
    task = trial_task(template, name="distill", student=ModelRef("edsr_baseline", {**s_knobs, "scale": 2}), sampled={})
    result = TorchTrainer(
        kd_worker,
        train_loop_config={"task": task},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="distill_both_ways", storage_path=str(tmp_path / "train")),
    ).fit()

    assert result.metrics["step"] == cli["steps"] == 4
    assert result.metrics["val_psnr_y"] == pytest.approx(cli["val_psnr_y"], abs=1e-4)
    assert result.metrics["loss"] == pytest.approx(cli["loss"], rel=1e-4)
    a = read_state_dict(tmp_path / "cli" / "student.pth")
    with result.checkpoint.as_directory() as d:
        b = torch.load(Path(d) / "weights.pth", weights_only=True)["params"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
