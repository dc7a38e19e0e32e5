"""Filesystem checks of a job spec: the files it names exist, else its ``if_missing`` fallbacks apply."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from search_spaces._errors import SpecError, spec_error
from search_spaces._schema import JobSpec
from search_spaces._values import is_uri
from search_spaces._yaml import line_of, split_key

log = logging.getLogger(__name__)


def _image_extensions() -> tuple[str, ...]:
    from sr.data import IMAGE_EXTENSIONS  # deferred: sr.data imports torch; `import search_spaces` stays light

    return IMAGE_EXTENSIONS


def _has_images(path: Path, exts: tuple[str, ...]) -> bool:
    """An image file, or a folder with images directly or one level down (``HR``, ``DIV2K_train_HR``)."""
    if path.is_file():
        return path.suffix.lower() in exts
    children = [c for c in path.iterdir() if not c.name.startswith(".")]
    if any(c.is_file() and c.suffix.lower() in exts for c in children):
        return True
    return any(c.is_dir() and any(g.is_file() and g.suffix.lower() in exts for g in c.iterdir()) for c in children)


def key_error(spec: JobSpec, key: str, message: str, spec_path: str | Path | None = None) -> SpecError:
    """A one-line ``file:line: key: message`` error about dotted ``key`` (``data.train[0]``) of ``spec``."""
    source = str(spec_path) if spec_path is not None else (spec.source or "<spec>")
    lines = spec._lines
    return spec_error(source, line_of(lines, split_key(key)) if lines else None, key, message)


def check_paths(spec: JobSpec, spec_path: str | Path | None = None) -> JobSpec:
    """Check the files a spec names and apply its ``if_missing`` fallbacks; return the spec to run.

    - ``teacher.weights`` must be a file; when it is missing and ``teacher.if_missing`` is ``train``, the result
      has ``weights: None`` (train ``teacher.fallback.arch`` or ``teacher.arch`` briefly) and, for a different
      fallback arch, no knob overrides.
    - ``data.train`` / ``data.val`` / ``data.test`` must exist and hold images; when any is missing and
      ``data.if_missing`` is ``builtin``, it becomes None (train, val: the scikit-image sample images; test: no
      test set, the figures are then the validation ones). A path that exists but holds no images is
      an error either way. URIs are not checked.

    Args:
        spec: a validated spec (its paths are already absolute).
        spec_path: the spec file, for error messages (default: the file it was loaded from).

    Raises:
        SpecError: a required path that is missing, or a data path without images (one line, with the key's line).
    """

    def fail(key: str, message: str) -> SpecError:
        return key_error(spec, key, message, spec_path)

    teacher = spec.teacher
    w = teacher.weights
    if w is not None and not is_uri(w):
        wp = Path(w)
        if wp.is_dir():
            raise fail("teacher.weights", f"{w} is a folder; point at the checkpoint file")
        if not wp.is_file():
            if teacher.if_missing == "error":
                raise fail(
                    "teacher.weights",
                    f"{w} does not exist; fix the path (or set SRCOMPRESS_SHARED), or set teacher.if_missing: "
                    f"train to train a small teacher instead",
                )
            arch = teacher.fallback.arch or teacher.arch
            log.warning(
                "teacher weights %s not found: training %s for %d steps instead (teacher.if_missing: train)",
                w,
                arch,
                teacher.fallback.steps,
            )
            update: dict[str, Any] = {"weights": None, "arch": arch}
            if arch != teacher.arch:
                update["set"] = {}
            teacher = teacher.model_copy(update=update)

    vgg = spec.csd_settings.vgg_weights if spec.student.method == "csd" else None
    if vgg not in (None, "random") and not is_uri(vgg) and not Path(vgg).is_file():
        raise fail(
            "csd.vgg_weights", f"{vgg} is not a file; point at torchvision's vgg19-dcbb9e9d.pth or set lambda_c: 0"
        )

    data = spec.data
    exts = _image_extensions()
    update_data: dict[str, Any] = {}
    listed = (("data.train", data.train), ("data.val", [data.val] if data.val else None), ("data.test", data.test))
    for key, paths in listed:
        if not paths:
            continue
        missing = []
        for i, p in enumerate(paths):
            item_key = key if key == "data.val" else f"{key}[{i}]"
            if is_uri(p):
                continue
            pp = Path(p)
            if not pp.exists():
                missing.append((item_key, p))
            elif not _has_images(pp, exts):
                raise fail(item_key, f"{p} holds no images ({', '.join(exts)}); point at a folder of images")
        if missing:
            if data.if_missing == "error":
                item_key, p = missing[0]
                raise fail(
                    item_key,
                    f"{p} does not exist; fix the path (or set SRCOMPRESS_SHARED), or set data.if_missing: "
                    f"builtin to use the scikit-image sample images",
                )
            log.warning(
                "%s: %s not found: using the scikit-image sample images (data.if_missing: builtin)",
                key,
                ", ".join(p for _, p in missing),
            )
            gone = {p for _, p in missing}
            # A test list keeps the sets that are present (Set5 without Set14); the others fall back as a whole.
            kept = [p for p in paths if p not in gone] if key == "data.test" else []
            update_data[key.split(".")[1]] = kept or None
            if key == "data.val":
                update_data["val_first"] = None  # the built-in eval images are already disjoint from training
    out = spec
    if teacher is not spec.teacher or update_data:
        out = spec.model_copy(
            update={"teacher": teacher, "data": data.model_copy(update=update_data) if update_data else data}
        )
    return out
