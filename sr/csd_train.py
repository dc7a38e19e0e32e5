"""CSD training without Ray: :func:`fit_csd` trains one width-shared EDSR with :func:`sr.csd.csd_step`.

The loop is built from :mod:`sr._train` like KD's and pruning's: the batch of step ``s`` comes from
:class:`sr._train.StepPlan` for ``(cfg.seed, s)`` (the one data-order scheme), checkpoints are
``checkpoint_dir/step_XXXXXXX/{state.pt, weights.pth}`` written atomically, and a resumed run takes the same steps
as an uninterrupted one. Reporting reaches the loop as ``report(metrics, checkpoint_path_or_None)`` and, with
several ranks, the gradients are averaged by ``average_gradients(model)`` (the sliced forward runs the bare
EDSR, so there is no DDP wrapper). Not done here (unlike KD): weight EMA and AMP.

:func:`compare_csd_vs_alone` is the short experiment of REFERENCE.md section 4: the CSD student against the same
student trained alone (plain L1 through :func:`sr.distill.fit_kd`), on the same batches.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from sr._train import (
    StepBatches,
    TrainData,
    check_rank,
    find_latest_checkpoint,
    patch_stages,
    pick_device,
    prune_checkpoints,
    resume_rng,
    rng_state,
    seed_all,
    write_checkpoint,
)
from sr._train import average_gradients as _all_reduce_mean
from sr.checkpoint import read_checkpoint
from sr.csd import _check_widths, csd_step, export_width, student_channels
from sr.data import PatchDataset, load_eval_pairs
from sr.distill import KDConfig, fit_kd
from sr.errors import CheckpointError, ConfigError, UserError
from sr.evaluate import evaluate_bicubic, evaluate_model
from sr.models.edsr import build as build_edsr
from sr.vgg import MISSING_WEIGHTS_MSG, VGGFeatures

__all__ = ["LOSS_KEYS", "CSDConfig", "CSDResult", "compare_csd_vs_alone", "fit_csd"]

ReportFn = Callable[[dict[str, Any], "str | None"], None]
ProgressFn = Callable[[int, int, float], None]
LOSS_KEYS = ("total", "l1_student", "l1_teacher", "contrastive")
# Fields a resumed run may change without changing the steps already taken.
_RESUMABLE_CHANGES = frozenset({"steps", "val_every", "log_every", "ckpt_every", "keep_checkpoints", "num_workers"})


@dataclass(frozen=True)
class CSDConfig:
    """Settings of one CSD run (validated at construction; errors name the field).

    Attributes:
        steps, batch_size: optimizer steps; global batch (split evenly over the ranks).
        hr_patch / patch_sizes + patch_boundaries: HR patch side, or a curriculum (as :class:`sr.distill.KDConfig`).
        scale: upscaling factor.
        width, teacher_width: the student's and the teacher's channel ratio of the shared EDSR.
        lambda_c, lambda_t, neg_count: see :func:`sr.csd.csd_step`.
        lr, optimizer, betas, milestones, gamma: Adam/AdaMax with ``MultiStepLR`` (in steps).
        log_every, val_every, ckpt_every: steps between reports / validations / checkpoints (0: only at the end).
        keep_checkpoints: newest ``step_*`` folders kept.
        seed: seeds the batch order and the global RNGs (model initialisation is the caller's).
        shuffle: a seeded permutation per epoch (:class:`sr._train.StepPlan`); False keeps the dataset's order,
            which for a ``PatchDataset`` (a fresh crop per index) does not depend on its length, so ``steps`` can
            grow on resume without changing the batches already seen.
        num_workers: 0 = background-thread prefetch; > 0 = DataLoader worker processes.
    """

    steps: int
    batch_size: int = 16
    hr_patch: int | None = None
    patch_sizes: tuple[int, ...] = ()
    patch_boundaries: tuple[int, ...] = ()
    scale: int = 2
    width: float = 0.25
    teacher_width: float = 1.0
    lambda_c: float = 200.0
    lambda_t: float = 1.0
    neg_count: int = 10
    lr: float = 1e-4
    optimizer: Literal["adam", "adamax"] = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    milestones: tuple[int, ...] = field(default=())
    gamma: float = 0.5
    log_every: int = 0
    val_every: int = 0
    ckpt_every: int = 0
    keep_checkpoints: int = 2
    seed: int = 0
    shuffle: bool = True
    num_workers: int = 0

    def __post_init__(self) -> None:
        for name in ("patch_sizes", "patch_boundaries", "milestones", "betas"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name, lo in (("steps", 1), ("batch_size", 1), ("scale", 1), ("neg_count", 1), ("keep_checkpoints", 1)):
            _int(self, name, lo)
        for name in ("log_every", "val_every", "ckpt_every", "seed", "num_workers"):
            _int(self, name, 0)
        if self.log_every == 0:
            object.__setattr__(self, "log_every", self.steps)
        _check_widths((self.teacher_width, self.width))
        if self.lambda_c < 0 or self.lambda_t < 0:
            raise ConfigError(f"CSD loss weights must be >= 0, got lambda_c={self.lambda_c}, lambda_t={self.lambda_t}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"CSDConfig.lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in ("adam", "adamax"):
            raise ConfigError(f"unknown CSDConfig.optimizer {self.optimizer!r}; valid: adam, adamax")
        if self.hr_patch is None and not self.patch_sizes:
            raise ConfigError("CSDConfig.hr_patch is missing; pass hr_patch=96 (or patch_sizes + patch_boundaries)")
        if len(self.patch_boundaries) != len(self.patches) - 1:
            raise ConfigError("CSDConfig.patch_boundaries needs one step fewer than patch_sizes; fix the curriculum")

    @property
    def patches(self) -> tuple[int, ...]:
        """The HR patch sides in curriculum order (one entry without a curriculum)."""
        return (self.hr_patch,) if self.hr_patch is not None else tuple(self.patch_sizes)

    def patch_at(self, step: int) -> int:
        """HR patch side used by 0-based step ``step``."""
        return self.patches[sum(1 for b in self.patch_boundaries if step >= b)]


def _int(cfg: CSDConfig, name: str, lo: int) -> None:
    v = getattr(cfg, name)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ConfigError(f"CSDConfig.{name} must be an integer >= {lo}, got {v!r}")


@dataclass(frozen=True)
class CSDResult:
    """Outcome of :func:`fit_csd`: ``model`` is the shared EDSR trained in place.

    ``metrics`` holds the last report's values (``val_psnr_y``/``val_ssim_y`` are the exported student's);
    ``loss_history`` the ``(step, mean total loss)`` of each report window run by this call.
    """

    metrics: dict[str, Any]
    steps: int
    steps_run: int
    wall_s: float
    loss_history: list[tuple[int, float]]
    model: nn.Module
    last_checkpoint: str | None = None


@dataclass
class _Loop:
    """One CSD run's model, optimizer and window sums (so the loop and its checkpoints share them)."""

    cfg: CSDConfig
    model: nn.Module
    vgg: VGGFeatures | None
    dev: torch.device
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.MultiStepLR
    rank: int
    val_pairs: Sequence | None
    report: ReportFn | None
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_KEYS, 0.0))
    n: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    last_ckpt: str | None = None

    def restore(self, path: Path) -> int:
        st = read_checkpoint(path / "state.pt")
        saved = {k: v for k, v in st.get("config", {}).items() if k not in _RESUMABLE_CHANGES}
        now = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in _RESUMABLE_CHANGES}
        if saved and saved != now:
            raise CheckpointError(f"checkpoint {path} was trained with another CSDConfig; resume with the same one")
        try:
            self.model.load_state_dict(st["model"])
            self.opt.load_state_dict(st["optimizer"])
            self.sched.load_state_dict(st["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"cannot restore CSD state {path} ({type(exc).__name__}: {str(exc)[:120]}); pass a checkpoint of "
                f"this shared EDSR"
            ) from None
        start = int(st["step"])
        resume_rng(st["rng"], self.dev, seed=self.cfg.seed, rank=self.rank, start=start)
        return start

    def save(self, root: Path, done: int) -> str:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "step": done,
            "rng": rng_state(self.dev),
            "config": dataclasses.asdict(self.cfg),
        }
        self.last_ckpt = str(write_checkpoint(root, done, state, {"params": self.model.state_dict()}))
        prune_checkpoints(root, self.cfg.keep_checkpoints)
        return self.last_ckpt

    def step(self, lr_b: torch.Tensor, hr_b: torch.Tensor, average: Callable[[nn.Module], None] | None) -> float:
        cfg = self.cfg
        terms = csd_step(
            self.model,
            lr_b,
            hr_b,
            widths=(cfg.teacher_width, cfg.width),
            lambda_c=cfg.lambda_c,
            lambda_t=cfg.lambda_t,
            vgg=self.vgg,
            neg_count=cfg.neg_count,
        )
        self.opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        if average is not None:
            average(self.model)
        self.opt.step()
        self.sched.step()
        vals = {k: float(terms[k].detach()) for k in LOSS_KEYS}
        for k in LOSS_KEYS:
            self.sums[k] += vals[k]
        self.n += 1
        return vals["total"]

    def validate(self, *, teacher: bool) -> None:
        cfg, pairs = self.cfg, self.val_pairs
        res = evaluate_model(export_width(self.model, cfg.width), pairs, scale=cfg.scale, device=self.dev)  # type: ignore[arg-type]
        self.metrics.update(val_psnr_y=res.psnr_y, val_ssim_y=res.ssim_y)
        if teacher:  # the shared model at teacher width, for reference
            t = self.model if cfg.teacher_width == 1.0 else export_width(self.model, cfg.teacher_width)
            self.metrics["teacher_val_psnr_y"] = evaluate_model(t, pairs, scale=cfg.scale, device=self.dev).psnr_y  # type: ignore[arg-type]

    def log_point(self, done: int, step: int, ckpt_root: Path | None) -> None:
        cfg, last = self.cfg, done == self.cfg.steps
        do_val = bool(self.val_pairs) and self.rank == 0 and (last or (cfg.val_every and done % cfg.val_every == 0))
        do_ckpt = ckpt_root is not None and (last or (cfg.ckpt_every and done % cfg.ckpt_every == 0))
        # The same schedule on every rank: Ray Train needs every rank to report each time.
        if not (last or done % cfg.log_every == 0 or do_val or do_ckpt):
            return
        if not math.isfinite(self.sums["total"]):
            raise ConfigError(f"CSD loss became {self.sums['total']} by step {done}; lower the learning rate")
        mean = {k: self.sums[k] / max(self.n, 1) for k in LOSS_KEYS}
        self.metrics = {
            "step": done,
            "loss": mean["total"],
            **{f"loss_{k}": mean[k] for k in LOSS_KEYS[1:]},
            "lr": self.opt.param_groups[0]["lr"],
            "hr_patch": cfg.patch_at(step),
        }
        self.loss_history.append((done, mean["total"]))
        self.sums, self.n = dict.fromkeys(LOSS_KEYS, 0.0), 0
        if do_val:
            self.validate(teacher=last)
        path = self.save(ckpt_root, done) if do_ckpt and self.rank == 0 and ckpt_root is not None else None
        if self.report is not None:
            self.report(dict(self.metrics), path)


def _build(model: nn.Module, cfg: CSDConfig, vgg: VGGFeatures | None, dev: torch.device) -> tuple[Any, Any]:
    student_channels(model, cfg.width)  # fail fast: not an EDSR, or w*C not whole
    if cfg.lambda_c > 0 and vgg is None:
        raise UserError(MISSING_WEIGHTS_MSG)
    model.to(dev)
    if vgg is not None:
        vgg.to(dev)
    opt_cls = torch.optim.Adamax if cfg.optimizer == "adamax" else torch.optim.Adam
    opt = opt_cls([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    return opt, sched


def fit_csd(
    model: nn.Module,
    cfg: CSDConfig,
    *,
    train_data: TrainData,
    vgg: VGGFeatures | None = None,
    val_pairs: Sequence | None = None,
    report: ReportFn | None = None,
    progress: ProgressFn | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
    average_gradients: Callable[[nn.Module], None] | None = None,
) -> CSDResult:
    """Train the shared EDSR ``model`` in place with CSD (teacher and student widths in one step).

    Args:
        train_data: a Dataset of ``(lr, hr)`` items, or a callable ``hr_patch -> Dataset`` for a curriculum; use
            ``len >= steps * batch_size`` (e.g. ``sr.data.PatchDataset``) for a fresh crop per sample.
        vgg: the frozen VGG19 features; required when ``cfg.lambda_c > 0``.
        val_pairs: full-image pairs; rank 0 scores the exported student on them at ``val_every`` and the end
            (and the teacher width at the end, as ``teacher_val_psnr_y``).
        report: ``report(metrics, checkpoint_path_or_None)`` on every rank at each log/validation/checkpoint
            step and at the end; a resumed finished run reports its final metrics once more.
        progress: ``progress(step, steps, total_loss)`` after every step.
        checkpoint_dir, resume: rank 0 writes ``step_*`` checkpoints there; ``resume`` continues from the newest.
        rank, world_size: this worker's slice of each global batch.
        average_gradients: called with the model after each backward when ``world_size > 1``; defaults to
            an all-reduce mean over the default torch.distributed group.
    """
    t0 = time.perf_counter()
    check_rank(rank, world_size, cfg.batch_size, who="CSDConfig")
    dev = pick_device(model, device)
    opt, sched = _build(model, cfg, vgg, dev)
    loop = _Loop(cfg, model, vgg, dev, opt, sched, rank, val_pairs, report)
    root = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and root is None:
        raise ConfigError("resume=True needs checkpoint_dir; pass the folder of the interrupted run")
    latest = find_latest_checkpoint(root) if resume and root is not None else None
    start = loop.restore(latest) if latest is not None else 0
    if latest is None:
        seed_all(cfg.seed + 1000 * rank)
    average = None
    if world_size > 1:
        average = average_gradients or (lambda m: _all_reduce_mean(m, world_size))
    batches = StepBatches(
        train_data,
        patch_stages(cfg.patches, cfg.patch_boundaries, start=start, steps=cfg.steps),
        batch=cfg.batch_size,
        seed=cfg.seed,
        rank=rank,
        world=world_size,
        num_workers=cfg.num_workers,
        pin=dev.type == "cuda",
        shuffle=cfg.shuffle,
    )
    model.train()
    try:
        for step, batch in batches:
            total = loop.step(batch[0].to(dev, non_blocking=True), batch[1].to(dev, non_blocking=True), average)
            loop.log_point(step + 1, step, root)
            if progress is not None:
                progress(step + 1, cfg.steps, total)
    finally:
        batches.close()
    if start >= cfg.steps:  # restored a finished run: report its result once more
        loop.metrics = {"step": cfg.steps}
        if val_pairs and rank == 0:
            loop.validate(teacher=False)
        if report is not None:
            report(dict(loop.metrics), None)
    return CSDResult(
        metrics=loop.metrics,
        steps=cfg.steps,
        steps_run=max(0, cfg.steps - start),
        wall_s=time.perf_counter() - t0,
        loss_history=loop.loss_history,
        model=model,
        last_checkpoint=loop.last_ckpt,
    )


def compare_csd_vs_alone(
    train_sources: str | Path | Sequence[str | Path],
    eval_root: str | Path,
    *,
    scale: int = 2,
    C: int = 32,
    L: int = 1,
    B: int = 4,
    res_scale: float = 1.0,
    width: float = 0.25,
    steps: int = 300,
    batch_size: int = 16,
    hr_patch: int = 64,
    lr: float = 1e-4,
    lambda_c: float = 0.0,
    lambda_t: float = 1.0,
    vgg: VGGFeatures | None = None,
    neg_count: int = 10,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Short experiment: the CSD student (width ``width``) vs the same student trained alone, equal steps.

    Both start from the same weights (the student is ``export_width`` of one freshly initialised full EDSR, so
    only the training differs), see the same batches in the same order (:class:`sr._train.StepPlan` over one
    ``PatchDataset``) and take ``steps`` Adam steps. CSD trains the shared full model (:func:`fit_csd`); the
    student alone minimises L1 (:func:`sr.distill.fit_kd` without a teacher). Both students, the CSD teacher and
    bicubic are scored on ``eval_root`` (PSNR_Y / SSIM_Y, crop = scale).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        full = build_edsr(C=C, L=L, B=B, res_scale=res_scale, scale=scale).to(device)
    alone = export_width(full, width)
    sources = [train_sources] if isinstance(train_sources, str | Path) else list(train_sources)
    data = PatchDataset(sources, scale=scale, hr_patch=hr_patch, seed=seed, samples_per_epoch=steps * batch_size)
    pairs = load_eval_pairs(eval_root, scale)
    tick = None if progress is None else (lambda s, n, *_: progress(s, n))
    cfg = CSDConfig(
        steps=steps, batch_size=batch_size, hr_patch=hr_patch, scale=scale, width=width, lr=lr, seed=seed,
        lambda_c=lambda_c, lambda_t=lambda_t, neg_count=neg_count,
    )  # fmt: skip
    csd_run = fit_csd(full, cfg, train_data=data, vgg=vgg, progress=tick, device=device)
    kd = KDConfig(
        steps=steps, batch_size=batch_size, hr_patch=hr_patch, scale=scale, lr=lr, seed=seed,
        w_gt=1.0, w_lap=0.0, w_hf=0.0, ema_decay=None, log_every=steps,
    )  # fmt: skip
    alone_run = fit_kd(kd, student=alone, teacher=None, train_data=data, progress=tick, device=device)

    def score(m: nn.Module) -> dict[str, float]:
        res = evaluate_model(m, pairs, scale=scale, device=device)
        return {"psnr_y": res.psnr_y, "ssim_y": res.ssim_y}

    student = export_width(full, width)
    bic = evaluate_bicubic(pairs, scale=scale)
    settings = {"scale": scale, "C": C, "L": L, "B": B, "width": width, "student_C": student_channels(full, width)}
    settings.update(steps=steps, batch_size=batch_size, hr_patch=hr_patch, lr=lr, lambda_c=lambda_c)
    settings.update(lambda_t=lambda_t, contrastive=lambda_c > 0, seed=seed, eval_images=len(pairs))
    return {
        "csd_student": score(student),
        "alone_student": score(alone),
        "csd_teacher": score(full),
        "bicubic": {"psnr_y": bic.psnr_y, "ssim_y": bic.ssim_y},
        "student_params": sum(p.numel() for p in student.parameters()),
        "settings": settings,
        "seconds": {"csd": csd_run.wall_s, "alone": alone_run.wall_s},
        "final_loss": {"csd": csd_run.metrics.get("loss"), "alone": alone_run.metrics.get("loss")},
    }
