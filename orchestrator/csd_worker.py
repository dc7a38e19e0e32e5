"""Ray Train per-worker function for CSD trials (``student.method: csd``): the counterpart of ``kd_worker``.

  [W3] ``csd_worker`` — contrastive self-distillation of one width-shared EDSR through ``sr.stages.csd_stage``
       (the Ray-free recipe; ``sr.csd_train.fit_csd`` is the loop); once per search trial.

Ray's part only: rank/device, the restored checkpoint, the ``report`` callback and the final MLflow artifacts,
which describe the EXPORTED student (``C' = w*C``), so ``srcompress export RUN_ID`` rebuilds a plain EDSR.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from orchestrator.workers import (
    RESUMED_FROM_KEY,
    _context,
    _log_final_artifacts,
    _reporter,
    _restore_checkpoint,
    train_sources,
    val_pairs,
)
from sr import stages
from sr._train import STATE_FILE
from sr.csd_train import CSDConfig

__all__ = ["STATE_FILE", "csd_config", "csd_worker"]

_FIELDS = frozenset(f.name for f in dataclasses.fields(CSDConfig))


def csd_config(kd: dict[str, Any], csd: dict[str, Any]) -> CSDConfig:
    """The :class:`CSDConfig` of a trial's ``kd`` settings (KD-only keys dropped) and its ``csd`` dims."""
    base = {k: v for k, v in kd.items() if k in _FIELDS and v is not None}
    extra = {k: float(csd[k]) for k in ("width", "teacher_width", "lambda_c", "lambda_t") if csd.get(k) is not None}
    # Unshuffled: each index of the trial's PatchDataset is already a fresh random crop, and this order does not
    # depend on the dataset's length (steps * batch), which a resumed trial may raise.
    return CSDConfig(**{**base, **extra, "shuffle": False})


def csd_worker(config: dict[str, Any]) -> None:
    """Per-worker CSD: ``config`` is the ``kd_worker`` template plus ``csd = {C, width, lambda_c, lambda_t,
    teacher_width, vgg_weights}`` (``C``: the shared model's channels; ``student.knobs`` hold ``C' = w * C``)."""
    torch.set_num_threads(int(config.get("threads", 1)))
    rank, world, device = _context()
    cfg, data, student = csd_config(config["kd"], config["csd"]), config["data"], config["student"]
    pairs = val_pairs(data, cfg.scale) if rank == 0 else None
    local = Path(tempfile.mkdtemp(prefix=f"csd_{config.get('trial_name', 'run')}_r{rank}_"))
    # Every rank restores the same (rank 0's) checkpoint, so all resume at one step.
    resume_dir, start = _restore_checkpoint(local)
    if resume_dir is not None:
        print(f"[srcompress] csd worker rank {rank} resumed from checkpoint step {start}", flush=True)
    static = {**config.get("static_metrics", {}), RESUMED_FROM_KEY: start}
    out = stages.csd_stage(
        cfg,
        arch=student["arch"],
        knobs=student["knobs"],
        shared_channels=int(config["csd"]["C"]),
        sources=train_sources(data),
        vgg_weights=config["csd"].get("vgg_weights"),
        val_pairs=pairs,
        report=_reporter(static, config.get("tracking"), rank, world, total_steps=cfg.steps),
        checkpoint_dir=local,
        resume=resume_dir is not None,
        rank=rank,
        world_size=world,
        device=device,
        skip_bad=bool(data.get("skip_bad", False)),
    )
    if rank == 0 and (config.get("tracking") or {}).get("run_id"):
        # config["student"] is the exported student, so config.json + weights.pth rebuild a plain EDSR.
        _log_final_artifacts(config, SimpleNamespace(model=out.student), pairs)
    shutil.rmtree(local, ignore_errors=True)
