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

import copy
import dataclasses
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sr.errors import CheckpointError, ConfigError
from sr.losses import check_patch_side, kd_loss

__all__ = ["KDConfig", "KDResult", "evaluate", "find_latest_checkpoint", "fit_kd"]

log = logging.getLogger(__name__)

ReportFn = Callable[[dict[str, Any], "str | None"], None]
ProgressFn = Callable[[int, int, dict[str, Any]], None]
TrainData = Dataset | Callable[[int], Dataset]

STATE_FILE = "state.pt"  # full training state (resume)
WEIGHTS_FILE = "weights.pth"  # {'params', 'params_ema'}: BasicSR layout, read by sr.checkpoint.read_state_dict
_STEP_DIR = re.compile(r"^step_(\d{7,})$")
# Fields a resumed run may change without breaking determinism of the steps already taken.
_RESUMABLE_CHANGES = frozenset({"steps", "val_every", "log_every", "ckpt_every", "keep_checkpoints", "num_workers"})


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
            raise ConfigError(f"KDConfig.amp must be true or false, got {self.amp!r}")
        if any(not isinstance(m, int) or m < 1 for m in self.milestones) or list(self.milestones) != sorted(
            set(self.milestones)
        ):
            raise ConfigError(f"KDConfig.milestones must be increasing positive step numbers, got {self.milestones!r}")
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
            raise ConfigError(f"KDConfig.patch_boundaries must be increasing positive steps, got {b!r}")
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
        raise ConfigError(f"KDConfig.{name} must be an integer >= {lo}, got {v!r}")


def _num(cfg: KDConfig, name: str, *, positive: bool) -> None:
    v = getattr(cfg, name)
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 if positive else v >= 0)
    if not ok:
        raise ConfigError(f"KDConfig.{name} must be a {'positive' if positive else 'non-negative'} number, got {v!r}")


def _choice(cfg: KDConfig, name: str, valid: tuple[str, ...]) -> None:
    v = getattr(cfg, name)
    if v not in valid:
        raise ConfigError(f"unknown KDConfig.{name} {v!r}; valid: {', '.join(valid)}")


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
    from sr.evaluate import evaluate_model

    return evaluate_model(model, pairs, scale=scale, device=device).as_dict()


# ------------------------------------------------------------------------------------------------ batches


class _Plan:
    """Dataset indices of each step: a seeded permutation per epoch over ``n`` items (two epochs cached, as a
    batch may straddle an epoch boundary)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            dtype = np.int32 if self.n < 2**31 else np.int64  # 12.8M-sample epochs: 51 MB, not 102 MB
            # 0x6B64 ("kd") keeps these streams apart from PatchDataset's per-item default_rng([seed, i]).
            rng = np.random.default_rng([self.seed, epoch, 0x6B64])
            self._perms[epoch] = rng.permutation(np.arange(self.n, dtype=dtype))
        return self._perms[epoch]

    def indices(self, step: int, *, batch: int, rank: int, world: int) -> list[int]:
        local = batch // world
        start = step * batch + rank * local
        out = []
        for g in range(start, start + local):
            epoch, j = divmod(g, self.n)
            out.append(int(self._perm(epoch)[j]))
        return out


def _collate(items: Sequence[Sequence[Any]]) -> tuple[torch.Tensor, ...]:
    width = len(items[0])
    if width not in (2, 3) or any(len(it) != width for it in items):
        raise ConfigError(
            f"train_data items must be (lr, hr) or (lr, hr, teacher_out), got {width} entries; "
            f"pass sr.data.PatchDataset or sr.teacher_cache.CachedKDDataset"
        )
    return tuple(torch.stack([torch.as_tensor(it[j]) for it in items]) for j in range(width))


class _StepSampler(torch.utils.data.Sampler):
    """Batch sampler: the index list of each step in ``[start, stop)`` (for DataLoader workers)."""

    def __init__(self, plan: _Plan, start: int, stop: int, *, batch: int, rank: int, world: int) -> None:
        self.plan, self.start, self.stop = plan, start, stop
        self.kw = {"batch": batch, "rank": rank, "world": world}

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(self.start, self.stop):
            yield self.plan.indices(s, **self.kw)

    def __len__(self) -> int:
        return self.stop - self.start


class _Batches:
    """Yields ``(step, batch)`` for steps ``start..steps-1`` across curriculum stages, one batch ahead."""

    def __init__(self, cfg: KDConfig, data: TrainData, *, start: int, rank: int, world: int, pin: bool) -> None:
        self.cfg, self.data, self.start, self.rank, self.world, self.pin = cfg, data, start, rank, world, pin
        self._datasets: dict[int, Dataset] = {}
        self._plans: dict[int, _Plan] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._loaders: list[Any] = []

    def dataset(self, patch: int) -> Dataset:
        if patch not in self._datasets:
            if isinstance(self.data, Dataset):
                if len(self.cfg.patches) > 1:
                    raise ConfigError(
                        "KDConfig has a patch curriculum but train_data is one Dataset; pass a callable "
                        "hr_patch -> Dataset instead"
                    )
                ds = self.data
            elif callable(self.data):
                ds = self.data(patch)
            else:
                raise ConfigError(f"train_data must be a Dataset or a callable hr_patch -> Dataset, got {self.data!r}")
            n = len(ds)  # type: ignore[arg-type]
            if n < 1:
                raise ConfigError(f"train_data for hr_patch {patch} is empty; pass a dataset with samples")
            self._datasets[patch] = ds
            self._plans[patch] = _Plan(n, self.cfg.seed)
        return self._datasets[patch]

    def _stages(self) -> list[tuple[int, int, int]]:
        """(patch, first step, stop step) of each curriculum stage overlapping ``[start, steps)``."""
        cuts = [0, *self.cfg.patch_boundaries, self.cfg.steps]
        out = []
        for p, a, b in zip(self.cfg.patches, cuts, cuts[1:], strict=False):
            a, b = max(a, self.start), min(b, self.cfg.steps)
            if a < b:
                out.append((p, a, b))
        return out

    def _load(self, patch: int, step: int) -> tuple[torch.Tensor, ...]:
        ds = self.dataset(patch)
        idx = self._plans[patch].indices(step, batch=self.cfg.batch_size, rank=self.rank, world=self.world)
        return _collate([ds[i] for i in idx])

    def __iter__(self) -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
        for patch, a, b in self._stages():
            self.dataset(patch)
            if self.cfg.num_workers > 0:
                loader = DataLoader(
                    self._datasets[patch],
                    batch_sampler=_StepSampler(
                        self._plans[patch], a, b, batch=self.cfg.batch_size, rank=self.rank, world=self.world
                    ),
                    num_workers=self.cfg.num_workers,
                    collate_fn=_collate,
                    pin_memory=self.pin,
                    # its own generator: DataLoader would otherwise draw a base seed from the global torch RNG,
                    # shifting drop-path masks between a resumed and an uninterrupted run
                    generator=torch.Generator().manual_seed(self.cfg.seed),
                )
                self._loaders.append(loader)
                yield from zip(range(a, b), loader, strict=True)
                continue
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kd-prefetch")
            fut: Future = self._pool.submit(self._load, patch, a)
            for s in range(a, b):
                batch = fut.result()
                if s + 1 < b:
                    fut = self._pool.submit(self._load, patch, s + 1)
                yield s, batch

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# --------------------------------------------------------------------------------------------------- EMA


class _Ema:
    """Exponential moving average of the student's parameters (BasicSR ``model_ema``); buffers are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # ema += (1 - decay) * (p - ema), i.e. ema = decay * ema + (1 - decay) * p
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1.0 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)


# ------------------------------------------------------------------------------------------- checkpoints


def find_latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The ``step_XXXXXXX`` folder with the highest step that holds a complete training state, or None."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    found = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and (d / STATE_FILE).is_file():
            found.append((int(m.group(1)), d))
    return max(found)[1] if found else None


def _list_checkpoints(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if _STEP_DIR.match(d.name)), key=lambda d: int(d.name[5:]))


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # numpy's MT19937 keys as a tensor: weights_only loading refuses numpy arrays
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _write_checkpoint(root: Path, step: int, state: dict[str, Any], weights: dict[str, Any]) -> Path:
    """Write ``root/step_XXXXXXX/{state.pt, weights.pth}`` atomically: fill a hidden temporary folder, then
    rename it, so a crash never leaves a half-written ``step_*`` folder that resume would pick."""
    from sr.checkpoint import save_checkpoint

    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        save_checkpoint(tmp / STATE_FILE, state)
        save_checkpoint(tmp / WEIGHTS_FILE, weights)
        if final.exists():  # rewritten after a resume from an earlier step
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _check_resume_config(saved: Mapping[str, Any], cfg: KDConfig, path: Path) -> None:
    now = dataclasses.asdict(cfg)
    diff = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k])
    if diff:
        shown = ", ".join(f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in diff[:4])
        raise CheckpointError(
            f"checkpoint {path} was trained with another config ({shown}); resume with the same settings or "
            f"use a new checkpoint_dir"
        )


# ---------------------------------------------------------------------------------------------- fit_kd


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP/DataParallel wrappers."""
    return model.module if isinstance(getattr(model, "module", None), nn.Module) else model


def _pick_device(student: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(student.parameters(), None)
    if p is not None and p.device.type != "cpu":
        return p.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    if not (isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
        raise ConfigError(f"rank {rank} / world_size {world_size} is invalid; need 0 <= rank < world_size")
    if cfg.batch_size % world_size:
        raise ConfigError(
            f"KDConfig.batch_size {cfg.batch_size} is not divisible by world_size {world_size}; "
            f"use a multiple of {world_size}"
        )
    dev = _pick_device(student, device)
    use_amp = cfg.amp and dev.type == "cuda"
    student.to(dev)
    core = _unwrap(student)
    if teacher is not None:
        teacher.to(dev)
        if cfg.teacher_mode == "eval":
            teacher.eval()
        else:
            teacher.train()  # the authors' quirk: drop-path active, autograd through the teacher

    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.Adamax
    params = [p for p in core.parameters() if p.requires_grad]
    optimizer = opt_cls(params, lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    ckpt_root = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start = 0
    state_path: Path | None = None
    if resume_from is not None:
        state_path = Path(resume_from)
        if state_path.is_dir():
            state_path = state_path / STATE_FILE
        if not state_path.is_file():
            raise CheckpointError(f"no training state at {state_path}; pass a step_* folder written by fit_kd")
    elif resume:
        if ckpt_root is None:
            raise ConfigError("resume=True needs checkpoint_dir; pass the folder of the interrupted run")
        latest = find_latest_checkpoint(ckpt_root)
        state_path = latest / STATE_FILE if latest is not None else None

    ema = _Ema(core, cfg.ema_decay) if cfg.ema_decay is not None else None
    if state_path is not None:
        from sr.checkpoint import read_checkpoint

        st = read_checkpoint(state_path)
        _check_resume_config(st.get("config", {}), cfg, state_path)
        try:
            core.load_state_dict(st["model"])
            if ema is not None:
                ema.model.load_state_dict(st["ema"])
            optimizer.load_state_dict(st["optimizer"])
            scheduler.load_state_dict(st["scheduler"])
            if use_amp and st.get("scaler"):
                scaler.load_state_dict(st["scaler"])
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
        if rank == 0:
            _set_rng_state(st["rng"], dev)
        else:  # the checkpoint holds rank 0's RNG only; other ranks get a fresh, step-dependent stream
            _seed_all(cfg.seed + 1000 * rank + start)
        log.info("resumed KD from %s at step %d", state_path, start)
    else:
        _seed_all(cfg.seed + 1000 * rank)

    batches = _Batches(cfg, train_data, start=start, rank=rank, world=world_size, pin=dev.type == "cuda")
    metrics: dict[str, Any] = {}
    written: list[str] = []
    acc = torch.zeros(4, device=dev, dtype=torch.float64)  # sums of total, gt, lap, hf since the last log
    n_acc = 0
    train_s = 0.0
    window_t, window_steps = time.perf_counter(), 0
    autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext()
    weights = {"w_gt": cfg.w_gt, "w_lap": cfg.w_lap, "w_hf": cfg.w_hf}
    checked = False
    per_image: list[dict] | None = None
    student.train()

    try:
        for step, batch in batches:
            batch = tuple(b.to(dev, non_blocking=True) for b in batch)
            lr_b, hr_b = batch[0], batch[1]
            t_out = batch[2] if len(batch) == 3 else None
            if not checked:
                weights = _effective_weights(cfg, teacher, t_out, lr_b, hr_b, cfg.patch_at(step))
                checked = True
            with autocast:
                sr = student(lr_b)
                if t_out is None and teacher is not None and (weights["w_lap"] or weights["w_hf"]):
                    if cfg.teacher_mode == "eval":
                        with torch.no_grad():
                            t_out = teacher(lr_b)
                    else:
                        t_out = teacher(lr_b)
            terms = kd_loss(
                sr.float(),
                None if t_out is None else t_out.float(),
                hr_b,
                gt_loss=cfg.gt_loss,
                **weights,
            )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["total"]).backward()
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if teacher is not None and cfg.teacher_mode == "train_autograd":
                teacher.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(core)
            acc += torch.stack([terms[k].detach().double() for k in ("total", "gt", "lap", "hf")])
            n_acc += 1
            window_steps += 1
            done = step + 1

            is_last = done == cfg.steps
            do_log = done % cfg.log_every == 0 or is_last
            do_val = bool(val_pairs) and rank == 0 and ((cfg.val_every and done % cfg.val_every == 0) or is_last)
            do_ckpt = (
                ckpt_root is not None and rank == 0 and ((cfg.ckpt_every and done % cfg.ckpt_every == 0) or is_last)
            )
            if do_log or do_val or do_ckpt:
                sums = (acc / max(n_acc, 1)).tolist()  # waits for the GPU, so the clock below is honest
                now = time.perf_counter()
                train_s += now - window_t  # training time only: validation and checkpoints come after
                if not math.isfinite(sums[0]):
                    raise ConfigError(f"KD loss became {sums[0]} by step {done}; lower KDConfig.lr or set grad_clip")
                metrics = {
                    "step": done,
                    "loss": sums[0],
                    "loss_gt": sums[1],
                    "loss_lap": sums[2],
                    "loss_hf": sums[3],
                    "lr": optimizer.param_groups[0]["lr"],
                    "hr_patch": cfg.patch_at(step),
                    "it_per_s": window_steps / max(now - window_t, 1e-9),
                }
                acc.zero_()
                n_acc = 0
                if do_val:
                    res = evaluate(ema.model if ema is not None else core, val_pairs, scale=cfg.scale, device=dev)
                    metrics.update(val_psnr_y=res["psnr_y"], val_ssim_y=res["ssim_y"])
                    per_image = res["per_image"]
                path = None
                if do_ckpt:
                    assert ckpt_root is not None
                    path = _write_checkpoint(
                        ckpt_root,
                        done,
                        {
                            "model": core.state_dict(),
                            "ema": ema.model.state_dict() if ema is not None else None,
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "scaler": scaler.state_dict(),
                            "step": done,
                            "rng": _rng_state(dev),
                            "config": dataclasses.asdict(cfg),
                        },
                        {
                            "params": core.state_dict(),
                            **({"params_ema": ema.model.state_dict()} if ema is not None else {}),
                        },
                    )
                    written.append(str(path))
                if report is not None:
                    report(dict(metrics), str(path) if path is not None else None)
                if path is not None:
                    for old in _list_checkpoints(ckpt_root)[: -cfg.keep_checkpoints]:  # type: ignore[arg-type]
                        shutil.rmtree(old, ignore_errors=True)
                window_t, window_steps = time.perf_counter(), 0
            if progress is not None:
                progress(done, cfg.steps, metrics)
    finally:
        batches.close()

    steps_run = cfg.steps - start
    final_model = ema.model if ema is not None else core
    if steps_run == 0 and val_pairs and rank == 0:  # resumed a finished run: still give its metrics
        res = evaluate(final_model, val_pairs, scale=cfg.scale, device=dev)
        metrics.update(val_psnr_y=res["psnr_y"], val_ssim_y=res["ssim_y"])
        per_image = res["per_image"]
    if per_image is not None:
        metrics["val_per_image"] = per_image
    wall = time.perf_counter() - t_call
    steps_per_s = steps_run / train_s if train_s > 0 else 0.0
    metrics.update(steps=cfg.steps, wall_s=wall, steps_per_s=steps_per_s)
    kept = tuple(str(d) for d in _list_checkpoints(ckpt_root)) if ckpt_root is not None and ckpt_root.is_dir() else ()
    return KDResult(
        metrics=metrics,
        steps=cfg.steps,
        steps_run=steps_run,
        wall_s=wall,
        steps_per_s=steps_per_s,
        model=final_model,
        checkpoint_dir=str(ckpt_root) if ckpt_root is not None else None,
        last_checkpoint=written[-1] if written else None,
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
