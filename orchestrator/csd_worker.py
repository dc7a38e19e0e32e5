"""Ray Train per-worker function for CSD trials (``student.method: csd``): the counterpart of ``kd_worker``.

  [W3] ``csd_worker`` — contrastive self-distillation of one width-shared EDSR through ``sr.stages.csd_stage``
       (the Ray-free recipe; ``sr.csd_train.fit_csd`` is the loop); once per search trial.

Ray's part only: rank/device, the restored checkpoint, the ``report`` callback and the final MLflow artifacts,
which describe the EXPORTED student (``C' = w*C``), so ``srcompress export RUN_ID`` rebuilds a plain EDSR.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from orchestrator.tasks import TrialTask
from orchestrator.workers import (
    RESUMED_FROM_KEY,
    _context,
    _reporter,
    _restore_checkpoint,
    log_final_artifacts,
    train_sources,
    val_pairs,
)
from sr import stages
from sr._train import STATE_FILE

__all__ = ["STATE_FILE", "csd_worker"]


def csd_worker(config: dict[str, Any]) -> None:
    """Per-worker CSD: ``config["task"]`` is a CSD :class:`TrialTask` (``task.csd`` the loop's settings,
    ``task.shared_channels`` the trained model's C, ``task.student`` the exported student with ``C' = w * C``)."""
    task: TrialTask = config["task"]
    assert task.csd is not None and task.shared_channels is not None  # orchestrator.tasks.trial_task builds both
    torch.set_num_threads(task.threads)
    rank, world, device = _context()
    cfg, data = task.csd, task.data
    pairs = val_pairs(data, cfg.scale) if rank == 0 else None
    local = Path(tempfile.mkdtemp(prefix=f"csd_{task.name}_r{rank}_"))
    # Every rank restores the same (rank 0's) checkpoint, so all resume at one step.
    resume_dir, start = _restore_checkpoint(local)
    if resume_dir is not None:
        print(f"[srcompress] csd worker rank {rank} resumed from checkpoint step {start}", flush=True)
    static = {**task.static_metrics, RESUMED_FROM_KEY: start}
    out = stages.csd_stage(
        cfg,
        arch=task.student.arch,
        knobs=task.student.knobs,
        shared_channels=task.shared_channels,
        sources=train_sources(data),
        vgg_weights=task.vgg_weights,
        val_pairs=pairs,
        report=_reporter(static, task.tracking, rank, world, total_steps=cfg.steps),
        checkpoint_dir=local,
        resume=resume_dir is not None,
        rank=rank,
        world_size=world,
        device=device,
        skip_bad=data.skip_bad,
    )
    if rank == 0 and task.tracking is not None:
        # task.student is the exported student, so config.json + weights.pth rebuild a plain EDSR.
        log_final_artifacts(task, out.student, pairs)
    shutil.rmtree(local, ignore_errors=True)
