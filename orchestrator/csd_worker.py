"""Ray Train per-worker function for CSD trials (``student.method: csd``): the counterpart of ``kd_worker``.

  [W3] ``csd_worker`` — contrastive self-distillation of one width-shared EDSR (``sr.csd.csd_step``: the full
       width and the student slice in one step); once per search trial.

It follows ``orchestrator.workers``' conventions and reuses its helpers: metrics from every rank through
``_reporter`` (``val_psnr_y`` is the exported student's), checkpoints attached on rank 0 and restored with
``_restore_checkpoint`` after a worker-group restart, and ``_log_final_artifacts`` at the end. The logged
``config.json``/``checkpoint/weights.pth`` describe the EXPORTED student (``sr.csd.export_width``, ``C' = w*C``),
so ``srcompress export RUN_ID`` rebuilds a plain EDSR. With several workers each rank takes its slice of the batch
and the gradients are averaged with ``all_reduce`` (``width_forward`` runs the bare EDSR, so no DDP wrapper).
Not done here (unlike KD): weight EMA and AMP.
"""

from __future__ import annotations

import math
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
    load_model,
    train_sources,
    val_pairs,
)
from sr.errors import ConfigError

STATE_FILE = "state.pt"
_LOSS_KEYS = ("total", "l1_student", "l1_teacher", "contrastive")


def _patch_at(kd: dict[str, Any], step: int) -> int:
    """HR patch side at 0-based ``step`` (``hr_patch``, or the ``patch_sizes`` curriculum)."""
    if kd.get("patch_sizes"):
        return int(kd["patch_sizes"][sum(step >= b for b in kd.get("patch_boundaries") or [])])
    return int(kd["hr_patch"])


def _average_gradients(model: torch.nn.Module, world: int) -> None:
    import torch.distributed as dist

    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def csd_worker(config: dict[str, Any]) -> None:
    """Per-worker CSD: train the shared EDSR, validate and finally log the exported width-``w`` student.

    ``config``: the ``kd_worker`` template plus ``csd = {C, width, lambda_c, lambda_t, teacher_width,
    vgg_weights}`` (``C`` is the shared model's channels; ``student.knobs`` already hold ``C' = width * C``).
    """
    from sr.checkpoint import read_checkpoint, save_checkpoint
    from sr.csd import csd_step, export_width
    from sr.data import PatchDataset
    from sr.evaluate import evaluate_model
    from sr.vgg import load_vgg19

    torch.set_num_threads(int(config.get("threads", 1)))
    rank, world, device = _context()
    kd, csd, data = config["kd"], config["csd"], config["data"]
    steps, batch, scale, seed = int(kd["steps"]), int(kd["batch_size"]), int(kd["scale"]), int(kd.get("seed", 0))
    if batch % world:
        raise ConfigError(f"training.batch_size {batch} is not divisible by the {world} workers; use a multiple")
    per_rank = batch // world
    width, t_width = float(csd["width"]), float(csd.get("teacher_width", 1.0))
    lambda_c, lambda_t = float(csd["lambda_c"]), float(csd.get("lambda_t", 1.0))

    student = config["student"]
    # The same seed on every rank: without a DDP wrapper nothing else makes the ranks' initial weights equal.
    torch.manual_seed(seed)
    model = load_model({"arch": student["arch"], "knobs": {**student["knobs"], "C": int(csd["C"])}}).to(device)
    vgg = None
    if lambda_c > 0:
        vgg_path = csd.get("vgg_weights")
        # "random" (tests/CPU demo only): an untrained VGG19, whose contrastive loss means nothing.
        vgg = load_vgg19(None if vgg_path == "random" else vgg_path, random_init=vgg_path == "random").to(device)
    opt_cls = torch.optim.Adamax if kd.get("optimizer") == "adamax" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=float(kd["lr"]), betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(kd.get("milestones") or []), gamma=float(kd.get("gamma", 0.5))
    )

    sources = train_sources(data)
    datasets: dict[int, PatchDataset] = {}

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        patch = _patch_at(kd, step)
        if patch not in datasets:
            # One fresh crop per sample: index step * batch + i, so a resumed run continues the same sequence.
            datasets[patch] = PatchDataset(
                sources, scale=scale, hr_patch=patch, seed=seed, samples_per_epoch=steps * batch
            )
        ds = datasets[patch]
        items = [ds[step * batch + rank * per_rank + i] for i in range(per_rank)]
        return torch.stack([it[0] for it in items]).to(device), torch.stack([it[1] for it in items]).to(device)

    pairs = val_pairs(data, scale) if rank == 0 else None
    local = Path(tempfile.mkdtemp(prefix=f"csd_{config.get('trial_name', 'run')}_r{rank}_"))
    # Every rank restores the same (rank 0's) checkpoint, so all resume at one step.
    resume_dir, start = _restore_checkpoint(local)
    if resume_dir is not None:
        st = read_checkpoint(resume_dir / STATE_FILE)
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        start = int(st["step"])
        print(f"[srcompress] csd worker rank {rank} resumed from checkpoint step {start}", flush=True)
    static = {**config.get("static_metrics", {}), RESUMED_FROM_KEY: start}
    report = _reporter(static, config.get("tracking"), rank, world, total_steps=steps)

    log_every, val_every = int(kd.get("log_every") or steps), int(kd.get("val_every") or steps)
    ckpt_every = int(kd.get("ckpt_every") or steps)
    sums = dict.fromkeys(_LOSS_KEYS, 0.0)
    n = 0
    model.train()
    for step in range(start, steps):
        lr_b, hr_b = batch_at(step)
        terms = csd_step(
            model, lr_b, hr_b, widths=(t_width, width), lambda_c=lambda_c, lambda_t=lambda_t, vgg=vgg, optimizer=None
        )
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        if world > 1:
            _average_gradients(model, world)
        optimizer.step()
        scheduler.step()
        for k in _LOSS_KEYS:
            sums[k] += float(terms[k].detach())
        n += 1
        done = step + 1
        last = done == steps
        # The same schedule on every rank: Ray Train needs every rank to report each time.
        if not (last or done % log_every == 0 or done % val_every == 0 or done % ckpt_every == 0):
            continue
        if not math.isfinite(sums["total"]):
            raise ConfigError(f"CSD loss became {sums['total']} by step {done}; lower the learning rate")
        metrics: dict[str, Any] = {
            "step": done,
            "loss": sums["total"] / n,
            **{f"loss_{k}": sums[k] / n for k in _LOSS_KEYS[1:]},
            "lr": optimizer.param_groups[0]["lr"],
            "hr_patch": _patch_at(kd, step),
        }
        sums, n = dict.fromkeys(_LOSS_KEYS, 0.0), 0
        if pairs and (last or done % val_every == 0):
            res = evaluate_model(export_width(model, width), pairs, scale=scale, device=device)
            metrics.update(val_psnr_y=res.psnr_y, val_ssim_y=res.ssim_y)
            if last:  # the shared model at teacher width, for reference
                metrics["teacher_val_psnr_y"] = evaluate_model(model, pairs, scale=scale, device=device).psnr_y
        path = None
        if rank == 0 and (last or done % ckpt_every == 0):
            path = local / f"step_{done:07d}"
            save_checkpoint(
                path / STATE_FILE,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": done,
                },
            )
        report(metrics, str(path) if path is not None else None)
    if start >= steps and pairs:  # restored a finished run: report its result once more
        res = evaluate_model(export_width(model, width), pairs, scale=scale, device=device)
        report({"step": steps, "val_psnr_y": res.psnr_y, "val_ssim_y": res.ssim_y})
    elif start >= steps:
        report({"step": steps})
    if rank == 0 and config.get("tracking", {}).get("run_id"):
        # config["student"] is the exported student, so config.json + weights.pth rebuild a plain EDSR.
        _log_final_artifacts(config, SimpleNamespace(model=export_width(model, width).eval()), pairs)
    shutil.rmtree(local, ignore_errors=True)
