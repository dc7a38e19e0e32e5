"""The define-by-run search space of a job: sample, price and name a student (pure; testable with FixedTrial).

A *space* is a plain mapping from a dimension name to either a fixed value or a range:
``{"C": {"low": 8, "high": 32, "step": 8}, "L": {"low": 1, "high": 2}, "w_gt": {"low": 0.01, "high": 1,
"log": true}, "scale": 2}``. Integers are sampled with ``suggest_int``, floats with ``suggest_float``; a dimension
whose ``choices`` are given uses ``suggest_categorical``. :func:`job_space` builds it from a :class:`JobSpec`;
:class:`SpaceFn` samples it on an Optuna trial and attaches the budget constraints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeGuard

from search_spaces._schema import JobSpec

if TYPE_CHECKING:
    from sr.budget import Budget

ARCH_DIMS = ("C", "L", "B")
KD_DIMS = ("w_gt", "w_lap", "w_hf", "lr", "lap_weighting")
CSD_DIMS = ("width", "lambda_c", "lambda_t")  # CSD's sampled settings (student.method: csd)


def is_range(v: Any) -> TypeGuard[Mapping[str, Any]]:
    """Whether a space dimension is searched (a range or choices), not a fixed value."""
    return isinstance(v, Mapping) and ("low" in v or "choices" in v)


def suggest(trial: Any, space: Mapping[str, Any]) -> dict[str, Any]:
    """Sample every dimension of ``space`` on an Optuna ``trial`` (fixed values pass through unchanged)."""
    out: dict[str, Any] = {}
    for name, dim in space.items():
        if not is_range(dim):
            out[name] = dim
        elif "choices" in dim:
            out[name] = trial.suggest_categorical(name, list(dim["choices"]))
        elif all(isinstance(dim.get(k), int) for k in ("low", "high")) and isinstance(dim.get("step", 1), int):
            out[name] = trial.suggest_int(name, dim["low"], dim["high"], step=dim.get("step", 1))
        else:
            out[name] = trial.suggest_float(
                name, float(dim["low"]), float(dim["high"]), log=bool(dim.get("log", False))
            )
    return out


def smallest(space: Mapping[str, Any]) -> dict[str, Any]:
    """The cheapest corner: every architecture range at its low end (fixed values kept)."""
    return {
        k: (v["low"] if is_range(v) and "low" in v else v)
        for k, v in space.items()
        if k in ARCH_DIMS or not is_range(v)
    }


def clamp_to_space(point: Mapping[str, Any], space: Mapping[str, Any]) -> dict[str, Any]:
    """Project ``point`` onto the space's ranges (and steps), so an enqueued seed is a valid sample."""
    out: dict[str, Any] = {}
    for k, v in point.items():
        dim = space.get(k)
        if not is_range(dim) or "low" not in dim:
            if is_range(dim) and "choices" in dim and v not in dim["choices"]:
                continue
            out[k] = v
            continue
        lo, hi = dim["low"], dim["high"]
        x = min(max(v, lo), hi)
        if isinstance(lo, int) and isinstance(x, int):
            step = dim.get("step", 1)
            x = lo + round((x - lo) / step) * step
            x = min(x, hi - (hi - lo) % step)
        out[k] = x
    return out


# ------------------------------------------------------------------------------------------ from a job spec
def _plain_dim(dim: Any) -> Any:
    """A spec dimension (Range, Choice or fixed value) as the plain value :func:`suggest` reads."""
    return {k: v for k, v in dim.model_dump().items() if v is not None} if hasattr(dim, "model_dump") else dim


def job_space(spec: JobSpec) -> dict[str, Any]:
    """The spec's student space + KD (or CSD) space as a plain mapping for :func:`suggest`."""
    space = {k: _plain_dim(v) for k, v in spec.student.space.items()}
    kd = spec.student.kd_space
    csd = spec.student.method == "csd"
    for name in ("lr",) if csd else KD_DIMS:
        dim = getattr(kd, name)
        space[name] = _plain_dim(spec.training.lr if dim is None else dim)
    if csd:
        # CSD's own loss weights replace the KD ones; width is the exported student's channel ratio.
        c = spec.csd_settings
        space.update(width=_plain_dim(c.width), lambda_c=_plain_dim(c.lambda_c), lambda_t=c.lambda_t)
    space.setdefault("scale", spec.data.scale)
    return space


def smallest_knobs(spec: JobSpec, space: Mapping[str, Any]) -> dict[str, Any]:
    """The cheapest corner of the student space as model knobs (CSD: of the exported student, C' = w*C)."""
    from sr.models import get_family, get_variant, resolve_knobs  # deferred: sr.models imports torch

    knobs = set(get_family(get_variant(spec.student.arch).family).knobs)
    out: dict[str, Any] = {}
    for k, v in space.items():
        if k not in knobs:
            continue
        if is_range(v) and "low" in v:
            v = v["low"]
        elif is_range(v):  # choices: the least when numeric, else the variant's default
            nums = [c for c in v["choices"] if isinstance(c, int | float) and not isinstance(c, bool)]
            if not nums:
                continue
            v = min(nums)
        out[k] = v
    if spec.student.method == "csd":
        width = min(spec.csd_settings.values("width"))
        out["C"] = round(width * int(out.get("C", resolve_knobs(spec.student.arch)["C"])))
    return out


# ------------------------------------------------------------------------------------------ a sampled config
def shared_channels(config: Mapping[str, Any], arch: str) -> int:
    """CSD: channels C of the width-shared model that trains (the config's C, else variant ``arch``'s)."""
    from sr.models import resolve_knobs  # deferred: sr.models imports torch

    return int(config.get("C", resolve_knobs(arch)["C"]))


def student_knobs(config: Mapping[str, Any], *, arch: str, scale: int, method: str = "kd") -> dict[str, Any]:
    """Model knobs of a sampled config of student variant ``arch``: C/L/B plus the space's fixed knobs.

    KD weights are left out. For CSD (``method="csd"``) these describe the exported student (``C' = width * C``):
    budgets, latency and names are its.
    """
    from sr.models import get_family, get_variant  # deferred: sr.models imports torch

    valid = set(get_family(get_variant(arch).family).knobs)
    knobs = {k: v for k, v in config.items() if k in valid}
    knobs.setdefault("scale", scale)
    if method == "csd" and "width" in config:
        knobs["C"] = round(float(config["width"]) * shared_channels(config, arch))
    return knobs


# ------------------------------------------------------------------------------------------- define-by-run
class SpaceFn:
    """The define-by-run function: sample, price, attach budget constraints to the Optuna trial.

    A class (not a closure) so Tune can pickle the searcher into its experiment checkpoint for ``--resume``.
    """

    def __init__(
        self, *, arch: str, space: Mapping[str, Any], budget: Budget, scale: int = 2, method: str = "kd"
    ) -> None:
        self.arch = arch
        self.space = space
        self.budget = budget
        self.scale = scale
        self.method = method

    def __call__(self, trial: Any) -> dict[str, Any]:
        from sr.budget import constraint_values, price  # deferred: sr.budget imports torch

        cfg = suggest(trial, self.space)
        p = price(self.arch, **student_knobs(cfg, arch=self.arch, scale=self.scale, method=self.method))
        cons = constraint_values(p, self.budget)
        for name, value in cons.items():
            trial.set_constraint(name, value)
        return {
            **cfg,  # fixed dimensions are not captured by Optuna; the trial needs them too
            # Optuna's trial number: the trial's identity in MLflow. A search resumed from a snapshot taken before
            # this draw draws it again under a new Tune trial id but the same number, and so finds its run.
            "_draw": trial.number,
            "_infeasible": any(v > 0 for v in cons.values()),
            "_paper_rule": _is_enqueued(trial),
            "_price": p.as_dict(),
        }


def make_space_fn(
    *, arch: str, space: Mapping[str, Any], budget: Budget, scale: int = 2, method: str = "kd"
) -> SpaceFn:
    """The define-by-run function of a search over ``space`` for student variant ``arch`` under ``budget``."""
    return SpaceFn(arch=arch, space=space, budget=budget, scale=scale, method=method)


def _is_enqueued(trial: Any) -> bool:
    """Whether Optuna's trial came from ``enqueue_trial`` (the paper-rule seed): it then has fixed params."""
    storage = getattr(trial, "storage", None)
    # A FixedTrial (tests) has no storage: it was never enqueued.
    attrs = trial.system_attrs if storage is None else storage.get_trial_system_attrs(trial._trial_id)
    return "fixed_params" in attrs
