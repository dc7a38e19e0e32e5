"""Job specs and their search spaces: the schema, its YAML loading, value parsing and the define-by-run space.

One YAML file -> a frozen, validated :class:`JobSpec` (:func:`load_job_spec`). A job spec holds everything one
``srcompress run`` does: the teacher, the student family and its search space, budgets and objectives, data,
pruning, distillation, Ray resources, the search algorithm, MLflow tracking and storage. Each section is a frozen
pydantic model that forbids unknown keys. Every problem is a :class:`SpecError` with one line,
``file:line: dotted.key: cause; fix``. Line numbers come from the YAML node tree (``yaml.compose``), so they point
at the offending key.

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

Sizes (``budgets.max_params``, ``budgets.max_macs``) accept ``100k``, ``1.2M``, ``20G`` (decimal multipliers):
:func:`parse_size`, the project's one size parser.

The space (:func:`job_space`, :func:`suggest`, :class:`SpaceFn`) is a plain mapping sampled define-by-run on an
Optuna trial, so ``optuna.trial.FixedTrial`` tests it.

Shipped specs (``<family>_<method>.yaml``, :func:`names`, :func:`path`): ``demo.yaml`` runs the whole pipeline on
a CPU laptop; ``*_cdism.yaml`` are the paper's setups on DIV2K for a GPU Ray cluster. Validate one with
``search_spaces.load_job_spec(search_spaces.path("demo"))``.

Overrides (:class:`Overrides`, ``srcompress run/plan/submit --override FILE --set KEY=VALUE``) change the YAML
before validation: overlay files merge section by section, then each ``dotted.key=VALUE`` is set. The schema
checks the result, so a wrong key names the override. ``overrides/cpu_smoke.yaml`` scales a GPU spec down to a
CPU smoke run.

The modules are private; their public names are re-exported here. ``search_spaces`` depends on ``sr`` only.
"""

from __future__ import annotations

from pathlib import Path

from search_spaces._dims import Choice, Dim, NumDim, Range
from search_spaces._errors import SpecError
from search_spaces._overrides import Overrides
from search_spaces._paths import check_paths, key_error
from search_spaces._schema import JobSpec, spec_hash
from search_spaces._sections import (
    BudgetsSpec,
    CacheSpec,
    CSDSpec,
    DataSpec,
    FailureSpec,
    KDSpace,
    Objective,
    PruneSpec,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpec,
    StorageSpec,
    StudentSpec,
    TeacherFallback,
    TeacherSpec,
    TrackingSpec,
    TrainingSpec,
)
from search_spaces._space import (
    ARCH_DIMS,
    CSD_DIMS,
    KD_DIMS,
    SpaceFn,
    clamp_to_space,
    is_range,
    job_space,
    make_space_fn,
    shared_channels,
    smallest,
    smallest_knobs,
    student_knobs,
    suggest,
)
from search_spaces._store import STORE_DB, StoreError, store_uri
from search_spaces._values import SizeError, parse_size
from search_spaces._yaml import load_job_spec, parse_job_spec
from sr.errors import ConfigError

__all__ = [
    "ARCH_DIMS",
    "STORE_DB",
    "StoreError",
    "store_uri",
    "BudgetsSpec",
    "CSDSpec",
    "CSD_DIMS",
    "CacheSpec",
    "Choice",
    "DataSpec",
    "Dim",
    "FailureSpec",
    "JobSpec",
    "KDSpace",
    "KD_DIMS",
    "NumDim",
    "Objective",
    "Overrides",
    "PruneSpec",
    "Range",
    "ResourcesSpec",
    "SchedulerSpec",
    "SearchSpec",
    "SizeError",
    "SpaceFn",
    "SpecError",
    "StorageSpec",
    "StudentSpec",
    "TeacherFallback",
    "TeacherSpec",
    "TrackingSpec",
    "TrainingSpec",
    "check_paths",
    "key_error",
    "clamp_to_space",
    "is_range",
    "job_space",
    "load_job_spec",
    "make_space_fn",
    "names",
    "parse_job_spec",
    "parse_size",
    "path",
    "shared_channels",
    "smallest",
    "smallest_knobs",
    "spec_hash",
    "student_knobs",
    "suggest",
]

_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    """Names of the shipped specs (file stems), sorted."""
    return sorted(p.stem for p in _DIR.glob("*.yaml"))


def path(name: str) -> Path:
    """Path of shipped spec ``name`` (``"demo"`` or ``"demo.yaml"``).

    Raises:
        ConfigError: no such spec (the message lists the shipped ones).
    """
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    p = _DIR / f"{stem}.yaml"
    if "/" in stem or "\\" in stem or not p.is_file():
        raise ConfigError(f"no shipped job spec {name!r}; valid: {', '.join(names())} (or pass a file path)")
    return p
