"""Multi-worker trials: the real Ray workers (``prune_worker``, ``kd_worker``) on 2 gloo DDP ranks of a Ray
``TorchTrainer`` train exactly what one process trains on the same global batch, and a worker killed mid-run
resumes on both ranks from the last checkpoint to the same result as an uninterrupted run.

Each rank trains on its half of every global batch; the losses it reports are its half's, so their mean is the
loss of the whole batch. A ``ray.train.UserCallback`` sees every rank's report (``metrics[i]`` is rank i's).
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from ray.train import UserCallback

from orchestrator.tasks import DataRef, ModelRef, PruneTask, TrialTemplate, trial_task
from orchestrator.workers import prune_inputs, train_sources
from sr import stages
from sr.checkpoint import read_state_dict, save_checkpoint
from sr.data import fallback_eval_pairs
from sr.distill import KDConfig
from sr.models import build
from sr.prune import PruneConfig
from sr.prune_schedule import prune_dataset

pytestmark = pytest.mark.ray

KNOBS = {"C": 8, "L": 1, "B": 2}
DATA = DataRef(train=None, val=None)  # the scikit-image sample images: no ../shared needed


def _reports(path: Path, *, kill_once: Path | None = None) -> UserCallback:
    """A callback that appends every round of reports (one metrics dict per rank) to a JSON-lines file and,
    with ``kill_once``, SIGKILLs one Train worker once, after the first report that carries a checkpoint (a lost
    process mid-run). Defined here so that Ray pickles it by value: the controller cannot import test modules."""

    class Reports(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            with open(path, "a") as f:
                f.write(json.dumps([{k: v for k, v in m.items() if isinstance(v, int | float)} for m in metrics]))
                f.write("\n")
            if kill_once is None or checkpoint is None or kill_once.exists():
                return
            kill_once.touch()
            # ray.util.state needs the dashboard, which the test cluster runs without; the GCS actor table does not.
            from ray._private.state import actors  # deferred: only the fault injection needs Ray's internals

            workers = [a for a in actors().values() if a["ActorClassName"].endswith("RayTrainWorker")]
            os.kill(max(a["Pid"] for a in workers if a["State"] == "ALIVE"), signal.SIGKILL)

    return Reports()


def _fit(worker: Any, task: Any, tmp: Path, name: str, *, kill: bool = False) -> list[list[dict[str, Any]]]:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    log = tmp / f"{name}.jsonl"
    TorchTrainer(
        worker,
        train_loop_config={"task": task},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(
            name=f"{name}_{uuid.uuid4().hex[:6]}",
            storage_path=str(tmp / "train"),
            failure_config=FailureConfig(max_failures=1 if kill else 0),
            callbacks=[_reports(log, kill_once=tmp / f"{name}.killed" if kill else None)],
        ),
    ).fit()
    return [json.loads(line) for line in log.read_text().splitlines()]


def _teacher(tmp: Path) -> ModelRef:
    path = tmp / "teacher.pth"
    if not path.exists():
        torch.manual_seed(0)
        save_checkpoint(path, {"params": build("edsr_baseline", scale=2, **KNOBS).state_dict()})
    return ModelRef("edsr_baseline", {**KNOBS, "scale": 2}, str(path))


def _prune_task(tmp: Path, out: str) -> PruneTask:
    cfg = PruneConfig(family="edsr", steps=24, batch_size=4, lr=0.05, lambda_=0.05, np_epochs=2, seed=3,
                      log_every=3, ema_decay=None, shuffle=False)  # fmt: skip
    # 4 of the 5 sample images: an epoch is 1 batch of 4, 24 epochs, 2 Prox-SG steps then Orthant steps
    return PruneTask(teacher=_teacher(tmp), prune=cfg, hr_patch=32, scale=2, data=DATA, output_dir=str(tmp / out),
                     threads=1, n_images=4)  # fmt: skip


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ddp")


@pytest.fixture(scope="module")
def single_prune(tmp: Path) -> dict[str, Any]:
    """The same pruning run in one process (world size 1) on the same global batches."""
    task = _prune_task(tmp, "single")
    torch.set_num_threads(1)
    cfg, schedule, items = prune_inputs(task)
    data = prune_dataset(items, schedule, scale=2, hr_patch=32, seed=cfg.seed)
    model = stages.load_model(task.teacher.arch, task.teacher.knobs, task.teacher.weights)
    losses: dict[int, float] = {}
    stages.prune_stage(model, cfg, train_data=data, out=Path(task.output_dir),
                       report=lambda m, _c: losses.update({m["step"]: m["loss"]}))  # fmt: skip
    return {"losses": losses, "summary": json.loads((tmp / "single" / "density.json").read_text())}


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = read_state_dict(a), read_state_dict(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)


def test_prune_on_2_ranks_equals_one_process(ray_local, tmp, single_prune):
    from orchestrator.workers import prune_worker

    reports = _fit(prune_worker, _prune_task(tmp, "ddp"), tmp, "prune_ddp")
    assert all("density" in m for m in reports[-1])  # the density travels in every rank's last report
    rounds = [r for r in reports if "loss" in r[0]]
    assert all(len(r) == 2 for r in rounds)  # both ranks report at every log step
    steps = [r[0]["step"] for r in rounds]
    assert steps == list(range(3, 25, 3)) and steps == sorted(single_prune["losses"])
    ddp_loss = [(r[0]["loss"] + r[1]["loss"]) / 2 for r in rounds]  # each rank's half of the global batch
    print("losses 2 ranks:", [f"{v:.6f}" for v in ddp_loss])
    print("losses 1 proc :", [f"{single_prune['losses'][s]:.6f}" for s in steps])
    assert ddp_loss == pytest.approx([single_prune["losses"][s] for s in steps], rel=1e-5)
    assert rounds[0][0]["loss"] != rounds[0][1]["loss"]  # the ranks really trained on different halves
    ddp = json.loads((tmp / "ddp" / "density.json").read_text())
    assert ddp["switch_step"] == 2 and ddp["batches_per_epoch"] == 1
    assert [d for _, d in ddp["history"]] == pytest.approx([d for _, d in single_prune["summary"]["history"]], abs=1e-3)
    _assert_same_weights(tmp / "ddp" / "pruned.pth", tmp / "single" / "pruned.pth")


def test_prune_worker_killed_mid_run_resumes_on_both_ranks(ray_local, tmp, single_prune):
    from orchestrator.workers import RESUMED_FROM_KEY, prune_worker

    rounds = _fit(prune_worker, _prune_task(tmp, "killed"), tmp, "prune_killed", kill=True)
    assert (tmp / "prune_killed.killed").exists()
    resumed = [r for r in rounds if r[0][RESUMED_FROM_KEY] > 0]
    print(
        "resumed from step",
        resumed[0][0][RESUMED_FROM_KEY] if resumed else None,
        "steps",
        [r[0]["step"] for r in rounds],
    )
    assert resumed and all(r[0][RESUMED_FROM_KEY] == r[1][RESUMED_FROM_KEY] for r in resumed)  # both ranks
    assert rounds[-1][0]["step"] == 24
    _assert_same_weights(tmp / "killed" / "pruned.pth", tmp / "single" / "pruned.pth")


def test_kd_on_2_ranks_equals_one_process(ray_local, tmp):
    from orchestrator.workers import kd_worker

    cfg = KDConfig(steps=6, batch_size=4, hr_patch=32, scale=2, lr=1e-3, ema_decay=None, log_every=2, val_every=6,
                   seed=5)  # fmt: skip
    teacher = _teacher(tmp)
    student = ModelRef("edsr_baseline", {"C": 4, "L": 1, "B": 1, "scale": 2})
    template = TrialTemplate(method="kd", teacher=teacher, data=DATA, threads=1, kd=cfg)
    rounds = _fit(kd_worker, trial_task(template, name="kd", student=student, sampled={}), tmp, "kd_ddp")

    torch.set_num_threads(1)
    single: dict[int, dict[str, float]] = {}
    stages.distill_stage(
        cfg,
        student_arch=student.arch,
        student_knobs=student.knobs,
        teacher=stages.load_model(teacher.arch, teacher.knobs, teacher.weights),
        sources=train_sources(DATA),
        val_pairs=fallback_eval_pairs(2),
        report=lambda m, _c: single.update({m["step"]: m}),
        device="cpu",
    )
    steps = [r[0]["step"] for r in rounds]
    assert steps == sorted(single) == [2, 4, 6] and all(len(r) == 2 for r in rounds)
    ddp_loss = [(r[0]["loss"] + r[1]["loss"]) / 2 for r in rounds]
    print("KD losses 2 ranks:", ddp_loss, "1 proc:", [single[s]["loss"] for s in steps])
    assert ddp_loss == pytest.approx([single[s]["loss"] for s in steps], rel=1e-5)
    assert rounds[-1][0]["val_psnr_y"] == pytest.approx(single[6]["val_psnr_y"], abs=1e-4)
