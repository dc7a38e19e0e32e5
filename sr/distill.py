"""Knowledge-distillation training loop of CDISM stage 3 (arXiv 2401.00523; code ``Pikapi22/SRModelCompression``).

One process, CPU or GPU; the Ray layer calls :func:`fit_kd` once per worker (``rank``/``world_size``, the
student already DDP-wrapped by the caller). The loss is :func:`sr.losses.kd_loss`; the teacher is frozen
(``eval()`` + ``no_grad``) unless ``teacher_mode='train_autograd'`` reproduces the authors' recipe (train mode,
autograd through the teacher), which exists only to benchmark its cost.

Determinism: the batch of step ``s`` is a pure function of ``(seed, s, rank, world_size)``: global sample
position ``g = s * batch_size + j`` falls in epoch ``g // len(dataset)``, whose seeded permutation gives the
dataset index; rank ``r`` takes positions ``j`` in ``[r * b, (r + 1) * b)`` with ``b = batch_size / world_size``.
Datasets must be deterministic in the index (``sr.data.PatchDataset``, :class:`sr.teacher_cache.CachedKDDataset`).
With checkpoints holding model, EMA, optimizer, scheduler, AMP scaler, step and the torch/numpy/python RNG
states, a run interrupted and resumed on CPU ends bit-identical to an uninterrupted one.

Data loading: ``num_workers=0`` (default) indexes the dataset directly in a single background thread that
prepares the next batch while the current step computes (patch cropping is numpy work that releases the GIL);
``num_workers > 0`` uses a ``DataLoader`` with worker processes over the same per-step index lists, for
datasets whose items are expensive (decoding images on the fly). Measured on a shared 2-CPU host (edsr_mini, GT
only, batch 16, HR patch 96, T91 ``PatchDataset`` at 0.6 ms per item): thread prefetch 1.58 steps/s, direct
indexing without prefetch 1.49, ``DataLoader(num_workers=1)`` 1.46; the data is ~1.5% of a CPU step, so the
thread matters most on GPU, where steps are short.

Patch curriculum: ``train_data`` is either a ``Dataset`` (one patch size) or a callable ``hr_patch -> Dataset``,
called once per distinct patch size of ``KDConfig.patch_sizes`` (e.g. ``lambda p: PatchDataset(src, scale=2,
hr_patch=p, samples_per_epoch=steps * batch)``). Items are ``(lr, hr)`` (the teacher runs on the batch) or
``(lr, hr, teacher_out)`` (cached outputs: no teacher forward at all).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from sr._train import (
    STATE_FILE,
    WEIGHTS_FILE,
    Ema,
    StepBatches,
    TrainData,
    check_rank,
    find_latest_checkpoint,
    list_checkpoints,
    patch_stages,
    pick_device,
    prune_checkpoints,
    resume_rng,
    rng_state,
    seed_all,
    to_fast_layout,
    unwrap,
    write_checkpoint,
)
from sr.checkpoint import read_checkpoint, weights_entry
from sr.errors import CheckpointError, ConfigError
from sr.evaluate import evaluate_model
from sr.kd_config import KDConfig
from sr.losses import kd_loss

__all__ = ["STATE_FILE", "WEIGHTS_FILE", "KDConfig", "KDResult", "evaluate", "find_latest_checkpoint", "fit_kd"]

log = logging.getLogger(__name__)

ReportFn = Callable[[dict[str, Any], "str | None"], None]
ProgressFn = Callable[[int, int, dict[str, Any]], None]
# Fields a resumed run may change without breaking determinism of the steps already taken.
_RESUMABLE_CHANGES = frozenset({"steps", "val_every", "log_every", "ckpt_every", "keep_checkpoints", "num_workers"})


# ------------------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class KDResult:
    """Outcome of :func:`fit_kd`.

    ``metrics`` holds the last logged loss terms, ``val_psnr_y``/``val_ssim_y``/``val_per_image`` (of the EMA
    model when EMA is on; rank 0 with ``val_pairs`` only), ``steps``, ``wall_s`` and ``steps_per_s``.
    ``steps_per_s`` counts only training steps run by this call (validation and checkpoint time excluded);
    ``wall_s`` is this call's whole duration. ``model`` is the model to deploy (EMA if on, else the student).
    """

    metrics: dict[str, Any]
    steps: int
    steps_run: int
    wall_s: float
    steps_per_s: float
    model: nn.Module
    checkpoint_dir: str | None = None
    last_checkpoint: str | None = None
    checkpoints: tuple[str, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------------------------------------ evaluate


def evaluate(model: nn.Module, pairs: Sequence, *, scale: int, device: torch.device | str = "cpu") -> dict:
    """PSNR_Y / SSIM_Y (uint8 rounding, ``crop = scale``) of ``model`` on full evaluation ``pairs``.

    Returns:
        ``{"psnr_y": mean dB, "ssim_y": mean, "per_image": [{"name", "psnr_y", "ssim_y"}, ...]}``.
    """
    return evaluate_model(model, pairs, scale=scale, device=device).as_dict()


# ---------------------------------------------------------------------------------------------- fit_kd


def _check_resume_config(saved: Mapping[str, Any], cfg: KDConfig, path: Path) -> None:
    now = dataclasses.asdict(cfg)
    diff = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k])
    if diff:
        shown = ", ".join(f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in diff[:4])
        raise CheckpointError(
            f"checkpoint {path} was trained with another config ({shown}); resume with the same settings or "
            f"use a new checkpoint_dir"
        )


@dataclass
class _Parts:
    """What one KD run trains with (built by :func:`_parts`)."""

    dev: torch.device
    core: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    scaler: torch.amp.GradScaler
    ema: Ema | None
    use_amp: bool


@dataclass
class _Window:
    """Loss sums and clocks between two log points."""

    dev: torch.device
    acc: torch.Tensor = field(init=False)  # sums of total, gt, lap, hf since the last log
    n: int = 0
    t: float = field(default_factory=time.perf_counter)
    steps: int = 0
    train_s: float = 0.0

    def __post_init__(self) -> None:
        self.acc = torch.zeros(4, device=self.dev, dtype=torch.float64)


def _parts(cfg: KDConfig, student: nn.Module, teacher: nn.Module | None, dev: torch.device) -> _Parts:
    use_amp = cfg.amp and dev.type == "cuda"
    core = unwrap(student)
    # A DDP-wrapped student keeps the layout it was wrapped with (converting after the wrap would leave DDP's
    # gradient buckets with other strides): the Ray worker converts before wrapping.
    student.to(dev)
    if core is student:
        to_fast_layout(student)
    if teacher is not None:
        to_fast_layout(teacher.to(dev))
        if cfg.teacher_mode == "eval":
            teacher.eval()
        else:
            teacher.train()  # the authors' quirk: drop-path active, autograd through the teacher
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.Adamax
    params = [p for p in core.parameters() if p.requires_grad]
    optimizer = opt_cls(params, lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ema = Ema(core, cfg.ema_decay) if cfg.ema_decay is not None else None
    return _Parts(dev, core, params, optimizer, scheduler, scaler, ema, use_amp)


def _state_path(ckpt_root: Path | None, resume: bool, resume_from: str | Path | None) -> Path | None:
    if resume_from is not None:
        path = Path(resume_from)
        if path.is_dir():
            path = path / STATE_FILE
        if not path.is_file():
            raise CheckpointError(f"no training state at {path}; pass a step_* folder written by fit_kd")
        return path
    if resume:
        if ckpt_root is None:
            raise ConfigError("resume=True needs checkpoint_dir; pass the folder of the interrupted run")
        latest = find_latest_checkpoint(ckpt_root)
        return latest / STATE_FILE if latest is not None else None
    return None


def _restore(parts: _Parts, cfg: KDConfig, state_path: Path | None, rank: int) -> int:
    """Load the training state (or seed a fresh run); returns the step to start from."""
    if state_path is None:
        seed_all(cfg.seed + 1000 * rank)
        return 0
    st = read_checkpoint(state_path)
    _check_resume_config(st.get("config", {}), cfg, state_path)
    try:
        parts.core.load_state_dict(st["model"])
        if parts.ema is not None:
            parts.ema.model.load_state_dict(st["ema"])
        parts.optimizer.load_state_dict(st["optimizer"])
        parts.scheduler.load_state_dict(st["scheduler"])
        if parts.use_amp and st.get("scaler"):
            parts.scaler.load_state_dict(st["scaler"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"cannot restore training state {state_path} ({type(exc).__name__}: {str(exc)[:120]}); "
            f"pass a checkpoint of this student architecture"
        ) from None
    start = int(st["step"])
    if start > cfg.steps:
        raise CheckpointError(
            f"checkpoint {state_path} is at step {start}, past KDConfig.steps {cfg.steps}; raise steps"
        )
    resume_rng(st["rng"], parts.dev, seed=cfg.seed, rank=rank, start=start)
    log.info("resumed KD from %s at step %d", state_path, start)
    return start


def _save(parts: _Parts, cfg: KDConfig, root: Path, done: int) -> Path:
    ema = parts.ema
    state = {
        "model": parts.core.state_dict(),
        "ema": ema.model.state_dict() if ema is not None else None,
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "step": done,
        "rng": rng_state(parts.dev),
        "config": dataclasses.asdict(cfg),
    }
    # weights_entry: 'params' plus the architecture record (arch, knobs, scale, pixel range) eval/export read
    weights = {**weights_entry(parts.core), **({"params_ema": ema.model.state_dict()} if ema else {})}
    return write_checkpoint(root, done, state, weights)


def _kd_step(
    cfg: KDConfig,
    parts: _Parts,
    student: nn.Module,
    teacher: nn.Module | None,
    batch: tuple[torch.Tensor, ...],
    weights: dict[str, float],
) -> dict[str, torch.Tensor]:
    lr_b, hr_b = batch[0], batch[1]
    t_out = batch[2] if len(batch) == 3 else None
    autocast = torch.autocast("cuda", dtype=torch.float16) if parts.use_amp else nullcontext()
    with autocast:
        sr = student(lr_b)
        if t_out is None and teacher is not None and (weights["w_lap"] or weights["w_hf"]):
            if cfg.teacher_mode == "eval":
                with torch.no_grad():
                    t_out = teacher(lr_b)
            else:
                t_out = teacher(lr_b)
    t = None if t_out is None else t_out.float()
    w = weights
    terms = kd_loss(
        sr.float(),
        t,
        hr_b,
        gt_loss=cfg.gt_loss,
        lap_weighting=cfg.lap_weighting,
        w_gt=w["w_gt"],
        w_lap=w["w_lap"],
        w_hf=w["w_hf"],
    )
    opt, scaler = parts.optimizer, parts.scaler
    opt.zero_grad(set_to_none=True)
    scaler.scale(terms["total"]).backward()
    if cfg.grad_clip is not None:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(parts.params, cfg.grad_clip)
    scaler.step(opt)
    scaler.update()
    parts.scheduler.step()
    if teacher is not None and cfg.teacher_mode == "train_autograd":
        teacher.zero_grad(set_to_none=True)
    if parts.ema is not None:
        parts.ema.update(parts.core)
    return terms


def _window_metrics(cfg: KDConfig, parts: _Parts, win: _Window, done: int, step: int) -> dict[str, Any]:
    sums = (win.acc / max(win.n, 1)).tolist()  # waits for the GPU, so the clock below is honest
    now = time.perf_counter()
    win.train_s += now - win.t  # training time only: validation and checkpoints come after
    if not math.isfinite(sums[0]):
        raise ConfigError(f"KD loss became {sums[0]} by step {done}; lower KDConfig.lr or set grad_clip")
    metrics = {
        "step": done,
        "loss": sums[0],
        "loss_gt": sums[1],
        "loss_lap": sums[2],
        "loss_hf": sums[3],
        "lr": parts.optimizer.param_groups[0]["lr"],
        "hr_patch": cfg.patch_at(step),
        "it_per_s": win.steps / max(now - win.t, 1e-9),
    }
    win.acc.zero_()
    win.n = 0
    return metrics


def fit_kd(
    cfg: KDConfig,
    *,
    student: nn.Module,
    teacher: nn.Module | None,
    train_data: TrainData,
    val_pairs: Sequence | None = None,
    report: ReportFn | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    resume_from: str | Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
) -> KDResult:
    """Train ``student`` by knowledge distillation from ``teacher`` (see the module docstring).

    Args:
        cfg: the run's settings.
        student: the model trained in place (may be DDP-wrapped; ``.module`` is used for EMA and saving).
        teacher: the frozen teacher, or None for GT-only training (only the ``w_gt`` term) unless the data
            items carry cached teacher outputs.
        train_data: a Dataset, or a callable ``hr_patch -> Dataset`` for a patch curriculum; items ``(lr, hr)``
            or ``(lr, hr, teacher_out)``. Use ``len >= steps * batch_size`` for a fresh patch per sample.
        val_pairs: full-image evaluation pairs (``sr.data.load_eval_pairs``); validated on rank 0.
        report: ``report(metrics, checkpoint_dir)`` every ``log_every`` steps, at validations, checkpoints and
            the end (every rank; ``checkpoint_dir`` is the new ``step_*`` folder on rank 0, else None).
        checkpoint_dir: folder of ``step_XXXXXXX`` checkpoints (written by rank 0).
        resume: continue from the newest checkpoint in ``checkpoint_dir`` (fresh start when there is none).
        resume_from: an explicit ``step_*`` folder (or its ``state.pt``) to continue from.
        rank, world_size: this worker's slice of each global batch.
        device: defaults to the student's device if on GPU, else CUDA when available, else CPU.
        progress: ``progress(step, total, last_metrics)`` after every step (for progress bars).

    Returns:
        :class:`KDResult` with final metrics, throughput and checkpoint paths.

    Raises:
        ConfigError: inconsistent data, world size, weights without a teacher, or a diverging loss.
        CheckpointError: unreadable checkpoint or one trained with another config.
    """
    t_call = time.perf_counter()
    check_rank(rank, world_size, cfg.batch_size, who="KDConfig")
    parts = _parts(cfg, student, teacher, pick_device(student, device))
    ckpt_root = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start = _restore(parts, cfg, _state_path(ckpt_root, resume, resume_from), rank)
    stages = patch_stages(cfg.patches, cfg.patch_boundaries, start=start, steps=cfg.steps)
    batches = StepBatches(
        train_data,
        stages,
        batch=cfg.batch_size,
        seed=cfg.seed,
        rank=rank,
        world=world_size,
        num_workers=cfg.num_workers,
        pin=parts.dev.type == "cuda",
    )
    if isinstance(train_data, Dataset) and len(cfg.patches) > 1:
        raise ConfigError(
            "KDConfig has a patch curriculum but train_data is one Dataset; pass a callable hr_patch -> Dataset instead"
        )
    win = _Window(parts.dev)
    run = _Run(cfg, parts, student, teacher, val_pairs, report, progress, ckpt_root, rank, win)
    try:
        run.train(batches)
    finally:
        batches.close()
    return run.result(start, t_call)


@dataclass
class _Run:
    """The loop of one :func:`fit_kd` call and what it collects."""

    cfg: KDConfig
    parts: _Parts
    student: nn.Module
    teacher: nn.Module | None
    val_pairs: Sequence | None
    report: ReportFn | None
    progress: ProgressFn | None
    ckpt_root: Path | None
    rank: int
    win: _Window
    metrics: dict[str, Any] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    per_image: list[dict] | None = None

    def train(self, batches: StepBatches) -> None:
        cfg, parts, win = self.cfg, self.parts, self.win
        weights: dict[str, float] | None = None
        self.student.train()
        for step, batch in batches:
            batch = tuple(to_fast_layout(b.to(parts.dev, non_blocking=True)) for b in batch)
            if weights is None:
                weights = _effective_weights(
                    cfg, self.teacher, batch[2] if len(batch) == 3 else None, batch[0], batch[1], cfg.patch_at(step)
                )
            terms = _kd_step(cfg, parts, self.student, self.teacher, batch, weights)
            win.acc += torch.stack([terms[k].detach().double() for k in ("total", "gt", "lap", "hf")])
            win.n += 1
            win.steps += 1
            self._log_point(step + 1, step)
            if self.progress is not None:
                self.progress(step + 1, cfg.steps, self.metrics)

    def _log_point(self, done: int, step: int) -> None:
        cfg, parts, rank = self.cfg, self.parts, self.rank
        is_last = done == cfg.steps
        do_log = done % cfg.log_every == 0 or is_last
        do_val = bool(self.val_pairs) and rank == 0 and ((cfg.val_every and done % cfg.val_every == 0) or is_last)
        do_ckpt = (
            self.ckpt_root is not None and rank == 0 and ((cfg.ckpt_every and done % cfg.ckpt_every == 0) or is_last)
        )
        if not (do_log or do_val or do_ckpt):
            return
        self.metrics = metrics = _window_metrics(cfg, parts, self.win, done, step)
        if do_val:
            self._validate()
        path = None
        if do_ckpt:
            assert self.ckpt_root is not None
            path = _save(parts, cfg, self.ckpt_root, done)
            self.written.append(str(path))
        if self.report is not None:
            self.report(dict(metrics), str(path) if path is not None else None)
        if path is not None:
            prune_checkpoints(self.ckpt_root, cfg.keep_checkpoints)  # type: ignore[arg-type]
        self.win.t, self.win.steps = time.perf_counter(), 0

    def _validate(self) -> None:
        ema, core = self.parts.ema, self.parts.core
        assert self.val_pairs is not None  # only called with validation pairs
        res = evaluate(
            ema.model if ema is not None else core, self.val_pairs, scale=self.cfg.scale, device=self.parts.dev
        )
        self.metrics.update(val_psnr_y=res["psnr_y"], val_ssim_y=res["ssim_y"])
        self.per_image = res["per_image"]

    def result(self, start: int, t_call: float) -> KDResult:
        cfg, parts, metrics = self.cfg, self.parts, self.metrics
        steps_run = cfg.steps - start
        final_model = parts.ema.model if parts.ema is not None else parts.core
        if steps_run == 0 and self.val_pairs and self.rank == 0:  # resumed a finished run: still give its metrics
            self._validate()
        if self.per_image is not None:
            metrics["val_per_image"] = self.per_image
        wall = time.perf_counter() - t_call
        steps_per_s = steps_run / self.win.train_s if self.win.train_s > 0 else 0.0
        metrics.update(steps=cfg.steps, wall_s=wall, steps_per_s=steps_per_s)
        root = self.ckpt_root
        kept = tuple(str(d) for d in list_checkpoints(root)) if root is not None else ()
        return KDResult(
            metrics=metrics,
            steps=cfg.steps,
            steps_run=steps_run,
            wall_s=wall,
            steps_per_s=steps_per_s,
            model=final_model,
            checkpoint_dir=str(root) if root is not None else None,
            last_checkpoint=self.written[-1] if self.written else None,
            checkpoints=kept,
        )


def _effective_weights(
    cfg: KDConfig,
    teacher: nn.Module | None,
    t_out: torch.Tensor | None,
    lr_b: torch.Tensor,
    hr_b: torch.Tensor,
    patch: int,
) -> dict[str, float]:
    """Check the first batch against the config; drop the teacher terms when there is no teacher source."""
    s = cfg.scale
    if hr_b.shape[-1] != patch or hr_b.shape[-2] != patch or lr_b.shape[-1] * s != patch:
        raise ConfigError(
            f"train_data yields LR {tuple(lr_b.shape[-2:])} / HR {tuple(hr_b.shape[-2:])} patches but KDConfig asks "
            f"for HR {patch} px at x{s}; build the dataset with hr_patch={patch}, scale={s}"
        )
    if t_out is not None and t_out.shape != hr_b.shape:
        raise ConfigError(
            f"cached teacher outputs are {tuple(t_out.shape)}, HR batch is {tuple(hr_b.shape)}; rebuild the cache "
            f"with this scale and patch"
        )
    w = {"w_gt": cfg.w_gt, "w_lap": cfg.w_lap, "w_hf": cfg.w_hf}
    if teacher is None and t_out is None and (cfg.w_lap or cfg.w_hf):
        if cfg.w_gt == 0:
            raise ConfigError(
                "no teacher and no cached teacher outputs, but KDConfig.w_gt is 0; pass a teacher or set w_gt > 0"
            )
        log.info("no teacher: GT-only training with w_gt=%g", cfg.w_gt)
        w["w_lap"] = w["w_hf"] = 0.0
    return w
