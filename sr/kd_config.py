"""The settings of one KD run (:class:`KDConfig`), validated at construction; used by :func:`sr.distill.fit_kd`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from sr.errors import ConfigError
from sr.losses import LAP_WEIGHTINGS, check_patch_side

__all__ = ["KDConfig"]


# ------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class KDConfig:
    """Settings of one KD run (validated at construction; errors name the field).

    Loss weights follow the authors' code by default (``w_dis = 1`` -> ``w_lap = w_hf = 1``, ``w_gt = 0.1``);
    pass ``**dataclasses.asdict(sr.losses.KDWeights.paper(alpha=...))`` for the paper's form.

    Attributes:
        steps: optimizer steps in total (iterations).
        batch_size: global batch (split evenly over ``world_size`` ranks).
        hr_patch: HR patch side in px; or leave None and give ``patch_sizes`` + ``patch_boundaries``.
        patch_sizes: curriculum patch sides, e.g. ``(64, 160)``.
        patch_boundaries: steps where the next size starts, e.g. ``(200_000,)``; one fewer than ``patch_sizes``.
        scale: upscaling factor.
        lr: initial learning rate.
        optimizer: ``"adam"`` (authors' code) or ``"adamax"`` (the paper's text).
        betas: Adam/AdaMax betas.
        milestones, gamma: ``MultiStepLR`` (in steps).
        ema_decay: weight EMA decay (BasicSR 0.999), or None for no EMA.
        w_gt, w_lap, w_hf, gt_loss: see :func:`sr.losses.kd_loss`.
        lap_weighting: level weights of the Laplacian KD terms, ``"authors"`` (``2^i``, the default, as the
            authors' code), ``"flat"`` or ``"normalized"``; see :func:`sr.losses.level_weights`.
        teacher_mode: ``"eval"`` (frozen, eval mode, no_grad) or ``"train_autograd"`` (authors' recipe).
        val_every: validate every so many steps (0: only at the end); needs ``val_pairs``.
        log_every: call ``report`` every so many steps (and at the end; 0: only at the end).
        ckpt_every: checkpoint every so many steps (0: only at the end); needs ``checkpoint_dir``.
        keep_checkpoints: newest ``step_*`` folders kept.
        seed: seeds the batch order and the global RNGs (drop-path etc.).
        amp: float16 autocast + GradScaler; only used on CUDA.
        grad_clip: max global gradient norm, or None.
        num_workers: 0 = background-thread prefetch; > 0 = DataLoader worker processes.
    """

    steps: int
    batch_size: int = 16
    hr_patch: int | None = None
    patch_sizes: tuple[int, ...] = ()
    patch_boundaries: tuple[int, ...] = ()
    scale: int = 2
    lr: float = 2e-4
    optimizer: Literal["adam", "adamax"] = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5
    ema_decay: float | None = 0.999
    w_gt: float = 0.1
    w_lap: float = 1.0
    w_hf: float = 1.0
    gt_loss: Literal["l1", "charbonnier"] = "l1"
    lap_weighting: Literal["authors", "flat", "normalized"] = "authors"
    teacher_mode: Literal["eval", "train_autograd"] = "eval"
    val_every: int = 0
    log_every: int = 100
    ckpt_every: int = 0
    keep_checkpoints: int = 2
    seed: int = 0
    amp: bool = False
    grad_clip: float | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        # YAML / Ray hand over lists; store tuples so the config stays hashable and comparable.
        for name in ("patch_sizes", "patch_boundaries", "milestones", "betas"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        _int(self, "steps", lo=1)
        _int(self, "batch_size", lo=1)
        _int(self, "scale", lo=1)
        for name in ("val_every", "log_every", "ckpt_every", "num_workers", "seed"):
            _int(self, name, lo=0)
        _int(self, "keep_checkpoints", lo=1)
        if self.log_every == 0:
            object.__setattr__(self, "log_every", self.steps)
        _num(self, "lr", positive=True)
        _num(self, "gamma", positive=True)
        for name in ("w_gt", "w_lap", "w_hf"):
            _num(self, name, positive=False)
        if self.w_gt == 0 and self.w_lap == 0 and self.w_hf == 0:
            raise ConfigError("KDConfig.w_gt, w_lap and w_hf are all 0, so nothing trains; set one of them > 0")
        _choice(self, "optimizer", ("adam", "adamax"))
        _choice(self, "gt_loss", ("l1", "charbonnier"))
        _choice(self, "lap_weighting", LAP_WEIGHTINGS)
        _choice(self, "teacher_mode", ("eval", "train_autograd"))
        if (
            not isinstance(self.betas, tuple)
            or len(self.betas) != 2
            or not all(isinstance(b, int | float) and 0 <= b < 1 for b in self.betas)
        ):
            raise ConfigError(f"KDConfig.betas must be two numbers in [0, 1), got {self.betas!r}; e.g. (0.9, 0.999)")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, int | float) and 0 < self.ema_decay < 1):
            raise ConfigError(f"KDConfig.ema_decay must be in (0, 1) or None, got {self.ema_decay!r}; e.g. 0.999")
        if self.grad_clip is not None:
            _num(self, "grad_clip", positive=True)
        if not isinstance(self.amp, bool):
            raise ConfigError(f"KDConfig.amp must be true or false, got {self.amp!r}; pass a bool")
        if any(not isinstance(m, int) or m < 1 for m in self.milestones) or list(self.milestones) != sorted(
            set(self.milestones)
        ):
            raise ConfigError(
                f"KDConfig.milestones must be increasing positive step numbers, got {self.milestones!r}; "
                "pass e.g. (200000, 400000)"
            )
        self._check_patches()

    def _check_patches(self) -> None:
        if self.hr_patch is not None and self.patch_sizes:
            raise ConfigError("KDConfig.hr_patch and patch_sizes are both set; give one of them")
        if self.hr_patch is None and not self.patch_sizes:
            raise ConfigError("KDConfig.hr_patch is missing; pass hr_patch=96 (or patch_sizes + patch_boundaries)")
        sizes = self.patches
        if len(self.patch_boundaries) != len(sizes) - 1:
            raise ConfigError(
                f"KDConfig.patch_boundaries has {len(self.patch_boundaries)} entries for {len(sizes)} patch sizes; "
                f"give one boundary step fewer than patch_sizes"
            )
        b = self.patch_boundaries
        if any(not isinstance(x, int) or x < 1 for x in b) or any(x >= y for x, y in zip(b, b[1:], strict=False)):
            raise ConfigError(
                f"KDConfig.patch_boundaries must be increasing positive steps, got {b!r}; pass e.g. (500,)"
            )
        field_name = "hr_patch" if self.hr_patch is not None else "patch_sizes"
        for p in sizes:
            if not isinstance(p, int) or p < self.scale or p % self.scale:
                raise ConfigError(
                    f"KDConfig.{field_name} {p!r} is not a positive multiple of scale {self.scale}; e.g. 96"
                )
            if self.w_lap or self.w_hf:
                check_patch_side(p, who=f"KDConfig.{field_name}")

    @property
    def patches(self) -> tuple[int, ...]:
        """The HR patch sides in curriculum order (one entry without a curriculum)."""
        return (self.hr_patch,) if self.hr_patch is not None else tuple(self.patch_sizes)

    def patch_at(self, step: int) -> int:
        """HR patch side used by 0-based step ``step``."""
        stage = sum(1 for b in self.patch_boundaries if step >= b)
        return self.patches[stage]


def _int(cfg: KDConfig, name: str, *, lo: int) -> None:
    v = getattr(cfg, name)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ConfigError(f"KDConfig.{name} must be an integer >= {lo}, got {v!r}; pass a whole number >= {lo}")


def _num(cfg: KDConfig, name: str, *, positive: bool) -> None:
    v = getattr(cfg, name)
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 if positive else v >= 0)
    if not ok:
        kind = "positive" if positive else "non-negative"
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"KDConfig.{name} must be a {kind} number, got {v!r}; pass a finite number {bound}")


def _choice(cfg: KDConfig, name: str, valid: tuple[str, ...]) -> None:
    v = getattr(cfg, name)
    if v not in valid:
        raise ConfigError(f"unknown KDConfig.{name} {v!r}; use one of {', '.join(valid)}")
