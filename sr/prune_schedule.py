"""The pruning schedule of CDISM stage 1 (REFERENCE.md §1): which images, how many batches make an epoch, and
when OBProx-SG switches from Prox-SG to Orthant steps.

- **Images.** Pruning runs on ``n_images`` training images (the authors use 100 of DIV2K): a seeded, sorted
  draw without replacement from the training images in their listing order (folders expanded in sorted file
  order), so every rank and every resume picks the same ones (:func:`pick_prune_images`). ``None`` keeps all.
- **Epoch.** One pass over the pruning images: ``samples_per_epoch`` patches (default: one per pruning image),
  cut into ``batches_per_epoch = samples_per_epoch // batch_size`` global batches; the remainder is dropped each
  epoch, as BasicSR's ``drop_last`` loader does. Each epoch visits the images in a new seeded order and cuts a
  fresh random patch from each (:class:`EpochPasses`).
- **Phases.** ``epochs = ceil(steps / batches_per_epoch)``; ``Np = epochs // 10`` Prox-SG epochs (the authors'
  ``total_epochs / 10``) unless ``np_epochs`` is given, then Orthant steps (No = infinity). The first Orthant
  step is ``switch_step = Np * batches_per_epoch`` (``x batch_size`` under the authors' epoch-in-samples quirk).

A derived Np of 0 (fewer than 10 epochs) would prune with Orthant steps only, from the dense model, which is
not the method: :func:`resolve_prune_schedule` refuses it. ``np_epochs: 0`` asks for Orthant-only pruning
explicitly, and any explicit ``np_epochs`` is kept as given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from torch.utils.data import Dataset

from sr.data import PatchDataset, list_images
from sr.errors import ConfigError

__all__ = [
    "EpochPasses",
    "PruneSchedule",
    "list_image_items",
    "pick_prune_images",
    "prune_dataset",
    "resolve_prune_schedule",
]

T = TypeVar("T")

# Keeps the image draw's random stream apart from StepPlan's (0x6B64) and PatchDataset's ([seed, i]).
_PICK_STREAM = 0x7072  # "pr"
_EPOCH_STREAM = 0x6570  # "ep"


@dataclass(frozen=True)
class PruneSchedule:
    """A resolved pruning schedule (steps are optimizer steps on the global batch)."""

    steps: int
    batch_size: int
    n_images: int  # pruning images
    samples_per_epoch: int  # patches per epoch
    batches_per_epoch: int
    epochs: int
    np_epochs: int
    np_given: bool  # np_epochs came from the spec (else epochs // 10)
    switch_step: int  # 0-based index of the first Orthant step
    prox_steps: int
    orthant_steps: int
    quirk_epoch_in_samples: bool

    def as_params(self) -> dict[str, Any]:
        """Flat ``schedule.*`` values for MLflow params and ``--json`` output."""
        return {f"schedule.{k}": v for k, v in asdict(self).items()}

    def describe(self) -> str:
        """One line: images, epoch, Np and the switch."""
        np_src = "given" if self.np_given else "epochs/10"
        return (
            f"{self.steps} steps of batch {self.batch_size} on {self.n_images} images; epoch = "
            f"{self.samples_per_epoch} patches = {self.batches_per_epoch} batches; {self.epochs} epochs; "
            f"Np = {self.np_epochs} ({np_src}); Prox-SG steps {self.prox_steps}, then Orthant steps "
            f"{self.orthant_steps} (switch at step {self.switch_step})"
        )


def resolve_prune_schedule(
    *,
    steps: int,
    batch_size: int,
    n_images: int,
    samples_per_epoch: int | None = None,
    np_epochs: int | None = None,
    quirk_epoch_in_samples: bool = False,
    require_prox: bool = True,
) -> PruneSchedule:
    """The schedule of a pruning run (see the module docstring for the rules).

    Args:
        steps: optimizer steps; batch_size: the global batch.
        n_images: images pruning runs on (after ``n_images`` of the spec is applied).
        samples_per_epoch: patches per epoch; None = one per image.
        np_epochs: Prox-SG epochs; None = ``epochs // 10``.
        quirk_epoch_in_samples: the authors' epoch counted in samples (switch ``batch_size`` times later).
        require_prox: refuse a derived Np of 0; False returns it (callers that only note it, e.g. the
            in-process ``srcompress prune`` on a few images).

    Raises:
        ConfigError: an epoch shorter than one batch, or (``require_prox``) a derived Np of 0.
    """
    for name, v in (("steps", steps), ("batch_size", batch_size), ("n_images", n_images)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"pruning {name} must be an integer >= 1, got {v!r}")
    per_epoch = samples_per_epoch if samples_per_epoch is not None else n_images
    bpe = per_epoch // batch_size
    if bpe < 1:
        raise ConfigError(
            f"a pruning epoch of {per_epoch} patches is shorter than one batch of {batch_size}; lower "
            f"prune.batch_size or raise prune.n_images / data.samples_per_epoch"
        )
    epochs = math.ceil(steps / bpe)
    np_given = np_epochs is not None
    n_p = np_epochs if np_epochs is not None else epochs // 10
    if n_p == 0 and not np_given and require_prox:
        raise ConfigError(
            f"pruning would have no Prox-SG phase: {steps} steps are {epochs} epoch(s) of {bpe} batches "
            f"({per_epoch} patches / batch {batch_size}) and Np = epochs/10 rounds to 0; raise prune.steps, lower "
            f"prune.n_images or data.samples_per_epoch, or set prune.np_epochs (0 asks for Orthant steps only)"
        )
    switch = n_p * bpe * (batch_size if quirk_epoch_in_samples else 1)
    prox = min(switch, steps)
    return PruneSchedule(
        steps=steps,
        batch_size=batch_size,
        n_images=n_images,
        samples_per_epoch=per_epoch,
        batches_per_epoch=bpe,
        epochs=epochs,
        np_epochs=n_p,
        np_given=np_given,
        switch_step=switch,
        prox_steps=prox,
        orthant_steps=steps - prox,
        quirk_epoch_in_samples=quirk_epoch_in_samples,
    )


def pick_prune_images(items: Sequence[T], n: int | None, seed: int) -> list[T]:
    """``n`` of ``items`` (image files or arrays, in listing order): a seeded draw kept in listing order.

    Raises:
        ConfigError: ``n`` larger than the number of items.
    """
    if n is None or n == len(items):
        return list(items)
    if n > len(items):
        raise ConfigError(
            f"prune.n_images is {n} but the training data holds {len(items)} images; lower prune.n_images or add images"
        )
    chosen = np.random.default_rng([seed, _PICK_STREAM]).choice(len(items), size=n, replace=False)
    return [items[int(i)] for i in sorted(chosen)]


def list_image_items(sources: Sequence[Path | np.ndarray]) -> list[Path | np.ndarray]:
    """Resolved training sources (``sr.data.resolve_train_sources``) as one image per item, folders expanded."""
    out: list[Path | np.ndarray] = []
    for src in sources:
        out.extend(list_images(src) if isinstance(src, Path) and src.is_dir() else [src])
    return out


class EpochPasses(Dataset):
    """Global sample position ``g`` (what :class:`sr._train.StepPlan` yields with ``shuffle=False``) -> the
    ``base`` sample of one pass per epoch.

    Epoch ``e`` spans ``batches_per_epoch * batch_size`` positions, which take the first slots of a seeded
    permutation of ``samples_per_epoch`` slots; slot ``k`` of epoch ``e`` is ``base[e * samples_per_epoch + k]``,
    which :class:`sr.data.PatchDataset` cuts from image ``k % n_images`` with a crop of its own: every epoch
    visits each image (once, with the default ``samples_per_epoch``) in a new order and with new crops.
    ``base`` must hold ``epochs * samples_per_epoch`` samples.
    """

    def __init__(self, base: Dataset, schedule: PruneSchedule, seed: int) -> None:
        need = schedule.epochs * schedule.samples_per_epoch
        if len(base) != need:  # type: ignore[arg-type]
            raise ConfigError(f"EpochPasses needs a base of {need} samples, got {len(base)}")  # type: ignore[arg-type]
        self.base, self.seed = base, seed
        self.per_epoch = schedule.samples_per_epoch
        self.used = schedule.batches_per_epoch * schedule.batch_size
        self.length = schedule.epochs * self.used
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.length

    def base_index(self, g: int) -> int:
        e, j = divmod(int(g), self.used)
        if self._perm is None or self._perm[0] != e:
            self._perm = (e, np.random.default_rng([self.seed, e, _EPOCH_STREAM]).permutation(self.per_epoch))
        return e * self.per_epoch + int(self._perm[1][j])

    def __getitem__(self, g: int) -> Any:
        return self.base[self.base_index(g)]


def prune_dataset(
    items: Sequence[Path | np.ndarray],
    schedule: PruneSchedule,
    *,
    scale: int,
    hr_patch: int,
    seed: int,
    skip_bad: bool = False,
) -> EpochPasses:
    """The pruning data of ``schedule`` over the pruning images ``items`` (already picked): one pass per epoch,
    to be read in order (``PruneConfig(shuffle=False)``); the one builder the Ray worker and the CLI share."""
    base = PatchDataset(
        list(items),
        scale=scale,
        hr_patch=hr_patch,
        seed=seed,
        samples_per_epoch=schedule.epochs * schedule.samples_per_epoch,
        skip_bad=skip_bad,
    )
    return EpochPasses(base, schedule, seed)
