"""Job spec: one YAML file -> a frozen, validated :class:`JobSpec`.

A job spec holds everything one ``srcompress run`` does: the teacher, the student family and its search space,
budgets and objectives, data, pruning, distillation, Ray resources, the search algorithm, MLflow tracking and
storage. Each section is a frozen pydantic model that forbids unknown keys. Every problem is a
:class:`SpecError` with one line, ``file:line: dotted.key: cause; fix``. Line numbers come from the YAML node
tree (``yaml.compose``), so they point at the offending key.

Paths and the ``../shared`` fallback:

- Input paths (``teacher.weights``, ``data.train``, ``data.val``) expand ``${VAR}``, ``${VAR:-default}`` and
  ``~``, then resolve against the spec file's folder when relative.
- ``storage.path`` expands the same way but resolves against the current directory: results belong where the
  user runs the job, not next to a packaged spec.
- URIs (``s3://...``) are kept as written.
- Whether the paths exist is checked by :func:`check_paths`, apart from validation, so validating needs no files.
  There ``teacher.if_missing: train`` and ``data.if_missing: builtin`` turn a missing path into the documented
  fallback: train the teacher briefly, or use the scikit-image sample images. That is how ``demo.yaml`` writes
  ``${SRCOMPRESS_SHARED:-../../shared}/weights/IMDN_x2.pth``: it uses the project's ``shared`` folder when it
  is there and still runs when it is not.

Sizes (``budgets.max_params``, ``budgets.max_macs``) accept ``100k``, ``1.2M``, ``20G`` (decimal multipliers).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import types
import typing
import warnings
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sr.errors import ConfigError

__all__ = [
    "BudgetsSpec",
    "CSDSpec",
    "CacheSpec",
    "Choice",
    "DataSpec",
    "FailureSpec",
    "JobSpec",
    "KDSpace",
    "Objective",
    "PruneSpec",
    "Range",
    "ResourcesSpec",
    "SchedulerSpec",
    "SearchSpec",
    "SpecError",
    "StorageSpec",
    "StudentSpec",
    "TeacherFallback",
    "TeacherSpec",
    "TrackingSpec",
    "TrainingSpec",
    "check_paths",
    "load_job_spec",
    "parse_job_spec",
    "parse_size",
    "spec_hash",
]

log = logging.getLogger(__name__)


class SpecError(ConfigError):
    """A problem in a job spec, as one line: ``file:line: dotted.key: cause; fix``.

    Attributes:
        source: the spec file (or ``<string>``).
        line: 1-based line of the offending key (None when there is no line, e.g. a missing file).
        key: dotted key (``training.steps``, ``objectives[0].metric``), empty for whole-file problems.
    """

    def __init__(self, message: str, *, source: str = "", line: int | None = None, key: str = "") -> None:
        super().__init__(message)
        self.source = source
        self.line = line
        self.key = key


class _KeyedError(ValueError):
    """A validator's error about one key, relative to the model that raises it (``key`` is dotted)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# ------------------------------------------------------------------------------------------------ value helpers

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(value: int | float | str) -> int:
    """Parse a positive count written as ``100000``, ``"100k"``, ``"1.2M"`` or ``"20G"`` into an int.

    Multipliers are decimal (k = 1e3, M = 1e6, G = 1e9, T = 1e12) and case-insensitive; the result must be a
    whole number.

    Raises:
        ValueError: not a size, not whole, or not positive (the message says how to write one).
    """
    how = "write an integer or a number with k, M, G or T (e.g. 100k, 1.2M, 20G)"
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; {how}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number; {how}")
        n = int(value)
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m is None:
            raise ValueError(f"{value!r} is not a size; {how}")
        try:
            exact = Decimal(m.group(1)) * _SIZE_MULT[m.group(2).lower()]
        except InvalidOperation:  # pragma: no cover - the regex admits only decimals
            raise ValueError(f"{value!r} is not a size; {how}") from None
        if exact != exact.to_integral_value():
            raise ValueError(f"{value!r} is not a whole number; {how}")
        n = int(exact)
    else:
        raise ValueError(f"{value!r} is not a size; {how}")
    if n <= 0:
        raise ValueError(f"{value!r} must be positive; {how}")
    return n


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: str) -> str:
    """``${VAR}`` -> its value (error when unset); ``${VAR:-default}`` -> default when VAR is unset or empty."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = os.environ.get(name)
        if got:
            return got
        if default is not None:
            return default
        raise ValueError(f"environment variable {name} is not set; export it or write ${{{name}:-default}} in the spec")

    return _ENV_RE.sub(sub, value)


def _is_uri(value: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value) is not None


def _resolve(value: str, base: Path | str | None) -> str:
    value = os.path.expanduser(_expand_env(value))
    if _is_uri(value):
        return value
    if not os.path.isabs(value):
        value = os.path.join(base or os.getcwd(), value)
    return os.path.normpath(value)


def _input_path(value: str, info: ValidationInfo) -> str:
    # Inputs live next to the spec (context base_dir, set by parse_job_spec); else the current directory.
    return _resolve(value, (info.context or {}).get("base_dir"))


def _output_path(value: str, info: ValidationInfo) -> str:
    return _resolve(value, (info.context or {}).get("cwd"))


def _env_only(value: str | None) -> str | None:
    if value is None:
        return None
    out = _expand_env(value)
    return out or None  # "${MLFLOW_TRACKING_URI:-}" with the variable unset means "not given"


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}; write e.g. 8 or 1.0e-4")
    return value


def _positive_size(value: Any) -> Any:
    return None if value is None else parse_size(value)


InputPath = Annotated[str, AfterValidator(_input_path)]
OutputPath = Annotated[str, AfterValidator(_output_path)]
Number = Annotated[int | float, BeforeValidator(_number)]
Size = Annotated[int | None, BeforeValidator(_positive_size)]
Scalar = bool | int | float | str


# ----------------------------------------------------------------------------------------------------- sections


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)


class Range(_Model):
    """A searched numeric dimension; integer when ``low``, ``high`` (and ``step``) are integers, else float."""

    low: Number = Field(description="smallest value (inclusive)")
    high: Number = Field(description="largest value (inclusive)")
    step: Number | None = Field(None, description="grid step (integers: default 1); not with log")
    log: bool = Field(False, description="sample uniformly in log space; needs low > 0")

    @model_validator(mode="after")
    def _check(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high}); swap them")
        if self.step is not None and self.step <= 0:
            raise _KeyedError("step", f"step must be > 0, got {self.step}; use a positive step")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna samples a grid or a log scale); drop one")
        if self.log and self.low <= 0:
            raise _KeyedError("low", f"log scale needs low > 0, got {self.low}; raise low or drop log")
        if self.is_int and self.step is not None and (self.high - self.low) % self.step:
            raise _KeyedError(
                "high",
                f"high - low ({self.high - self.low}) is not a multiple of step ({self.step}); adjust high",
            )
        return self

    @property
    def is_int(self) -> bool:
        """True when every bound (and the step) is an int: the dimension is sampled as integers."""
        return all(isinstance(v, int) for v in (self.low, self.high, self.step) if v is not None)


class Choice(_Model):
    """A searched categorical dimension."""

    choices: list[Scalar] = Field(min_length=1, description="the values to choose from")


def _dim_shape(value: Any) -> Any:
    if isinstance(value, dict | Range | Choice | bool | int | float | str):
        return value
    raise ValueError(
        f"expected a fixed value, {{low, high[, step][, log]}} or {{choices: [...]}}, got {value!r}; write one of those"
    )


def _dim_tag(value: Any) -> str:
    if isinstance(value, Range):
        return "range"
    if isinstance(value, Choice):
        return "choice"
    if isinstance(value, dict):
        return "choice" if "choices" in value else "range"
    return "fixed"


def _num_shape(value: Any) -> Any:
    if isinstance(value, dict | Range) or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    raise ValueError(f"expected a number or {{low, high[, log]}}, got {value!r}; write one of those")


# A knob dimension: fixed value, numeric range or categorical choice.
Dim = Annotated[
    Annotated[Range, Tag("range")] | Annotated[Choice, Tag("choice")] | Annotated[Scalar, Tag("fixed")],
    Discriminator(_dim_tag),
    BeforeValidator(_dim_shape),
]
# A numeric dimension: fixed number or range (the KD weights and learning rate).
NumDim = Annotated[
    Annotated[Range, Tag("range")] | Annotated[float, Tag("fixed")],
    Discriminator(lambda v: "range" if isinstance(v, dict | Range) else "fixed"),
    BeforeValidator(_num_shape),
]


class TeacherFallback(_Model):
    """How to train a teacher when there are no weights (``weights: null``, or missing with ``if_missing: train``).

    The demo uses it when the project's ``shared`` folder is absent.
    """

    arch: str | None = Field(
        None, description="variant to train; null = teacher.arch (a different one is built with its defaults)"
    )
    steps: int = Field(300, ge=1, description="training steps (batches)")
    lr: float = Field(5e-4, gt=0, description="Adam learning rate")
    batch_size: int = Field(8, ge=1, description="patches per step")


class TeacherSpec(_Model):
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


class KDSpace(_Model):
    """Distillation weights and learning rate: each a fixed number or a range to search.

    The loss is ``w_gt * L1(S, HR) + w_lap * Lap(S, T) + w_hf * Lap(S - G(S), T - G(T))`` (the authors' code:
    w_gt 0.1, w_lap 1, w_hf 1).
    """

    w_gt: NumDim = Field(0.1, description="weight of the ground-truth L1 term")
    w_lap: NumDim = Field(1.0, description="weight of the Laplacian-pyramid term Lap(S, T)")
    w_hf: NumDim = Field(1.0, description="weight of the high-frequency term Lap(S - blur S, T - blur T)")
    lr: NumDim | None = Field(None, description="learning rate; null = training.lr")

    @model_validator(mode="after")
    def _check(self) -> KDSpace:
        for name in ("w_gt", "w_lap", "w_hf", "lr"):
            dim = getattr(self, name)
            low = dim.low if isinstance(dim, Range) else dim
            if low is not None and low < 0:
                raise _KeyedError(name, f"{name} must be >= 0, got {low}; use a non-negative value")
        if isinstance(self.lr, float) and self.lr <= 0 or isinstance(self.lr, Range) and self.lr.low <= 0:
            raise _KeyedError("lr", "lr must be > 0; use a positive learning rate")
        return self


class StudentSpec(_Model):
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
    if value is None or _expand_env(value) == "random":
        return None if value is None else "random"
    return _input_path(value, info)


class CSDSpec(_Model):
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


class BudgetsSpec(_Model):
    """Hard limits; a sampled config over any of them is infeasible and is not trained."""

    max_params: Size = Field(None, description="parameter count, e.g. 100k or 1.2M")
    max_macs: Size = Field(None, description="multiply-accumulates per image, e.g. 20G")
    macs_convention: Literal["720p", "lr256"] = Field(
        "720p", description="720p: a 1280x720 output (the paper's FLOPs column); lr256: a 256x256 LR input"
    )
    max_latency_ms: float | None = Field(None, gt=0, description="forward time per image in ms")
    latency_device: Literal["cpu", "cuda"] = Field("cpu", description="where latency is measured")


_NATURAL_MODE = {"psnr_y": "max", "macs": "min", "params": "min", "latency_ms": "min"}


class Objective(_Model):
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
            raise _KeyedError("mode", f"{self.metric} can only be {want}imized; use mode: {want}")
        return self


def _default_objectives() -> list[Objective]:
    return [Objective(metric="psnr_y", mode="max"), Objective(metric="macs", mode="min")]


class CacheSpec(_Model):
    """Teacher-output cache: a fixed pool of patches whose teacher outputs are computed once per job."""

    enabled: bool = Field(False, description="on: trials read cached teacher outputs (no teacher forward)")
    n_patches: int = Field(2048, ge=1, description="patches in the pool")


class DataSpec(_Model):
    """Training and validation images and how patches are cut."""

    train: list[InputPath] | None = Field(
        None, min_length=1, description="folders/images (DIV2K root ok); null = scikit-image sample images"
    )
    val: InputPath | None = Field(None, description="benchmark folder (e.g. Set5); null = scikit-image images")
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
    cache: CacheSpec = Field(default_factory=CacheSpec)

    @model_validator(mode="before")
    @classmethod
    def _default_patch(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("hr_patch") is None and data.get("patch_sizes") is None:
            data = {**data, "hr_patch": 96}
        return data

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        if self.hr_patch is not None and self.patch_sizes is not None:
            raise _KeyedError("patch_sizes", "give hr_patch or patch_sizes, not both; drop one")
        sizes = [("hr_patch", self.hr_patch)] if self.patch_sizes is None else []
        sizes += [(f"patch_sizes[{i}]", s) for i, s in enumerate(self.patch_sizes or [])]
        for key, side in sizes:
            # The Laplacian KD loss halves the patch 4 times; LR = HR / scale must be whole.
            if side is None or side <= 0 or side % 16 or side % self.scale:
                raise _KeyedError(
                    key, f"HR patch {side} must be a positive multiple of 16 and of scale {self.scale}; e.g. 96"
                )
        if self.patch_sizes is not None:
            bounds = self.patch_boundaries or []
            if len(bounds) != len(self.patch_sizes) - 1:
                raise _KeyedError(
                    "patch_boundaries",
                    f"needs {len(self.patch_sizes) - 1} step(s) for {len(self.patch_sizes)} patch sizes, "
                    f"got {len(bounds)}; give one boundary between each pair of sizes",
                )
            if any(b <= 0 for b in bounds) or any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)):
                raise _KeyedError("patch_boundaries", f"{bounds} must be positive and increasing; fix them")
        elif self.patch_boundaries:
            raise _KeyedError("patch_boundaries", "only used with patch_sizes; drop it or give patch_sizes")
        if self.cache.enabled and self.patch_sizes is not None and len(set(self.patch_sizes)) > 1:
            raise _KeyedError(
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
        raise _KeyedError(
            "milestones", f"{milestones} must be increasing steps between 1 and steps - 1 ({steps - 1}); fix them"
        )


class PruneSpec(_Model):
    """Stage 1: L1-penalised fine-tuning of the teacher with OBProx-SG, giving the density d."""

    enabled: bool = Field(True, description="prune the teacher; false needs density (or no paper-rule seed)")
    steps: int = Field(100_000, ge=1, description="optimizer steps")
    lr: float = Field(5e-3, gt=0, description="learning rate")
    lambda_: float = Field(1e-4, ge=0, alias="lambda", description="L1 penalty weight")
    epsilon: float = Field(1e-4, ge=0, description="Orthant-step zeroing threshold")
    batch_size: int = Field(16, ge=1, description="patches per step")
    milestones: list[int] = Field(default_factory=list, description="steps at which lr is multiplied by gamma")
    gamma: float = Field(0.5, gt=0, le=1, description="lr factor at each milestone")
    np_epochs: int | None = Field(None, ge=0, description="Prox-SG epochs before the Orthant phase; null = epochs / 10")
    quirk_epoch_in_samples: bool = Field(
        False, description="count epochs in samples like the authors' code (the Orthant phase never starts)"
    )
    n_images: int | None = Field(
        None, ge=1, description="prune on the first n training images (the authors use 100 of DIV2K)"
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


class TrainingSpec(_Model):
    """Stage 3: knowledge distillation of each trial's student (all steps and intervals in optimizer steps)."""

    steps: int = Field(800_000, ge=1, description="optimizer steps per trial")
    batch_size: int = Field(16, ge=1, description="global batch (split across the trial's workers)")
    optimizer: Literal["adam", "adamax"] = Field("adam", description="the authors' code: adam; the paper: adamax")
    lr: float = Field(1e-4, gt=0, description="learning rate when kd_space.lr is not given")
    milestones: list[int] = Field(default_factory=list, description="steps at which lr is multiplied by gamma")
    gamma: float = Field(0.5, gt=0, le=1, description="lr factor at each milestone")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the weights; 0 = off")
    val_every: int = Field(5000, ge=1, description="validate (and report val_psnr_y) every n steps")
    log_every: int = Field(100, ge=1, description="report the training loss every n steps")
    ckpt_every: int = Field(10_000, ge=1, description="checkpoint every n steps (a multiple of log_every)")

    @model_validator(mode="after")
    def _check(self) -> TrainingSpec:
        _check_milestones(self.milestones, self.steps)
        if self.ckpt_every % self.log_every:
            raise _KeyedError(
                "ckpt_every",
                f"{self.ckpt_every} is not a multiple of log_every ({self.log_every}); checkpoints are written "
                f"at report steps, so use a multiple",
            )
        return self


def _use_gpu(value: Any) -> Any:
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError(f"expected auto, true or false, got {value!r}; use one of them")


class ResourcesSpec(_Model):
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
            raise _KeyedError("gpus_per_worker", "must be 0 or null with use_gpu: false; drop it or set use_gpu")
        if self.use_gpu is True and self.gpus_per_worker == 0:
            raise _KeyedError("gpus_per_worker", "is 0 with use_gpu: true; set it > 0 or drop it")
        return self


class SchedulerSpec(_Model):
    """Early stopping of weak trials on the validation PSNR."""

    type: Literal["asha", "none"] = Field("none", description="asha: stop weak trials early; none: run all")
    grace_period: int = Field(1, ge=1, description="validation reports before a trial can be stopped")
    reduction_factor: float = Field(4.0, gt=1, description="ASHA keeps 1/reduction_factor of trials per rung")
    metric: Literal["val_psnr_y"] = Field("val_psnr_y", description="reported metric it compares (maximized)")


class SearchSpec(_Model):
    """The multi-objective search (Ray Tune + Optuna)."""

    algorithm: Literal["nsga2", "motpe", "random"] = Field(
        "motpe", description="Optuna sampler: motpe (multivariate MO-TPE), nsga2 (NSGA-II) or random (a baseline)"
    )
    num_samples: int = Field(32, ge=1, description="trials in all (the paper-rule seed included)")
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="null = derived from the cluster's free resources"
    )
    population_size: int | None = Field(None, ge=2, description="NSGA-II population; null = max(4, num_samples/3)")
    skip_infeasible: bool = Field(
        True,
        description="the searcher answers over-budget draws itself (recorded as infeasible runs, never trained) "
        "and draws again, so every trial trains a feasible model; false: they use up trials",
    )
    dedupe: bool = Field(True, description="answer a draw identical to a trained trial with its result, not a rerun")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    enqueue_paper_rule: bool = Field(True, description="seed the search with the paper's C/L/B allocation")
    seed: int | None = Field(None, ge=0, description="sampler seed; null = the top-level seed")


class TrackingSpec(_Model):
    """MLflow tracking."""

    uri: str | None = Field(None, description="tracking URI (${VAR} expanded); null = sqlite under storage.path")
    experiment: str | None = Field(None, description="experiment name; null = the job name")

    @field_validator("uri")
    @classmethod
    def _expand(cls, value: str | None) -> str | None:
        return _env_only(value)


class StorageSpec(_Model):
    """Where Ray results, checkpoints and the default MLflow store go."""

    path: OutputPath = Field(
        "./srcompress_runs",
        validate_default=True,
        description="folder or URI; relative paths resolve against the current directory",
    )


class FailureSpec(_Model):
    """Retries of failed trials."""

    max_failures: int = Field(0, ge=-1, description="retries per trial (from its checkpoint); -1 = unlimited")


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class JobSpec(_Model):
    """A whole ``srcompress run`` job (see the module docstring and ``search_spaces/demo.yaml``)."""

    name: str = Field(description="experiment name: letters, digits, _ . - (Ray and MLflow names)")
    seed: int = Field(0, ge=0, description="global seed")
    teacher: TeacherSpec
    student: StudentSpec
    budgets: BudgetsSpec = Field(default_factory=BudgetsSpec)
    objectives: list[Objective] = Field(default_factory=_default_objectives, min_length=1)
    data: DataSpec = Field(default_factory=DataSpec)
    prune: PruneSpec = Field(default_factory=PruneSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    csd: CSDSpec | None = Field(None, description="CSD settings (student.method: csd); null = the defaults")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)

    _source: str | None = PrivateAttr(None)
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not a valid name; use up to 100 letters, digits, '_', '.' or '-' "
                f"(it names Ray runs and the MLflow experiment)"
            )
        return value

    @field_validator("objectives")
    @classmethod
    def _unique_objectives(cls, value: list[Objective]) -> list[Objective]:
        metrics = [o.metric for o in value]
        for i, m in enumerate(metrics):
            if m in metrics[:i]:
                raise _KeyedError(f"[{i}].metric", f"{m} is listed twice; keep one")
        return value

    @model_validator(mode="after")
    def _check_semantics(self) -> JobSpec:
        _check_csd(self)
        if self.teacher.scale is not None and self.teacher.scale != self.data.scale:
            raise _KeyedError(
                "teacher.scale",
                f"{self.teacher.scale} differs from data.scale ({self.data.scale}); make them equal or drop it",
            )
        if self.search.enqueue_paper_rule and not self.prune.enabled and self.prune.density is None:
            raise _KeyedError(
                "prune.density",
                "the paper-rule seed needs a density but pruning is off; give prune.density, "
                "enable pruning, or set search.enqueue_paper_rule: false",
            )
        sched = self.search.scheduler
        reports = self.training.steps // self.training.val_every
        if sched.type == "asha" and sched.grace_period > reports:
            raise _KeyedError(
                "search.scheduler.grace_period",
                f"{sched.grace_period} exceeds the validation reports per trial ({reports} = training.steps / "
                f"training.val_every); lower it",
            )
        if self.tracking.uri is None and _is_uri(self.storage.path):
            raise _KeyedError("tracking.uri", "is needed when storage.path is a URI (no local sqlite store); set it")
        _check_models(self)
        return self

    # ---- derived values
    @property
    def source(self) -> str | None:
        """The spec file this came from (None when built in code)."""
        return self._source

    @property
    def tracking_uri(self) -> str:
        """``tracking.uri``, or ``sqlite:///<storage.path>/mlflow.db``."""
        return self.tracking.uri or f"sqlite:///{os.path.join(self.storage.path, 'mlflow.db')}"

    @property
    def csd_settings(self) -> CSDSpec:
        """``csd``, or its defaults when the section is absent."""
        return self.csd or CSDSpec()

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def search_seed(self) -> int:
        return self.seed if self.search.seed is None else self.search.seed

    def to_flat_dict(self) -> dict[str, Any]:
        """Dotted keys -> scalar values (``training.steps``, ``objectives.0.metric``), e.g. for MLflow params.

        Lists of scalars stay lists; lists of mappings are indexed.
        """
        out: dict[str, Any] = {}
        _flatten(self.model_dump(mode="json", by_alias=True), "", out)
        return out

    def spec_hash(self, *, length: int = 12) -> str:
        """Short SHA-256 of the validated spec (paths resolved); equal specs hash equal."""
        return spec_hash(self, length=length)


def spec_hash(spec: JobSpec, *, length: int = 12) -> str:
    """Short SHA-256 (hex) of the canonical JSON of ``spec``; key order and YAML formatting do not matter."""
    text = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        if not value and prefix:
            out[prefix] = {}
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}.{i}", out)
    else:
        out[prefix] = value


# ------------------------------------------------------------------------------------- registry-aware checks


def _knob_kind_ok(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return True  # no default to compare with


def _check_knob(key: str, default: Any, dim: Any) -> None:
    kind = type(default).__name__
    if isinstance(dim, Range):
        if isinstance(default, bool | str):
            raise _KeyedError(key, f"takes {kind} values, not a range; use a fixed value or {{choices: [...]}}")
        if isinstance(default, int) and not dim.is_int:
            raise _KeyedError(key, "is an integer knob; use integer low, high and step")
        return
    values = dim.choices if isinstance(dim, Choice) else [dim]
    for v in values:
        if default is not None and not _knob_kind_ok(default, v):
            raise _KeyedError(key, f"takes {kind} values, got {v!r}; use a {kind}")


def _check_models(spec: JobSpec) -> None:
    """Architecture names and knobs against the ``sr.models`` registry."""
    try:
        import sr.models as models
    except ImportError as exc:  # pragma: no cover - sr.models exists in this repo
        # TODO(lead): drop this fallback once sr.models always imports; the names are then unchecked.
        warnings.warn(f"sr.models not importable ({exc}); architecture names were not checked", stacklevel=2)
        return
    variants = models.list_variants()
    archs = [("teacher.arch", spec.teacher.arch), ("student.arch", spec.student.arch)]
    if spec.teacher.fallback.arch is not None:
        archs.append(("teacher.fallback.arch", spec.teacher.fallback.arch))
    for key, arch in archs:
        if arch not in variants:
            raise _KeyedError(key, f"unknown architecture {arch!r} (valid: {', '.join(variants)}); fix the name")

    def knobs_of(arch: str) -> dict[str, Any]:
        return dict(models.get_family(models.family_of(arch)).knobs)

    for prefix, arch, given in (
        ("teacher.set", spec.teacher.arch, spec.teacher.set),
        ("student.space", spec.student.arch, spec.student.space),
    ):
        knobs = knobs_of(arch)
        family = models.family_of(arch)
        for name, dim in given.items():
            key = f"{prefix}.{name}"
            if name == "scale":
                raise _KeyedError(key, "the scale comes from data.scale; drop it here")
            if name not in knobs:
                valid = ", ".join(k for k in knobs if k != "scale")
                raise _KeyedError(key, f"unknown knob for {arch} (family {family}; valid: {valid}); fix the name")
            _check_knob(key, knobs[name], dim)

    # SwinIR splits C over the attention heads, so every sampled C must be a multiple of heads.
    if models.family_of(spec.student.arch) == "swinir":
        space = spec.student.space
        heads = space.get("heads", models.resolve_knobs(spec.student.arch).get("heads"))
        c_dim = space.get("C")
        if isinstance(heads, int) and not isinstance(heads, bool) and c_dim is not None:
            cs = (
                [c_dim.low, c_dim.step or 1]
                if isinstance(c_dim, Range)
                else c_dim.choices
                if isinstance(c_dim, Choice)
                else [c_dim]
            )
            if any(isinstance(c, int) and c % heads for c in cs):
                raise _KeyedError(
                    "student.space.C",
                    f"SwinIR needs C to be a multiple of heads ({heads}); use values (low and step) divisible "
                    f"by {heads}",
                )


def _check_csd(spec: JobSpec) -> None:
    """``student.method: csd``: an EDSR student, widths that slice whole channels, VGG weights for lambda_c > 0."""
    if spec.student.method != "csd":
        if spec.csd is not None:
            raise _KeyedError("csd", "is only read with student.method: csd; drop it or set the method")
        return
    import sr.models as models

    arch = spec.student.arch
    if arch in models.list_variants() and models.family_of(arch) != "edsr":
        raise _KeyedError(
            "student.method",
            f"csd slices an EDSR's channels, but {arch} is family {models.family_of(arch)}; use an edsr variant "
            "(e.g. edsr_baseline) or method: kd",
        )
    csd = spec.csd_settings
    # CSD distils the shared model into its own slice: the external teacher is only the report's reference.
    for key, on, fix in (
        ("prune.enabled", spec.prune.runs, "set prune.enabled: false"),
        ("data.cache.enabled", spec.data.cache.enabled, "set data.cache.enabled: false"),
        ("search.enqueue_paper_rule", spec.search.enqueue_paper_rule, "set search.enqueue_paper_rule: false"),
    ):
        if on:
            raise _KeyedError(key, f"CSD does not use the teacher's pruning, cache or paper-rule seed; {fix}")
    widths = csd.values("width")
    if isinstance(csd.width, Range):
        raise _KeyedError("csd.width", "must be a fixed value or {choices: [...]} (w*C must be whole); list them")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 < w < csd.teacher_width:
            raise _KeyedError(
                "csd.width", f"{w!r} must be a number in (0, teacher_width={csd.teacher_width}); e.g. 0.25"
            )
    c_dim = spec.student.space.get("C", models.resolve_knobs(arch).get("C") if arch in models.list_variants() else 0)
    if isinstance(c_dim, Range):
        cs = list(range(int(c_dim.low), int(c_dim.high) + 1, int(c_dim.step or 1)))
    else:
        cs = list(c_dim.choices) if isinstance(c_dim, Choice) else [c_dim]
    for c in cs:
        for w in (*widths, csd.teacher_width):
            if isinstance(c, int) and abs(w * c - round(w * c)) > 1e-6:
                raise _KeyedError(
                    "csd.width", f"width {w} of C={c} gives {w * c:g} channels, not a whole number; pick w = k/{c}"
                )
    lambdas = csd.values("lambda_c")
    if any(isinstance(v, bool) or not isinstance(v, int | float) or v < 0 for v in lambdas):
        raise _KeyedError("csd.lambda_c", f"values {lambdas} must be numbers >= 0; e.g. 200, or 0 to disable CL")
    if max(lambdas) > 0 and csd.vgg_weights is None:
        raise _KeyedError(
            "csd.vgg_weights",
            "lambda_c > 0 needs VGG19 weights for the contrastive loss; set csd.vgg_weights to torchvision's "
            "vgg19-dcbb9e9d.pth, or lambda_c: 0",
        )


# ----------------------------------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``; users write both)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _dotted(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _line_map(node: yaml.Node, prefix: list[str | int], out: dict[str, int], source: str) -> None:
    """Record the 1-based line of every key (``a.b``) and list item (``a[0]``); reject duplicate keys."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = [*prefix, key_node.value]
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise SpecError(
                    f"{source}:{line}: {_dotted(key)}: duplicate key; keep one",
                    source=source,
                    line=line,
                    key=_dotted(key),
                )
            seen.add(key_node.value)
            out[_dotted(key)] = line
            _line_map(value_node, key, out, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = [*prefix, i]
            out[_dotted(key)] = item.start_mark.line + 1
            _line_map(item, key, out, source)


def _line_of(lines: dict[str, int], parts: list[str | int]) -> int:
    for n in range(len(parts), 0, -1):
        line = lines.get(_dotted(parts[:n]))
        if line is not None:
            return line
    return 1


def _split_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    return parts


def _clean_loc(loc: tuple[str | int, ...], data: Any, err_type: str) -> list[str | int]:
    """Drop pydantic's union/tag markers from ``loc`` by walking the raw data along it."""
    out: list[str | int] = []
    cur = data
    for i, el in enumerate(loc):
        in_dict = isinstance(cur, dict) and el in cur
        in_list = isinstance(cur, list) and isinstance(el, int) and 0 <= el < len(cur)
        if in_dict or in_list:
            out.append(el)
            cur = cur[el]
        elif i == len(loc) - 1 and err_type in ("missing", "extra_forbidden"):
            out.append(el)
            cur = None
    return out


def _strip_type(tp: Any) -> Any:
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The section model at pydantic ``loc`` (tags included), to list its valid keys."""
    tp: Any = JobSpec
    for el in loc:
        tp = _strip_type(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next(
                (f for n, f in tp.model_fields.items() if el in (n, f.alias)),
                None,
            )
            if field is None:
                return None
            tp = field.annotation
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            tagged = [
                a
                for a in typing.get_args(tp)
                if typing.get_origin(a) is Annotated and any(isinstance(m, Tag) and m.tag == el for m in a.__metadata__)
            ]
            if not tagged:
                return None
            tp = tagged[0]
        elif typing.get_origin(tp) is list and isinstance(el, int):
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _strip_type(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(err: Any, loc: tuple[str | int, ...]) -> tuple[str, str]:
    """(relative key suffix, 'cause; fix') of one pydantic error dict."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, _KeyedError):
        return cause.key, str(cause)
    if kind == "extra_forbidden":
        bad = str(loc[-1])
        model = _model_at(loc[:-1])
        valid = [f.alias or n for n, f in model.model_fields.items()] if model is not None else []
        close = difflib.get_close_matches(bad, valid, n=1, cutoff=0.6)
        hint = f", did you mean {close[0]!r}?" if close else ""
        listing = f" (valid: {', '.join(valid)})" if valid else ""
        return "", f"unknown key{hint}{listing}; fix the key name"
    if kind == "missing":
        return "", "required key is missing; add it"
    if kind in ("value_error", "assertion_error") and cause is not None:
        return "", str(cause)
    if kind == "model_type":
        got = type(err.get("input")).__name__
        return "", f"expected a mapping of keys, got {got} {_short(err.get('input'))}; write key: value lines"
    msg = err["msg"]
    msg = msg[:1].lower() + msg[1:]
    return "", f"{msg} (got {_short(err.get('input'))}); fix the value"


def _spec_error(source: str, line: int | None, key: str, message: str) -> SpecError:
    where = f"{source}:{line}" if line is not None else source
    text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
    return SpecError(" ".join(text.split()), source=source, line=line, key=key)


def _from_validation_error(exc: ValidationError, data: Any, lines: dict[str, int], source: str) -> SpecError:
    problems: list[tuple[str, str]] = []
    # An unknown key first: a misspelt key also shows up as the missing one it was meant to be.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    for err in errors:
        parts = _clean_loc(err["loc"], data, err["type"])
        rel, message = _describe(err, err["loc"])
        parts += _split_key(rel) if rel else []
        key = _dotted(parts)
        if key not in (k for k, _ in problems):
            problems.append((key, message))
    key, message = problems[0]
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem(s): {', '.join(k or '<top>' for k, _ in problems[1:])})"
    return _spec_error(source, _line_of(lines, _split_key(key)), key or "<top>", message)


def parse_job_spec(
    text: str, *, source: str = "<string>", base_dir: str | Path | None = None, cwd: str | Path | None = None
) -> JobSpec:
    """Validate job-spec YAML ``text`` into a :class:`JobSpec`.

    Args:
        text: the YAML document.
        source: file name used in error messages.
        base_dir: folder that relative input paths resolve against (default: the current directory).
        cwd: folder that a relative ``storage.path`` resolves against (default: the current directory).

    Raises:
        SpecError: YAML syntax, a non-mapping top level, or any invalid key or value (one line with its line).
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise _spec_error(source, line, "", f"YAML syntax error: {what}; fix the YAML there") from None
    except yaml.YAMLError as exc:
        raise _spec_error(source, None, "", f"YAML error: {exc}; fix the YAML") from None
    finally:
        loader.dispose()
    if node is None or data is None:
        raise _spec_error(source, 1, "", "the file is empty; write a job spec (see search_spaces/demo.yaml)")
    if not isinstance(data, dict):
        raise _spec_error(
            source,
            node.start_mark.line + 1,
            "",
            f"the top level must be a mapping of sections (name:, teacher:, student:, ...), got a "
            f"{type(data).__name__}; write key: value lines",
        )
    lines: dict[str, int] = {}
    _line_map(node, [], lines, source)
    context = {
        "base_dir": str(base_dir) if base_dir is not None else None,
        "cwd": str(cwd) if cwd is not None else None,
    }
    try:
        spec = JobSpec.model_validate(data, context=context)
    except ValidationError as exc:
        raise _from_validation_error(exc, data, lines, source) from None
    spec._source = source
    spec._lines = lines
    return spec


def load_job_spec(path: str | Path) -> JobSpec:
    """Read and validate the job spec at ``path`` (relative input paths resolve against its folder).

    Raises:
        SpecError: a missing or unreadable file, or any problem :func:`parse_job_spec` reports.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _spec_error(str(p), None, "", "job spec not found; check the path") from None
    except IsADirectoryError:
        raise _spec_error(str(p), None, "", "is a folder, not a job spec; pass the .yaml file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise _spec_error(str(p), None, "", f"cannot read the job spec ({reason}); check the file") from None
    return parse_job_spec(text, source=str(p), base_dir=p.resolve().parent)


# ------------------------------------------------------------------------------------------------- filesystem


def _image_extensions() -> tuple[str, ...]:
    from sr.data import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS


def _has_images(path: Path, exts: tuple[str, ...]) -> bool:
    """An image file, or a folder with images directly or one level down (``HR``, ``DIV2K_train_HR``)."""
    if path.is_file():
        return path.suffix.lower() in exts
    children = [c for c in path.iterdir() if not c.name.startswith(".")]
    if any(c.is_file() and c.suffix.lower() in exts for c in children):
        return True
    return any(c.is_dir() and any(g.is_file() and g.suffix.lower() in exts for g in c.iterdir()) for c in children)


def check_paths(spec: JobSpec, spec_path: str | Path | None = None) -> JobSpec:
    """Check the files a spec names and apply its ``if_missing`` fallbacks; return the spec to run.

    - ``teacher.weights`` must be a file; when it is missing and ``teacher.if_missing`` is ``train``, the result
      has ``weights: None`` (train ``teacher.fallback.arch`` or ``teacher.arch`` briefly) and, for a different
      fallback arch, no knob overrides.
    - ``data.train`` / ``data.val`` must exist and hold images; when any is missing and ``data.if_missing`` is
      ``builtin``, it becomes None (the scikit-image sample images). A path that exists but holds no images is
      an error either way. URIs are not checked.

    Args:
        spec: a validated spec (its paths are already absolute).
        spec_path: the spec file, for error messages (default: the file it was loaded from).

    Raises:
        SpecError: a required path that is missing, or a data path without images (one line, with the key's line).
    """
    source = str(spec_path) if spec_path is not None else (spec.source or "<spec>")
    lines = spec._lines

    def fail(key: str, message: str) -> SpecError:
        return _spec_error(source, _line_of(lines, _split_key(key)) if lines else None, key, message)

    teacher = spec.teacher
    w = teacher.weights
    if w is not None and not _is_uri(w):
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
    if vgg not in (None, "random") and not _is_uri(vgg) and not Path(vgg).is_file():
        raise fail(
            "csd.vgg_weights", f"{vgg} is not a file; point at torchvision's vgg19-dcbb9e9d.pth or set lambda_c: 0"
        )

    data = spec.data
    exts = _image_extensions()
    update_data: dict[str, Any] = {}
    for key, paths in (("data.train", data.train), ("data.val", [data.val] if data.val else None)):
        if not paths:
            continue
        missing = []
        for i, p in enumerate(paths):
            item_key = f"{key}[{i}]" if key == "data.train" else key
            if _is_uri(p):
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
            update_data[key.split(".")[1]] = None
    out = spec
    if teacher is not spec.teacher or update_data:
        out = spec.model_copy(
            update={"teacher": teacher, "data": data.model_copy(update=update_data) if update_data else data}
        )
    return out
