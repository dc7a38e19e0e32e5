"""Ray-free stage recipes of the CDISM pipeline, called by both the CLI (``orchestrator.cli.method``) and the Ray
workers/tasks (``orchestrator.workers``, ``orchestrator.job``), so each stage is written once.

- :func:`load_model`: build a registered variant and load its weights (the one model loader);
- :func:`prune_stage`: OBProx-SG fine-tune -> ``pruned.pth`` + ``density.json`` (their one writer);
- :func:`patch_data`: the ``hr_patch -> PatchDataset`` factory a KD/CSD run trains on;
- :func:`distill_stage`: KD of one student (``sr.distill.fit_kd``) from a teacher or a teacher cache;
- :func:`csd_stage`: CSD of one width-shared EDSR (``sr.csd_train.fit_csd``) -> the exported width-``w`` student;
- :func:`fallback_teacher`: a small teacher trained briefly (GT only) for machines without real weights;
- :func:`teacher_cache_stage`: teacher outputs on a fixed, un-augmented patch pool.

Reporting and checkpoints reach the loops as callbacks; nothing here imports ray, optuna or mlflow.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sr._train import unwrap
from sr.checkpoint import load_weights, save_checkpoint, weights_entry
from sr.csd import export_width
from sr.csd_train import CSDConfig, CSDResult, fit_csd
from sr.data import PatchDataset, resolve_train_sources
from sr.distill import KDConfig, KDResult, fit_kd
from sr.models import build
from sr.prune import PruneConfig, PruneResult, prune_finetune
from sr.teacher_cache import CachedKDDataset, CacheInfo, build_teacher_cache
from sr.vgg import load_vgg19

__all__ = [
    "CSDStageResult",
    "csd_stage",
    "distill_stage",
    "PruneStageResult",
    "fallback_teacher",
    "load_model",
    "patch_data",
    "prune_stage",
    "save_weights",
    "teacher_cache_stage",
]

ReportFn = Callable[[dict[str, Any], "str | None"], None]


def load_model(arch: str, knobs: Mapping[str, Any] | None = None, weights: str | Path | None = None) -> nn.Module:
    """Build ``arch`` with ``knobs`` (scale included) and load ``weights`` (weights_only; one-line errors)."""
    model = build(arch, **dict(knobs or {}))
    if weights:
        load_weights(model, weights, arch=arch)
    return model


def save_weights(path: Path, model: nn.Module) -> Path:
    """``{"params": state_dict}`` on the CPU (BasicSR layout) plus the model's architecture record (arch, knobs,
    scale, pixel range; see :mod:`sr.arch_record`), written atomically."""
    return save_checkpoint(path, weights_entry(unwrap(model)))


def patch_data(
    sources: Sequence[Any], *, scale: int, seed: int, samples: int, skip_bad: bool = False, augment: bool = True
) -> Callable[[int], PatchDataset]:
    """``hr_patch -> PatchDataset`` (one per patch size, made once): a fresh patch for each of ``samples``."""
    made: dict[int, PatchDataset] = {}

    def train_data(hr_patch: int) -> PatchDataset:
        if hr_patch not in made:
            made[hr_patch] = PatchDataset(
                list(sources),
                scale=scale,
                hr_patch=hr_patch,
                seed=seed,
                samples_per_epoch=samples,
                skip_bad=skip_bad,
                augment=augment,
            )
        return made[hr_patch]

    return train_data


# ------------------------------------------------------------------------------------------------------ prune


@dataclass(frozen=True)
class PruneStageResult:
    """What :func:`prune_stage` produced: the ``density.json`` content and the loop's result."""

    density: float
    summary: dict[str, Any]
    result: PruneResult


def prune_stage(
    model: nn.Module,
    cfg: PruneConfig,
    *,
    train_data: Any,
    out: Path | None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    report: ReportFn | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
    extra: Callable[[nn.Module], Mapping[str, Any]] | None = None,
) -> PruneStageResult:
    """OBProx-SG fine-tune of ``model`` (in place); rank 0 writes ``out/pruned.pth`` (the raw pruned weights,
    ``{"params": ...}``) and ``out/density.json`` (density, history, per-layer densities, schedule, plus what
    ``extra(model)`` returns, e.g. validation scores)."""
    result = prune_finetune(
        model,
        cfg,
        train_data=train_data,
        report=report,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        rank=rank,
        world_size=world_size,
        progress=progress,
    )
    rep = result.density
    summary: dict[str, Any] = {
        "family": cfg.family,
        "density": rep.density,
        "nonzero": rep.nonzero,
        "total": rep.total,
        "history": [[s, d] for s, d in result.density_history],
        "loss_history": [[s, v] for s, v in result.loss_history],
        "per_layer": rep.per_layer,
        "steps": result.steps,
        "switch_step": result.switch_step,
        "np_epochs": result.np_epochs,
        "batches_per_epoch": result.batches_per_epoch,
    }
    if rank == 0 and out is not None:
        out.mkdir(parents=True, exist_ok=True)
        # The raw weights are the pruned model (the EMA copy is dense; see sr.prune.PruneResult).
        save_weights(out / "pruned.pth", model)
        summary["pruned_weights"] = str(out / "pruned.pth")
        if extra is not None:
            summary.update(extra(model))
        (out / "density.json").write_text(json.dumps(summary, indent=1))
    return PruneStageResult(density=rep.density, summary=summary, result=result)


# ---------------------------------------------------------------------------------------------------- distill


def distill_stage(
    cfg: KDConfig,
    *,
    student_arch: str,
    student_knobs: Mapping[str, Any],
    teacher: nn.Module | None,
    sources: Sequence[Any] = (),
    cache_dir: str | Path | None = None,
    student_weights: str | Path | None = None,
    val_pairs: Sequence | None = None,
    report: ReportFn | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    resume_from: Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
    skip_bad: bool = False,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    out: Path | None = None,
) -> KDResult:
    """KD of a fresh ``student_arch`` (initialised from ``cfg.seed``, or ``student_weights``) from ``teacher``.

    Trains on the teacher-output cache at ``cache_dir`` when given (``teacher`` may then be None), else on fresh
    patches of ``sources`` (one per sample; bad data fails before training). ``wrap`` prepares the student for
    several ranks (e.g. DDP). Rank 0 writes ``out/student.pth`` (``{"params": ...}``; the EMA weights when EMA
    is on) when ``out`` is given.
    """
    # The student's initial weights come from the global RNG: seed it so a run is a function of the seed,
    # whatever ran before in this process (a reused trial actor, the benchmark's loop).
    torch.manual_seed(cfg.seed)
    student = load_model(student_arch, student_knobs, student_weights)
    if wrap is not None:
        student = wrap(student)
    if cache_dir is not None:
        train_data: Any = CachedKDDataset(cache_dir, augment=True, seed=cfg.seed)
    else:
        samples = cfg.steps * cfg.batch_size
        train_data = patch_data(sources, scale=cfg.scale, seed=cfg.seed, samples=samples, skip_bad=skip_bad)
        train_data(cfg.patches[0])  # bad data fails now, before any training
    result = fit_kd(
        cfg,
        student=student,
        teacher=teacher,
        train_data=train_data,
        val_pairs=val_pairs,
        report=report,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        resume_from=resume_from,
        rank=rank,
        world_size=world_size,
        device=device,
        progress=progress,
    )
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_weights(out / "student.pth", result.model)
    return result


# ---------------------------------------------------------------------------------------------------- teacher


def fallback_teacher(
    arch: str,
    knobs: Mapping[str, Any],
    *,
    train: Sequence[Any] | None,
    scale: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    out: Path,
) -> Path:
    """A small ``arch`` teacher trained briefly on ``train`` (GT only, 48 px patches); writes ``out``."""
    model = build(arch, **{**knobs, "scale": scale})
    cfg = KDConfig(
        steps=steps,
        batch_size=batch_size,
        hr_patch=48,
        scale=scale,
        lr=lr,
        w_gt=1.0,
        w_lap=0.0,
        w_hf=0.0,
        ema_decay=None,
        seed=seed,
        log_every=steps,
    )
    data = PatchDataset(
        resolve_train_sources(train), scale=scale, hr_patch=48, seed=seed, samples_per_epoch=steps * batch_size
    )
    res = fit_kd(cfg, student=model, teacher=None, train_data=data)
    return save_weights(out, res.model)


def teacher_cache_stage(
    teacher: nn.Module,
    sources: Sequence[Any],
    *,
    scale: int,
    hr_patch: int,
    seed: int,
    n_patches: int,
    out_dir: Path,
    skip_bad: bool = False,
    device: torch.device | str | None = None,
) -> CacheInfo:
    """Teacher outputs on ``n_patches`` un-augmented patches (``CachedKDDataset`` augments when it reads)."""
    pool = PatchDataset(
        list(sources),
        scale=scale,
        hr_patch=hr_patch,
        seed=seed,
        samples_per_epoch=n_patches,
        augment=False,
        skip_bad=skip_bad,
    )
    return build_teacher_cache(teacher.eval(), pool, n_patches=n_patches, out_dir=out_dir, batch_size=16, device=device)


# -------------------------------------------------------------------------------------------------------- CSD


@dataclass(frozen=True)
class CSDStageResult:
    """What :func:`csd_stage` produced: the exported width-``w`` student (eval mode) and the loop's result."""

    student: nn.Module
    result: CSDResult


def csd_stage(
    cfg: CSDConfig,
    *,
    arch: str,
    knobs: Mapping[str, Any],
    shared_channels: int,
    sources: Sequence[Any],
    vgg_weights: str | Path | None = None,
    val_pairs: Sequence | None = None,
    report: ReportFn | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
    skip_bad: bool = False,
    average_gradients: Callable[[nn.Module], None] | None = None,
) -> CSDStageResult:
    """Build the shared EDSR (``arch`` with ``knobs`` but ``C = shared_channels``), train it with CSD on fresh
    patches of ``sources`` and export the width-``cfg.width`` student (a plain EDSR with ``C' = w * C``).

    ``vgg_weights`` is needed when ``cfg.lambda_c > 0``; ``"random"`` (tests/CPU demo only) is an untrained VGG19,
    whose contrastive loss means nothing.
    """
    # The same seed on every rank: without a DDP wrapper nothing else makes the ranks' initial weights equal.
    torch.manual_seed(cfg.seed)
    model = load_model(arch, {**knobs, "C": int(shared_channels)})
    vgg = None
    if cfg.lambda_c > 0:
        rand = vgg_weights == "random"
        vgg = load_vgg19(None if rand else vgg_weights, random_init=rand)
    data = patch_data(sources, scale=cfg.scale, seed=cfg.seed, samples=cfg.steps * cfg.batch_size, skip_bad=skip_bad)
    result = fit_csd(
        model,
        cfg,
        train_data=data,
        vgg=vgg,
        val_pairs=val_pairs,
        report=report,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        rank=rank,
        world_size=world_size,
        device=device,
        average_gradients=average_gradients,
    )
    return CSDStageResult(student=export_width(model, cfg.width).eval(), result=result)
