"""Frozen tasks that cross the Ray boundary unchanged: what a worker needs, built once from the job spec.

The settings take one form from the YAML to the training loop::

    JobSpec (search_spaces, validated)  --prune_task-->     PruneTask  (per job)   --> [W1] prune_worker
                                        --trial_template--> TrialTemplate (per search, SearchPlan.worker)
                                                            --trial_task--> TrialTask (per trial) --> [W2] kd_worker
                                                                                                   or [W3] csd_worker

A task holds the ``sr`` loop's own frozen config (``KDConfig``, ``CSDConfig``, ``PruneConfig``) plus where the
models and images are; a worker reads fields, it never parses a dict. ``task_record`` is the JSON a trial run
keeps as ``config.json`` (``record["student"] = {"arch", "knobs", "weights"}`` rebuilds the exported model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from search_spaces import CSD_DIMS, JobSpec
from sr.csd_train import CSDConfig
from sr.data import eval_image_files, list_images, resolve_train_sources
from sr.distill import KDConfig
from sr.models import family_of
from sr.prune import PruneConfig
from sr.prune_schedule import PruneSchedule

Method = Literal["kd", "csd"]


@dataclass(frozen=True)
class ModelRef:
    """A model to build (``sr.stages.load_model``): registered arch, its knobs (scale included), optional weights."""

    arch: str
    knobs: Mapping[str, Any] = field(default_factory=dict)
    weights: str | None = None


@dataclass(frozen=True)
class DataRef:
    """Where a worker finds its images: training sources, the validation set (None: built-in pairs; ``val_first``:
    its first n images), the test sets reported at the end (never selected on), the cache."""

    train: tuple[str, ...] | None
    val: str | None
    skip_bad: bool = False
    cache_dir: str | None = None  # teacher-output cache shared by every trial (KD only)
    val_first: int | None = None
    test: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrackingRef:
    """The MLflow run a worker's rank 0 logs to."""

    uri: str
    run_id: str


@dataclass(frozen=True)
class CSDSettings:
    """CSD's per-search settings (the sampled width/lambda_c/lambda_t come per trial)."""

    lambda_t: float
    teacher_width: float
    vgg_weights: str | None


@dataclass(frozen=True)
class TrialTemplate:
    """What every trial of one search shares; ``trial_task`` adds the sampled student and KD values."""

    method: Method
    teacher: ModelRef
    data: DataRef
    threads: int
    kd: KDConfig
    csd: CSDSettings | None = None


@dataclass(frozen=True)
class TrialTask:
    """One trial's training run, as [W2] ``kd_worker`` / [W3] ``csd_worker`` receive it."""

    name: str
    method: Method
    student: ModelRef  # CSD: the exported student (C' = width * C)
    teacher: ModelRef
    data: DataRef
    threads: int
    kd: KDConfig
    csd: CSDConfig | None = None
    shared_channels: int | None = None  # CSD: channels C of the width-shared model that trains
    vgg_weights: str | None = None  # CSD's perceptual network
    static_metrics: Mapping[str, float] = field(default_factory=dict)  # priced cost, logged with every report
    tracking: TrackingRef | None = None


@dataclass(frozen=True)
class PruneTask:
    """The job's pruning run, as [W1] ``prune_worker`` receives it."""

    teacher: ModelRef
    prune: PruneConfig
    hr_patch: int
    scale: int
    data: DataRef
    output_dir: str
    threads: int
    tracking: TrackingRef | None = None
    n_images: int | None = None  # prune on this many training images (a seeded draw; None: all)
    samples_per_epoch: int | None = None  # patches per schedule epoch (None: one per pruning image)
    # The schedule the driver resolved (printed, logged); a worker whose images give another one stops.
    schedule: PruneSchedule | None = None


# ---------------------------------------------------------------------------------------------- builders
def teacher_ref(spec: JobSpec, weights: str | None) -> ModelRef:
    """The teacher as the spec names it (``teacher.set`` knobs, the data's scale), with the resolved weights."""
    return ModelRef(spec.teacher.arch, {**spec.teacher.set, "scale": spec.data.scale}, weights)


def train_paths(spec: JobSpec) -> tuple[str, ...] | None:
    """The training sources: ``data.train``, with a folder that holds held-out validation images (``val_first``)
    listed file by file without them, so that no validation image is ever trained on."""
    d = spec.data
    if d.train is None:
        return None
    if d.val is None or d.val_first is None:
        return tuple(str(t) for t in d.train)
    held = set(eval_image_files(d.val, d.val_first))
    out: list[str] = []
    for src in resolve_train_sources(list(d.train)):
        assert isinstance(src, Path)  # a listed path resolves to a path (only None gives built-in arrays)
        files = [f.resolve() for f in list_images(src)] if src.is_dir() else [src.resolve()]
        if src.is_dir() and not held & set(files):
            out.append(str(src))
        else:
            out.extend(str(f) for f in files if f not in held)
    return tuple(out)


def data_ref(spec: JobSpec, *, cache_dir: str | None = None) -> DataRef:
    d = spec.data
    return DataRef(
        train=train_paths(spec),
        val=d.val,
        skip_bad=d.skip_bad,
        cache_dir=cache_dir,
        val_first=d.val_first if d.val else None,
        test=tuple(d.test or ()),
    )


def threads_per_worker(spec: JobSpec) -> int:
    """Intra-op threads per worker: its CPU share, at least 1 (oversubscription slows CPU training a lot)."""
    return max(1, int(spec.resources.cpus_per_worker))


def _patches(spec: JobSpec) -> dict[str, Any]:
    if spec.data.patch_sizes is None:
        return {"hr_patch": spec.data.hr_patch}
    return {"patch_sizes": tuple(spec.data.patch_sizes), "patch_boundaries": tuple(spec.data.patch_boundaries)}


def trial_template(spec: JobSpec, *, teacher: ModelRef, cache_dir: str | None, use_gpu: bool) -> TrialTemplate:
    """Every trial's shared settings; the KD weights and lr here are the spec's defaults until a trial samples them."""
    tr = spec.training
    kd = KDConfig(
        steps=tr.steps,
        batch_size=tr.batch_size,
        scale=spec.data.scale,
        lr=tr.lr,
        optimizer=tr.optimizer,
        milestones=tuple(tr.milestones),
        gamma=tr.gamma,
        ema_decay=tr.ema_decay or None,
        val_every=tr.val_every,
        log_every=tr.val_every,  # reports carry the validation PSNR that ASHA and Optuna read
        ckpt_every=tr.ckpt_every,
        seed=spec.seed,
        amp=use_gpu,
        **_patches(spec),
    )
    csd = None
    if spec.student.method == "csd":
        c = spec.csd_settings
        csd = CSDSettings(lambda_t=c.lambda_t, teacher_width=c.teacher_width, vgg_weights=c.vgg_weights)
    return TrialTemplate(
        method=spec.student.method,
        teacher=teacher,
        data=data_ref(spec, cache_dir=cache_dir),
        threads=threads_per_worker(spec),
        kd=kd,
        csd=csd,
    )


_CSD_FIELDS = frozenset(f.name for f in dataclasses.fields(CSDConfig))


def csd_config(kd: KDConfig, settings: CSDSettings, sampled: Mapping[str, Any]) -> CSDConfig:
    """A trial's :class:`CSDConfig`: the shared loop settings of ``kd``, the search's CSD settings, its draw."""
    base = {k: v for k, v in dataclasses.asdict(kd).items() if k in _CSD_FIELDS and v is not None}
    dims = {k: float(sampled[k]) for k in CSD_DIMS if sampled.get(k) is not None}
    # Unshuffled: each index of the trial's PatchDataset is already a fresh random crop, and this order does not
    # depend on the dataset's length (steps * batch), which a resumed trial may raise.
    return CSDConfig(
        **{**base, "lambda_t": settings.lambda_t, "teacher_width": settings.teacher_width, **dims}, shuffle=False
    )


def trial_task(
    template: TrialTemplate,
    *,
    name: str,
    student: ModelRef,
    sampled: Mapping[str, Any],
    shared_channels: int | None = None,
    static_metrics: Mapping[str, float] | None = None,
    tracking: TrackingRef | None = None,
) -> TrialTask:
    """One trial's task: the template with the sampled KD values (``lr``, ``w_*``; CSD: ``width``, ``lambda_*``)."""
    kd_fields = {f.name for f in dataclasses.fields(KDConfig)}
    kd = dataclasses.replace(template.kd, **{k: v for k, v in sampled.items() if k in kd_fields})
    csd = None
    if template.method == "csd":
        assert template.csd is not None and shared_channels is not None  # built by trial_template for CSD
        csd = csd_config(kd, template.csd, sampled)
    return TrialTask(
        name=name,
        method=template.method,
        student=student,
        teacher=template.teacher,
        data=template.data,
        threads=template.threads,
        kd=kd,
        csd=csd,
        shared_channels=shared_channels,
        vgg_weights=template.csd.vgg_weights if template.csd else None,
        static_metrics=dict(static_metrics or {}),
        tracking=tracking,
    )


def prune_task(
    spec: JobSpec, *, teacher: ModelRef, out: str, tracking: TrackingRef | None, schedule: PruneSchedule | None
) -> PruneTask:
    """The pruning run of the spec's ``prune`` section on ``teacher``; ``out``: its folder in the job's store;
    ``schedule``: the driver's resolution of it (``orchestrator._preflight.prune_schedule``), or None when the
    driver cannot list the images."""
    p = spec.prune
    cfg = PruneConfig(
        family=family_of(teacher.arch),
        steps=p.steps,
        batch_size=p.batch_size,
        lr=p.lr,
        lambda_=p.lambda_,
        epsilon=p.epsilon,
        ema_decay=None,
        np_epochs=p.np_epochs,
        quirk_epoch_in_samples=p.quirk_epoch_in_samples,
        milestones=tuple(p.milestones),
        gamma=p.gamma,
        seed=spec.seed,
        shuffle=False,  # the data is one pass per epoch in its own seeded order (sr.prune_schedule.EpochPasses)
        log_every=max(1, p.steps // 10),
    )
    return PruneTask(
        teacher=teacher,
        prune=cfg,
        hr_patch=spec.data.patch_at(0),
        scale=spec.data.scale,
        data=data_ref(spec),
        output_dir=out,
        threads=threads_per_worker(spec),
        tracking=tracking,
        n_images=p.n_images,
        samples_per_epoch=spec.data.samples_per_epoch,
        schedule=schedule,
    )


def task_record(task: TrialTask | PruneTask) -> dict[str, Any]:
    """The task as plain JSON values (a trial run's ``config.json``)."""
    return json_safe(dataclasses.asdict(task))


def json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
