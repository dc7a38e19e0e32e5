"""Ray Train per-worker functions: read a frozen task (``orchestrator.tasks``) and call the ``sr`` stages.

Distributed structure (one TorchTrainer per call):
  [W1] ``prune_worker``  — OBProx-SG fine-tune of the teacher (``sr.stages.prune_stage``); once per job.
  [W2] ``kd_worker``     — distillation of one student (``sr.stages.distill_stage``); once per search trial.
Each takes ``{"task": PruneTask | TrialTask}`` (TorchTrainer's ``train_loop_config`` is a dict).
Both run on every rank (DDP via ``ray.train.torch.prepare_model``: gloo on CPU, nccl on GPU), report metrics with
``ray.train.report`` from every rank (Train V2 needs all ranks to report), and attach checkpoints on rank 0 only.
A restarted worker group (``FailureConfig``) finds the last reported checkpoint through ``ray.train.get_checkpoint``
and resumes from its step, not from step 0.

``run_in_trial`` runs the same functions as the Tune trial's own single worker (no TorchTrainer): ``ray.tune``'s
report/checkpoint calls replace ``ray.train``'s, and a trial restarted by Tune's ``FailureConfig`` resumes from its
last checkpoint the same way. A one-worker trial then skips the Train run's actors (controller, placement group,
worker start-up: ~12 s per trial, bench/overhead.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from orchestrator import storage
from orchestrator.tasks import DataRef, ModelRef, PruneTask, TrackingRef, TrialTask, task_record
from orchestrator.tracking import Tracker
from sr import stages
from sr._train import to_fast_layout, unwrap
from sr.arch_record import record_of
from sr.data import fallback_eval_pairs, load_eval_pairs, resolve_train_sources
from sr.distill import KDConfig
from sr.errors import DataError
from sr.evaluate import evaluate_bicubic, evaluate_model, super_resolve
from sr.prune import PruneConfig
from sr.prune_schedule import PruneSchedule, list_image_items, pick_prune_images, prune_dataset, resolve_prune_schedule

log = logging.getLogger(__name__)

RESUMED_FROM_KEY = "resumed_from_step"

# Set while ``run_in_trial`` runs a worker function inside a Tune trial: the helpers below then use ``ray.tune``.
_IN_TRIAL: dict[str, Any] | None = None


def run_in_trial(worker_fn: Any, task: TrialTask) -> dict[str, Any]:
    """Run a per-worker function (``kd_worker``, ``csd_worker``) as rank 0 of 1 inside the calling Tune trial;
    returns the last metrics it reported."""
    global _IN_TRIAL
    _IN_TRIAL = {"last": {}}
    try:
        worker_fn({"task": task})
        return dict(_IN_TRIAL["last"])
    finally:
        _IN_TRIAL = None


# ------------------------------------------------------------------------------------------------ shared bits
def load_model(ref: ModelRef) -> torch.nn.Module:
    """Build a :class:`ModelRef` through ``sr.stages.load_model`` (the one model loader); weights in the job's
    store (a fallback teacher) are copied to this node first."""
    return stages.load_model(ref.arch, ref.knobs, storage.local_copy(ref.weights))


def train_sources(data: DataRef) -> list:
    return resolve_train_sources(None if data.train is None else list(data.train))


def patch_datasets(data: DataRef, kd: KDConfig) -> Any:
    """``hr_patch -> PatchDataset`` over the training images (the curriculum asks for one per patch size)."""
    samples = kd.steps * kd.batch_size
    return stages.patch_data(train_sources(data), scale=kd.scale, seed=kd.seed, samples=samples, skip_bad=data.skip_bad)


def val_pairs(data: DataRef, scale: int) -> list:
    if data.val:
        return load_eval_pairs(data.val, scale, skip_bad=data.skip_bad, first=data.val_first)
    return fallback_eval_pairs(scale)


def set_name(path: str) -> str:
    """A test set's name in metric keys: its folder (``.../Set5/HR`` -> ``Set5``), MLflow-safe."""
    p = Path(path)
    name = p.parent.name if p.name == "HR" else p.name
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "test"


def test_sets(data: DataRef, scale: int) -> list[tuple[str, list]]:
    """``(name, pairs)`` of each test set (reported, never selected on); empty without ``data.test``."""
    return [(set_name(t), load_eval_pairs(t, scale, skip_bad=data.skip_bad)) for t in data.test]


def test_metrics(model: torch.nn.Module | None, data: DataRef, scale: int, val: list | None) -> dict[str, float]:
    """Final figures of ``model`` (None: bicubic upsampling) beside the validation ones.

    ``test_psnr_y_<set>``/``test_ssim_y_<set>`` per test set, ``test_psnr_y``/``test_ssim_y`` of the first one,
    and ``vs_bicubic_db``: the PSNR_Y gain over bicubic on the first test set (on the validation set ``val``
    when there is no test set).
    """
    out: dict[str, float] = {}
    sets = test_sets(data, scale)
    dev = next(model.parameters()).device if model is not None else "cpu"
    for i, (name, pairs) in enumerate(sets):
        res = (
            evaluate_bicubic(pairs, scale=scale)
            if model is None
            else evaluate_model(model, pairs, scale=scale, device=dev)
        )
        out[f"test_psnr_y_{name}"], out[f"test_ssim_y_{name}"] = res.psnr_y, res.ssim_y
        if i == 0:
            out["test_psnr_y"], out["test_ssim_y"] = res.psnr_y, res.ssim_y
    if model is not None:
        pairs = sets[0][1] if sets else (val or [])
        if pairs:
            mine = out["test_psnr_y"] if sets else evaluate_model(model, pairs, scale=scale, device=dev).psnr_y
            out["vs_bicubic_db"] = mine - evaluate_bicubic(pairs, scale=scale).psnr_y
    return out


def _restore_checkpoint(local_root: Path) -> tuple[Path | None, int]:
    """Copy the last reported Ray checkpoint (if any) into ``local_root/step_*``; return it and its step."""
    if _IN_TRIAL is not None:
        import ray.tune  # deferred: ray is heavy, and sr-side callers of this module never need it

        ckpt = ray.tune.get_checkpoint()
    else:
        import ray.train  # deferred: ray is heavy

        ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None, 0
    with ckpt.as_directory() as d:
        meta = json.loads((Path(d) / "ray_meta.json").read_text())
        dest = local_root / f"step_{meta['step']:07d}"
        if not dest.exists():
            shutil.copytree(d, dest)
    return dest, int(meta["step"])


def _reporter(static: Mapping[str, Any], tracking: TrackingRef | None, rank: int, world: int, *, total_steps: int = 0):
    """The ``report(metrics, checkpoint_dir)`` callback handed to the ``sr`` loops."""
    # deferred: ray is heavy and only loaded inside a running worker
    import ray.train
    import ray.tune

    in_trial = _IN_TRIAL

    tracker = Tracker(tracking.uri) if rank == 0 and tracking is not None else None

    def report(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        out = {**static, **{k: v for k, v in metrics.items() if _is_scalar(v)}}
        if "val_psnr_y" in out:
            # The search objective is the latest validation PSNR; ASHA and Optuna read it from every report.
            out["psnr_y"] = out["val_psnr_y"]
            out["ssim_y"] = out.get("val_ssim_y", out.get("ssim_y"))
        if total_steps and int(out.get("step", 0)) >= total_steps:
            out["done_training"] = 1  # lets the driver tell a finished trial from one ASHA stopped
        if tracker is not None:
            tracker.log_metrics(tracking.run_id, _step_metrics(out), step=int(out.get("step", 0)))
        checkpoint = None
        if checkpoint_dir is not None and rank == 0:
            (Path(checkpoint_dir) / "ray_meta.json").write_text(json.dumps({"step": int(out.get("step", 0))}))
            kind = ray.tune.Checkpoint if in_trial is not None else ray.train.Checkpoint
            checkpoint = kind.from_directory(checkpoint_dir)
        if in_trial is not None:
            in_trial["last"] = out
            ray.tune.report(out, checkpoint=checkpoint)
        else:
            ray.train.report(out, checkpoint=checkpoint)

    return report


_STATIC = ("params", "macs_720p", "macs_lr256", "latency_ms")


def _step_metrics(m: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) and k not in _STATIC and k != "step"}


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool))


def _context() -> tuple[int, int, torch.device]:
    if _IN_TRIAL is not None:
        # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU when it holds one.
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # deferred: ray is heavy and only loaded inside a running worker
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()


def _prepare(model: torch.nn.Module, world: int) -> torch.nn.Module:
    import ray.train.torch  # deferred: ray is heavy

    # prepare_model moves to the worker's device and wraps in DDP when world > 1.
    return ray.train.torch.prepare_model(model) if world > 1 else model.to(_context()[2])


# ---------------------------------------------------------------------------------------------------- [W2] KD
def kd_worker(config: dict[str, Any]) -> None:
    """Per-worker KD: ``sr.stages.distill_stage`` with the trial's student, teacher (or cache) and data."""
    task: TrialTask = config["task"]
    torch.set_num_threads(task.threads)
    rank, world, device = _context()
    kd, data = task.kd, task.data
    teacher = None if data.cache_dir else load_model(task.teacher).to(device)
    pairs = val_pairs(data, kd.scale) if rank == 0 else None
    local = Path(tempfile.mkdtemp(prefix=f"kd_{task.name}_r{rank}_"))
    # Every rank restores the same (rank 0's) checkpoint, so all resume at one step.
    resume_dir, resumed_step = _restore_checkpoint(local)
    static = {**task.static_metrics, RESUMED_FROM_KEY: resumed_step}
    if resumed_step:
        print(f"[srcompress] kd worker rank {rank} resumed from checkpoint step {resumed_step}", flush=True)
    result = stages.distill_stage(
        kd,
        student_arch=task.student.arch,
        student_knobs=task.student.knobs,
        student_weights=task.student.weights,
        teacher=teacher,
        sources=() if data.cache_dir else train_sources(data),
        cache_dir=storage.local_copy(data.cache_dir),  # the job's store -> this node
        skip_bad=data.skip_bad,
        val_pairs=pairs,
        report=_reporter(static, task.tracking, rank, world, total_steps=kd.steps),
        checkpoint_dir=local,
        resume_from=resume_dir,
        rank=rank,
        world_size=world,
        device=device,
        # channels_last before the DDP wrap, so that DDP's gradient buckets match the parameters' strides
        wrap=lambda m: _prepare(to_fast_layout(m), world),
    )
    if rank == 0 and task.tracking is not None:
        model = unwrap(result.model)
        # Test figures once, at the end: reported beside the validation objective, never selected on.
        final = test_metrics(model, data, kd.scale, pairs)
        Tracker(task.tracking.uri).log_metrics(task.tracking.run_id, final, step=kd.steps)
        log_final_artifacts(task, model, pairs)
    shutil.rmtree(local, ignore_errors=True)


def log_final_artifacts(task: TrialTask, model: torch.nn.Module, pairs: list | None) -> None:
    """Rank 0 uploads the final weights, the task (``config.json``) and a few SR crops to the trial's MLflow run."""
    assert task.tracking is not None  # only called for a tracked trial
    tracker, run_id = Tracker(task.tracking.uri), task.tracking.run_id
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        stages.save_weights(out / "weights.pth", model)
        (out / "config.json").write_text(json.dumps(task_record(task), indent=2, default=str))
        tracker.log_artifact(run_id, out / "weights.pth", "checkpoint")
        record = record_of(unwrap(model))
        if record is not None:  # the checkpoint's architecture record, readable without downloading the weights
            tracker.set_tags(run_id, {"srcompress.arch_record": json.dumps(record.as_dict(), sort_keys=True)})
        tracker.log_artifact(run_id, out / "config.json")
        samples = out / "samples"
        samples.mkdir()
        model = model.cpu().eval()
        for p in (pairs or [])[:3]:
            sr = super_resolve(model, p.lr)
            h, w = sr.shape[:2]
            crop = (slice(h // 4, h // 4 + 96), slice(w // 4, w // 4 + 96))
            Image.fromarray(np.concatenate([sr[crop], p.hr[crop]], axis=1)).save(samples / f"{p.name}_sr_vs_hr.png")
        if any(samples.iterdir()):
            tracker.log_artifacts(run_id, samples, "samples")


# ------------------------------------------------------------------------------------------------- [W1] prune
def prune_worker(config: dict[str, Any]) -> None:
    """Per-worker pruning: ``sr.stages.prune_stage`` on the teacher; rank 0 writes the pruned weights + density."""
    task: PruneTask = config["task"]
    torch.set_num_threads(task.threads)
    rank, world, _ = _context()
    cfg, schedule, items = prune_inputs(task)
    model = _prepare(load_model(task.teacher), world)
    dataset = prune_dataset(
        items, schedule, scale=task.scale, hr_patch=task.hr_patch, seed=cfg.seed, skip_bad=task.data.skip_bad
    )
    local = Path(tempfile.mkdtemp(prefix=f"prune_r{rank}_"))
    resume_dir, resumed_step = _restore_checkpoint(local)
    report = _reporter({RESUMED_FROM_KEY: resumed_step}, task.tracking, rank, world, total_steps=cfg.steps)
    # Rank 0 writes pruned.pth and density.json locally; they land in the job's store when the stage returns.
    with storage.staged_dir(task.output_dir) if rank == 0 else contextlib.nullcontext(None) as out:
        result = stages.prune_stage(
            model,
            cfg,
            train_data=dataset,
            out=out,
            checkpoint_dir=local,
            resume=resume_dir is not None,
            report=report,
            rank=rank,
            world_size=world,
        )
    # The density reaches the driver in the run's last report (from every rank, as Train V2 needs).
    report({"density": result.density, "step": cfg.steps})
    shutil.rmtree(local, ignore_errors=True)


def prune_inputs(task: PruneTask) -> tuple[PruneConfig, PruneSchedule, list]:
    """The pruning images (a seeded draw of ``task.n_images``), their schedule and the loop's config with it.

    Raises:
        DataError: the images here give another schedule than the driver printed (another image count).
    """
    cfg = task.prune
    items = pick_prune_images(list_image_items(train_sources(task.data)), task.n_images, cfg.seed)
    per_epoch = task.samples_per_epoch
    if per_epoch is None and cfg.batches_per_epoch is not None:
        per_epoch = cfg.batches_per_epoch * cfg.batch_size
    schedule = resolve_prune_schedule(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        n_images=len(items),
        samples_per_epoch=per_epoch,
        np_epochs=cfg.np_epochs,
        quirk_epoch_in_samples=cfg.quirk_epoch_in_samples,
    )
    if task.schedule is not None and schedule != task.schedule:
        raise DataError(
            f"this node's training data gives {len(items)} pruning images, the driver's {task.schedule.n_images}: "
            "the schedule would differ; give every node the same data.train"
        )
    cfg = dataclasses.replace(
        cfg, batches_per_epoch=schedule.batches_per_epoch, np_epochs=schedule.np_epochs, shuffle=False
    )
    return cfg, schedule, items
