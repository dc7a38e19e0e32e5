"""Image loading for SR: evaluation pairs (shipped or generated LR) and random aligned training patches.

Conventions: host images are RGB ``uint8`` numpy arrays ``H x W x 3``; tensors are ``float32`` ``C x H x W`` in
[0, 1]. LR images are made by ``sr.degrade.bicubic_downsample`` (MATLAB ``imresize`` compatible), which crops HR
to a multiple of the scale first; every HR returned here is cropped the same way, so ``HR = scale x LR`` exactly.

Folder layouts understood by :func:`load_eval_pairs` (and, for HR only, by :func:`resolve_train_sources`):

* benchmark: ``root/HR/baby.png`` + ``root/LR_bicubic/X2/babyx2.png`` (Set5, Set14, B100, Urban100, ...);
* DIV2K / Flickr2K: ``root/DIV2K_valid_HR/0801.png`` + ``root/DIV2K_valid_LR_bicubic/X2/0801x2.png``
  (``root`` may also be the ``*_HR`` folder itself);
* a plain folder of HR images, whose LR are generated.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, overload

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sr.errors import ConfigError, DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "EvalPair",
    "PatchDataset",
    "PatchParams",
    "clear_lr_cache",
    "default_train_sources",
    "dihedral",
    "dihedral_inverse",
    "fallback_eval_pairs",
    "image_to_tensor",
    "list_images",
    "eval_image_files",
    "load_eval_pairs",
    "lr_source_used",
    "read_image",
    "resolve_train_sources",
    "sample_hr_images",
    "tensor_to_image",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")

LRSource = Literal["auto", "shipped", "generated"]

# skimage.data images bundled in the wheel (checked on scikit-image 0.26: no pooch, no network). Natural photos
# only; camera is grayscale and is replicated to RGB. Eval images are disjoint from train images.
_SAMPLE_TRAIN = ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field", "camera")
_SAMPLE_EVAL = ("chelsea", "coffee")

# Generated LR images, in memory only: key (resolved path or "skimage.data.<name>", mtime in ns, scale). Not on
# disk, so nothing goes stale or needs cleaning up; the mtime in the key drops entries for edited files. Capped in
# bytes; the oldest entries go first.
_LR_CACHE: dict[tuple[str, int, int], np.ndarray] = {}
_LR_CACHE_MAX_BYTES = 1 << 30


# --------------------------------------------------------------------------------------------------- files


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (no recursion, hidden files ignored), sorted by name.

    Raises:
        DataError: the folder is missing or holds no file with an extension in ``IMAGE_EXTENSIONS``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}; pass an existing folder of images")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DataError(
            f"no images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}); pass a folder that holds images"
        )
    return files


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file fully into RGB ``uint8`` ``H x W x 3`` (grayscale is replicated; alpha dropped).

    Raises:
        DataError: the file is missing, not an image, corrupt or truncated (one line naming file and reason).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # decode everything now: a truncated file fails here, not later in a worker
            if im.mode.startswith("I;16") or im.mode == "I":
                # 16-bit grayscale: scale to 8 bits instead of PIL's clipping at 255
                arr16 = np.asarray(im, dtype=np.float64)
                gray = np.clip(np.rint(arr16 * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
                arr = np.repeat(gray[:, :, None], 3, axis=2)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}; check the path") from None
    except UnidentifiedImageError:
        raise DataError(
            f"cannot read image {path} (not a recognised image file); replace it or pass --skip-bad"
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = _one_line(str(exc)) or type(exc).__name__
        raise DataError(f"cannot read image {path} ({reason}); re-download it or pass --skip-bad") from None
    return np.ascontiguousarray(arr)


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _warn_skip(err: DataError) -> None:
    warnings.warn(f"skipping: {err}", stacklevel=3)


def _as_rgb_uint8(img: np.ndarray, who: str) -> np.ndarray:
    """Validate an in-memory image; grayscale ``H x W`` is replicated to RGB."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise DataError(f"{who} has dtype {img.dtype}; pass RGB uint8 arrays of shape HxWx3")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"{who} has shape {tuple(img.shape)}; pass RGB uint8 arrays of shape HxWx3")
    return np.ascontiguousarray(img)


def _crop_to_multiple(hr: np.ndarray, scale: int) -> np.ndarray:
    h, w = hr.shape[:2]
    return hr[: h - h % scale, : w - w % scale]


def _check_scale(scale: int) -> None:
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale!r}; pass e.g. --scale 2")


# --------------------------------------------------------------------------------------------------- LR cache


def _downsample(hr: np.ndarray, scale: int) -> np.ndarray:
    from sr.degrade import bicubic_downsample  # lazy: keeps sr.data importable on its own

    return bicubic_downsample(hr, scale)


def _cached_lr(key: tuple[str, int, int], hr: np.ndarray) -> np.ndarray:
    """LR of ``hr`` at ``key[2]``, from the in-memory cache when the same file/mtime/scale was seen before."""
    lr = _LR_CACHE.get(key)
    if lr is None:
        lr = _downsample(hr, key[2])
        lr.setflags(write=False)  # shared between callers; a caller writing into it would corrupt the cache
        _LR_CACHE[key] = lr
        total = sum(a.nbytes for a in _LR_CACHE.values())
        while total > _LR_CACHE_MAX_BYTES and len(_LR_CACHE) > 1:
            oldest = next(iter(_LR_CACHE))
            total -= _LR_CACHE.pop(oldest).nbytes
    return lr


def _file_key(path: Path, scale: int) -> tuple[str, int, int]:
    return (str(path.resolve()), path.stat().st_mtime_ns, scale)


def clear_lr_cache() -> None:
    """Drop every generated LR image held in memory."""
    _LR_CACHE.clear()


# --------------------------------------------------------------------------------------------------- layouts


def _find_hr_dir(root: Path, *, prefer: Literal["train", "valid"]) -> tuple[Path, Path | None]:
    """(HR folder, LR_bicubic parent folder or None) for ``root``; see the module docstring for layouts."""
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}; pass an existing folder")
    if (root / "HR").is_dir():
        return root / "HR", root / "LR_bicubic"
    if root.name == "HR":
        return root, root.parent / "LR_bicubic"
    if root.name.endswith("_HR"):
        return root, root.parent / (root.name[: -len("_HR")] + "_LR_bicubic")
    hr_dirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name.endswith("_HR"))
    if len(hr_dirs) > 1:
        # a DIV2K root holds DIV2K_train_HR and DIV2K_valid_HR: pick the split the caller wants
        picked = [p for p in hr_dirs if prefer in p.name.lower()]
        if len(picked) == 1:
            hr_dirs = picked
        else:
            raise DataError(f"several HR folders in {root} ({', '.join(p.name for p in hr_dirs)}); pass one of them")
    if hr_dirs:
        hr = hr_dirs[0]
        return hr, root / (hr.name[: -len("_HR")] + "_LR_bicubic")
    return root, None


def _find_lr_file(lr_dir: Path, stem: str, scale: int, hr_suffix: str) -> Path | None:
    for suffix in (hr_suffix, *IMAGE_EXTENSIONS):
        for cand in (lr_dir / f"{stem}x{scale}{suffix}", lr_dir / f"{stem}x{scale}{suffix.upper()}"):
            if cand.is_file():
                return cand
    return None


@dataclass(frozen=True, eq=False)
class EvalPair:
    """One evaluation image: ``name`` (file stem), ``lr`` and ``hr`` RGB uint8 with ``hr = scale x lr`` in size.

    A generated ``lr`` is shared with the in-memory cache and read-only; copy it before writing into it.
    """

    name: str
    lr: np.ndarray
    hr: np.ndarray


def load_eval_pairs(
    root: str | Path,
    scale: int,
    *,
    lr_source: LRSource = "auto",
    skip_bad: bool = False,
    first: int | None = None,
) -> list[EvalPair]:
    """Load every (LR, HR) pair of an evaluation set (or its ``first`` images by file name).

    Args:
        root: a benchmark folder (``HR`` + ``LR_bicubic``), a DIV2K/Flickr2K root or ``*_HR`` folder, or a plain
            folder of HR images.
        scale: the upscaling factor.
        lr_source: ``"shipped"`` reads ``LR_bicubic/X{scale}`` files and fails without them; ``"generated"``
            always downsamples HR with ``bicubic_downsample`` (cached in memory, keyed by path, mtime and scale);
            ``"auto"`` uses the shipped folder when ``X{scale}`` exists, else generates. One source per set,
            never a mix.
        skip_bad: warn about and skip unreadable or mismatched files instead of raising.
        first: only the first ``first`` HR files by name (a deterministic held-out split, see
            :func:`eval_image_files`); None = all.

    Returns:
        Pairs sorted by HR file name; HR is cropped to exactly ``scale x`` the LR size.

    Raises:
        DataError: missing folder or LR file, unreadable image, or a shipped LR whose size is not HR // scale.
    """
    _check_scale(scale)
    if lr_source not in ("auto", "shipped", "generated"):
        raise ConfigError(f"unknown lr_source {lr_source!r}; valid: auto, shipped, generated")
    root = Path(root)
    hr_dir, lr_parent = _find_hr_dir(root, prefer="valid")
    lr_dir = lr_parent / f"X{scale}" if lr_parent is not None else None
    has_lr = lr_dir is not None and lr_dir.is_dir()
    if lr_source == "shipped" and not has_lr:
        where = lr_dir if lr_dir is not None else f"{root}/LR_bicubic/X{scale}"
        raise DataError(
            f"no shipped LR images for x{scale}: {where} does not exist; pass lr_source='generated' "
            f"(--lr-source generated) or add the LR folder"
        )
    use_shipped = has_lr and lr_source != "generated"

    pairs: list[EvalPair] = []
    for hr_path in list_images(hr_dir)[:first]:
        try:
            pairs.append(_load_pair(hr_path, lr_dir if use_shipped else None, scale))
        except DataError as err:
            if not skip_bad:
                raise
            _warn_skip(err)
    if not pairs:
        raise DataError(f"no usable images in {hr_dir}: every file was skipped; fix or replace them")
    return pairs


def lr_source_used(root: str | Path, scale: int, lr_source: LRSource = "auto") -> Literal["shipped", "generated"]:
    """Which LR images :func:`load_eval_pairs` reads for ``lr_source``: the shipped ``X{scale}`` files or bicubic
    downsamples generated from HR (``auto`` picks shipped when the folder exists)."""
    _, lr_parent = _find_hr_dir(Path(root), prefer="valid")
    has_lr = lr_parent is not None and (lr_parent / f"X{scale}").is_dir()
    return "shipped" if has_lr and lr_source != "generated" else "generated"


def eval_image_files(root: str | Path, first: int | None = None) -> list[Path]:
    """The HR files :func:`load_eval_pairs` reads from ``root`` (its ``first`` ones by name), resolved."""
    hr_dir, _ = _find_hr_dir(Path(root), prefer="valid")
    return [p.resolve() for p in list_images(hr_dir)[:first]]


def _load_pair(hr_path: Path, lr_dir: Path | None, scale: int) -> EvalPair:
    hr = read_image(hr_path)
    if lr_dir is None:
        if hr.shape[0] < scale or hr.shape[1] < scale:
            raise DataError(f"image {hr_path} is {hr.shape[1]}x{hr.shape[0]}, smaller than scale {scale}")
        lr = _cached_lr(_file_key(hr_path, scale), hr)
    else:
        lr_path = _find_lr_file(lr_dir, hr_path.stem, scale, hr_path.suffix)
        if lr_path is None:
            raise DataError(
                f"missing LR image {lr_dir / (hr_path.stem + f'x{scale}' + hr_path.suffix)} for {hr_path}; "
                f"add it or pass lr_source='generated' (--lr-source generated)"
            )
        lr = read_image(lr_path)
        want = (hr.shape[0] // scale, hr.shape[1] // scale)
        if lr.shape[:2] != want:
            raise DataError(
                f"LR image {lr_path} is {lr.shape[1]}x{lr.shape[0]} but its HR {hr_path.name} is "
                f"{hr.shape[1]}x{hr.shape[0]}, so x{scale} needs {want[1]}x{want[0]}; "
                f"use the right X{scale} folder or pass lr_source='generated'"
            )
    h, w = lr.shape[:2]
    return EvalPair(hr_path.stem, lr, hr[: h * scale, : w * scale])


# --------------------------------------------------------------------------------------------------- fallbacks


def sample_hr_images(*, split: Literal["all", "train", "eval"] = "all") -> list[np.ndarray]:
    """HR images bundled with scikit-image (no network): the fallback when no data folder is given.

    ``split="train"`` and ``split="eval"`` return disjoint subsets (5 and 2 images, 256..1000 px).
    """
    import skimage.data  # deferred: scikit-image loads slowly and only the no-data fallback needs it

    names = {"train": _SAMPLE_TRAIN, "eval": _SAMPLE_EVAL, "all": _SAMPLE_TRAIN + _SAMPLE_EVAL}[split]
    return [_as_rgb_uint8(getattr(skimage.data, n)(), f"skimage.data.{n}") for n in names]


def fallback_eval_pairs(scale: int) -> list[EvalPair]:
    """Evaluation pairs from the scikit-image eval images with generated LR (named ``skimage_<name>``)."""
    _check_scale(scale)
    pairs = []
    for name, hr in zip(_SAMPLE_EVAL, sample_hr_images(split="eval"), strict=True):
        hr = _crop_to_multiple(hr, scale)
        lr = _cached_lr((f"skimage.data.{name}", 0, scale), hr)
        pairs.append(EvalPair(f"skimage_{name}", lr, hr))
    return pairs


def default_train_sources() -> list[np.ndarray]:
    """Training HR images used when no data path is given (the scikit-image train split)."""
    return sample_hr_images(split="train")


def resolve_train_sources(paths: Sequence[str | Path] | None) -> list[Path | np.ndarray]:
    """Turn ``--data`` paths into :class:`PatchDataset` sources.

    ``None`` or empty gives :func:`default_train_sources` (logged). A folder holding no images directly but an
    ``HR`` or ``*_HR`` subfolder (benchmark or DIV2K root; the train split is preferred) resolves to it. Image
    files are kept as they are.

    Raises:
        DataError: a path that does not exist.
    """
    if not paths:
        log.info("no training data path given: using %d scikit-image sample images", len(_SAMPLE_TRAIN))
        return list(default_train_sources())
    out: list[Path | np.ndarray] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            has_images = any(c.suffix.lower() in IMAGE_EXTENSIONS for c in p.iterdir() if c.is_file())
            out.append(p if has_images else _find_hr_dir(p, prefer="train")[0])
        else:
            raise DataError(f"training data path not found: {p}; pass existing folders or image files")
    return out


# --------------------------------------------------------------------------------------------------- tensors


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``H x W x 3`` -> float32 ``3 x H x W`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """Float ``3 x H x W`` in [0, 1] -> RGB uint8 ``H x W x 3`` (clamped, rounded to nearest)."""
    arr = t.detach().to("cpu", torch.float32).clamp(0, 1).mul(255.0).round().byte()
    return np.ascontiguousarray(arr.permute(1, 2, 0).numpy())


@overload
def dihedral(x: np.ndarray, k: int) -> np.ndarray: ...
@overload
def dihedral(x: torch.Tensor, k: int) -> torch.Tensor: ...
def dihedral(x: np.ndarray | torch.Tensor, k: int) -> np.ndarray | torch.Tensor:
    """Element ``k`` (0..7) of the 8 flips/rotations of the square: mirror left-right if ``k >= 4``, then rotate
    by ``k % 4`` quarter turns (counter-clockwise as displayed).

    The spatial axes are ``(0, 1)`` for numpy (``H x W`` or ``H x W x C``) and ``(-2, -1)`` for torch
    (``H x W``, ``C x H x W`` or ``N x C x H x W``), so the same ``k`` moves pixels identically on a host image
    and on its tensor. Numpy results are contiguous copies. Undo with ``dihedral(y, dihedral_inverse(k))``.
    """
    if not 0 <= int(k) <= 7:
        raise ValueError(f"dihedral index must be in 0..7, got {k}")
    k = int(k)
    if isinstance(x, torch.Tensor):
        if k >= 4:
            x = torch.flip(x, dims=(-1,))
        return torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x
    if k >= 4:
        x = x[:, ::-1]
    return np.ascontiguousarray(np.rot90(x, k % 4, axes=(0, 1)))


def dihedral_inverse(k: int) -> int:
    """The ``j`` with ``dihedral(dihedral(x, k), j) == x``: mirrored elements are their own inverse."""
    return k if k >= 4 else (4 - k) % 4


# --------------------------------------------------------------------------------------------------- training


class PatchParams(NamedTuple):
    """Where sample ``i`` comes from: image index, top-left LR pixel (``lr_y``, ``lr_x``) and dihedral ``k``.

    The HR patch starts at ``(lr_y * scale, lr_x * scale)``.
    """

    image: int
    lr_y: int
    lr_x: int
    k: int


class PatchDataset(torch.utils.data.Dataset):
    """Aligned random (LR, HR) patches with dihedral augmentation over in-memory HR images.

    Sample ``i`` depends only on ``(seed, i)`` (its own ``np.random.Generator``), never on worker processes,
    sampler state or earlier calls, so resumed runs and DDP ranks see identical data. It uses image
    ``i % n_images``; a fresh crop per step needs a fresh index, so iteration-based training sets
    ``samples_per_epoch = iterations x batch`` and resumes by skipping the indices already seen (or changes
    ``seed`` per epoch).

    Args:
        sources: folders and/or image files and/or RGB uint8 arrays (a single folder is accepted too).
        scale: upscaling factor; LR = ``bicubic_downsample(HR, scale)``, made once per image at construction.
        hr_patch: HR patch side in pixels, a multiple of ``scale``; the LR patch side is ``hr_patch // scale``.
        augment: apply a random dihedral flip/rotation (same ``k`` on LR and HR).
        seed: base seed of the per-item generators (non-negative).
        samples_per_epoch: ``len(self)``; defaults to the number of images.
        skip_bad: warn about and skip unreadable or too-small images instead of raising.
        lr_images: LR arrays to use instead of generating them, one per HR image in load order, each exactly
            ``HR // scale`` in size (e.g. shipped DIV2K LR).

    Raises:
        ConfigError: ``hr_patch`` not a positive multiple of ``scale``, or a bad ``seed``/``samples_per_epoch``.
        DataError: unreadable or too-small image (unless ``skip_bad``), no images, or mismatched ``lr_images``.
    """

    def __init__(
        self,
        sources: str | Path | np.ndarray | Iterable[str | Path | np.ndarray],
        *,
        scale: int,
        hr_patch: int,
        augment: bool = True,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        skip_bad: bool = False,
        lr_images: Sequence[np.ndarray] | None = None,
    ) -> None:
        _check_scale(scale)
        if not isinstance(hr_patch, int) or hr_patch < scale or hr_patch % scale:
            raise ConfigError(
                f"hr_patch {hr_patch!r} is not a positive multiple of scale {scale}; "
                f"pass e.g. hr_patch={max(scale, 1) * 48}"
            )
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        if samples_per_epoch is not None and (not isinstance(samples_per_epoch, int) or samples_per_epoch < 1):
            raise ConfigError(f"samples_per_epoch must be a positive integer, got {samples_per_epoch!r}")
        self.scale = scale
        self.hr_patch = hr_patch
        self.lr_patch = hr_patch // scale
        self.augment = augment
        self.seed = seed
        self.names: list[str] = []
        self.hr: list[np.ndarray] = []
        self.lr: list[np.ndarray] = []

        items = _expand_sources(sources)
        if lr_images is not None and len(lr_images) != len(items):
            raise DataError(
                f"lr_images holds {len(lr_images)} images but the sources hold {len(items)}; pass one LR per HR"
            )
        for j, (name, item) in enumerate(items):
            try:
                hr, lr = self._load_one(name, item, None if lr_images is None else lr_images[j])
            except DataError as err:
                if not skip_bad:
                    raise
                _warn_skip(err)
                continue
            self.names.append(name)
            self.hr.append(hr)
            self.lr.append(lr)
        if not self.hr:
            raise DataError("no usable training images: every source was skipped; fix or replace them")
        self.samples_per_epoch = samples_per_epoch if samples_per_epoch is not None else len(self.hr)

    def _load_one(self, name: str, item: Path | np.ndarray, lr: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        s = self.scale
        hr = read_image(item) if isinstance(item, Path) else _as_rgb_uint8(item, name)
        if hr.shape[0] < self.hr_patch or hr.shape[1] < self.hr_patch:
            raise DataError(
                f"image {name} is {hr.shape[1]}x{hr.shape[0]}, smaller than the {self.hr_patch}x{self.hr_patch} "
                f"HR patch; pass a smaller --hr-patch or --skip-bad (data.hr_patch / data.skip_bad: true in a job spec)"
            )
        hr = _crop_to_multiple(hr, s)
        if lr is None:
            key = _file_key(item, s) if isinstance(item, Path) else None
            lr = _cached_lr(key, hr) if key is not None else _downsample(hr, s)
        else:
            lr = _as_rgb_uint8(lr, f"LR of {name}")
            if lr.shape[:2] != (hr.shape[0] // s, hr.shape[1] // s):
                raise DataError(
                    f"LR of {name} is {lr.shape[1]}x{lr.shape[0]}, expected "
                    f"{hr.shape[1] // s}x{hr.shape[0] // s} for x{s}; pass LR images made at this scale"
                )
        return np.ascontiguousarray(hr), np.ascontiguousarray(lr)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def crop_params(self, i: int) -> PatchParams:
        """The image, LR crop corner and dihedral ``k`` of sample ``i`` (a pure function of ``(seed, i)``)."""
        if not 0 <= i < len(self):
            raise IndexError(f"sample index {i} out of range 0..{len(self) - 1}")
        rng = np.random.default_rng([self.seed, i])
        img = i % len(self.hr)
        h, w = self.lr[img].shape[:2]
        y = int(rng.integers(0, h - self.lr_patch + 1))
        x = int(rng.integers(0, w - self.lr_patch + 1))
        k = int(rng.integers(0, 8)) if self.augment else 0
        return PatchParams(img, y, x, k)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lr, hr)``: float32 ``3 x p x p`` and ``3 x (p*scale) x (p*scale)`` in [0, 1]."""
        img, y, x, k = self.crop_params(int(i))
        p, s = self.lr_patch, self.scale
        lr = self.lr[img][y : y + p, x : x + p]
        hr = self.hr[img][y * s : (y + p) * s, x * s : (x + p) * s]
        return image_to_tensor(dihedral(lr, k)), image_to_tensor(dihedral(hr, k))


def _expand_sources(
    sources: str | Path | np.ndarray | Iterable[str | Path | np.ndarray],
) -> list[tuple[str, Path | np.ndarray]]:
    """(name, file or array) for every image of the sources, folders expanded in sorted order."""
    if isinstance(sources, str | Path | np.ndarray):
        sources = [sources]
    items: list[tuple[str, Path | np.ndarray]] = []
    n_arrays = 0
    for src in sources:
        if isinstance(src, np.ndarray):
            items.append((f"in-memory image #{n_arrays}", src))
            n_arrays += 1
            continue
        p = Path(src)
        if p.is_dir():
            items.extend((str(f), f) for f in list_images(p))
        elif p.is_file():
            items.append((str(p), p))
        else:
            raise DataError(f"training data path not found: {p}; pass existing folders or image files")
    if not items:
        raise DataError("no training sources given; pass at least one folder, image file or array")
    return items
