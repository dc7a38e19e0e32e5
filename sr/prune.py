"""CDISM stage 1: L1-regularised fine-tuning with OBProx-SG, and the density of the deep feature module.

Papers: Jiang et al., "Compressing Deep Image Super-resolution Models" (arXiv 2401.00523; code
``Pikapi22/SRModelCompression``) and Chen et al., "Orthant Based Proximal Stochastic Gradient Method for
l1-Regularized Optimization" (ECML-PKDD 2020; code ``tianyic/obproxsg``).

The penalty ``lambda_ * ||theta||_1`` is applied by the optimizer to every tensor it is given, never through the
loss. Training alternates between two phases, decided by the optimizer's own step counter:

- Prox-SG: ``z = x - lr * g``, ``x <- sign(z) * max(|z| - lr * lambda_, 0)`` (soft thresholding).
- Orthant: ``zeta = sign(x)``; ``x_hat = x - lr * (g + lambda_ * zeta)`` on the non-zeros; then every entry with
  ``x_hat * zeta <= epsilon`` is set to 0. Zeros have ``zeta = 0`` and stay 0, so this phase never revives one.
  The comparison follows ``tianyic/obproxsg`` (``project`` keeps ``x_hat * zeta > eps``); its default ``eps``
  is 0.0, CDISM's REFERENCE value is 1e-4.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import MultiStepLR
from torch.utils.data import DataLoader, Dataset, Sampler

from sr.checkpoint import read_checkpoint
from sr.errors import CheckpointError, ConfigError, DataError

__all__ = [
    "DensityReport",
    "OBProxSG",
    "PruneResult",
    "deep_feature_weights",
    "density",
    "latest_checkpoint",
    "prune_finetune",
]

Phase = Literal["prox", "orthant"]
LossName = Literal["charbonnier", "l1"]

# Charbonnier eps of the authors' BasicSR config (1e-12): in effect an L1 loss.
_CHARBONNIER_EPS = 1e-12
_CKPT_PREFIX = "step_"
_CKPT_KEEP = 2


# --------------------------------------------------------------------------------------------------- optimizer


class OBProxSG(torch.optim.Optimizer):
    """OBProx-SG for ``min f(x) + lambda_ * ||x||_1`` over every tensor it is given.

    The schedule counts epochs of ``batches_per_epoch`` optimizer steps: ``epoch = steps // batches_per_epoch``.
    With ``no_epochs=None`` (No = infinity) the first ``np_epochs`` epochs take Prox-SG steps and every later
    step is an Orthant step. With a finite ``no_epochs`` the phases alternate as in ``tianyic/obproxsg``: the
    step is Prox-SG iff ``epoch % (np_epochs + no_epochs) < np_epochs`` (Np Prox epochs, No Orthant epochs,
    repeat).

    ``quirk_epoch_in_samples`` reproduces ``Pikapi22/SRModelCompression``: it passes the optimizer
    ``epochSize = batches_per_epoch * batch_size`` (samples per epoch, global batch) while the optimizer counts
    one tick per step, so an "epoch" lasts ``batch_size`` real epochs and the switch lands at
    ``np_epochs * batches_per_epoch * batch_size`` steps - past the end of their runs, so their Orthant phase
    never starts.

    The learning rate is read from ``group["lr"]`` at every step, so LR schedulers work. ``lambda_``,
    ``epsilon`` and ``weight_decay`` are per-group options too (e.g. ``lambda_=0`` for a group to leave
    unpenalised). ``weight_decay`` adds ``weight_decay * x`` to the gradient (plain L2, not in the reference).
    Parameters whose ``grad`` is ``None`` are skipped, as in the reference.

    Args:
        params: tensors or param groups.
        lr: step size (alpha).
        lambda_: L1 weight.
        epsilon: Orthant projection threshold (>= 0).
        np_epochs: Prox-SG epochs per cycle (Np, >= 0; 0 starts in the Orthant phase).
        batches_per_epoch: optimizer steps per real epoch.
        no_epochs: Orthant epochs per cycle (No, >= 1); ``None`` means infinity.
        quirk_epoch_in_samples: count epochs in samples like the authors' code (needs ``batch_size``).
        batch_size: global batch size; only read by the quirk.
        weight_decay: L2 coefficient added to the gradient.
    """

    def __init__(
        self,
        params: Any,
        *,
        lr: float,
        lambda_: float = 1e-4,
        epsilon: float = 1e-4,
        np_epochs: int,
        batches_per_epoch: int,
        no_epochs: int | None = None,
        quirk_epoch_in_samples: bool = False,
        batch_size: int | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr >= 0.0:
            raise ConfigError(f"OBProxSG lr must be >= 0, got {lr!r}; pass a non-negative learning rate")
        if not lambda_ >= 0.0:
            raise ConfigError(f"OBProxSG lambda_ must be >= 0, got {lambda_!r}; pass a non-negative L1 weight")
        if not epsilon >= 0.0:
            raise ConfigError(f"OBProxSG epsilon must be >= 0, got {epsilon!r}; pass e.g. 1e-4")
        if not weight_decay >= 0.0:
            raise ConfigError(f"OBProxSG weight_decay must be >= 0, got {weight_decay!r}; pass 0 or more")
        if not isinstance(np_epochs, int) or np_epochs < 0:
            raise ConfigError(f"OBProxSG np_epochs must be an integer >= 0, got {np_epochs!r}")
        if not isinstance(batches_per_epoch, int) or batches_per_epoch < 1:
            raise ConfigError(f"OBProxSG batches_per_epoch must be an integer >= 1, got {batches_per_epoch!r}")
        if no_epochs is not None and (not isinstance(no_epochs, int) or no_epochs < 1):
            raise ConfigError(f"OBProxSG no_epochs must be an integer >= 1 or None (infinity), got {no_epochs!r}")
        if quirk_epoch_in_samples and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(
                f"quirk_epoch_in_samples needs the global batch_size (an integer >= 1), got {batch_size!r}; pass it"
            )
        defaults = dict(lr=lr, lambda_=lambda_, epsilon=epsilon, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.np_epochs = np_epochs
        self.no_epochs = no_epochs
        self.batches_per_epoch = batches_per_epoch
        self.quirk_epoch_in_samples = quirk_epoch_in_samples
        self.batch_size = batch_size
        self._steps = 0

    # ----------------------------------------------------------------------------------------- schedule
    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps that make one schedule epoch (``batch_size`` times more under the quirk)."""
        if self.quirk_epoch_in_samples:
            assert self.batch_size is not None
            return self.batches_per_epoch * self.batch_size
        return self.batches_per_epoch

    @property
    def steps(self) -> int:
        """Number of ``step()`` calls made (restored by ``load_state_dict``)."""
        return self._steps

    def epoch_at(self, step: int) -> int:
        """Schedule epoch of the step with 0-based index ``step``."""
        return step // self.steps_per_epoch

    def phase_at(self, step: int) -> Phase:
        """Phase of the step with 0-based index ``step``."""
        epoch = self.epoch_at(step)
        if self.no_epochs is None:
            return "prox" if epoch < self.np_epochs else "orthant"
        return "prox" if epoch % (self.np_epochs + self.no_epochs) < self.np_epochs else "orthant"

    @property
    def epoch(self) -> int:
        """Schedule epoch of the next step."""
        return self.epoch_at(self._steps)

    @property
    def phase(self) -> Phase:
        """Phase the next ``step()`` takes: ``'prox'`` or ``'orthant'``."""
        return self.phase_at(self._steps)

    @property
    def switch_step(self) -> int:
        """0-based index of the first Orthant step (``np_epochs * steps_per_epoch``)."""
        return self.np_epochs * self.steps_per_epoch

    # ----------------------------------------------------------------------------------------- update
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One Prox-SG or Orthant step (see the class docstring), then advance the step counter."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        orthant = self.phase == "orthant"
        for group in self.param_groups:
            lr = float(group["lr"])
            lam = float(group["lambda_"])
            eps = float(group["epsilon"])
            wd = float(group["weight_decay"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ConfigError("OBProxSG does not support sparse gradients; use dense parameters")
                g = p.grad if wd == 0.0 else p.grad.add(p, alpha=wd)
                if orthant:
                    _orthant_step_(p, g, lr=lr, lambda_=lam, epsilon=eps)
                else:
                    _prox_step_(p, g, lr=lr, lambda_=lam)
        self._steps += 1
        return loss

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The torch optimizer state plus ``'obproxsg'``: the step counter and the schedule it ran with."""
        sd = super().state_dict()
        sd["obproxsg"] = {
            "steps": self._steps,
            "np_epochs": self.np_epochs,
            "no_epochs": self.no_epochs,
            "batches_per_epoch": self.batches_per_epoch,
            "quirk_epoch_in_samples": self.quirk_epoch_in_samples,
            "batch_size": self.batch_size,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore groups (lr included) and the step counter; the schedule stays the constructor's."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("obproxsg", None)
        if not isinstance(extra, dict) or "steps" not in extra:
            raise CheckpointError(
                "optimizer state has no OBProx-SG step counter; resume from a state written by OBProxSG"
            )
        super().load_state_dict(state_dict)
        self._steps = int(extra["steps"])


def _prox_step_(p: torch.Tensor, g: torch.Tensor, *, lr: float, lambda_: float) -> None:
    z = p - lr * g
    p.copy_(z.sign() * (z.abs() - lr * lambda_).clamp_min_(0.0))


def _orthant_step_(p: torch.Tensor, g: torch.Tensor, *, lr: float, lambda_: float, epsilon: float) -> None:
    zeta = p.sign()
    x_hat = p - lr * (g + lambda_ * zeta)
    # zeta = 0 at zeros, so x_hat * zeta = 0 <= epsilon there: zeros stay zero whatever their gradient.
    p.copy_(torch.where(x_hat * zeta > epsilon, x_hat, torch.zeros_like(x_hat)))


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


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DistributedDataParallel / DataParallel."""
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


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
    out = [(n, p) for n, p in _unwrap(model).named_parameters() if pattern.match(n)]
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


class _StepBatches(Sampler[list[int]]):
    """Index lists for steps ``start .. steps - 1`` of this rank.

    Global batch ``t`` of an epoch is slice ``t`` of a permutation seeded by ``(seed, epoch)`` (the identity
    when not shuffling); the samples past the last full batch are left out. Rank ``r`` of ``w`` takes the
    ``r``-th contiguous ``batch_size / w`` of each global batch.
    """

    def __init__(
        self,
        n: int,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool,
        start: int,
        steps: int,
        rank: int,
        world_size: int,
    ) -> None:
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.start, self.steps, self.rank, self.world_size = start, steps, rank, world_size
        self.batches_per_epoch = n // batch_size

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def _perm(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
        return torch.randperm(self.n, generator=gen)

    def global_batch(self, step: int, perm: torch.Tensor | None = None) -> list[int]:
        """Dataset indices of global batch number ``step`` (all ranks)."""
        epoch, t = divmod(step, self.batches_per_epoch)
        perm = self._perm(epoch) if perm is None else perm
        return perm[t * self.batch_size : (t + 1) * self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.batch_size // self.world_size
        epoch, perm = -1, torch.empty(0, dtype=torch.long)
        for step in range(self.start, self.steps):
            if step // self.batches_per_epoch != epoch:
                epoch = step // self.batches_per_epoch
                perm = self._perm(epoch)
            batch = self.global_batch(step, perm)
            yield batch[self.rank * per_rank : (self.rank + 1) * per_rank]


def _mix_seed(seed: int, epoch: int) -> int:
    # Distinct, stable 63-bit seed per (seed, epoch); SeedSequence mixes the bits so nearby pairs differ.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _pixel_loss(name: LossName) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "l1":
        return F.l1_loss
    if name == "charbonnier":
        return lambda x, y: torch.sqrt((x - y) ** 2 + _CHARBONNIER_EPS).mean()
    raise ConfigError(f"unknown pruning loss {name!r}; use 'charbonnier' or 'l1'")


@torch.no_grad()
def _ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), net.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), net.buffers(), strict=True):
        e.copy_(b)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # numpy's key array as a tensor keeps the checkpoint loadable with weights_only=True
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """Newest complete ``step_XXXXXXX`` folder under ``checkpoint_dir`` (with its ``state.pt``), or ``None``."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    found = [
        (int(d.name[len(_CKPT_PREFIX) :]), d)
        for d in root.iterdir()
        if d.is_dir() and re.fullmatch(rf"{_CKPT_PREFIX}\d+", d.name) and (d / "state.pt").is_file()
    ]
    return max(found)[1] if found else None


def _write_checkpoint(root: Path, step: int, state: dict[str, Any], model_sd: dict[str, torch.Tensor]) -> Path:
    """``root/step_XXXXXXX/{state.pt, model.pt}``, built in a hidden folder and renamed into place."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_CKPT_PREFIX}{step:07d}"
    tmp = root / f".tmp_{final.name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        torch.save(state, tmp / "state.pt")
        torch.save(model_sd, tmp / "model.pt")  # the raw pruned weights alone, for the next stage
        if final.exists():  # a rerun past an older copy of this step
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = sorted(
        (int(d.name[len(_CKPT_PREFIX) :]), d)
        for d in root.iterdir()
        if d.is_dir() and re.fullmatch(rf"{_CKPT_PREFIX}\d+", d.name)
    )
    for _, d in old[:-_CKPT_KEEP]:
        shutil.rmtree(d, ignore_errors=True)
    return final


def _check_args(
    *,
    steps: int,
    batch_size: int,
    n: int,
    rank: int,
    world_size: int,
    ema_decay: float | None,
    log_every: int,
    checkpoint_every: int,
    resume: bool,
    checkpoint_dir: str | Path | None,
) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(world_size, int) or world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank!r} / world_size {world_size!r} invalid; need 0 <= rank < world_size")
    if batch_size % world_size:
        raise ConfigError(
            f"global batch_size {batch_size} is not divisible by world_size {world_size}; pass a multiple of it"
        )
    if n < batch_size:
        raise DataError(f"training set has {n} samples, fewer than batch_size {batch_size}; lower batch_size")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ConfigError(f"ema_decay must be in [0, 1) or None, got {ema_decay!r}; pass e.g. 0.999")
    if not isinstance(log_every, int) or log_every < 1:
        raise ConfigError(f"log_every must be an integer >= 1, got {log_every!r}")
    if checkpoint_every < 1 or checkpoint_every % log_every:
        raise ConfigError(
            f"checkpoint_every {checkpoint_every} is not a positive multiple of log_every {log_every}; "
            f"checkpoints are written at report steps, so pass a multiple"
        )
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True needs checkpoint_dir; pass the folder holding step_XXXXXXX checkpoints")


def prune_finetune(
    model: nn.Module,
    *,
    family: str,
    train_data: Dataset,
    steps: int,
    batch_size: int,
    lr: float = 5e-3,
    lambda_: float = 1e-4,
    epsilon: float = 1e-4,
    np_epochs: int | None = None,
    no_epochs: int | None = None,
    batches_per_epoch: int | None = None,
    quirk_epoch_in_samples: bool = False,
    milestones: Sequence[int] = (),
    gamma: float = 0.5,
    loss: LossName = "charbonnier",
    ema_decay: float | None = 0.999,
    weight_decay: float = 0.0,
    seed: int = 0,
    shuffle: bool = True,
    log_every: int = 100,
    checkpoint_every: int | None = None,
    report: Callable[[dict[str, Any], str | None], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> PruneResult:
    """Fine-tune ``model`` in place with OBProx-SG (CDISM stage 1) and return the density it reaches.

    Step ``s`` (0-based) trains on global batch ``s`` of a data order fixed by ``(seed, epoch)``; with
    ``world_size > 1`` this rank takes its contiguous share of each global batch, and ``model`` should be the
    DDP-wrapped module (it is unwrapped to read, save and measure weights). ``batch_size`` is the global batch.

    Schedule: an epoch is ``batches_per_epoch`` steps (default ``len(train_data) // batch_size``); Prox-SG for
    ``np_epochs`` epochs (default ``int(ceil(steps / batches_per_epoch) / 10)``, the authors' ``total_epochs /
    10``; a warning is issued when that is 0), then Orthant steps. The LR is multiplied by ``gamma`` at each of
    ``milestones`` (steps; MultiStepLR stepped once per step).

    Density and export: the density reported is that of the raw weights, and the raw ``model`` is the pruned
    result. The EMA copy (``ema_decay``) is kept in checkpoints and the result for reference only: an average of
    weights that were non-zero earlier is almost never exactly zero, so EMA weights are dense.

    Checkpoints (rank 0, when ``checkpoint_dir`` is set) go every ``checkpoint_every`` steps (default
    ``log_every``) and at the end into ``checkpoint_dir/step_XXXXXXX/`` (``state.pt``: model, EMA, optimizer,
    scheduler, step, histories, RNG states; ``model.pt``: raw weights) by an atomic rename; the latest 2 are
    kept. ``resume=True`` continues from the newest one there (on every rank; a fresh start when there is
    none). A fresh start seeds python, numpy and torch from ``seed + rank`` (drop-path etc.).

    Args:
        report: ``report(metrics, checkpoint_path_or_None)`` every ``log_every`` steps and at the end; metrics are
            step, loss (window mean, this rank), density, nonzero, phase (of the last step), lr (of the last
            step), epoch.
        progress: ``progress(step, steps, loss)`` after every step (forces a device sync per step).
        num_workers: DataLoader workers; with > 0, per-sample randomness that uses global RNGs is not restored
            on resume (``sr.data.PatchDataset`` uses none).

    Returns:
        A :class:`PruneResult`.

    Raises:
        ConfigError: invalid options. DataError: fewer samples than one batch. CheckpointError: unreadable or
            mismatched checkpoint on resume.
    """
    n = len(train_data)  # type: ignore[arg-type]
    checkpoint_every = log_every if checkpoint_every is None else checkpoint_every
    _check_args(
        steps=steps,
        batch_size=batch_size,
        n=n,
        rank=rank,
        world_size=world_size,
        ema_decay=ema_decay,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        resume=resume,
        checkpoint_dir=checkpoint_dir,
    )
    loss_fn = _pixel_loss(loss)
    net = _unwrap(model)
    density(net, family)  # fail fast on a family/model mismatch
    bpe = batches_per_epoch if batches_per_epoch is not None else n // batch_size
    if not isinstance(bpe, int) or bpe < 1:
        raise ConfigError(f"batches_per_epoch must be an integer >= 1, got {bpe!r}")
    if np_epochs is None:
        np_epochs = int(math.ceil(steps / bpe) / 10)
        if np_epochs == 0:
            warnings.warn(
                f"Prox-SG phase is empty: {steps} steps make {math.ceil(steps / bpe)} epoch(s) of {bpe} batches, "
                f"and Np = epochs / 10 rounds to 0; pass np_epochs or a smaller batches_per_epoch",
                stacklevel=2,
            )

    params = [p for p in model.parameters() if p.requires_grad]
    opt = OBProxSG(
        params,
        lr=lr,
        lambda_=lambda_,
        epsilon=epsilon,
        np_epochs=np_epochs,
        batches_per_epoch=bpe,
        no_epochs=no_epochs,
        quirk_epoch_in_samples=quirk_epoch_in_samples,
        batch_size=batch_size,
        weight_decay=weight_decay,
    )
    sched = MultiStepLR(opt, milestones=list(milestones), gamma=gamma)
    ema = deepcopy(net).requires_grad_(False).eval() if ema_decay is not None else None

    start = 0
    density_history: list[tuple[int, float]] = []
    loss_history: list[tuple[int, float]] = []
    ckpt_path = latest_checkpoint(checkpoint_dir) if resume and checkpoint_dir is not None else None
    if ckpt_path is not None:
        state = read_checkpoint(ckpt_path / "state.pt")
        try:
            net.load_state_dict(state["model"])
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start = int(state["step"])
            density_history = [(int(s), float(d)) for s, d in state["density_history"]]
            loss_history = [(int(s), float(v)) for s, v in state["loss_history"]]
            _set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            msg = " ".join(str(exc).split())[:160]
            raise CheckpointError(
                f"cannot resume from {ckpt_path} ({type(exc).__name__}: {msg}); "
                f"pass the same model and options, or a fresh checkpoint_dir"
            ) from None
        if opt.steps != start:
            raise CheckpointError(
                f"checkpoint {ckpt_path} is inconsistent (optimizer at step {opt.steps}, loop at {start}); "
                f"delete it or pass a fresh checkpoint_dir"
            )
    else:
        _seed_everything(seed + rank)
        density_history.append((0, density(net, family).density))

    try:
        device = next(net.parameters()).device
    except StopIteration:
        raise ConfigError("the model has no parameters to prune; pass a built SR model") from None
    sampler = _StepBatches(
        n,
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        start=start,
        steps=steps,
        rank=rank,
        world_size=world_size,
    )
    loader = DataLoader(
        train_data,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        # its own generator, so building the loader never draws from the global RNG
        generator=torch.Generator().manual_seed(_mix_seed(seed, start)),
    )

    model.train()
    window_loss = torch.zeros((), device=device)
    window_n = 0
    last_ckpt: str | None = None
    step = start
    for lr_img, hr_img in loader:
        lr_img = lr_img.to(device, non_blocking=True)
        hr_img = hr_img.to(device, non_blocking=True)
        phase = opt.phase
        step_lr = float(opt.param_groups[0]["lr"])
        out = model(lr_img)
        value = loss_fn(out, hr_img)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
        if ema is not None:
            _ema_update(ema, net, ema_decay)  # type: ignore[arg-type]
        step += 1
        window_loss += value.detach()
        window_n += 1
        if progress is not None:
            progress(step, steps, float(value.detach()))
        if step % log_every and step != steps:
            continue

        mean_loss = float(window_loss) / window_n
        window_loss.zero_()
        window_n = 0
        rep = density(net, family)
        density_history.append((step, rep.density))
        loss_history.append((step, mean_loss))
        ckpt: str | None = None
        if checkpoint_dir is not None and rank == 0 and (step % checkpoint_every == 0 or step == steps):
            state = {
                "model": net.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "step": step,
                "density_history": density_history,
                "loss_history": loss_history,
                "rng": _rng_state(),
                "family": family,
            }
            ckpt = str(_write_checkpoint(Path(checkpoint_dir), step, state, net.state_dict()))
            last_ckpt = ckpt
        if report is not None:
            metrics = {
                "step": step,
                "loss": mean_loss,
                "density": rep.density,
                "nonzero": rep.nonzero,
                "phase": phase,
                "lr": step_lr,
                "epoch": opt.epoch_at(step - 1),
            }
            report(metrics, ckpt)

    return PruneResult(
        density=density(net, family),
        density_history=density_history,
        loss_history=loss_history,
        steps=step,
        np_epochs=np_epochs,
        batches_per_epoch=bpe,
        switch_step=opt.switch_step,
        ema_state_dict={k: v.detach().clone() for k, v in ema.state_dict().items()} if ema is not None else None,
        checkpoint=last_ckpt,
    )
