"""Reading published/own SR checkpoints into registered models, and crash-safe saving.

Loading is always ``torch.load(..., map_location="cpu", weights_only=True)``: a checkpoint that needs arbitrary
pickled code is refused, never executed.
"""

from __future__ import annotations

import os
import re
import secrets
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sr.arch_record import ARCH_KEY, ArchRecord, record_of
from sr.errors import CheckpointError, UserError

__all__ = [
    "WRAPPER_KEYS",
    "arch_record",
    "implied_scale",
    "load_checkpoint_model",
    "load_weights",
    "read_checkpoint",
    "read_state_dict",
    "resolve_arch",
    "save_checkpoint",
    "weights_entry",
]

# Keys under which training frameworks nest the weights, in order of preference: BasicSR/SwinIR save the EMA
# weights as 'params_ema' (the ones their papers report) next to 'params'; Lightning and many repos use
# 'state_dict'; others 'model'.
WRAPPER_KEYS: tuple[str, ...] = ("params_ema", "params", "state_dict", "model")

_FIX = "pass --arch matching the checkpoint or the right --set knobs"


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_checkpoint(path: str | Path) -> Any:
    """Load any checkpoint object (weights-only) on the CPU, e.g. a full training state for resuming.

    Raises:
        CheckpointError: the file is missing, or torch cannot load it with ``weights_only=True`` (corrupt, not a
            checkpoint, or pickled code).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; pass the path of a .pth file")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is a folder; pass the path of a .pth file")
    # torch warns on some files before it fails on them: held back so that a refused file gives one line only,
    # and passed on when the load succeeds.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ValueError... by format
            reason, fix = _load_failure(exc)
            raise CheckpointError(f"cannot read checkpoint {path} ({reason}); {fix}") from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return obj


def _load_failure(exc: Exception) -> tuple[str, str]:
    """(reason, fix), one line each, for a failed weights-only ``torch.load`` (torch's message spans lines)."""
    msg = str(exc)
    # torch < 2.13: "Unsupported global: GLOBAL x.y"; torch 2.13: "unsupported GLOBAL posix.system whose module
    # posix is blocked" (a module torch never allows, e.g. os/posix/subprocess/builtins)
    if m := re.search(
        r"[Uu]nsupported (?:global: )?GLOBAL (\S+?)(?: whose module (\S+) is blocked)?[.,]?(?:\s|$)", msg
    ):
        if m[2]:
            return (
                f"it holds a pickled call to {m[1]}, which would run code when unpickled; weights-only loading "
                "refused it and nothing ran",
                "do not load files from untrusted sources; re-save only tensors, e.g. "
                "torch.save(model.state_dict(), path)",
            )
        return (
            f"it pickles the Python object {m[1]}, which weights-only loading refuses to run",
            "re-save only tensors, e.g. torch.save(model.state_dict(), path)",
        )
    if "WeightsUnpickler error:" in msg:
        # e.g. random bytes: torch's legacy-format fallback unpickles them and trips on an opcode
        detail = msg.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        return f"not a PyTorch checkpoint: {_one_line(detail, 120)}", "pass a .pth file written by torch.save"
    if "PytorchStreamReader" in msg:  # the zip container is cut short or damaged
        first = msg.split(". ", 1)[0]
        return f"truncated or corrupt archive: {_one_line(first, 120)}", "re-download it or pass another checkpoint"
    if isinstance(exc, EOFError):
        return "the file is empty or truncated", "re-download it or pass another checkpoint"
    if isinstance(exc, OSError):  # e.g. EINVAL seeking past the end of a zip container cut short
        return f"truncated or corrupt file: {_one_line(str(exc), 80)}", "re-download it or pass another checkpoint"
    if isinstance(exc, KeyError | IndexError | UnicodeDecodeError):  # e.g. a text file read as a legacy pickle
        return "not a PyTorch checkpoint", "pass a .pth file written by torch.save"
    return f"{type(exc).__name__}: {_one_line(msg, 160)}", "pass a .pth file written by torch.save"


def read_state_dict(path: str | Path, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Load a state dict (tensors on the CPU), unwrapping the usual training wrappers.

    Without ``key``, nested dicts are unwrapped while they hold one of ``WRAPPER_KEYS``, taking the first present
    in the order ``params_ema`` > ``params`` > ``state_dict`` > ``model`` (so EMA weights win when both are
    saved). With ``key`` (e.g. ``"params"``), exactly that entry is used.

    Raises:
        CheckpointError: missing/unreadable file, absent ``key``, or content that is not name -> tensor.
    """
    return _unwrap(read_checkpoint(path), key=key, src=str(path))


def _unwrap(obj: Any, *, key: str | None, src: str) -> dict[str, torch.Tensor]:
    """The name -> tensor mapping inside a loaded checkpoint object (see :func:`read_state_dict`)."""
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            have = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(
                f"checkpoint {src} has no entry {key!r} (top level: {have}); pass another key or none"
            )
        obj = obj[key]
    else:
        for _ in range(3):  # e.g. {'state_dict': {'model': {...}}}; deeper nesting is not a known layout
            wrapped = (
                next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
                if isinstance(obj, Mapping)
                else None
            )
            if wrapped is None:
                break
            obj = obj[wrapped]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"checkpoint {src} holds {type(obj).__name__ if obj is not None else 'None'}, not a state dict "
            f"(name -> tensor); pass a model checkpoint"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"checkpoint {src} is not a state dict: entry {bad[0]!r} is {type(obj[bad[0]]).__name__}, not a "
            f"tensor (top level: {', '.join(map(str, list(obj)[:6]))}); pass key= naming the weights entry"
        )
    return {str(k): v for k, v in obj.items()}


def load_weights(
    model: nn.Module,
    path_or_sd: str | Path | Mapping[str, torch.Tensor],
    *,
    arch: str,
    key: str | None = None,
    fix: str = _FIX,
) -> nn.Module:
    """Load a checkpoint into ``model`` (built as ``arch``) strictly, converting foreign layouts first.

    Steps: read (see :func:`read_state_dict`), drop a ``module.`` prefix on every key (DataParallel/DDP saves),
    apply the family's ``convert_state_dict`` (e.g. EDSR-PyTorch names -> ours), then compare names and shapes
    with the model before ``load_state_dict(strict=True)``.

    Returns:
        ``model``, with the weights loaded.

    Raises:
        CheckpointError: unreadable checkpoint, or one line naming ``arch``, the first 3 missing/unexpected/
            shape-mismatched keys and ``fix`` (by default: pass the matching --arch / --set).
        ConfigError: unknown ``arch``.
    """
    if isinstance(path_or_sd, Mapping):  # an already loaded checkpoint: unwrapped the same way
        src = "state dict"
        sd = _unwrap(path_or_sd, key=key, src=src)
    else:
        src = str(path_or_sd)
        sd = read_state_dict(path_or_sd, key=key)
    sd = _converted(sd, arch=arch, src=src, fix=fix)
    shape, missing, unexpected = _misfit(model.state_dict(), sd)
    # round-robin over the kinds, so the example shows e.g. both a missing and an unexpected name
    kinds = [shape, missing, unexpected]
    problems = [kind[i] for i in range(3) for kind in kinds if i < len(kind)]
    if problems:
        raise CheckpointError(
            f"checkpoint {src} does not fit arch {arch!r}: {len(shape)} shape mismatch(es), {len(missing)} "
            f"missing, {len(unexpected)} unexpected key(s), e.g. {'; '.join(problems[:3])}; {fix}"
        )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied; names and shapes were already checked
        reason = _one_line(str(exc), 160)
        raise CheckpointError(f"cannot load checkpoint {src} into arch {arch!r} ({reason}); {fix}") from None
    return model


def _converted(sd: dict[str, torch.Tensor], *, arch: str, src: str, fix: str) -> dict[str, torch.Tensor]:
    """``sd`` without a ``module.`` prefix (DataParallel/DDP saves), in ``arch``'s family layout."""
    from sr.models import family_of, get_family  # lazy: importing sr.models builds the whole registry

    convert = get_family(family_of(arch)).convert_state_dict
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    if convert is not None:
        try:
            sd = dict(convert(sd))
        except (KeyError, ValueError, IndexError, RuntimeError) as exc:
            reason = _one_line(f"{type(exc).__name__}: {exc}", 160)
            raise CheckpointError(f"cannot convert checkpoint {src} for arch {arch!r} ({reason}); {fix}") from None
    return sd


def _misfit(mine: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> tuple[list[str], ...]:
    """(shape mismatches, missing names, unexpected names) of checkpoint ``sd`` against a model's ``mine``."""
    shape = [
        f"{k} (checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)})"
        for k, v in mine.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    return shape, [f"missing {k}" for k in mine if k not in sd], [f"unexpected {k}" for k in sd if k not in mine]


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` atomically: a temporary file in the same folder, fsync, then
    ``os.replace``, so a crash mid-save leaves the previous checkpoint at ``path`` intact.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # same folder, so os.replace is an atomic rename; opened with "x" (unlike mkstemp's 0600) to honour the umask
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not every filesystem lets a folder be opened
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


# ------------------------------------------------------------------------------------ the architecture record
def weights_entry(model: nn.Module) -> dict[str, Any]:
    """``{"params": state_dict on the CPU, "srcompress": record}``: what ``sr.stages.save_weights`` writes.

    The record (see :mod:`sr.arch_record`) is the one ``sr.models.build`` attached to ``model``; a model built
    another way is saved without one, as before.
    """
    entry: dict[str, Any] = {"params": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    rec = record_of(model)
    if rec is not None:
        entry[ARCH_KEY] = rec.as_dict()
    return entry


def arch_record(obj: Any, *, src: str = "checkpoint") -> ArchRecord | None:
    """The architecture record inside a loaded checkpoint object (or a path), None for a published checkpoint."""
    if isinstance(obj, str | Path):
        src, obj = str(obj), read_checkpoint(obj)
    if isinstance(obj, Mapping) and ARCH_KEY in obj:
        return ArchRecord.from_dict(obj[ARCH_KEY], src=src)
    return None


def resolve_arch(
    record: ArchRecord | None,
    *,
    arch: str | None = None,
    knobs: Mapping[str, Any] | None = None,
    scale: int | None = None,
    src: str = "checkpoint",
) -> ArchRecord:
    """The architecture to build: the checkpoint's ``record`` checked against what was given by hand.

    Without a record (a published checkpoint) ``arch`` is required; its pixel range is the family's official one
    and the scale defaults to 2. With one, ``arch``/``knobs``/``scale`` may be left out; given, they must agree
    with it (another variant of the same family is compared by the knobs it sets).

    Raises:
        UserError: one line naming the option that contradicts the checkpoint and the value it holds.
    """
    from sr.models import family_of, get_variant, official_pixel_range, resolve_knobs  # lazy: builds the registry

    given = dict(knobs or {})
    if record is None:
        if arch is None:
            raise UserError(
                f"checkpoint {src} does not record its architecture (not written by srcompress); pass --arch"
            )
        full = resolve_knobs(arch, **given, **({"scale": scale} if scale is not None else {}))
        return ArchRecord(arch, full, official_pixel_range(arch))
    if scale is not None and record.scale and scale != record.scale:
        raise UserError(
            f"checkpoint {src} is x{record.scale}, but --scale {scale} was given; pass --scale {record.scale} or "
            "leave it out"
        )
    if arch is not None and arch != record.arch:
        if family_of(arch) != family_of(record.arch):
            raise UserError(
                f"checkpoint {src} holds a {record.arch} model, but --arch {arch} was given; pass --arch "
                f"{record.arch} or leave it out"
            )
        given = {**get_variant(arch).knobs, **given}
    clash = [
        f"{k}={v!r} (checkpoint: {record.knobs[k]!r})"
        for k, v in given.items()
        if k in record.knobs and record.knobs[k] != v
    ]
    if clash:
        what = f"--arch {arch}" if arch not in (None, record.arch) and not knobs else "--set " + clash[0].split(" ")[0]
        raise UserError(
            f"{what} contradicts checkpoint {src} ({'; '.join(clash[:3])}); leave the knob out, the checkpoint "
            "records its architecture"
        )
    full = resolve_knobs(record.arch, **{**record.knobs, **given})
    return ArchRecord(record.arch, full, record.pixel_range)


def implied_scale(sd: Mapping[str, torch.Tensor], *, arch: str, knobs: Mapping[str, Any]) -> int | None:
    """The scale (2, 3, 4 or 8) at which ``sd`` fits ``arch`` with ``knobs``, or None; built on the meta device."""
    from sr.models import build  # lazy: importing sr.models builds the whole registry

    sd = _converted(dict(sd), arch=arch, src="checkpoint", fix=_FIX)
    for s in (2, 3, 4, 8):
        if s == knobs.get("scale"):
            continue
        try:
            with torch.device("meta"):  # shapes only: no memory, no init
                mine = build(arch, **{**knobs, "scale": s}).state_dict()
        except UserError:  # a scale the family does not take
            continue
        if not any(_misfit(mine, sd)):
            return s
    return None


def load_checkpoint_model(
    weights: str | Path,
    *,
    arch: str | None = None,
    knobs: Mapping[str, Any] | None = None,
    scale: int | None = None,
    fallback: ArchRecord | None = None,
) -> tuple[nn.Module, ArchRecord]:
    """Build the model a checkpoint holds and load it (weights-only), from its record or the given arch/knobs.

    Args:
        weights: the ``.pth`` file.
        arch, knobs, scale: given by hand; checked against the checkpoint's record (see :func:`resolve_arch`).
        fallback: the record to use when the file has none (e.g. rebuilt from an older run's ``config.json``).

    Returns:
        ``(model, record)``: the model in eval mode and what it is, pixel range included.

    Raises:
        UserError: unreadable file, a contradiction with the record, or weights that fit another scale (the line
            names ``--scale`` and the scale they imply).
    """
    from sr.models import build  # lazy: importing sr.models builds the whole registry

    src = str(weights)
    obj = read_checkpoint(weights)
    rec = resolve_arch(arch_record(obj, src=src) or fallback, arch=arch, knobs=knobs, scale=scale, src=src)
    model = build(rec.arch, **rec.knobs)
    try:
        load_weights(model, obj, arch=rec.arch)
    except CheckpointError:
        s = implied_scale(_unwrap(obj, key=None, src=src), arch=rec.arch, knobs=rec.knobs)
        if s is not None:
            raise CheckpointError(
                f"checkpoint {src} is a x{s} model, not x{rec.scale}; pass --scale {s} (or a x{rec.scale} checkpoint)"
            ) from None
        raise
    object.__setattr__(model, "sr_arch", rec)  # the resolved record: its pixel range is the weights' own
    return model.eval(), rec
