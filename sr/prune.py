"""CDISM stage 1: L1-regularised fine-tuning with OBProx-SG (:mod:`sr.obproxsg`), and the density of the deep
feature module.

Papers: Jiang et al., "Compressing Deep Image Super-resolution Models" (arXiv 2401.00523; code
``Pikapi22/SRModelCompression``) and Chen et al., "Orthant Based Proximal Stochastic Gradient Method for
l1-Regularized Optimization" (ECML-PKDD 2020; code ``tianyic/obproxsg``).

The loop takes its data order, EMA, RNG state and checkpoints from :mod:`sr._train` (the ones KD uses).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import MultiStepLR
from torch.utils.data import Dataset

from sr._train import (
    Ema,
    StepBatches,
    check_rank,
    find_latest_checkpoint,
    rng_state,
    seed_all,
    set_rng_state,
    unwrap,
    write_checkpoint,
)
from sr._train import prune_checkpoints as _prune_old
from sr.checkpoint import read_checkpoint, weights_entry
from sr.errors import CheckpointError, ConfigError, DataError
from sr.obproxsg import OBProxSG, Phase
from sr.prune_schedule import resolve_prune_schedule

__all__ = [
    "DensityReport",
    "OBProxSG",
    "Phase",
    "PruneConfig",
    "PruneResult",
    "deep_feature_weights",
    "density",
    "latest_checkpoint",
    "prune_finetune",
]

LossName = Literal["charbonnier", "l1"]

# Charbonnier eps of the authors' BasicSR config (1e-12): in effect an L1 loss.
_CHARBONNIER_EPS = 1e-12
_CKPT_KEEP = 2
# The same finder as KD's: one checkpoint layout (sr._train).
latest_checkpoint = find_latest_checkpoint


# ----------------------------------------------------------------------------------------------- density

# Deep feature module's weight tensors per family (REFERENCE §1; no biases, no relative-position tables).
# EDSR and SwinIR follow the authors' get_density. IMDN, IMDN-AIM and RFDN take their distillation blocks only,
# by analogy (official names IMDB1..IMDBn, KAIR's model.1.sub.<n>.<conv>, B1..Bn); their fusion/closing convs
# (c, LR_conv, model.1.sub.<B>) are left out.
_DEEP_WEIGHTS: dict[str, re.Pattern[str]] = {
    "edsr": re.compile(r"^(body\..*weight|conv_after_body\.weight)$"),
    "swinir": re.compile(r"^layers\..*weight$"),
    "imdn": re.compile(r"^IMDB\w*\..*weight$"),
    # two more name parts after the block index: a block's convs, not the bare closing conv model.1.sub.<B>
    "imdn_aim": re.compile(r"^model\.1\.sub\.\d+\.[^.]+\..*weight$"),
    "rfdn": re.compile(r"^B\d+\..*weight$"),
}


@dataclass(frozen=True)
class DensityReport:
    """Fraction of non-zero entries over the deep feature module's weight tensors."""

    density: float
    nonzero: int
    total: int
    per_layer: dict[str, float]


def deep_feature_weights(model: nn.Module, family: str) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the deep feature module's weights, in parameter order.

    EDSR: ``body.*...weight`` plus ``conv_after_body.weight``. SwinIR: every ``layers.*...weight`` (LayerNorm
    weights included, relative_position_bias_table excluded: its name does not end in ``weight``). IMDN:
    ``IMDB*...weight``. IMDN-AIM: the blocks' ``model.1.sub.<n>.<conv>...weight``. RFDN: ``B<n>...weight``.
    A DDP/DataParallel wrapper is unwrapped first. Training-time collapsible models (``imdn_clb``) have no rule:
    zeros in separate branches do not survive folding.

    Raises:
        ConfigError: unknown ``family``, or a model with no tensor matching the family's pattern.
    """
    pattern = _DEEP_WEIGHTS.get(family)
    if pattern is None:
        raise ConfigError(
            f"no deep-feature rule for model family {family!r}; valid families: {', '.join(sorted(_DEEP_WEIGHTS))}"
        )
    out: list[tuple[str, torch.Tensor]] = [(n, p) for n, p in unwrap(model).named_parameters() if pattern.match(n)]
    if not out:
        raise ConfigError(
            f"the model has no parameter matching {pattern.pattern!r} of family {family!r}; "
            f"pass the family the model was built from"
        )
    return out


def density(model: nn.Module, family: str) -> DensityReport:
    """Density ``d = non-zero / total`` over :func:`deep_feature_weights` (REFERENCE §1, stage 1)."""
    per_layer: dict[str, float] = {}
    nonzero = total = 0
    with torch.no_grad():
        for name, w in deep_feature_weights(model, family):
            nz = int(torch.count_nonzero(w).item())
            per_layer[name] = nz / w.numel()
            nonzero += nz
            total += w.numel()
    return DensityReport(density=nonzero / total, nonzero=nonzero, total=total, per_layer=per_layer)


# ------------------------------------------------------------------------------------------ fine-tuning


@dataclass(frozen=True)
class PruneConfig:
    """Settings of one OBProx-SG fine-tune (validated at construction; errors name the field).

    Attributes:
        family: model family whose deep-feature rule measures the density (``edsr``, ``swinir``, ...).
        steps: optimizer steps; batch_size: the global batch.
        lr, lambda_, epsilon, weight_decay: OBProx-SG's step size, L1 weight, Orthant threshold and L2.
        np_epochs: Prox-SG epochs (default ``int(ceil(steps / batches_per_epoch) / 10)``, the authors'
            ``total_epochs / 10``); no_epochs: Orthant epochs per cycle (None: infinity).
        batches_per_epoch: steps per schedule epoch (default ``len(train_data) // batch_size``).
        quirk_epoch_in_samples: count epochs in samples like the authors' code.
        milestones, gamma: ``MultiStepLR`` in steps.
        loss: ``charbonnier`` (the authors') or ``l1``.
        ema_decay: weight EMA kept for reference (the raw weights are the pruned model), or None.
        seed: data order and the global RNGs; shuffle: False keeps the dataset's order.
        log_every: density/loss log interval; checkpoint_every: checkpoint interval (default log_every), a
            multiple of log_every.
        num_workers: DataLoader worker processes (0: a prefetch thread).
    """

    family: str
    steps: int
    batch_size: int
    lr: float = 5e-3
    lambda_: float = 1e-4
    epsilon: float = 1e-4
    np_epochs: int | None = None
    no_epochs: int | None = None
    batches_per_epoch: int | None = None
    quirk_epoch_in_samples: bool = False
    milestones: tuple[int, ...] = field(default=())
    gamma: float = 0.5
    loss: LossName = "charbonnier"
    ema_decay: float | None = 0.999
    weight_decay: float = 0.0
    seed: int = 0
    shuffle: bool = True
    log_every: int = 100
    checkpoint_every: int | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(self.milestones))
        if self.checkpoint_every is None:
            object.__setattr__(self, "checkpoint_every", self.log_every)
        for name in ("steps", "batch_size", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"PruneConfig.{name} must be an integer >= 1, got {v!r}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"PruneConfig.ema_decay must be in [0, 1) or None, got {self.ema_decay!r}; e.g. 0.999")
        every = self.checkpoint_every
        if not isinstance(every, int) or every < 1 or every % self.log_every:
            raise ConfigError(
                f"PruneConfig.checkpoint_every {every} is not a positive multiple of log_every {self.log_every}; "
                f"checkpoints are written at report steps, so pass a multiple"
            )
        if self.loss not in ("charbonnier", "l1"):
            raise ConfigError(f"unknown pruning loss {self.loss!r}; use 'charbonnier' or 'l1'")
        bpe = self.batches_per_epoch
        if bpe is not None and (not isinstance(bpe, int) or bpe < 1):
            raise ConfigError(f"PruneConfig.batches_per_epoch must be an integer >= 1, got {bpe!r}")


@dataclass(frozen=True)
class PruneResult:
    """Outcome of :func:`prune_finetune`; the pruned model is the (raw, non-EMA) model passed in.

    ``density_history`` and ``loss_history`` hold ``(step, value)`` at step 0 (density only) and every
    ``log_every`` steps; the loss is this rank's mean over the window.
    """

    density: DensityReport
    density_history: list[tuple[int, float]]
    loss_history: list[tuple[int, float]]
    steps: int
    np_epochs: int
    batches_per_epoch: int
    switch_step: int
    ema_state_dict: dict[str, torch.Tensor] | None
    checkpoint: str | None  # newest checkpoint folder written (rank 0), else None


def _pixel_loss(name: LossName) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "l1":
        return F.l1_loss
    return lambda x, y: torch.sqrt((x - y) ** 2 + _CHARBONNIER_EPS).mean()


def _schedule(cfg: PruneConfig, n: int) -> tuple[int, int]:
    """(batches_per_epoch, np_epochs) with their defaults filled in (:func:`sr.prune_schedule.resolve_prune_schedule`).

    A derived Np of 0 only warns here: jobs and ``srcompress plan`` refuse such a spec before anything runs."""
    bpe = cfg.batches_per_epoch if cfg.batches_per_epoch is not None else n // cfg.batch_size
    sched = resolve_prune_schedule(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        n_images=bpe * cfg.batch_size,
        np_epochs=cfg.np_epochs,
        quirk_epoch_in_samples=cfg.quirk_epoch_in_samples,
        require_prox=False,
    )
    if sched.np_epochs == 0 and cfg.np_epochs is None:
        warnings.warn(
            f"Prox-SG phase is empty: {cfg.steps} steps make {sched.epochs} epoch(s) of {bpe} "
            f"batches, and Np = epochs / 10 rounds to 0; pass np_epochs or a smaller batches_per_epoch",
            stacklevel=3,
        )
    return bpe, sched.np_epochs


@dataclass
class _Loop:
    """One prune run's optimizer, EMA and histories (so the loop and its checkpoints share them)."""

    cfg: PruneConfig
    net: nn.Module
    opt: OBProxSG
    sched: MultiStepLR
    ema: Ema | None
    device: torch.device
    density_history: list[tuple[int, float]] = field(default_factory=list)
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    last_ckpt: str | None = None

    def restore(self, path: Path) -> int:
        state = read_checkpoint(path / "state.pt")
        try:
            self.net.load_state_dict(state["model"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.model.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            start = int(state["step"])
            self.density_history = [(int(s), float(d)) for s, d in state["density_history"]]
            self.loss_history = [(int(s), float(v)) for s, v in state["loss_history"]]
            set_rng_state(state["rng"], self.device)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            msg = " ".join(str(exc).split())[:160]
            raise CheckpointError(
                f"cannot resume from {path} ({type(exc).__name__}: {msg}); "
                f"pass the same model and options, or a fresh checkpoint_dir"
            ) from None
        if self.opt.steps != start:
            raise CheckpointError(
                f"checkpoint {path} is inconsistent (optimizer at step {self.opt.steps}, loop at {start}); "
                f"delete it or pass a fresh checkpoint_dir"
            )
        return start

    def save(self, root: Path, step: int) -> str:
        state = {
            "model": self.net.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema is not None else None,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "step": step,
            "density_history": self.density_history,
            "loss_history": self.loss_history,
            "rng": rng_state(self.device),
            "family": self.cfg.family,
        }
        # weights.pth: the raw pruned weights ('params') for the next stage; the EMA copy is dense, for reference
        weights = {**weights_entry(self.net), **({"params_ema": self.ema.model.state_dict()} if self.ema else {})}
        path = write_checkpoint(root, step, state, weights)
        _prune_old(root, _CKPT_KEEP)
        self.last_ckpt = str(path)
        return self.last_ckpt


def _build_loop(model: nn.Module, cfg: PruneConfig, n: int) -> _Loop:
    net = unwrap(model)
    density(net, cfg.family)  # fail fast on a family/model mismatch
    try:
        device = next(net.parameters()).device
    except StopIteration:
        raise ConfigError("the model has no parameters to prune; pass a built SR model") from None
    bpe, np_epochs = _schedule(cfg, n)
    opt = OBProxSG(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        lambda_=cfg.lambda_,
        epsilon=cfg.epsilon,
        np_epochs=np_epochs,
        batches_per_epoch=bpe,
        no_epochs=cfg.no_epochs,
        quirk_epoch_in_samples=cfg.quirk_epoch_in_samples,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
    )
    sched = MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    ema = Ema(net, cfg.ema_decay) if cfg.ema_decay is not None else None
    return _Loop(cfg, net, opt, sched, ema, device)


def prune_finetune(
    model: nn.Module,
    cfg: PruneConfig,
    *,
    train_data: Dataset,
    report: Callable[[dict[str, Any], str | None], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[int, int, float], None] | None = None,
) -> PruneResult:
    """Fine-tune ``model`` in place with OBProx-SG (CDISM stage 1) and return the density it reaches.

    Step ``s`` trains on the batch :class:`sr._train.StepPlan` gives for ``(cfg.seed, s)`` (the scheme KD uses);
    with ``world_size > 1`` this rank takes its contiguous share of each global batch, and ``model`` should be
    the DDP-wrapped module (it is unwrapped to read, save and measure weights).

    Schedule: Prox-SG for ``np_epochs`` epochs of ``batches_per_epoch`` steps, then Orthant steps (see
    :class:`PruneConfig` for the defaults; a warning is issued when Np is 0). The density reported is that of the
    raw weights, and the raw ``model`` is the pruned result; the EMA copy is kept for reference only (an average
    of weights that were non-zero earlier is almost never exactly zero).

    Checkpoints (rank 0, when ``checkpoint_dir`` is set) go every ``checkpoint_every`` steps and at the end into
    ``checkpoint_dir/step_XXXXXXX/{state.pt, weights.pth}`` (:mod:`sr._train`'s layout); the latest 2 are kept.
    ``resume=True`` continues from the newest one there (a fresh start when there is none). A fresh start seeds
    python, numpy and torch from ``seed + 1000 * rank``.

    Args:
        report: ``report(metrics, checkpoint_path_or_None)`` every ``log_every`` steps and at the end; metrics
            are step, loss (window mean, this rank), density, nonzero, phase and lr (of the last step), epoch.
        progress: ``progress(step, steps, loss)`` after every step (forces a device sync per step).

    Raises:
        ConfigError: invalid options. DataError: fewer samples than one batch. CheckpointError: unreadable or
            mismatched checkpoint on resume.
    """
    n = len(train_data)  # type: ignore[arg-type]
    check_rank(rank, world_size, cfg.batch_size, who="PruneConfig")
    if n < cfg.batch_size:
        raise DataError(f"training set has {n} samples, fewer than batch_size {cfg.batch_size}; lower batch_size")
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True needs checkpoint_dir; pass the folder holding step_XXXXXXX checkpoints")
    loop = _build_loop(model, cfg, n)
    ckpt_path = latest_checkpoint(checkpoint_dir) if resume and checkpoint_dir is not None else None
    if ckpt_path is not None:
        start = loop.restore(ckpt_path)
    else:
        start = 0
        seed_all(cfg.seed + 1000 * rank)
        loop.density_history.append((0, density(loop.net, cfg.family).density))
    batches = StepBatches(
        train_data,
        [(None, start, cfg.steps)] if start < cfg.steps else [],
        batch=cfg.batch_size,
        seed=cfg.seed,
        rank=rank,
        world=world_size,
        num_workers=cfg.num_workers,
        pin=loop.device.type == "cuda",
        shuffle=cfg.shuffle,
    )
    try:
        step = _train(loop, model, batches, start, report, progress, checkpoint_dir, rank)
    finally:
        batches.close()
    return PruneResult(
        density=density(loop.net, cfg.family),
        density_history=loop.density_history,
        loss_history=loop.loss_history,
        steps=step,
        np_epochs=loop.opt.np_epochs,
        batches_per_epoch=loop.opt.batches_per_epoch,
        switch_step=loop.opt.switch_step,
        ema_state_dict={k: v.detach().clone() for k, v in loop.ema.model.state_dict().items()} if loop.ema else None,
        checkpoint=loop.last_ckpt,
    )


def _train(
    loop: _Loop,
    model: nn.Module,
    batches: StepBatches,
    start: int,
    report: Callable[[dict[str, Any], str | None], None] | None,
    progress: Callable[[int, int, float], None] | None,
    checkpoint_dir: str | Path | None,
    rank: int,
) -> int:
    cfg, opt, device = loop.cfg, loop.opt, loop.device
    loss_fn = _pixel_loss(cfg.loss)
    model.train()
    window_loss = torch.zeros((), device=device)
    window_n = 0
    step = start
    for _, (lr_img, hr_img) in batches:
        lr_img = lr_img.to(device, non_blocking=True)
        hr_img = hr_img.to(device, non_blocking=True)
        phase = opt.phase
        step_lr = float(opt.param_groups[0]["lr"])
        value = loss_fn(model(lr_img), hr_img)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        loop.sched.step()
        if loop.ema is not None:
            loop.ema.update(loop.net)
        step += 1
        window_loss += value.detach()
        window_n += 1
        if progress is not None:
            progress(step, cfg.steps, float(value.detach()))
        if step % cfg.log_every and step != cfg.steps:
            continue
        mean_loss = float(window_loss) / window_n
        window_loss.zero_()
        window_n = 0
        rep = density(loop.net, cfg.family)
        loop.density_history.append((step, rep.density))
        loop.loss_history.append((step, mean_loss))
        ckpt: str | None = None
        if checkpoint_dir is not None and rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.steps):  # type: ignore[operator]
            ckpt = loop.save(Path(checkpoint_dir), step)
        if report is not None:
            metrics: dict[str, Any] = {"step": step, "loss": mean_loss, "density": rep.density, "nonzero": rep.nonzero}
            metrics.update(phase=phase, lr=step_lr, epoch=opt.epoch_at(step - 1))
            report(metrics, ckpt)
    return step
