"""Teacher-output cache for knowledge distillation: run the frozen teacher once over a fixed set of training
patches, store ``(lr, hr, teacher_out)`` as memory-mapped ``.npy`` arrays, and let every trial of a search
train from them without a teacher forward pass.

Layout of ``out_dir/<key>/`` (``key`` = :func:`cache_key`, a sha256 of the teacher weights, the data, patch,
scale, count and seed, so a cache is reused exactly when all of them match):

* ``lr.npy`` ``N x 3 x h x w`` and ``hr.npy`` ``N x 3 x H x W``: ``uint8`` when the dataset's patches lie on the
  0..255 grid (``sr.data.PatchDataset`` always: lossless), else ``float32``;
* ``teacher_out.npy`` ``N x 3 x H x W`` (``N x 8 x 3 x H x W`` with ``exact_dihedral``): ``float16`` by
  default. Its rounding error (relative 2^-11, <= 2.4e-4 absolute on [0, 1]) is 16x below one 8-bit grey
  level; measured against the float32 output: PSNR 79.5 dB for the official IMDN x2 on T91 patches (see
  ``tests/test_teacher_cache.py``). Pass ``t_dtype='float32'`` to store it exactly;
* ``meta.json``: key, sizes, dtypes and provenance, written last.

The folder is filled under a temporary name and renamed into place, so a crash or a concurrent builder never
leaves a partial cache under the key; a complete cache is never rebuilt.

Augmentation approximation: :class:`CachedKDDataset` applies the 8 flips/rotations (``sr.data.dihedral``) to
the stored ``lr``, ``hr`` and ``teacher_out`` together. A CNN is not exactly equivariant to them (its learned
kernels are not symmetric), so ``dihedral(teacher(x), k)`` is only close to ``teacher(dihedral(x, k))``, the
target live distillation would use. :func:`dihedral_equivariance_gap` measures the difference: for the official
IMDN x2 on T91 patches (8 at 64 px, 16 at 96 px) the mean absolute gap is 2.4-2.9e-3 (about 0.7 of an 8-bit grey
level; PSNR 44.5-46.5 dB) for every k != 0, while that teacher is ~31 dB (RGB PSNR) from HR on the same patches.
The stored target is thus slightly noisier than live KD's. ``build_teacher_cache(..., exact_dihedral=True)``
removes the approximation by storing the teacher output of all 8 transformed inputs (8x the teacher compute and
``teacher_out`` storage, paid once per search).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from sr.data import dihedral
from sr.errors import ConfigError, DataError

__all__ = [
    "CACHE_FORMAT",
    "CacheInfo",
    "CachedKDDataset",
    "build_teacher_cache",
    "cache_key",
    "remove_stale_tmp",
    "dataset_fingerprint",
    "dihedral_equivariance_gap",
    "state_dict_hash",
]

CACHE_FORMAT = 1  # bump when the on-disk layout changes: old caches then get new keys
_META = "meta.json"
_ARRAYS = ("lr", "hr", "teacher_out")
TDtype = Literal["float16", "float32"]


# ------------------------------------------------------------------------------------------------------ keys


def state_dict_hash(model: nn.Module) -> str:
    """sha256 hex of a model's state dict: names, dtypes, shapes and raw bytes, in sorted name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # raw bytes through a uint8 view: works for every dtype, bfloat16 included (numpy has none)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dataset_fingerprint(dataset: Dataset, *, probes: int = 4) -> str:
    """sha256 hex identifying a patch dataset by content: its type, length, a few items (evenly spaced
    indices, bytes of every returned array) and, when present, its ``names``/``scale``/``hr_patch``/``seed``/
    ``augment`` attributes and image shapes. Two datasets that differ only in patches away from the probes are not
    told apart; pass your own ``data_fingerprint`` to :func:`build_teacher_cache` when that matters."""
    n = len(dataset)  # type: ignore[arg-type]
    h = hashlib.sha256()
    h.update(f"{type(dataset).__module__}.{type(dataset).__qualname__}|{n}|".encode())
    for attr in ("scale", "hr_patch", "seed", "augment", "names"):
        if hasattr(dataset, attr):
            h.update(f"{attr}={getattr(dataset, attr)!r}|".encode())
    if hasattr(dataset, "hr"):
        h.update(repr([getattr(a, "shape", None) for a in dataset.hr]).encode())
    for i in sorted({round(j * (n - 1) / max(probes - 1, 1)) for j in range(probes)}):
        for x in dataset[i]:
            a = torch.as_tensor(x).detach().cpu().contiguous()
            h.update(f"{i}|{a.dtype}|{tuple(a.shape)}|".encode())
            h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(
    teacher_state_hash: str,
    data_fingerprint: str,
    hr_patch: int,
    scale: int,
    n_patches: int,
    seed: int,
    *,
    t_dtype: TDtype = "float16",
    exact_dihedral: bool = False,
) -> str:
    """sha256 hex naming a cache: changes when any input (or the storage format) changes."""
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "teacher": teacher_state_hash,
            "data": data_fingerprint,
            "hr_patch": int(hr_patch),
            "scale": int(scale),
            "n_patches": int(n_patches),
            "seed": int(seed),
            "t_dtype": t_dtype,
            "exact_dihedral": bool(exact_dihedral),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class CacheInfo:
    """Where a cache lives and what it holds; ``built`` is False when an existing cache was reused."""

    path: str
    key: str
    n_patches: int
    hr_patch: int
    scale: int
    lr_dtype: str
    t_dtype: str
    exact_dihedral: bool
    built: bool
    wall_s: float
    nbytes: int


def _read_meta(d: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((d / _META).read_text())
    except (OSError, ValueError):
        return None
    if not meta.get("complete") or any(not (d / f"{a}.npy").is_file() for a in _ARRAYS):
        return None
    return meta


def _info(d: Path, meta: dict[str, Any], *, built: bool, wall_s: float) -> CacheInfo:
    return CacheInfo(
        path=str(d),
        key=meta["key"],
        n_patches=meta["n_patches"],
        hr_patch=meta["hr_patch"],
        scale=meta["scale"],
        lr_dtype=meta["lr_dtype"],
        t_dtype=meta["t_dtype"],
        exact_dihedral=bool(meta.get("exact_dihedral", False)),
        built=built,
        wall_s=wall_s,
        nbytes=sum((d / f"{a}.npy").stat().st_size for a in _ARRAYS),
    )


def _on_byte_grid(x: torch.Tensor) -> bool:
    """True when float ``x`` is exactly ``k / 255`` everywhere (so uint8 storage is lossless)."""
    return bool(torch.equal(torch.round(x * 255.0) / 255.0, x))


@torch.no_grad()
def build_teacher_cache(
    teacher: nn.Module,
    dataset: Dataset,
    *,
    n_patches: int,
    out_dir: str | Path,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    t_dtype: TDtype = "float16",
    exact_dihedral: bool = False,
    data_fingerprint: str | None = None,
) -> CacheInfo:
    """Run ``teacher`` (eval, no_grad) on items ``0..n_patches-1`` of ``dataset`` and store them; reuse a
    complete cache with the same key instead.

    Args:
        teacher: the frozen teacher.
        dataset: un-augmented ``(lr, hr)`` patches, e.g. ``PatchDataset(..., augment=False,
            samples_per_epoch=n)``; :class:`CachedKDDataset` augments at read time.
        n_patches: how many items to store (the first ``n_patches``).
        out_dir: root folder; the cache is ``out_dir/<key>``.
        batch_size: teacher batch.
        device: teacher device (default CUDA when available, else CPU).
        t_dtype: storage of the teacher output, ``"float16"`` (half the disk, see module docstring) or
            ``"float32"``.
        exact_dihedral: also store ``teacher(dihedral(lr, k))`` for all 8 ``k``, so augmented items carry the
            exact live-KD target (8x teacher work and ``teacher_out`` size).
        data_fingerprint: overrides :func:`dataset_fingerprint`.

    Raises:
        ConfigError: an augmenting dataset, ``n_patches`` out of range, a bad ``t_dtype`` or ``batch_size``.
    """
    t0 = time.perf_counter()
    lr0, hr0 = _check_inputs(dataset, n_patches=n_patches, t_dtype=t_dtype, batch_size=batch_size)
    scale = int(getattr(dataset, "scale", hr0.shape[-1] // lr0.shape[-1]))
    hr_patch = int(hr0.shape[-1])
    seed = int(getattr(dataset, "seed", 0))
    fp = data_fingerprint if data_fingerprint is not None else dataset_fingerprint(dataset)
    key = cache_key(
        state_dict_hash(teacher), fp, hr_patch, scale, n_patches, seed, t_dtype=t_dtype, exact_dihedral=exact_dihedral
    )

    root = Path(out_dir)
    final = root / key
    meta = _read_meta(final)
    if meta is not None:
        return _info(final, meta, built=False, wall_s=time.perf_counter() - t0)

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(root)
    tmp = root / f"{_TMP_PREFIX}{key[:16]}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    was_training = teacher.training
    teacher.eval()
    try:
        lr_dtype = np.uint8 if _on_byte_grid(lr0) and _on_byte_grid(hr0) else np.float32
        t_shape = (8, *hr0.shape) if exact_dihedral else tuple(hr0.shape)
        shapes = {"lr": tuple(lr0.shape), "hr": tuple(hr0.shape), "teacher_out": t_shape}
        dtypes = {"lr": lr_dtype, "hr": lr_dtype, "teacher_out": np.dtype(t_dtype)}
        arrays = {
            a: np.lib.format.open_memmap(tmp / f"{a}.npy", mode="w+", dtype=dtypes[a], shape=(n_patches, *shapes[a]))
            for a in _ARRAYS
        }
        _fill(teacher, dataset, arrays, n_patches=n_patches, batch_size=batch_size, dev=dev, scale=scale,
              exact_dihedral=exact_dihedral)  # fmt: skip
        for a in arrays.values():
            a.flush()
        del arrays
        meta = {
            "complete": True,
            "format": CACHE_FORMAT,
            "key": key,
            "n_patches": n_patches,
            "hr_patch": hr_patch,
            "scale": scale,
            "seed": seed,
            "lr_dtype": np.dtype(lr_dtype).name,
            "t_dtype": t_dtype,
            "exact_dihedral": bool(exact_dihedral),
            "teacher_sha256": state_dict_hash(teacher),
            "data_fingerprint": fp,
            "teacher_class": type(teacher).__name__,
            "created_unix": time.time(),
        }
        other = _publish(tmp, final, meta)
        if other is not None:  # another process finished the same cache first: keep theirs
            return _info(final, other, built=False, wall_s=time.perf_counter() - t0)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        teacher.train(was_training)
    return _info(final, meta, built=True, wall_s=time.perf_counter() - t0)


def _check_inputs(dataset: Dataset, *, n_patches: int, t_dtype: str, batch_size: int) -> tuple[torch.Tensor, ...]:
    """One-line errors for bad arguments; returns item 0's ``(lr, hr)``."""
    if getattr(dataset, "augment", False):
        raise ConfigError(
            "the dataset applies random flips/rotations; build the cache from an un-augmented one "
            "(PatchDataset(..., augment=False)): CachedKDDataset augments when reading"
        )
    n_avail = len(dataset)  # type: ignore[arg-type]
    if not isinstance(n_patches, int) or not 1 <= n_patches <= n_avail:
        raise ConfigError(
            f"n_patches {n_patches!r} is not in 1..{n_avail} (the dataset's length); pass a smaller n_patches or "
            f"a dataset with samples_per_epoch >= n_patches"
        )
    if t_dtype not in ("float16", "float32"):
        raise ConfigError(f"unknown t_dtype {t_dtype!r}; valid: float16, float32")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    lr0, hr0 = (torch.as_tensor(x) for x in dataset[0][:2])
    if lr0.dim() != 3 or hr0.dim() != 3 or hr0.shape[-1] % lr0.shape[-1]:
        raise DataError(
            f"dataset items are LR {tuple(lr0.shape)} / HR {tuple(hr0.shape)}; pass a dataset of "
            f"(lr, hr) CHW patches such as sr.data.PatchDataset"
        )
    return lr0, hr0


def _fill(
    teacher: nn.Module,
    dataset: Dataset,
    arrays: Mapping[str, np.ndarray],
    *,
    n_patches: int,
    batch_size: int,
    dev: torch.device,
    scale: int,
    exact_dihedral: bool,
) -> None:
    """Write items ``0..n_patches-1`` and the teacher's outputs on them into the ``arrays`` memmaps."""
    n_t = 8 if exact_dihedral else 1
    on_grid = arrays["lr"].dtype == np.uint8
    for b0 in range(0, n_patches, batch_size):
        idx = range(b0, min(b0 + batch_size, n_patches))
        items = [dataset[i] for i in idx]
        lr = torch.stack([torch.as_tensor(it[0]) for it in items]).float()
        hr = torch.stack([torch.as_tensor(it[1]) for it in items]).float()
        if lr.shape[1:] != arrays["lr"].shape[1:] or hr.shape[1:] != arrays["hr"].shape[1:]:
            raise DataError(f"dataset items {b0}.. change size; pass a dataset of equal-size patches")
        lr_dev = lr.to(dev)
        t_outs = [teacher(dihedral(lr_dev, k)).float().cpu() for k in range(n_t)]
        t_out = torch.stack(t_outs, dim=1) if exact_dihedral else t_outs[0]
        if t_outs[0].shape != hr.shape:
            raise ConfigError(
                f"teacher maps LR {tuple(lr.shape[1:])} to {tuple(t_outs[0].shape[1:])}, not the HR size "
                f"{tuple(hr.shape[1:])}; pass a teacher of scale x{scale}"
            )
        for name, x in (("lr", lr), ("hr", hr)):
            if on_grid:
                if not _on_byte_grid(x):
                    raise DataError(f"dataset item {b0}.. is not on the 8-bit grid unlike item 0; pass 8-bit patches")
                arrays[name][idx.start : idx.stop] = torch.round(x * 255.0).to(torch.uint8).numpy()
            else:
                arrays[name][idx.start : idx.stop] = x.numpy()
        arrays["teacher_out"][idx.start : idx.stop] = t_out.numpy().astype(arrays["teacher_out"].dtype)


_TMP_PREFIX = ".tmp-"
STALE_TMP_AGE_S = 24 * 3600.0  # a build folder this old is abandoned whoever made it (no build takes a day)


def _host() -> str:
    """This machine's name as it appears in a build folder's name (no dashes, so the name splits cleanly)."""
    return socket.gethostname().replace("-", "_") or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_tmp(root: Path, *, max_age_s: float = STALE_TMP_AGE_S) -> list[Path]:
    """Remove the ``.tmp-*`` build folders of builds that died (killed, crashed) under ``root``; returns them.

    A folder is stale when the process that made it is gone on this machine (its name records the host and pid),
    or when it is older than ``max_age_s`` (a folder of another machine sharing the storage, or one named by an
    older version without the host). A live build's folder is kept, so concurrent builders are safe."""
    removed = []
    for d in root.glob(f"{_TMP_PREFIX}*"):
        if not d.is_dir():
            continue
        parts = d.name[len(_TMP_PREFIX) :].split("-", 1)[-1].rsplit("-", 2)
        mine_and_dead = len(parts) == 3 and parts[0] == _host() and parts[1].isdigit() and not _pid_alive(int(parts[1]))
        try:
            too_old = time.time() - d.stat().st_mtime > max_age_s
        except FileNotFoundError:  # its builder just published or removed it
            continue
        if mine_and_dead or too_old:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _publish(tmp: Path, final: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """Write ``meta`` into ``tmp`` and rename it to ``final``; returns the other cache's metadata when another
    process published the same key first (``tmp`` is then removed), else None."""
    with open(tmp / _META, "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.rename(tmp, final)
    except OSError:
        other = _read_meta(final)
        if other is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return other
        shutil.rmtree(final)  # an incomplete folder under our key (not made by this module): replace it
        os.rename(tmp, final)
    return None


# ---------------------------------------------------------------------------------------------------- read


class CachedKDDataset(Dataset):
    """``(lr, hr, teacher_out)`` float32 CHW tensors from a cache made by :func:`build_teacher_cache`.

    With ``augment``, ``len = 8 N``: item ``i`` is stored patch ``i % N`` under dihedral ``k = (i // N + o) % 8``,
    with a per-patch offset ``o`` drawn once from ``seed``; so one pass over ``0..8N-1`` (one epoch of
    ``fit_kd``'s permutation) shows every patch under all 8 transforms, and each item depends only on
    ``(seed, i)``. Without ``augment``, ``len = N`` and ``k = 0``. The same ``k`` transforms all three arrays
    (see the module docstring for why ``teacher_out`` is then approximate), except in a cache built with
    ``exact_dihedral``, whose stored ``teacher(dihedral(lr, k))`` is returned as is.

    Raises:
        DataError: missing or incomplete cache folder.
    """

    def __init__(self, cache_dir: str | Path, *, augment: bool = True, seed: int = 0) -> None:
        d = Path(cache_dir)
        meta = _read_meta(d)
        if meta is None:
            raise DataError(
                f"{d} is not a complete teacher cache (no meta.json or arrays); build it with build_teacher_cache"
            )
        self.path = d
        self.meta = meta
        self.scale = int(meta["scale"])
        self.hr_patch = int(meta["hr_patch"])
        self.n_patches = int(meta["n_patches"])
        self.augment = augment
        self.seed = seed
        self.exact_dihedral = bool(meta.get("exact_dihedral", False))
        self._arrays = {a: np.load(d / f"{a}.npy", mmap_mode="r") for a in _ARRAYS}
        if any(len(a) != self.n_patches for a in self._arrays.values()):
            raise DataError(f"teacher cache {d} has arrays of the wrong length; delete it and rebuild")
        self._offsets = np.random.default_rng([seed, 0x7C]).integers(0, 8, self.n_patches)

    def __len__(self) -> int:
        return self.n_patches * 8 if self.augment else self.n_patches

    def transform_of(self, i: int) -> tuple[int, int]:
        """``(stored patch index, dihedral k)`` of item ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range 0..{len(self) - 1}")
        p = i % self.n_patches
        k = int((i // self.n_patches + self._offsets[p]) % 8) if self.augment else 0
        return p, k

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p, k = self.transform_of(int(i))
        out: list[torch.Tensor] = []
        for a in _ARRAYS:
            exact = a == "teacher_out" and self.exact_dihedral
            # np.array: copy out of the read-only memmap
            x = torch.from_numpy(np.array(self._arrays[a][p, k] if exact else self._arrays[a][p]))
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            out.append(x if exact else cast(torch.Tensor, dihedral(x, k)))  # a Tensor in, a Tensor out
        return out[0], out[1], out[2]


# --------------------------------------------------------------------------------------------- equivariance


@torch.no_grad()
def dihedral_equivariance_gap(
    model: nn.Module, lr: torch.Tensor, *, ks: Sequence[int] = range(1, 8)
) -> dict[int, dict[str, float]]:
    """How far ``model`` is from commuting with flips/rotations on the LR batch ``lr`` (N x 3 x h x w, [0, 1]).

    For each ``k``: the mean absolute difference and the RGB PSNR (dB, peak 1, unclamped floats) between
    ``model(dihedral(lr, k))`` (what live KD distils from) and ``dihedral(model(lr), k)`` (what an augmented
    cache serves). Runs in eval mode on the model's device; restores the mode.
    """
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        x = lr.to(dev)
        y = model(x)
        out: dict[int, dict[str, float]] = {}
        for k in ks:
            live = model(dihedral(x, k))
            cached = dihedral(y, k)
            diff = (live - cached).double()
            mse = float(diff.pow(2).mean())
            out[int(k)] = {
                "mae": float(diff.abs().mean()),
                "psnr_db": float("inf") if mse == 0 else 10.0 * float(np.log10(1.0 / mse)),
            }
        return out
    finally:
        model.train(was_training)
