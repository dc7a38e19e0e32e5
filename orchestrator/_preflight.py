"""Checks of a job's inputs before Ray starts: what would otherwise fail inside a Ray task, after the job's state
and MLflow parent run exist.

``preflight(spec)`` decodes every local training and validation image (checking the training ones against the
largest HR patch, the validation ones against what SSIM needs after its border crop) and loads the teacher's
weights into its architecture on the CPU. Each problem is one ``file:line: key: cause; fix`` line. With
``data.skip_bad: true`` unusable images are skipped with a warning, as the workers will skip them, and only a
data set left without any usable image fails. ``undo_new_dirs`` removes the folders a failed start created.

``prune_schedule(spec)`` resolves stage 1's schedule (``sr.prune_schedule``) and refuses one without a Prox-SG
phase; ``run``, ``submit`` and ``plan`` all call it, so a spec fails the same way at each.
Training data, validation/test sets and teacher (and VGG) weights are read from a filesystem every node shares
(an NFS/PVC mount), not through the job's store: once Ray is up, ``check_node_paths`` runs one Ray task on each
alive node and fails with one line naming the first node and path it cannot see.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from orchestrator.tasks import train_paths
from search_spaces import JobSpec, key_error
from search_spaces._values import is_uri
from sr.checkpoint import load_weights
from sr.data import default_train_sources, list_images, load_eval_pairs, read_image, resolve_train_sources
from sr.errors import CheckpointError, ConfigError, DataError
from sr.prune_schedule import PruneSchedule, list_image_items, resolve_prune_schedule

__all__ = ["check_node_paths", "count_train_images", "preflight", "prune_schedule", "shared_paths", "undo_new_dirs"]

_SSIM_WIN = 11  # sr.metrics' SSIM window: the smallest side left after removing the scale-px border


def preflight(spec: JobSpec, spec_path: str | os.PathLike[str] | None = None) -> None:
    """Raise a one-line ``SpecError`` for unusable images or teacher weights (see the module's docstring)."""
    _check_train(spec, spec_path)
    _check_val(spec, spec_path)
    _check_teacher(spec, spec_path)


def count_train_images(spec: JobSpec) -> int | None:
    """Training images as the workers list them (held-out validation images left out); None when a source is a
    URI or not on this machine (then only the workers can count)."""
    paths = train_paths(spec)
    if paths is None:
        return len(default_train_sources())
    if any(is_uri(p) or not Path(p).exists() for p in paths):
        return None
    try:
        return len(list_image_items(resolve_train_sources(list(paths))))
    except DataError:
        return None


def prune_schedule(spec: JobSpec, spec_path: str | os.PathLike[str] | None = None) -> PruneSchedule | None:
    """Stage 1's resolved schedule, or None when the spec does not prune or its image count is only known on the
    workers (no ``prune.n_images``, no ``data.samples_per_epoch``, data not on this machine).

    Raises:
        SpecError: one line: no Prox-SG phase, an epoch shorter than a batch, or more ``n_images`` than images.
    """
    p = spec.prune
    if not p.runs:
        return None
    available = count_train_images(spec)
    if p.n_images is not None and available is not None and p.n_images > available:
        raise key_error(
            spec,
            "prune.n_images",
            f"{p.n_images} pruning images, but the training data holds {available}; lower it or add images",
            spec_path,
        )
    n = p.n_images if p.n_images is not None else available
    if n is None:
        return None
    try:
        return resolve_prune_schedule(
            steps=p.steps,
            batch_size=p.batch_size,
            n_images=n,
            samples_per_epoch=spec.data.samples_per_epoch,
            np_epochs=p.np_epochs,
            quirk_epoch_in_samples=p.quirk_epoch_in_samples,
        )
    except ConfigError as exc:
        raise key_error(spec, "prune.steps", str(exc), spec_path) from None


def _fix(spec: JobSpec, what: str) -> str:
    return what if spec.data.skip_bad else f"{what}, or set data.skip_bad: true to skip such images"


def _skipping(problem: str) -> None:
    print(f"[srcompress] warning: skipping {problem} (data.skip_bad: true)", flush=True)


def _train_side(spec: JobSpec) -> int:
    """The largest HR patch any stage cuts from a training image (the fallback teacher trains on 48 px)."""
    d = spec.data
    sides = [d.hr_patch] if d.patch_sizes is None else list(d.patch_sizes)
    if spec.teacher.weights is None:
        sides.append(48)
    return max(s for s in sides if s is not None)


def _image_size(path: Path) -> tuple[int, int]:
    img = read_image(path)  # decodes fully: a truncated file fails here
    return int(img.shape[1]), int(img.shape[0])


def _check_train(spec: JobSpec, spec_path: Any) -> None:
    train = spec.data.train
    if not train:
        return  # the built-in sample images
    side = _train_side(spec)
    for i, src in enumerate(train):
        if is_uri(str(src)):
            continue
        key = f"data.train[{i}]"
        try:
            files = [f for p in resolve_train_sources([src]) for f in _image_files(p)]
        except DataError as exc:
            raise key_error(spec, key, str(exc), spec_path) from None
        usable = 0
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            sizes = pool.map(_try_size, files)
            for f, size in zip(files, sizes, strict=True):
                problem = size if isinstance(size, str) else None
                if problem is None and min(size) < side:  # type: ignore[arg-type]
                    w, h = size  # type: ignore[misc]
                    problem = f"image {f} is {w}x{h}, smaller than the {side}x{side} HR patch (lower data.hr_patch)"
                if problem is None:
                    usable += 1
                elif spec.data.skip_bad:
                    _skipping(problem)
                else:
                    raise key_error(spec, key, _fix(spec, f"{problem}; replace or remove it"), spec_path)
        if not usable:
            raise key_error(spec, key, f"{src} holds no usable image; point at images of at least {side} px", spec_path)


def _image_files(source: Any) -> list[Path]:
    return list_images(source) if isinstance(source, Path) and source.is_dir() else [source]


def _try_size(path: Path) -> tuple[int, int] | str:
    try:
        return _image_size(path)
    except DataError as exc:
        return str(exc).split("; ")[0]  # the cause; the fix is the spec's, added by the caller


def _check_val(spec: JobSpec, spec_path: Any) -> None:
    """The validation images (``val_first`` of them) and every test set can be scored."""
    d = spec.data
    sets = [("data.val", d.val, d.val_first)] + [(f"data.test[{i}]", t, None) for i, t in enumerate(d.test or [])]
    for key, path, first in sets:
        if path is not None and not is_uri(str(path)):
            _check_eval_set(spec, spec_path, key, path, first)


def _check_eval_set(spec: JobSpec, spec_path: Any, key: str, val: str, first: int | None) -> None:
    scale = spec.data.scale
    with warnings.catch_warnings(record=True) as skipped:
        warnings.simplefilter("always")
        try:
            pairs = load_eval_pairs(val, scale, skip_bad=spec.data.skip_bad, first=first)
        except DataError as exc:
            cause = str(exc).split("; ")[0]
            raise key_error(spec, key, _fix(spec, f"{cause}; fix or replace it"), spec_path) from None
    for w in skipped:
        _skipping(str(w.message).removeprefix("skipping: "))
    least = _SSIM_WIN + 2 * scale
    small = [p for p in pairs if min(p.hr.shape[:2]) < least]
    if small and (len(small) == len(pairs) or not spec.data.skip_bad):
        h, w = small[0].hr.shape[:2]
        raise key_error(
            spec,
            key,
            f"image {small[0].name} is {w}x{h}: too small to score (SSIM_Y needs {least} px per side at x{scale}); "
            + _fix(spec, "use larger validation images"),
            spec_path,
        )


def _check_teacher(spec: JobSpec, spec_path: Any) -> None:
    """The teacher's weights load into ``teacher.arch`` with ``teacher.set`` (weights-only, on the CPU)."""
    weights = spec.teacher.weights
    if weights is None or is_uri(str(weights)):
        return
    # deferred: building the model registry imports every architecture; only a job with teacher weights needs it
    from sr.models import build

    try:
        model = build(spec.teacher.arch, **{**spec.teacher.set, "scale": spec.data.scale})
        load_weights(model, weights, arch=spec.teacher.arch, fix="set teacher.arch and teacher.set to match it")
    except CheckpointError as exc:
        raise key_error(spec, "teacher.weights", str(exc), spec_path) from None


@contextlib.contextmanager
def undo_new_dirs(location: str | Path) -> Iterator[None]:
    """On an exception, remove ``location`` and the parents this block created, when they are still empty (a
    local folder; an object store has no empty folders to undo)."""
    text = str(location)
    if is_uri(text) and not text.startswith("file://"):
        yield
        return
    created = []
    p = Path(text.removeprefix("file://"))
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        yield
    except BaseException:
        for d in created:  # deepest first
            with contextlib.suppress(OSError):  # not empty (or already gone): keep it
                d.rmdir()
        raise


def shared_paths(spec: JobSpec) -> list[tuple[str, str]]:
    """``(spec key, path)`` of every local input a worker reads from the shared filesystem (not the job's store)."""
    d = spec.data
    found = [("teacher.weights", spec.teacher.weights)]
    found += [(f"data.train[{i}]", p) for i, p in enumerate(d.train or [])]
    found += [("data.val", d.val)] + [(f"data.test[{i}]", p) for i, p in enumerate(d.test or [])]
    if spec.student.method == "csd" and spec.csd_settings.vgg_weights != "random":
        found.append(("csd.vgg_weights", spec.csd_settings.vgg_weights))
    return [(k, str(p)) for k, p in found if p is not None and not is_uri(str(p))]


def _missing(paths: list[tuple[str, str]]) -> tuple[str, str, list[tuple[str, str]]]:
    """This node's address and id, and the ``paths`` it does not see (runs as a Ray task on each node)."""
    import ray  # deferred: runs inside a Ray worker, where ray is loaded already

    node = (ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id())
    return *node, [(k, p) for k, p in paths if not os.path.exists(p)]


def check_node_paths(
    spec: JobSpec, spec_path: str | os.PathLike[str] | None = None, *, timeout_s: float = 120
) -> list[str]:
    """One Ray task per alive node checks that the node sees every shared input (``shared_paths``); a missing one
    is a one-line ``file:line: key: ...`` error naming the node and the path. Returns the ids of the nodes checked.
    Nodes that join later (autoscaling) are not checked: their image or mount must provide the same paths (README,
    ``cluster/``)."""
    # deferred: ray is heavy, and only a job that has connected to Ray calls this
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    paths = shared_paths(spec)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    if not paths:
        return []
    if not ray.util.client.ray.is_connected() and nodes == [ray.get_runtime_context().get_node_id()]:
        return nodes  # one node, the driver's own: preflight has just read these paths here
    task = ray.remote(num_cpus=0)(_missing)  # 0 CPUs: runs on a 0-CPU head and beside running trials
    refs = [
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(paths)
        for node in nodes
    ]
    try:
        answers = ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        print(f"[srcompress] warning: not every node answered the shared-path check in {timeout_s:.0f}s", flush=True)
        return []
    for ip, node_id, gone in answers:
        if gone:
            key, path = gone[0]
            more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
            raise key_error(
                spec,
                key,
                f"node {ip} (id {node_id[:12]}) cannot see {path}{more}: training data and teacher weights are read "
                "from a filesystem every Ray node shares; mount it at the same path on every node (README, "
                "Storage) or copy the files there",
                spec_path,
            )
    return [node_id for _, node_id, _ in answers]
