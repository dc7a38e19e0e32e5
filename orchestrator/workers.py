"""Ray Train per-worker functions: turn a plain config dict into ``sr`` objects and call the ``sr`` loops.

Distributed structure (one TorchTrainer per call):
  [W1] ``prune_worker``  — OBProx-SG fine-tune of the teacher (``sr.prune.prune_finetune``); once per job.
  [W2] ``kd_worker``     — distillation of one student (``sr.distill.fit_kd``); once per search trial.
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

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from orchestrator.tracking import Tracker
from sr import stages
from sr._train import unwrap
from sr.data import fallback_eval_pairs, load_eval_pairs, resolve_train_sources
from sr.distill import KDConfig
from sr.evaluate import super_resolve
from sr.prune import PruneConfig

log = logging.getLogger(__name__)

RESUMED_FROM_KEY = "resumed_from_step"

# Set while ``run_in_trial`` runs a worker function inside a Tune trial: the helpers below then use ``ray.tune``.
_IN_TRIAL: dict[str, Any] | None = None


def run_in_trial(worker_fn: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Run a per-worker function (``kd_worker``, ``csd_worker``) as rank 0 of 1 inside the calling Tune trial;
    returns the last metrics it reported."""
    global _IN_TRIAL
    _IN_TRIAL = {"last": {}}
    try:
        worker_fn(config)
        return dict(_IN_TRIAL["last"])
    finally:
        _IN_TRIAL = None


# ------------------------------------------------------------------------------------------------ shared bits
def load_model(spec: dict[str, Any]) -> torch.nn.Module:
    """Build ``{"arch", "knobs", "weights"}`` through ``sr.stages.load_model`` (the one model loader)."""
    return stages.load_model(spec["arch"], spec.get("knobs", {}), spec.get("weights"))


def train_sources(data: dict[str, Any]) -> list:
    return resolve_train_sources(data.get("train"))


def patch_datasets(data: dict[str, Any], kd: Any) -> Any:
    """``hr_patch -> PatchDataset`` over the training images (the curriculum asks for one per patch size)."""
    samples = kd.steps * kd.batch_size
    skip_bad = bool(data.get("skip_bad", False))
    return stages.patch_data(train_sources(data), scale=kd.scale, seed=kd.seed, samples=samples, skip_bad=skip_bad)


def val_pairs(data: dict[str, Any], scale: int) -> list:
    if data.get("val"):
        return load_eval_pairs(data["val"], scale, skip_bad=bool(data.get("skip_bad", False)))
    return fallback_eval_pairs(scale)


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


def _reporter(
    static: dict[str, Any], tracker_info: dict[str, Any] | None, rank: int, world: int, *, total_steps: int = 0
):
    """The ``report(metrics, checkpoint_dir)`` callback handed to the ``sr`` loops."""
    # deferred: ray is heavy and only loaded inside a running worker
    import ray.train
    import ray.tune

    in_trial = _IN_TRIAL

    tracker = None
    if rank == 0 and tracker_info and tracker_info.get("run_id"):
        tracker = Tracker(tracker_info["uri"])

    def report(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        out = {**static, **{k: v for k, v in metrics.items() if _is_scalar(v)}}
        if "val_psnr_y" in out:
            # The search objective is the latest validation PSNR; ASHA and Optuna read it from every report.
            out["psnr_y"] = out["val_psnr_y"]
            out["ssim_y"] = out.get("val_ssim_y", out.get("ssim_y"))
        if total_steps and int(out.get("step", 0)) >= total_steps:
            out["done_training"] = 1  # lets the driver tell a finished trial from one ASHA stopped
        if tracker is not None:
            tracker.log_metrics(tracker_info["run_id"], _step_metrics(out), step=int(out.get("step", 0)))
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
    torch.set_num_threads(int(config.get("threads", 1)))
    rank, world, device = _context()
    kd = KDConfig(**config["kd"])
    data, student = config["data"], config["student"]
    teacher = None if data.get("cache_dir") else load_model(config["teacher"]).to(device)
    pairs = val_pairs(data, kd.scale) if rank == 0 else None
    local = Path(tempfile.mkdtemp(prefix=f"kd_{config.get('trial_name', 'run')}_r{rank}_"))
    # Every rank restores the same (rank 0's) checkpoint, so all resume at one step.
    resume_dir, resumed_step = _restore_checkpoint(local)
    static = {**config.get("static_metrics", {}), RESUMED_FROM_KEY: resumed_step}
    if resumed_step:
        print(f"[srcompress] kd worker rank {rank} resumed from checkpoint step {resumed_step}", flush=True)
    result = stages.distill_stage(
        kd,
        student_arch=student["arch"],
        student_knobs=student.get("knobs", {}),
        student_weights=student.get("weights"),
        teacher=teacher,
        sources=() if data.get("cache_dir") else train_sources(data),
        cache_dir=data.get("cache_dir"),
        skip_bad=bool(data.get("skip_bad", False)),
        val_pairs=pairs,
        report=_reporter(static, config.get("tracking"), rank, world, total_steps=kd.steps),
        checkpoint_dir=local,
        resume_from=resume_dir,
        rank=rank,
        world_size=world,
        device=device,
        wrap=lambda m: _prepare(m, world),
    )
    if rank == 0 and (config.get("tracking") or {}).get("run_id"):
        _log_final_artifacts(config, result, pairs)
    shutil.rmtree(local, ignore_errors=True)


def _log_final_artifacts(config: dict[str, Any], result: Any, pairs: list | None) -> None:
    """Rank 0 uploads the final weights, the config and a few SR crops to the trial's MLflow run."""
    tracker = Tracker(config["tracking"]["uri"])
    run_id = config["tracking"]["run_id"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        model = unwrap(result.model)
        stages.save_weights(out / "weights.pth", model)
        (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
        tracker.log_artifact(run_id, out / "weights.pth", "checkpoint")
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
def prune_config(p: dict[str, Any], family: str) -> PruneConfig:
    """The :class:`sr.prune.PruneConfig` of a job's ``prune`` worker settings."""
    return PruneConfig(
        family=family,
        steps=int(p["steps"]),
        batch_size=int(p["batch_size"]),
        lr=float(p["lr"]),
        lambda_=float(p["lambda_"]),
        epsilon=float(p["epsilon"]),
        ema_decay=p.get("ema_decay"),
        np_epochs=p.get("np_epochs"),
        batches_per_epoch=p.get("batches_per_epoch"),
        quirk_epoch_in_samples=bool(p.get("quirk_epoch_in_samples", False)),
        milestones=tuple(p.get("milestones", ())),
        gamma=float(p.get("gamma", 0.5)),
        seed=int(p.get("seed", 0)),
        log_every=int(p.get("log_every", 10)),
    )


def prune_worker(config: dict[str, Any]) -> None:
    """Per-worker pruning: ``sr.stages.prune_stage`` on the teacher; rank 0 writes the pruned weights + density."""
    torch.set_num_threads(int(config.get("threads", 1)))
    rank, world, _ = _context()
    p = config["prune"]
    cfg = prune_config(p, config["family"])
    model = _prepare(load_model(config["teacher"]), world)
    data = config["data"]
    dataset = stages.patch_data(
        train_sources(data),
        scale=int(config["scale"]),
        seed=cfg.seed,
        samples=cfg.steps * cfg.batch_size,
        skip_bad=bool(data.get("skip_bad", False)),
    )(int(p["hr_patch"]))
    local = Path(tempfile.mkdtemp(prefix=f"prune_r{rank}_"))
    resume_dir, resumed_step = _restore_checkpoint(local)
    static = {RESUMED_FROM_KEY: resumed_step}
    report = _reporter(static, config.get("tracking"), rank, world, total_steps=cfg.steps)
    stages.prune_stage(
        model,
        cfg,
        train_data=dataset,
        out=Path(config["output_dir"]),
        checkpoint_dir=local,
        resume=resume_dir is not None,
        report=report,
        rank=rank,
        world_size=world,
    )
    shutil.rmtree(local, ignore_errors=True)


def default_threads(cpus_per_worker: float) -> int:
    """Intra-op threads per worker: its CPU share, at least 1 (oversubscription slows CPU training a lot)."""
    return max(1, int(cpus_per_worker))
