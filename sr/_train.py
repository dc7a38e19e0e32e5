"""The training toolkit shared by the KD, pruning and CSD loops (``sr.distill``, ``sr.prune``, ``sr.csd``).

Plain functions and small classes, no base loop to inherit from (torchtune's ``training/`` utilities): each loop
keeps its own step, and takes from here what would otherwise be written three times.

- Data order: ONE scheme. The batch of step ``s`` is a pure function of ``(seed, s, rank, world_size)``: global
  sample position ``g = s * batch_size + j`` falls in epoch ``g // len(dataset)``, whose seeded permutation gives
  the dataset index; rank ``r`` takes positions ``j`` in ``[r * b, (r + 1) * b)`` with ``b = batch / world``.
  A resumed run therefore sees exactly the batches an uninterrupted one would.
- Checkpoints: ONE layout, ``root/step_XXXXXXX/{state.pt, weights.pth}`` (``state.pt``: the loop's full state;
  ``weights.pth``: ``{'params', 'params_ema'?}``, the BasicSR layout ``sr.checkpoint.read_state_dict`` reads),
  written into a hidden folder and renamed into place, so a crash never leaves a half-written ``step_*`` folder.
- RNG state of torch/numpy/python (+ the CUDA device) for bit-identical resumes, weight EMA, device choice.
"""

from __future__ import annotations

import copy
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from sr.checkpoint import save_checkpoint
from sr.errors import ConfigError

__all__ = [
    "STATE_FILE",
    "WEIGHTS_FILE",
    "Ema",
    "StepBatches",
    "StepPlan",
    "TrainData",
    "average_gradients",
    "check_rank",
    "collate",
    "find_latest_checkpoint",
    "list_checkpoints",
    "patch_stages",
    "pick_device",
    "to_fast_layout",
    "prune_checkpoints",
    "resume_rng",
    "rng_state",
    "seed_all",
    "set_rng_state",
    "unwrap",
    "write_checkpoint",
]

STATE_FILE = "state.pt"  # full training state (resume)
WEIGHTS_FILE = "weights.pth"  # {'params', 'params_ema'}: BasicSR layout, read by sr.checkpoint.read_state_dict
_STEP_DIR = re.compile(r"^step_(\d{7,})$")

TrainData = Dataset | Callable[[int], Dataset]


# ------------------------------------------------------------------------------------------------- data order


class StepPlan:
    """Dataset indices of each step: a seeded permutation per epoch over ``n`` items (two epochs cached, as a
    batch may straddle an epoch boundary); ``shuffle=False`` keeps the dataset's own order."""

    def __init__(self, n: int, seed: int, *, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            dtype = np.int32 if self.n < 2**31 else np.int64  # 12.8M-sample epochs: 51 MB, not 102 MB
            order = np.arange(self.n, dtype=dtype)
            if self.shuffle:
                # 0x6B64 ("kd") keeps these streams apart from PatchDataset's per-item default_rng([seed, i]).
                order = np.random.default_rng([self.seed, epoch, 0x6B64]).permutation(order)
            self._perms[epoch] = order
        return self._perms[epoch]

    def indices(self, step: int, *, batch: int, rank: int, world: int) -> list[int]:
        local = batch // world
        start = step * batch + rank * local
        out = []
        for g in range(start, start + local):
            epoch, j = divmod(g, self.n)
            out.append(int(self._perm(epoch)[j]))
        return out


def collate(items: Sequence[Sequence[Any]]) -> tuple[torch.Tensor, ...]:
    """Stack ``(lr, hr)`` or ``(lr, hr, teacher_out)`` items into batch tensors."""
    width = len(items[0])
    if width not in (2, 3) or any(len(it) != width for it in items):
        raise ConfigError(
            f"train_data items must be (lr, hr) or (lr, hr, teacher_out), got {width} entries; "
            f"pass sr.data.PatchDataset or sr.teacher_cache.CachedKDDataset"
        )
    return tuple(torch.stack([torch.as_tensor(it[j]) for it in items]) for j in range(width))


class _StepSampler(Sampler[list[int]]):
    """Batch sampler: the index list of each step in ``[start, stop)`` (for DataLoader workers)."""

    def __init__(self, plan: StepPlan, start: int, stop: int, *, batch: int, rank: int, world: int) -> None:
        self.plan, self.start, self.stop = plan, start, stop
        self.kw = {"batch": batch, "rank": rank, "world": world}

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(self.start, self.stop):
            yield self.plan.indices(s, **self.kw)

    def __len__(self) -> int:
        return self.stop - self.start


def patch_stages(
    patches: Sequence[int | None], boundaries: Sequence[int], *, start: int, steps: int
) -> list[tuple[int | None, int, int]]:
    """(patch, first step, stop step) of each curriculum stage overlapping ``[start, steps)``."""
    cuts = [0, *boundaries, steps]
    out = []
    for p, a, b in zip(patches, cuts, cuts[1:], strict=False):
        a, b = max(a, start), min(b, steps)
        if a < b:
            out.append((p, a, b))
    return out


class StepBatches:
    """Yields ``(step, batch)`` for the steps of ``stages`` (see :func:`patch_stages`), one batch ahead.

    ``data`` is a Dataset (one stage, or a curriculum whose patch is ``None``) or a callable ``patch -> Dataset``
    called once per distinct patch. ``num_workers=0`` indexes the dataset in one background thread that
    prepares the next batch while the current step computes; ``> 0`` uses DataLoader worker processes over the
    same per-step index lists.
    """

    def __init__(
        self,
        data: TrainData,
        stages: Sequence[tuple[int | None, int, int]],
        *,
        batch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        num_workers: int = 0,
        pin: bool = False,
        shuffle: bool = True,
    ) -> None:
        self.data, self.stages, self.batch, self.seed = data, list(stages), batch, seed
        self.rank, self.world, self.num_workers, self.pin, self.shuffle = rank, world, num_workers, pin, shuffle
        self._datasets: dict[int | None, Dataset] = {}
        self._plans: dict[int | None, StepPlan] = {}
        self._pool: ThreadPoolExecutor | None = None

    def dataset(self, patch: int | None) -> Dataset:
        if patch not in self._datasets:
            if isinstance(self.data, Dataset):
                if len({p for p, _, _ in self.stages}) > 1:
                    raise ConfigError(
                        "the config has a patch curriculum but train_data is one Dataset; pass a callable "
                        "hr_patch -> Dataset instead"
                    )
                ds = self.data
            elif callable(self.data):
                ds = self.data(patch)  # type: ignore[arg-type]
            else:
                raise ConfigError(f"train_data must be a Dataset or a callable hr_patch -> Dataset, got {self.data!r}")
            n = len(ds)  # type: ignore[arg-type]
            if n < 1:
                raise ConfigError(f"train_data for hr_patch {patch} is empty; pass a dataset with samples")
            self._datasets[patch] = ds
            self._plans[patch] = StepPlan(n, self.seed, shuffle=self.shuffle)
        return self._datasets[patch]

    def _load(self, patch: int | None, step: int) -> tuple[torch.Tensor, ...]:
        ds = self.dataset(patch)
        idx = self._plans[patch].indices(step, batch=self.batch, rank=self.rank, world=self.world)
        return collate([ds[i] for i in idx])

    def __iter__(self) -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
        for patch, a, b in self.stages:
            self.dataset(patch)
            if self.num_workers > 0:
                loader = DataLoader(
                    self._datasets[patch],
                    batch_sampler=_StepSampler(
                        self._plans[patch], a, b, batch=self.batch, rank=self.rank, world=self.world
                    ),
                    num_workers=self.num_workers,
                    collate_fn=collate,
                    pin_memory=self.pin,
                    # its own generator: DataLoader would otherwise draw a base seed from the global torch RNG,
                    # shifting drop-path masks between a resumed and an uninterrupted run
                    generator=torch.Generator().manual_seed(self.seed),
                )
                yield from zip(range(a, b), loader, strict=True)
                continue
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="train-prefetch")
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


# --------------------------------------------------------------------------------------------------------- EMA


class Ema:
    """Exponential moving average of a model's parameters (BasicSR ``model_ema``); buffers are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # ema += (1 - decay) * (p - ema), i.e. ema = decay * ema + (1 - decay) * p
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1.0 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)


# ------------------------------------------------------------------------------------------------------- RNG


def rng_state(device: torch.device) -> dict[str, Any]:
    """The torch, numpy and python global RNG states (+ the CUDA device's), storable with weights_only."""
    np_state: Any = np.random.get_state()  # the legacy tuple form (numpy's stubs also allow a dict)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # numpy's MT19937 keys as a tensor: weights_only loading refuses numpy arrays
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_all(seed: int) -> None:
    """Seed torch, numpy and python's global RNGs (drop-path, random init...)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ------------------------------------------------------------------------------------------------ checkpoints


def list_checkpoints(root: str | Path) -> list[Path]:
    """The ``step_XXXXXXX`` folders under ``root``, oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in root.iterdir() if (m := _STEP_DIR.match(d.name)) and d.is_dir()]
    return [d for _, d in sorted(found)]


def find_latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The ``step_XXXXXXX`` folder with the highest step that holds a complete training state, or None."""
    done = [d for d in list_checkpoints(checkpoint_dir) if (d / STATE_FILE).is_file()]
    return done[-1] if done else None


def write_checkpoint(root: Path, step: int, state: Mapping[str, Any], weights: Mapping[str, Any]) -> Path:
    """Write ``root/step_XXXXXXX/{state.pt, weights.pth}`` atomically: fill a hidden temporary folder, then
    rename it, so a crash never leaves a half-written ``step_*`` folder that resume would pick."""
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


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` ``step_*`` folders."""
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- devices


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP/DataParallel wrappers."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module  # type: ignore[assignment]
    return model


def to_fast_layout(x: Any) -> Any:
    """``x`` (a module or a tensor) in ``torch.channels_last`` where it has 4-D weights or is 4-D; other tensors as
    they are. Conv nets at the students' widths train faster that way (``bench/channels_last``: the KD step x1.30,
    the student's forward + backward x1.42 on a 2-core Xeon; cuDNN prefers it under AMP too). Convolutions follow
    their weight's layout, so a converted model also returns channels_last outputs for NCHW inputs; values are the
    same up to float summation order."""
    if isinstance(x, nn.Module):
        # nn.Module.to takes memory_format (4-D weights are converted); torch's type stubs leave it out.
        return x.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def pick_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` if given; else the model's device if on GPU, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    if p is not None and p.device.type != "cpu":
        return p.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_rank(rank: int, world_size: int, batch_size: int, *, who: str) -> None:
    """One-line errors for a bad rank/world pair or a global batch that does not split over the ranks."""
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ConfigError(f"rank {rank!r} / world_size {world_size!r} is invalid; need 0 <= rank < world_size")
    if batch_size % world_size:
        raise ConfigError(
            f"{who}.batch_size {batch_size} is not divisible by world_size {world_size}; use a multiple of {world_size}"
        )


def resume_rng(state: Mapping[str, Any], device: torch.device, *, seed: int, rank: int, start: int) -> None:
    """After loading a checkpoint written by rank 0: restore its RNG on rank 0; the other ranks get a fresh,
    step-dependent stream (the checkpoint holds rank 0's RNG only)."""
    if rank == 0:
        set_rng_state(state, device)
    else:
        seed_all(seed + 1000 * rank + start)


def average_gradients(model: nn.Module, world_size: int) -> None:
    """Mean of each gradient over the ``world_size`` ranks of the default torch.distributed group, for a model
    trained without a DDP wrapper (CSD's sliced forward runs the bare module)."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size
