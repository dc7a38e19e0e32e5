"""Pricing an architecture before training: params and MACs from the registry, and budget checks.

Params and MACs depend only on the architecture, so an infeasible candidate is rejected before any training.
Counting runs on the meta device and is memoised per (arch, knobs); a 2-D sweep of hundreds of candidates costs
seconds, not training runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

from sr.complexity import build_on_meta, count_macs_for, count_params, lr_shape_for
from sr.errors import ConfigError
from sr.models import build, resolve_knobs
from sr.reparam import fold

MacsConvention = Literal["720p", "lr256"]


@dataclass(frozen=True)
class Price:
    """Complexity of one concrete architecture (every tensor counted; MACs by FlopCounterMode)."""

    params: int
    macs_720p: int
    macs_lr256: int

    def macs(self, convention: MacsConvention) -> int:
        return self.macs_720p if convention == "720p" else self.macs_lr256

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Budget:
    """Limits a deployed student must meet; ``None`` means unconstrained."""

    max_params: int | None = None
    max_macs: int | None = None
    macs_convention: MacsConvention = "720p"
    max_latency_ms: float | None = None
    latency_device: str = "cpu"


def price(arch: str, **knobs: Any) -> Price:
    """Params and MACs (both conventions) of ``build(arch, **knobs)``, memoised."""
    return _price_cached(arch, tuple(sorted(knobs.items())))


@lru_cache(maxsize=4096)
def _price_cached(arch: str, knob_items: tuple[tuple[str, Any], ...]) -> Price:

    knobs = dict(knob_items)
    scale = int(resolve_knobs(arch, **knobs).get("scale", 2))

    def builder():
        # Priced as deployed: re-parameterised blocks folded (REFERENCE.md §5).
        return fold(build(arch, **knobs))

    model = build_on_meta(builder)
    return Price(
        params=count_params(model),
        macs_720p=count_macs_for(builder, lr_shape_for("720p", scale)).macs,
        macs_lr256=count_macs_for(builder, lr_shape_for("lr256", scale)).macs,
    )


def constraint_values(p: Price, budget: Budget) -> dict[str, float]:
    """Optuna-style constraints: one value per active budget, ``<= 0`` feasible (relative excess over the limit)."""
    out: dict[str, float] = {}
    if budget.max_params is not None:
        out["params"] = p.params / budget.max_params - 1.0
    if budget.max_macs is not None:
        out["macs"] = p.macs(budget.macs_convention) / budget.max_macs - 1.0
    return out


def is_feasible(p: Price, budget: Budget) -> bool:
    return all(v <= 0 for v in constraint_values(p, budget).values())


def check_budget_reachable(arch: str, smallest_knobs: Mapping[str, Any], budget: Budget) -> Price:
    """Raise a one-line ConfigError when even the smallest architecture of a space breaks the budget.

    Params and MACs grow monotonically with C, L and B in every family here, so the space's smallest corner
    is its cheapest point.
    """
    p = price(arch, **smallest_knobs)
    if not is_feasible(p, budget):
        parts = []
        if budget.max_params is not None and p.params > budget.max_params:
            parts.append(f"max_params {budget.max_params:,} < smallest achievable {p.params:,}")
        if budget.max_macs is not None and p.macs(budget.macs_convention) > budget.max_macs:
            parts.append(
                f"max_macs {budget.max_macs / 1e9:.3g}G < smallest achievable "
                f"{p.macs(budget.macs_convention) / 1e9:.3g}G ({budget.macs_convention})"
            )
        raise ConfigError(
            f"no architecture in the search space meets the budget: {'; '.join(parts)} "
            f"(at {dict(smallest_knobs)}); raise the budget or lower the space's minimums"
        )
    return p
