"""Multi-objective asynchronous successive halving (MO-ASHA) for Ray Tune.

ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020) stops a trial at a rung
(``grace_period * reduction_factor**k`` steps) unless it is in the top ``1/reduction_factor`` of the trials
recorded at that rung so far. Ranked on the validation PSNR alone, it stops exactly the cheap models a
PSNR-vs-MACs front is made of. MO-ASHA (Schmucker et al., "Multi-objective Asynchronous Successive Halving",
2021; Syne Tune's ``MOASHA`` is the reference implementation) ranks the trials of a rung by non-dominated sorting
over every objective instead.

The ordering here: Pareto fronts first (non-dominated sorting), and within a front the NSGA-II crowding distance
(Deb et al. 2002), largest first, so each front's end points (the cheapest and the most accurate) come first;
Syne Tune orders a front by an epsilon-net instead. One departure, on purpose: a trial on the first front of its
rung always continues. Rungs fill asynchronously; with two trials recorded and ``reduction_factor: 2``, halving
would stop one end of a two-point front, while the search's product is that front. Only dominated trials are
stopped, and among them those outside the top ``ceil(n / reduction_factor)`` of the ordering. With a single
objective the first front is the best trial, so this is ASHA's rule.

Objective values are read from every result (the trial's static cost, e.g. ``macs_720p``, is in each report); a
result without them, or below the first rung, never stops a trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from orchestrator.results.pareto import pareto_mask


def nondominated_fronts(points: np.ndarray) -> list[np.ndarray]:
    """Indices of ``points`` (n, k; smaller is better in every column) per Pareto front, best front first."""
    remaining = np.arange(points.shape[0])
    fronts: list[np.ndarray] = []
    while remaining.size:
        on_front = pareto_mask(points[remaining], ["min"] * points.shape[1])
        fronts.append(remaining[on_front])
        remaining = remaining[~on_front]
    return fronts


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row of one front (n, k): the end points of every objective get inf."""
    n, k = points.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(k):
        order = np.argsort(points[:, j], kind="stable")
        col = points[order, j]
        span = col[-1] - col[0]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def mo_order(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, front index): row indices from best to worst (front, then crowding distance descending, then
    arrival), and each row's front index (0 = non-dominated)."""
    front_of = np.zeros(points.shape[0], dtype=int)
    order: list[int] = []
    for f, idx in enumerate(nondominated_fronts(points)):
        front_of[idx] = f
        crowd = crowding_distance(points[idx])
        order.extend(int(i) for i in idx[np.lexsort((idx, -crowd))])
    return np.asarray(order, dtype=int), front_of


class MOASHAScheduler(FIFOScheduler):
    """Successive halving whose rung decisions use non-dominated sorting over ``objectives`` (one bracket).

    Args:
        objectives: (result key, ``"max"`` | ``"min"``) pairs, e.g. ``(("psnr_y", "max"), ("macs_720p", "min"))``.
        time_attr: the result key counting training progress (steps).
        max_t: progress at which a trial ends; rungs lie below it.
        grace_period: progress before a trial can first be stopped (the first rung).
        reduction_factor: 1/reduction_factor of the trials of a rung continue (dominated ones compete for it).
    """

    def __init__(
        self,
        objectives: Sequence[tuple[str, str]],
        *,
        time_attr: str = "step",
        max_t: int,
        grace_period: int = 1,
        reduction_factor: float = 4.0,
    ) -> None:
        super().__init__()
        if not objectives or any(m not in ("max", "min") for _, m in objectives):
            raise ValueError(f"objectives must be (key, 'max'|'min') pairs, got {objectives!r}")
        if grace_period < 1 or reduction_factor <= 1 or max_t < grace_period:
            raise ValueError("need 1 <= grace_period <= max_t and reduction_factor > 1")
        self._keys = [k for k, _ in objectives]
        self._sign = np.array([-1.0 if m == "max" else 1.0 for _, m in objectives])  # minimisation form
        self._time_attr = time_attr
        self._rf = float(reduction_factor)
        rungs, t = [], float(grace_period)
        while t < max_t:
            rungs.append(int(round(t)))
            t *= self._rf
        self._rungs: list[int] = sorted(set(rungs))
        self._recorded: dict[int, dict[str, np.ndarray]] = {r: {} for r in self._rungs}  # rung -> trial -> point
        self.stopped: list[str] = []  # trial ids stopped at a rung, in order

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # the objectives are fixed at construction; Tune's single metric/mode does not apply

    def _point(self, result: Mapping[str, Any]) -> np.ndarray | None:
        try:
            values = np.array([float(result[k]) for k in self._keys])
        except (KeyError, TypeError, ValueError):
            return None
        return values * self._sign if np.isfinite(values).all() else None

    def decide(self, trial_id: str, progress: float, result: Mapping[str, Any]) -> str:
        """CONTINUE or STOP for a trial reporting ``result`` at ``progress`` (records it at the highest rung it
        has reached and not yet been judged at)."""
        point = self._point(result)
        due = [r for r in self._rungs if progress >= r and trial_id not in self._recorded[r]]
        if point is None or not due:
            return TrialScheduler.CONTINUE
        rung = self._recorded[due[-1]]
        rung[trial_id] = point
        ids = list(rung)
        order, front_of = mo_order(np.stack([rung[i] for i in ids]))
        me = ids.index(trial_id)
        position = int(np.flatnonzero(order == me)[0])
        if front_of[me] == 0 or position < math.ceil(len(ids) / self._rf):
            return TrialScheduler.CONTINUE
        self.stopped.append(trial_id)
        return TrialScheduler.STOP

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self._time_attr not in result:
            return TrialScheduler.CONTINUE
        return self.decide(trial.trial_id, float(result[self._time_attr]), result)

    def debug_string(self) -> str:
        rungs = ", ".join(f"{r}: {len(self._recorded[r])}" for r in self._rungs)
        return f"MO-ASHA over {self._keys}: trials recorded per rung {{{rungs}}}, {len(self.stopped)} stopped"


__all__ = ["MOASHAScheduler", "crowding_distance", "mo_order", "nondominated_fronts"]
