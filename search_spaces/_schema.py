"""The whole job spec, :class:`JobSpec`: its sections, cross-section checks and derived values."""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

from pydantic import Field, PrivateAttr, field_validator, model_validator

from search_spaces._checks import check_csd, check_models
from search_spaces._dims import SpecModel
from search_spaces._errors import KeyedError
from search_spaces._sections import (
    BudgetsSpec,
    CSDSpec,
    DataSpec,
    FailureSpec,
    Objective,
    PruneSpec,
    ResourcesSpec,
    SearchSpec,
    StorageSpec,
    StudentSpec,
    TeacherSpec,
    TrackingSpec,
    TrainingSpec,
    default_objectives,
)
from search_spaces._values import is_uri

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class JobSpec(SpecModel):
    """A whole ``srcompress run`` job (see the module docstring and ``search_spaces/demo.yaml``)."""

    name: str = Field(description="experiment name: letters, digits, _ . - (Ray and MLflow names)")
    seed: int = Field(0, ge=0, description="global seed")
    teacher: TeacherSpec
    student: StudentSpec
    budgets: BudgetsSpec = Field(default_factory=BudgetsSpec)
    objectives: list[Objective] = Field(default_factory=default_objectives, min_length=1)
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
                raise KeyedError(f"[{i}].metric", f"{m} is listed twice; keep one")
        return value

    @model_validator(mode="after")
    def _check_semantics(self) -> JobSpec:
        check_csd(self)
        if self.teacher.scale is not None and self.teacher.scale != self.data.scale:
            raise KeyedError(
                "teacher.scale",
                f"{self.teacher.scale} differs from data.scale ({self.data.scale}); make them equal or drop it",
            )
        if self.search.enqueue_paper_rule and not self.prune.enabled and self.prune.density is None:
            raise KeyedError(
                "prune.density",
                "the paper-rule seed needs a density but pruning is off; give prune.density, "
                "enable pruning, or set search.enqueue_paper_rule: false",
            )
        sched = self.search.scheduler
        reports = self.training.steps // self.training.val_every
        if sched.type == "asha" and sched.grace_period > reports:
            raise KeyedError(
                "search.scheduler.grace_period",
                f"{sched.grace_period} exceeds the validation reports per trial ({reports} = training.steps / "
                f"training.val_every); lower it",
            )
        if self.tracking.uri is None and is_uri(self.storage.path):
            raise KeyedError("tracking.uri", "is needed when storage.path is a URI (no local sqlite store); set it")
        check_models(self)
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
