"""The sections of a job spec (teacher, student, budgets, data, prune, training, resources, search, ...)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from search_spaces._dims import Choice, Dim, NumDim, Range, SpecModel
from search_spaces._errors import KeyedError
from search_spaces._store import store_uri
from search_spaces._values import InputPath, Scalar, Size, env_only, expand_env, input_path


class TeacherFallback(SpecModel):
    """How to train a teacher when there are no weights (``weights: null``, or missing with ``if_missing: train``).

    The demo uses it when the project's ``shared`` folder is absent.
    """

    arch: str | None = Field(
        None, description="variant to train; null = teacher.arch (a different one is built with its defaults)"
    )
    steps: int = Field(300, ge=1, description="training steps (batches)")
    lr: float = Field(5e-4, gt=0, description="Adam learning rate")
    batch_size: int = Field(8, ge=1, description="patches per step")


class TeacherSpec(SpecModel):
    """The model to compress."""

    arch: str = Field(description="a registered variant name, e.g. imdn, edsr_baseline, swinir_light")
    weights: InputPath | None = Field(
        None, description="checkpoint path; null = train a small teacher briefly (see fallback)"
    )
    if_missing: Literal["error", "train"] = Field(
        "error", description="when weights does not exist: error, or train the fallback teacher"
    )
    set: dict[str, Scalar] = Field(default_factory=dict, description="knob overrides of the variant")
    scale: int | None = Field(None, description="upscaling factor; null = data.scale (must match it)")
    fallback: TeacherFallback = Field(default_factory=TeacherFallback)


LAP_WEIGHTINGS = ("authors", "flat", "normalized")  # sr.losses.LAP_WEIGHTINGS (sr.losses imports torch)
_LapName = Literal["authors", "flat", "normalized"]


class LapChoice(SpecModel):
    """A searched level weighting: ``{choices: [flat, normalized]}``."""

    choices: list[_LapName] = Field(min_length=1, description="the weightings to choose from")


def _lap_shape(value: Any) -> Any:
    if isinstance(value, str | dict | LapChoice):
        return value
    raise ValueError(
        f"expected one of {', '.join(LAP_WEIGHTINGS)} or {{choices: [...]}}, got {value!r}; write one of those"
    )


# The Laplacian level weighting: a fixed name or a categorical choice of names.
LapDim = Annotated[_LapName | LapChoice, BeforeValidator(_lap_shape)]


class KDSpace(SpecModel):
    """Distillation weights and learning rate: each a fixed number or a range to search.

    The loss is ``w_gt * L1(S, HR) + w_lap * Lap(S, T) + w_hf * Lap(S - G(S), T - G(T))`` (the authors' code:
    w_gt 0.1, w_lap 1, w_hf 1). ``lap_weighting`` sets the weights of the pyramid's levels inside ``Lap``:
    ``authors`` (2^i, the authors' code), ``flat`` or ``normalized`` (the default: the best of
    ``bench/kd_quality.py``, BENCHMARKS.md ``kd_quality``); a fixed name or ``{choices: [...]}`` to search.
    """

    w_gt: NumDim = Field(0.1, description="weight of the ground-truth L1 term")
    w_lap: NumDim = Field(1.0, description="weight of the Laplacian-pyramid term Lap(S, T)")
    w_hf: NumDim = Field(1.0, description="weight of the high-frequency term Lap(S - blur S, T - blur T)")
    lr: NumDim | None = Field(None, description="learning rate; null = training.lr")
    lap_weighting: LapDim = Field(
        "normalized",
        description="level weights of the Laplacian terms: authors (2^i), flat, normalized, or {choices: [...]}",
    )

    @model_validator(mode="after")
    def _check(self) -> KDSpace:
        for name in ("w_gt", "w_lap", "w_hf", "lr"):
            dim = getattr(self, name)
            low = dim.low if isinstance(dim, Range) else dim
            if low is not None and low < 0:
                raise KeyedError(name, f"{name} must be >= 0, got {low}; use a non-negative value")
        if isinstance(self.lr, float) and self.lr <= 0 or isinstance(self.lr, Range) and self.lr.low <= 0:
            raise KeyedError("lr", "lr must be > 0; use a positive learning rate")
        return self


class StudentSpec(SpecModel):
    """The compact model family to search and how."""

    arch: str = Field(description="base variant: knobs not in space keep its values (e.g. edsr_mini)")
    space: dict[str, Dim] = Field(
        default_factory=dict,
        description="knob -> fixed value, {low, high[, step][, log]} or {choices: [...]} (e.g. C, L, B)",
    )
    kd_space: KDSpace = Field(default_factory=KDSpace)
    method: Literal["kd", "csd"] = Field(
        "kd", description="kd: distil from the teacher; csd: contrastive self-distillation of a width-shared EDSR"
    )


def _vgg_path(value: str | None, info: ValidationInfo) -> str | None:
    # "random" may come from a default (${SRCOMPRESS_VGG19:-random}): compare after expanding.
    if value is None or expand_env(value) == "random":
        return None if value is None else "random"
    return input_path(value, info)


class CSDSpec(SpecModel):
    """CSD (contrastive self-distillation, REFERENCE.md section 4), read when ``student.method: csd``.

    One width-shared EDSR (``student.space`` gives its full size) trains its full width (the teacher) and its
    leading ``width`` channel slice (the student) together; the student is exported as a standalone EDSR with
    ``C' = width * C``, and budgets price that exported model. ``width`` and ``lambda_c`` may be searched.
    ``vgg_weights: random`` is a seeded untrained VGG19: it only exercises the code path (tests, CPU demo);
    the contrastive loss it gives is NOT meaningful, so use real weights or ``lambda_c: 0`` for results.
    """

    width: Dim = Field(0.25, description="student width ratio w (C' = w*C): a fixed value or {choices: [...]}")
    lambda_c: Dim = Field(200.0, description="contrastive-loss weight (paper: 200); > 0 needs vgg_weights")
    lambda_t: float = Field(1.0, ge=0, description="weight of the teacher width's L1 loss (paper: 1)")
    vgg_weights: Annotated[str | None, AfterValidator(_vgg_path)] = Field(
        None, description="torchvision vgg19-dcbb9e9d.pth; 'random' = untrained VGG19 (tests only, not meaningful)"
    )
    teacher_width: float = Field(1.0, gt=0, le=1, description="width ratio of the teacher slice (paper: 1.0)")

    def values(self, name: str) -> list[Any]:
        """Every value a dimension (``width`` or ``lambda_c``) can take: bounds for a range."""
        dim = getattr(self, name)
        if isinstance(dim, Range):
            return [dim.low, dim.high]
        return list(dim.choices) if isinstance(dim, Choice) else [dim]


class BudgetsSpec(SpecModel):
    """Hard limits; a sampled config over any of them is infeasible and is not trained."""

    max_params: Size = Field(None, description="parameter count, e.g. 100k or 1.2M")
    max_macs: Size = Field(None, description="multiply-accumulates per image, e.g. 20G")
    macs_convention: Literal["720p", "lr256"] = Field(
        "720p", description="720p: a 1280x720 output (the paper's FLOPs column); lr256: a 256x256 LR input"
    )
    max_latency_ms: float | None = Field(None, gt=0, description="forward time per image in ms")
    # Latency is timed (when a latency objective or budget asks for it) by a Ray task before training, on a node
    # that offers latency_resources and matches latency_label_selector: name the deployment target's kind there.
    latency_device: Literal["cpu", "cuda"] = Field("cpu", description="where latency is measured")
    latency_threads: int = Field(1, ge=1, description="torch intra-op threads while timing")
    latency_dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="weights and input dtype")
    latency_lr_shape: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="LR [height, width] timed; null = the LR size of macs_convention at data.scale"
    )
    latency_resources: dict[str, PositiveFloat] = Field(
        default_factory=dict,
        description="Ray resources the timing task holds, e.g. {GPU: 1} or {latency_node: 1}; cuda: {GPU: 1} if unset",
    )
    latency_label_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Ray node labels the timing node must carry, e.g. {ray.io/accelerator-type: H100}",
    )
    latency_wait_s: float = Field(
        600.0, gt=0, description="how long to wait for such a node (an autoscaler may add one)"
    )

    @model_validator(mode="after")
    def _check_latency(self) -> BudgetsSpec:
        if self.latency_device == "cuda" and self.latency_resources and "GPU" not in self.latency_resources:
            raise KeyedError(
                "latency_resources",
                "latency_device is cuda but the timing task asks for no GPU, so it would see none; add GPU: 1",
            )
        if self.latency_device == "cpu" and self.latency_resources.get("GPU"):
            raise KeyedError("latency_resources", "latency_device is cpu: drop GPU, or set latency_device: cuda")
        if self.latency_dtype == "float16" and self.latency_device == "cpu":
            raise KeyedError("latency_dtype", "float16 is timed on cuda only; use float32 or bfloat16 on cpu")
        return self


_NATURAL_MODE = {"psnr_y": "max", "macs": "min", "params": "min", "latency_ms": "min"}


class Objective(SpecModel):
    """One objective of the multi-objective search; ``metric:mode`` strings are accepted too."""

    metric: Literal["psnr_y", "macs", "params", "latency_ms"]
    mode: Literal["max", "min"] = Field(description="max for psnr_y, min for the others (the default)")

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data: Any) -> Any:
        if isinstance(data, str):
            metric, _, mode = data.partition(":")
            data = {"metric": metric.strip(), **({"mode": mode.strip()} if mode else {})}
        if isinstance(data, dict) and "mode" not in data and data.get("metric") in _NATURAL_MODE:
            data = {**data, "mode": _NATURAL_MODE[data["metric"]]}
        return data

    @model_validator(mode="after")
    def _check(self) -> Objective:
        want = _NATURAL_MODE[self.metric]
        if self.mode != want:
            raise KeyedError("mode", f"{self.metric} can only be {want}imized; use mode: {want}")
        return self


def default_objectives() -> list[Objective]:
    return [Objective(metric="psnr_y", mode="max"), Objective(metric="macs", mode="min")]


class CacheSpec(SpecModel):
    """Teacher-output cache: a fixed pool of patches whose teacher outputs are computed once per job."""

    enabled: bool = Field(False, description="on: trials read cached teacher outputs (no teacher forward)")
    n_patches: int = Field(2048, ge=1, description="patches in the pool")


def _norm(path: str) -> str:
    return path.rstrip("/").removesuffix("/HR")


class DataSpec(SpecModel):
    """Training, validation and test images and how patches are cut.

    ``val`` selects models (what trials report as the objective, what ASHA and Optuna read); ``test`` sets are
    only reported (``test_psnr_y`` at the end of each trial), never used to select. With ``val_first: N`` the
    validation set is the first N images (by file name) of ``val``, and those images are left out of any
    ``train`` folder that holds them: a deterministic held-out split of the training images.
    """

    train: list[InputPath] | None = Field(
        None, min_length=1, description="folders/images (DIV2K root ok); null = scikit-image sample images"
    )
    val: InputPath | None = Field(
        None, description="validation folder (model selection); null = scikit-image eval images"
    )
    val_first: int | None = Field(
        None, ge=1, description="validate on the first n images of val only, and train on none of them"
    )
    test: list[InputPath] | None = Field(
        None,
        min_length=1,
        description="benchmark folders reported at the end of each trial (e.g. Set5); never selected on",
    )
    if_missing: Literal["error", "builtin"] = Field(
        "error", description="when a listed path does not exist: error, or use the built-in images instead"
    )
    scale: int = Field(2, ge=2, le=8, description="upscaling factor")
    hr_patch: int | None = Field(
        None, ge=16, description="HR patch side in px (multiple of 16 and of scale); default 96"
    )
    patch_sizes: list[int] | None = Field(None, min_length=1, description="staged HR patch sides, e.g. [64, 160]")
    patch_boundaries: list[int] | None = Field(
        None, description="training steps at which to move to the next patch size (len(patch_sizes) - 1)"
    )
    samples_per_epoch: int | None = Field(
        None, ge=1, description="patches per epoch (sets the pruning schedule); null = number of images"
    )
    augment: bool = Field(True, description="random flips/rotations")
    skip_bad: bool = Field(
        False, description="skip unreadable or too-small images with a warning instead of stopping the job"
    )
    cache: CacheSpec = Field(default_factory=CacheSpec)

    @model_validator(mode="before")
    @classmethod
    def _default_patch(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("hr_patch") is None and data.get("patch_sizes") is None:
            data = {**data, "hr_patch": 96}
        if isinstance(data, dict) and isinstance(data.get("test"), str):
            data = {**data, "test": [data["test"]]}  # one test set may be written as a plain path
        return data

    def _check_splits(self) -> None:
        if self.val_first is not None and self.val is None:
            raise KeyedError("val_first", "needs data.val (the folder to take the images from); set val or drop it")
        train = {_norm(t) for t in self.train or []}
        if self.val is not None and self.val_first is None and _norm(self.val) in train:
            raise KeyedError(
                "val",
                f"{self.val} is also a training folder, so validation would score trained images; set data.val_first: "
                "N to hold out its first N images, or validate on another folder",
            )
        for i, t in enumerate(self.test or []):
            if _norm(t) in train or (self.val is not None and _norm(t) == _norm(self.val)):
                raise KeyedError(
                    f"test[{i}]",
                    f"{t} is also a training or validation folder; a test set must be held out, so use another",
                )

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        self._check_splits()
        if self.hr_patch is not None and self.patch_sizes is not None:
            raise KeyedError("patch_sizes", "give hr_patch or patch_sizes, not both; drop one")
        sizes = [("hr_patch", self.hr_patch)] if self.patch_sizes is None else []
        sizes += [(f"patch_sizes[{i}]", s) for i, s in enumerate(self.patch_sizes or [])]
        for key, side in sizes:
            # The Laplacian KD loss halves the patch 4 times; LR = HR / scale must be whole.
            if side is None or side <= 0 or side % 16 or side % self.scale:
                step = math.lcm(16, self.scale)
                lo, hi = max(step, (side or 0) // step * step), ((side or 0) // step + 1) * step
                raise KeyedError(
                    key,
                    f"HR patch {side} must be a positive multiple of 16 and of scale {self.scale}; use e.g. "
                    f"{lo} or {hi}",
                )
        if self.patch_sizes is not None:
            bounds = self.patch_boundaries or []
            if len(bounds) != len(self.patch_sizes) - 1:
                raise KeyedError(
                    "patch_boundaries",
                    f"needs {len(self.patch_sizes) - 1} step(s) for {len(self.patch_sizes)} patch sizes, "
                    f"got {len(bounds)}; give one boundary between each pair of sizes",
                )
            if any(b <= 0 for b in bounds) or any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)):
                raise KeyedError("patch_boundaries", f"{bounds} must be positive and increasing; fix them")
        elif self.patch_boundaries:
            raise KeyedError("patch_boundaries", "only used with patch_sizes; drop it or give patch_sizes")
        if self.cache.enabled and self.patch_sizes is not None and len(set(self.patch_sizes)) > 1:
            raise KeyedError(
                "cache.enabled",
                "the teacher-output cache holds patches of one size, but patch_sizes is a curriculum; set "
                "data.cache.enabled: false, or train on one hr_patch",
            )
        return self

    def patch_at(self, step: int) -> int:
        """HR patch side used at training step ``step`` (0-based)."""
        if self.patch_sizes is None:
            assert self.hr_patch is not None
            return self.hr_patch
        stage = sum(step >= b for b in self.patch_boundaries or [])
        return self.patch_sizes[stage]


def _check_milestones(milestones: list[int], steps: int) -> None:
    if any(m <= 0 or m >= steps for m in milestones) or any(
        a >= b for a, b in zip(milestones, milestones[1:], strict=False)
    ):
        raise KeyedError(
            "milestones", f"{milestones} must be increasing steps between 1 and steps - 1 ({steps - 1}); fix them"
        )


class PruneSpec(SpecModel):
    """Stage 1: L1-penalised fine-tuning of the teacher with OBProx-SG, giving the density d."""

    enabled: bool = Field(True, description="prune the teacher; false needs density (or no paper-rule seed)")
    steps: int = Field(100_000, ge=1, description="optimizer steps")
    lr: float = Field(5e-3, gt=0, description="learning rate")
    lambda_: float = Field(1e-4, ge=0, alias="lambda", description="L1 penalty weight")
    epsilon: float = Field(1e-4, ge=0, description="Orthant-step zeroing threshold")
    batch_size: int = Field(16, ge=1, description="patches per step")
    milestones: list[int] = Field(default_factory=list, description="steps at which lr is multiplied by gamma")
    gamma: float = Field(0.5, gt=0, le=1, description="lr factor at each milestone")
    np_epochs: int | None = Field(
        None,
        ge=0,
        description="Prox-SG epochs before the Orthant phase; null = epochs / 10 (must not round to 0); "
        "0 = Orthant steps only",
    )
    quirk_epoch_in_samples: bool = Field(
        False, description="count epochs in samples like the authors' code (the Orthant phase never starts)"
    )
    n_images: int | None = Field(
        None,
        ge=1,
        description="prune on n training images, a seeded draw (the authors use 100 of DIV2K); an epoch is one "
        "pass over them; null = all",
    )
    density: float | None = Field(
        None, gt=0, le=1, description="skip pruning and use this density (non-zero fraction of deep weights)"
    )

    @model_validator(mode="after")
    def _check(self) -> PruneSpec:
        _check_milestones(self.milestones, self.steps)
        return self

    @property
    def runs(self) -> bool:
        """Whether stage 1 runs: enabled and no density given."""
        return self.enabled and self.density is None


class TrainingSpec(SpecModel):
    """Stage 3: knowledge distillation of each trial's student (all steps and intervals in optimizer steps)."""

    steps: int = Field(800_000, ge=1, description="optimizer steps per trial")
    batch_size: int = Field(16, ge=1, description="global batch (split across the trial's workers)")
    optimizer: Literal["adam", "adamax"] = Field("adam", description="the authors' code: adam; the paper: adamax")
    lr: float = Field(1e-4, gt=0, description="learning rate when kd_space.lr is not given")
    milestones: list[int] = Field(default_factory=list, description="steps at which lr is multiplied by gamma")
    gamma: float = Field(0.5, gt=0, le=1, description="lr factor at each milestone")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the weights; 0 = off")
    val_every: int = Field(5000, ge=1, description="validate (and report val_psnr_y) every n steps")
    log_every: int = Field(100, ge=1, description="loss logging of in-process runs; trials report every val_every")
    ckpt_every: int = Field(10_000, ge=1, description="checkpoint every n steps (a multiple of val_every)")

    @model_validator(mode="after")
    def _check(self) -> TrainingSpec:
        _check_milestones(self.milestones, self.steps)
        # Trials report (a collective ray.train.report on every rank) every val_every steps; rank 0 also reports
        # at its checkpoints. A checkpoint step off that cadence would be a report the other ranks never make:
        # a multi-worker trial would hang there.
        if self.ckpt_every % self.val_every:
            raise KeyedError(
                "ckpt_every",
                f"{self.ckpt_every} is not a multiple of val_every ({self.val_every}); trials report every val_every "
                f"steps on every rank and checkpoint at reports, so use a multiple of {self.val_every}",
            )
        return self


def _use_gpu(value: Any) -> Any:
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError(f"expected auto, true or false, got {value!r}; use one of them")


class ResourcesSpec(SpecModel):
    """Ray resources of one trial (a Ray Train run with ``workers_per_trial`` workers)."""

    workers_per_trial: int = Field(1, ge=1, description="data-parallel workers per trial")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker")
    gpus_per_worker: float | None = Field(None, ge=0, description="GPUs per worker; null = 1 if GPUs used else 0")
    use_gpu: Annotated[Literal["auto"] | bool, BeforeValidator(_use_gpu)] = Field(
        "auto", description="auto: use GPUs when the cluster has them"
    )
    trial_runner: Literal["auto", "trainer"] = Field(
        "auto",
        description="auto: a one-worker trial trains inside its Tune trial (no TorchTrainer start-up, ~12 s less "
        "per trial); trainer: every trial launches a Ray Train TorchTrainer run",
    )

    @model_validator(mode="after")
    def _check(self) -> ResourcesSpec:
        if self.use_gpu is False and self.gpus_per_worker:
            raise KeyedError("gpus_per_worker", "must be 0 or null with use_gpu: false; drop it or set use_gpu")
        if self.use_gpu is True and self.gpus_per_worker == 0:
            raise KeyedError("gpus_per_worker", "is 0 with use_gpu: true; set it > 0 or drop it")
        return self


class SchedulerSpec(SpecModel):
    """Early stopping of weak trials on the validation PSNR."""

    type: Literal["asha", "none"] = Field(
        "none",
        description="asha: stop weak trials early (with several objectives MO-ASHA: a rung ranks trials by "
        "non-dominated sorting over them, so cheap trials are not stopped for a lower PSNR); none: run all",
    )
    grace_period: int = Field(1, ge=1, description="validation reports before a trial can be stopped")
    reduction_factor: float = Field(4.0, gt=1, description="ASHA keeps 1/reduction_factor of trials per rung")
    metric: Literal["val_psnr_y"] = Field(
        "val_psnr_y", description="reported metric it compares (maximized) with a single objective"
    )


class SearchSpec(SpecModel):
    """The multi-objective search (Ray Tune + Optuna)."""

    algorithm: Literal["nsga2", "motpe", "random"] = Field(
        "motpe", description="Optuna sampler: motpe (multivariate MO-TPE), nsga2 (NSGA-II) or random (a baseline)"
    )
    num_samples: int = Field(32, ge=1, description="trials in all (the paper-rule seed included)")
    max_concurrent_trials: int | None = Field(
        None,
        ge=1,
        description="null = what the cluster holds at its autoscaling maximum (else now); trials that do not fit "
        "yet wait as resource requests, so the autoscaler adds nodes",
    )
    population_size: int | None = Field(None, ge=2, description="NSGA-II population; null = max(4, num_samples/3)")
    skip_infeasible: bool = Field(
        True,
        description="the searcher answers over-budget draws itself (recorded as infeasible runs, never trained) "
        "and draws again, so every trial trains a feasible model; false: they use up trials",
    )
    dedupe: bool = Field(True, description="answer a draw identical to a trained trial with its result, not a rerun")
    optuna_storage: str | None = Field(
        None,
        description="the Optuna study's database URL (sqlite:///..., postgresql://...; ${VAR} expanded); null = "
        "sqlite at <storage.path>/<name>/optuna.db. The study is named after the job; open it with "
        "optuna.load_study or optuna-dashboard",
    )
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    enqueue_paper_rule: bool = Field(True, description="seed the search with the paper's C/L/B allocation")
    seed: int | None = Field(None, ge=0, description="sampler seed; null = the top-level seed")
    kd_twin: bool | Literal["pareto"] | list[str] = Field(
        False,
        description="after the search, train each Pareto-optimal KD student again on ground truth alone (same "
        "steps, init and batches) and log kd_gain_db = its PSNR - the twin's on the trial run; true or 'pareto' = "
        "every front model, a list = those trial (run) names; false = none. Doubles the front's training time",
    )

    @field_validator("optuna_storage")
    @classmethod
    def _expand_storage(cls, value: str | None) -> str | None:
        return env_only(value)

    @field_validator("kd_twin", mode="before")
    @classmethod
    def _twin_choice(cls, value: Any) -> Any:
        if isinstance(value, bool) or value is None or value == "pareto":
            return bool(value) if value is None else value
        if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
            if len(set(value)) != len(value):
                raise ValueError("kd_twin lists a trial name twice; give each name once")
            return [v.strip() for v in value]
        raise ValueError(
            f"kd_twin must be true, false, 'pareto' or a non-empty list of trial names, got {value!r}; "
            "write e.g. kd_twin: true"
        )

    @property
    def twin_selection(self) -> str | tuple[str, ...] | None:
        """Which trials get a KD twin: ``"pareto"`` (the front), trial names, or None (no twins)."""
        if self.kd_twin is True or self.kd_twin == "pareto":
            return "pareto"
        if isinstance(self.kd_twin, list):
            return tuple(self.kd_twin)
        return None


class TrackingSpec(SpecModel):
    """MLflow tracking."""

    uri: str | None = Field(
        None,
        description="the MLflow store: a folder, a .db file or a URI (${VAR} expanded; a relative path resolves "
        "against the spec's folder); null = sqlite under storage.path",
    )
    experiment: str | None = Field(None, description="experiment name; null = the job name")

    @field_validator("uri")
    @classmethod
    def _expand(cls, value: str | None, info: ValidationInfo) -> str | None:
        value = env_only(value)
        # The one store resolver (srcompress --store takes the same forms).
        return None if value is None else store_uri(value, base=(info.context or {}).get("base_dir"))


class StorageSpec(SpecModel):
    """Where Ray results, checkpoints and the default MLflow store go."""

    path: InputPath = Field(
        "./srcompress_runs",
        validate_default=True,
        description="folder or URI (s3://, gs://, file://); a relative path resolves against the spec's folder, "
        "like every other path of the spec",
    )


class FailureSpec(SpecModel):
    """Retries of failed trials."""

    max_failures: int = Field(0, ge=-1, description="retries per trial (from its checkpoint); -1 = unlimited")
