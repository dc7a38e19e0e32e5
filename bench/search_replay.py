"""Replay of the real search's samplers against a tabular KD benchmark: hypervolume vs number of trials.

The table (``bench/data/kd_table_edsr_x2.parquet``, built by ``bench/build_kd_table.py``) holds real short KD
runs over a grid of EDSR students (C, L, B, w_gt). A replay drives the searcher the real search uses,
``orchestrator.search.make_searcher`` (Ray Tune's ``OptunaSearch`` with the same NSGA-II / MO-TPE / random sampler
settings and the paper-rule point enqueued first), through its own ``suggest`` / ``on_trial_complete`` calls, with
no Ray cluster: each suggested configuration is priced and checked against the budget by the real define-by-run
function (``SpaceFn``: ``trial.set_constraint``); as in the real search (``search.skip_infeasible`` and
``search.dedupe``, both on by default) the searcher answers an over-budget draw and a draw identical to a trained
trial itself and draws again, so each trial is a new feasible configuration, answered with its table row. With
``skip_infeasible=false`` an infeasible draw is a trial answered with the marker result of an untrained trial
(PSNR 0, no training cost, but it uses up a trial).

Figures: the hypervolume (HV) of the feasible front after each trial, objectives PSNR_Y (max) and 720p MACs (min),
against one fixed reference point (the worst feasible values of the whole table pushed out by 5% of their range,
``orchestrator.results.pareto.reference_point``), normalised by the box between the reference and the ideal point (best
feasible PSNR, fewest feasible MACs) so 1.0 is unreachable and the whole table's front gives its upper bound.
Per algorithm, with and without the paper seed, over ``--seeds`` sampler seeds: the mean (and std) HV at 8, 16, 24,
32 and 48 trials, the trials at which the mean curve first reaches the target, the share of seeds reaching it by
16 trials, and the trials actually trained (feasible ones). The target is plain random search's mean HV at the last
trial (no seed; ``random:skip_infeasible=false,dedupe=false``: every draw is a trial, the classic baseline).

Differences from the real search: trials run one after another (``--concurrency`` k keeps k in flight, completed
oldest first) and no ASHA (the table holds final scores only).

The search space is ``--grid`` (default C 8..32 step 8, L 1..2, B 2..8 step 2) with w_gt over the table's values;
the table must hold every configuration the budget admits (rows of over-budget ones may be missing: the search
never trains them). ``--algorithms`` also takes variants, e.g. ``nsga2:population_size=8`` or
``motpe:n_startup_trials=12,multivariate=false`` (sampler keyword arguments over ``make_searcher``'s), and the
searcher options ``skip_infeasible=false`` / ``dedupe=false`` (see ``Variant``).

Run ``python -m bench.search_replay`` (10 seeds x 3 algorithms x 2 seedings x 48 trials) or ``--quick``.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench._common import REPO, bench_main, log, make_parser
from orchestrator.results.pareto import hypervolume_2d, hypervolume_history, pareto_mask, reference_point
from orchestrator.search import INFEASIBLE_PSNR, SearchPlan, make_searcher, sampler_settings
from search_spaces import clamp_to_space, parse_size
from sr.allocate import allocate_arch
from sr.budget import Budget, is_feasible, price
from sr.errors import ConfigError

NAME = "search_replay"
DEFAULT_TABLE = REPO / "bench" / "data" / "kd_table_edsr_x2.parquet"
OBJECTIVES: tuple[tuple[str, str], ...] = (("psnr_y", "max"), ("macs_720p", "min"))
MODES = tuple(m for _, m in OBJECTIVES)
ALGORITHMS = ("random", "nsga2", "motpe")
SEEDINGS = ("no_seed", "paper_seed")
PAPER_BASE = "edsr_baseline"  # the paper's rule is applied to EDSR_baseline (the family's reference size)
PAPER_DENSITY = 0.03  # the density CDISM's pruning reaches on EDSR_baseline (REFERENCE.md)
PAPER_KD = {"w_gt": 0.1, "w_lap": 1.0, "w_hf": 1.0}  # the authors' KD weights, as orchestrator.job enqueues them
CHECKPOINTS = (8, 16, 24, 32, 48)
GOAL_TRIALS = 16
REF_MARGIN = 0.05

FULL = {"seeds": 10, "trials": 48}
QUICK = {"seeds": 2, "trials": 12}
# The grid the search samples: C 8..32 step 8, L 1..2, B 2..8 step 2 (w_gt: the table's values). The committed
# table has no C = 32 rows: every C = 32 student is over the 60k budget, so the search never trains one.
GRID = "C=8:32:8,L=1:2,B=2:8:2"


# Searcher options a variant may set (SearchPlan fields; the real search's defaults are both true).
SEARCHER_OPTIONS = ("skip_infeasible", "dedupe")
BASELINE = "random:skip_infeasible=False,dedupe=False"  # plain random search: its last-trial HV is the target


@dataclass(frozen=True)
class Variant:
    """An algorithm, optional sampler keyword arguments that replace ``make_searcher``'s, and the searcher
    options ``skip_infeasible`` / ``dedupe`` (None = the real search's default, on)."""

    algorithm: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    skip_infeasible: bool | None = None
    dedupe: bool | None = None

    @property
    def name(self) -> str:
        opts = [f"{k}={v}" for k, v in self.kwargs]
        opts += [f"{o}={getattr(self, o)}" for o in SEARCHER_OPTIONS if getattr(self, o) is not None]
        return f"{self.algorithm}:" + ",".join(opts) if opts else self.algorithm

    def plan(self, plan: SearchPlan) -> SearchPlan:
        """``plan`` with this variant's algorithm and searcher options."""
        opts = {o: getattr(self, o) for o in SEARCHER_OPTIONS if getattr(self, o) is not None}
        return replace(plan, algorithm=self.algorithm, **opts)


def parse_variant(text: str) -> Variant:
    """``"nsga2"``, ``"nsga2:population_size=8"`` or ``"random:skip_infeasible=false,dedupe=false"``
    (values parsed as int, float, true/false, else text; a bare ``skip_infeasible`` means true)."""
    algo, _, rest = text.partition(":")
    algo = algo.strip()
    if algo not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algo!r} in {text!r}; valid: {', '.join(ALGORITHMS)}")
    kwargs, flags = [], {}
    for item in filter(None, (t.strip() for t in rest.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key in SEARCHER_OPTIONS:
            flags[key] = bool(_value(value.strip())) if sep else True
            continue
        if not sep or not key:
            raise ConfigError(
                f"sampler option {item!r} in {text!r} is not KEY=VALUE; write e.g. nsga2:population_size=8"
            )
        kwargs.append((key, _value(value.strip())))
    return Variant(algo, tuple(kwargs), **flags)


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


# -------------------------------------------------------------------------------------------------- the table
def load_table(path: Path) -> pd.DataFrame:
    """The KD table, one row per (C, L, B, w_gt); a one-line error when it is missing or malformed."""
    if not Path(path).exists():
        raise ConfigError(f"KD table {path} not found; build it with python -m bench.build_kd_table")
    df = pd.read_parquet(path)
    need = {"C", "L", "B", "w_gt", "w_lap", "w_hf", "res_scale", "scale", "arch", "params", "macs_720p", "psnr_y"}
    missing = sorted(need - set(df.columns))
    if missing:
        raise ConfigError(f"KD table {path} lacks columns {', '.join(missing)}; rebuild it with bench.build_kd_table")
    if df.duplicated(["C", "L", "B", "w_gt"]).any():
        raise ConfigError(f"KD table {path} repeats a (C, L, B, w_gt) row; rebuild it with bench.build_kd_table")
    return df.reset_index(drop=True)


def _single(df: pd.DataFrame, col: str) -> Any:
    vals = df[col].unique()
    if len(vals) != 1:
        raise ConfigError(f"KD table column {col} holds {len(vals)} values; the replay needs one (it is not searched)")
    v = vals[0]
    return v.item() if hasattr(v, "item") else v


def parse_grid(text: str) -> dict[str, dict[str, int]]:
    """``"C=8:32:8,L=1:2,B=2:8:2"`` -> integer ranges ``{"C": {"low": 8, "high": 32, "step": 8}, ...}``."""
    out: dict[str, dict[str, int]] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, rng = item.partition("=")
        parts = rng.split(":")
        try:
            low, high, step = (int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) > 2 else 1)
        except (ValueError, IndexError):
            raise ConfigError(f"grid dimension {item!r} is not NAME=LOW:HIGH[:STEP]; write e.g. C=8:32:8") from None
        if name not in ("C", "L", "B") or not 1 <= low <= high or step < 1:
            raise ConfigError(f"grid dimension {item!r} needs a name among C, L, B and 1 <= LOW <= HIGH, STEP >= 1")
        out[name] = {"low": low, "high": high, "step": step}
    if set(out) != {"C", "L", "B"}:
        raise ConfigError(f"grid {text!r} must give C, L and B; write e.g. C=8:32:8,L=1:2,B=2:8:2")
    return out


def space_of(df: pd.DataFrame, grid: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """The search space as ``search_spaces.suggest`` reads it: the C/L/B integer ranges of ``grid``, w_gt
    categorical over the table's values, the other knobs fixed at the table's values."""
    return {
        **{k: dict(grid[k]) for k in ("C", "L", "B")},
        "w_gt": {"choices": sorted(float(w) for w in df["w_gt"].unique())},
        "w_lap": float(_single(df, "w_lap")),
        "w_hf": float(_single(df, "w_hf")),
        "res_scale": float(_single(df, "res_scale")),
        "scale": int(_single(df, "scale")),
    }


def grid_points(space: Mapping[str, Any]) -> list[tuple[int, int, int, float]]:
    """Every (C, L, B, w_gt) of the space."""
    axes = [range(space[k]["low"], space[k]["high"] + 1, space[k].get("step", 1)) for k in ("C", "L", "B")]
    return [_key(C, L, B, w) for C in axes[0] for L in axes[1] for B in axes[2] for w in space["w_gt"]["choices"]]


def check_coverage(
    space: Mapping[str, Any], rows: Mapping[tuple[int, int, int, float], Any], arch: str, budget: Budget
) -> tuple[int, int]:
    """Refuse a table that lacks a configuration the budget admits (a search could train it); rows of
    infeasible configurations may be absent, since the search never trains them. Returns (grid, feasible) sizes."""
    fixed = {k: space[k] for k in ("res_scale", "scale")}
    points = grid_points(space)
    missing, n_feasible = [], 0
    for C, L, B, w in points:
        if is_feasible(price(arch, C=C, L=L, B=B, **fixed), budget):
            n_feasible += 1
            if (C, L, B, w) not in rows:
                missing.append(f"C{C} L{L} B{B} w_gt {w:g}")
    if missing:
        raise ConfigError(
            f"the KD table lacks {len(missing)} configurations within the budget (first: {missing[0]}); extend it "
            f"with python -m bench.build_kd_table --C/--L/--B/--w-gt covering them (it resumes)"
        )
    return len(points), n_feasible


def paper_point(space: Mapping[str, Any]) -> dict[str, Any]:
    """The paper-rule seed as ``orchestrator.job`` builds it: the rule's C/L/B for EDSR_baseline at the paper's
    density (C16 L1 B8) plus the authors' KD weights, clamped to the space."""
    alloc, _ = allocate_arch(PAPER_BASE, PAPER_DENSITY)
    point = {"C": alloc.C, "L": alloc.L, "B": alloc.B, **PAPER_KD}
    return clamp_to_space({k: v for k, v in point.items() if k in space}, space)


def check_prices(df: pd.DataFrame) -> None:
    """Price every architecture of the table as the search will (memoised, so the define-by-run function stays
    fast) and refuse a table whose params/MACs disagree with ``sr.budget.price``."""
    fixed = {k: _single(df, k) for k in ("res_scale", "scale")}
    arch = str(_single(df, "arch"))
    for r in df.drop_duplicates(["C", "L", "B"]).itertuples(index=False):
        p = price(arch, C=int(r.C), L=int(r.L), B=int(r.B), **fixed)
        if (p.params, p.macs_720p) != (int(r.params), int(r.macs_720p)):
            raise ConfigError(
                f"KD table row C{r.C} L{r.L} B{r.B} has params/MACs {r.params}/{r.macs_720p}, but sr.budget.price "
                f"gives {p.params}/{p.macs_720p}; rebuild the table with bench.build_kd_table"
            )


def _key(C: Any, L: Any, B: Any, w_gt: Any) -> tuple[int, int, int, float]:
    return int(C), int(L), int(B), round(float(w_gt), 6)


# ---------------------------------------------------------------------------------------------------- replay
def make_variant_searcher(plan: SearchPlan, variant: Variant):
    """The real search's searcher (``make_searcher``) for the variant's plan, its sampler keyword arguments over
    ``sampler_settings``."""
    plan = variant.plan(plan)
    try:
        return make_searcher(plan, dict(variant.kwargs))
    except TypeError as exc:
        raise ConfigError(f"sampler options of {variant.name} are not accepted ({exc})") from None


def replay_search(
    plan: SearchPlan,
    variant: Variant,
    rows: Mapping[tuple[int, int, int, float], Mapping[str, Any]],
    *,
    concurrency: int = 1,
) -> list[dict[str, Any]]:
    """One search of ``plan.num_samples`` trials answered from the table; returns the trials in completion order.

    Each trial: ``{"key", "feasible", "paper_rule", "psnr_y", "macs_720p", "params", "train_s", "draws"}``
    (psnr_y NaN and train_s 0 for an infeasible one, which is never trained; ``draws``: searcher suggestions
    made up to this trial, counting the ones the searcher answered itself).
    """
    searcher = make_variant_searcher(plan, variant)
    in_flight: list[tuple[str, dict[str, Any]]] = []
    done: list[dict[str, Any]] = []
    n_trials = 0
    while len(done) < plan.num_samples:
        while len(done) + len(in_flight) < plan.num_samples and len(in_flight) < concurrency:
            tid = f"trial_{n_trials:05d}"
            n_trials += 1
            in_flight.append((tid, searcher.suggest(tid)))
        tid, cfg = in_flight.pop(0)
        key = _key(cfg["C"], cfg["L"], cfg["B"], cfg["w_gt"])
        result, trial = _result(cfg, rows, key)
        searcher.on_trial_complete(tid, result=result)
        price_d = cfg["_price"]
        done.append(
            {
                **trial,
                "key": key,
                "paper_rule": bool(cfg["_paper_rule"]),
                "macs_720p": price_d["macs_720p"],
                "params": price_d["params"],
                "draws": n_trials + sum(searcher.answered.values()),
            }
        )
    return done


def _result(
    cfg: Mapping[str, Any], rows: Mapping[tuple[int, int, int, float], Mapping[str, Any]], key: tuple
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the result the trial reports to the searcher, the replay's record of it)."""
    price_d = dict(cfg["_price"])
    if cfg["_infeasible"]:
        # What run_trial reports for a configuration it never trains (orchestrator.search._marker_result).
        result = {**price_d, "psnr_y": INFEASIBLE_PSNR, "val_psnr_y": INFEASIBLE_PSNR, "infeasible": 1}
        return result, {"feasible": False, "psnr_y": math.nan, "train_s": 0.0}
    row = rows.get(key)
    if row is None:
        raise ConfigError(
            f"the KD table has no row for C{key[0]} L{key[1]} B{key[2]} w_gt {key[3]:g}; finish it with "
            f"python -m bench.build_kd_table (it resumes)"
        )
    if int(row["params"]) != price_d["params"] or int(row["macs_720p"]) != price_d["macs_720p"]:
        raise ConfigError(
            f"KD table row C{key[0]} L{key[1]} B{key[2]} has params/MACs {row['params']}/{row['macs_720p']}, "
            f"but the search prices it {price_d['params']}/{price_d['macs_720p']}; rebuild the table"
        )
    result = {**price_d, "psnr_y": float(row["psnr_y"]), "val_psnr_y": float(row["psnr_y"]), "infeasible": 0}
    return result, {"feasible": True, "psnr_y": float(row["psnr_y"]), "train_s": float(row.get("wall_s", 0.0))}


@dataclass(frozen=True)
class HvScale:
    """Fixed reference and ideal points of the feasible table; ``norm`` divides raw HV (dB x MACs)."""

    ref: tuple[float, float]
    ideal: tuple[float, float]

    @property
    def norm(self) -> float:
        return (self.ideal[0] - self.ref[0]) * (self.ref[1] - self.ideal[1])


def hv_scale(feasible: pd.DataFrame, *, margin: float = REF_MARGIN) -> HvScale:
    pts = feasible[[k for k, _ in OBJECTIVES]].to_numpy(dtype=float)
    ref = reference_point(pts, MODES, margin=margin)
    ideal = (float(pts[:, 0].max()), float(pts[:, 1].min()))
    return HvScale(ref=(float(ref[0]), float(ref[1])), ideal=ideal)


def hv_curve(trials: Sequence[Mapping[str, Any]], scale: HvScale) -> np.ndarray:
    """Normalised HV of the feasible front after each trial (infeasible trials leave it unchanged)."""
    pts = np.array([[t["psnr_y"], t["macs_720p"] if t["feasible"] else math.nan] for t in trials], dtype=float)
    return hypervolume_history(pts, MODES, scale.ref) / scale.norm


def first_reach(curve: np.ndarray, target: float) -> int | None:
    """1-based trial count at which ``curve`` first reaches ``target`` (a 1e-12 tolerance), or None."""
    hit = np.flatnonzero(curve >= target - 1e-12)
    return int(hit[0]) + 1 if hit.size else None


# ----------------------------------------------------------------------------------------------------- driver
def _parse_args(argv: Sequence[str]) -> Any:
    p = make_parser(NAME, "Replay random / NSGA-II / MO-TPE against the KD table; hypervolume vs trials.")
    p.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="KD table (default: the committed one)")
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), help="algorithms or variants ALGO:K=V,...")
    p.add_argument("--seeds", type=int, default=None, help="sampler seeds per algorithm and seeding (default 10)")
    p.add_argument("--trials", type=int, default=None, help="trials per search (default 48; quick 12)")
    p.add_argument("--grid", default=GRID, help=f"C/L/B ranges of the search space (default {GRID})")
    p.add_argument("--max-params", default="60k", help="parameter budget (default 60k)")
    p.add_argument("--max-macs", default=None, help="720p MACs budget, e.g. 12G (default none)")
    p.add_argument("--concurrency", type=int, default=1, help="trials in flight at once (default 1)")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key in ("seeds", "trials"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.seeds < 1 or args.trials < 1 or args.concurrency < 1:
        p.error("--seeds, --trials and --concurrency must be positive")
    args.variants = [parse_variant(a) for a in args.algorithms]
    args.grid = parse_grid(args.grid)
    if not any(v.name == BASELINE for v in args.variants):
        args.variants.insert(0, parse_variant(BASELINE))  # the baseline defines the target
    args.max_params = parse_size(args.max_params) if args.max_params not in (None, "none") else None
    args.max_macs = parse_size(args.max_macs) if args.max_macs not in (None, "none") else None
    return args


def _quiet_libraries() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray").setLevel(logging.ERROR)
    # Ray times the define-by-run function, which includes the sampler's own work inside trial.suggest_*; a TPE
    # over a few hundred told trials takes ~1 s there. Nothing is trained inside it here.
    warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument took")


def run(args: Any) -> dict[str, Any]:
    """Replay every variant x seeding x seed and gather the curves and figures."""
    t_all = time.perf_counter()
    _quiet_libraries()
    df = load_table(args.table)
    check_prices(df)
    space = space_of(df, args.grid)
    arch = str(_single(df, "arch"))
    budget = Budget(max_params=args.max_params, max_macs=args.max_macs)
    rows = {_key(r.C, r.L, r.B, r.w_gt): r._asdict() for r in df.itertuples(index=False)}
    n_grid, n_feasible = check_coverage(space, rows, arch, budget)
    in_space = set(grid_points(space))
    feasible = df[[k in in_space and _feasible_row(r, budget) for k, r in rows.items()]]
    if feasible.empty:
        raise ConfigError("no configuration of the search space meets the budget; raise --max-params / --max-macs")
    scale = hv_scale(feasible)
    front_pts = feasible[[k for k, _ in OBJECTIVES]].to_numpy(dtype=float)
    table_hv = hypervolume_2d(front_pts[pareto_mask(front_pts, MODES)], MODES, scale.ref) / scale.norm
    seed_point = paper_point(space)
    seed_row = rows.get(_key(seed_point["C"], seed_point["L"], seed_point["B"], seed_point["w_gt"]))
    plan = SearchPlan(
        name="replay",
        storage=str(REPO / "srcompress_runs" / "replay"),  # never written: no Tune run is started
        student_arch=arch,
        space=space,
        budget=budget,
        objectives=OBJECTIVES,
        num_samples=args.trials,
        scale=int(space["scale"]),
    )
    log(
        f"table {args.table.name}: {len(df)} rows; space of {n_grid} configurations, {n_feasible} within "
        f"max_params {args.max_params} / max_macs {args.max_macs}; paper seed {seed_point}; "
        f"table front HV {table_hv:.4f}"
    )

    curves: dict[str, dict[str, np.ndarray]] = {}
    stats: dict[str, dict[str, dict[str, Any]]] = {}
    all_runs: dict[str, dict[str, list[list[dict[str, Any]]]]] = {}
    for variant in args.variants:
        curves[variant.name], stats[variant.name], all_runs[variant.name] = {}, {}, {}
        for seeding in SEEDINGS:
            t0 = time.perf_counter()
            runs = []
            for seed in range(args.seeds):
                p = replace(plan, seed=seed, paper_point=seed_point if seeding == "paper_seed" else None)
                runs.append(replay_search(p, variant, rows, concurrency=args.concurrency))
            c = np.stack([hv_curve(r, scale) for r in runs])
            curves[variant.name][seeding] = c
            all_runs[variant.name][seeding] = runs
            trained = [sum(t["feasible"] for t in r) for r in runs]
            stats[variant.name][seeding] = {
                "trained_mean": round(float(np.mean(trained)), 2),
                "distinct_trained_mean": round(
                    float(np.mean([len({t["key"] for t in r if t["feasible"]}) for r in runs])), 2
                ),
                "train_s_mean": round(float(np.mean([sum(t["train_s"] for t in r) for r in runs])), 1),
                "draws_mean": round(float(np.mean([r[-1]["draws"] for r in runs])), 1),
            }
            log(
                f"{variant.name:>28} {seeding:>10}: mean HV at {args.trials} trials {c[:, -1].mean():.4f} "
                f"(trained {np.mean(trained):.1f}/{args.trials}; {time.perf_counter() - t0:.1f} s)"
            )

    target = float(curves[BASELINE]["no_seed"][:, -1].mean())
    checkpoints = sorted({n for n in CHECKPOINTS if n <= args.trials} | {args.trials})
    results: dict[str, Any] = {}
    for name, by_seeding in curves.items():
        results[name] = {}
        for seeding, c in by_seeding.items():
            mean = c.mean(axis=0)
            per_seed = [first_reach(row, target) for row in c]
            reached = [n for n in per_seed if n is not None]
            # Trained (feasible) trials each seed needed: the compute a search spends to reach the target.
            trained_at = [
                None if n is None else sum(t["feasible"] for t in run[:n])
                for n, run in zip(per_seed, all_runs[name][seeding], strict=True)
            ]
            results[name][seeding] = {
                "hv_mean": {str(n): round(float(mean[n - 1]), 4) for n in checkpoints},
                "hv_std": {str(n): round(float(c[:, n - 1].std()), 4) for n in checkpoints},
                "trials_to_target": first_reach(mean, target),
                "seeds_at_target_by_16": round(sum(n <= GOAL_TRIALS for n in reached) / len(per_seed), 2),
                "median_trials_to_target": _median_or_none(per_seed),
                "median_trained_to_target": _median_or_none(trained_at),
                **stats[name][seeding],
            }
    best_other = min(
        (r["trials_to_target"] for n, by in results.items() if n != BASELINE for r in by.values()
         if r["trials_to_target"] is not None),
        default=None,
    )  # fmt: skip
    return {
        "quick": bool(args.quick),
        "table": str(args.table.relative_to(REPO)) if args.table.is_relative_to(REPO) else str(args.table),
        "table_rows": len(df),
        "grid_configs": n_grid,
        "grid": {k: space[k] for k in ("C", "L", "B", "w_gt")},
        "feasible_configs": n_feasible,
        "max_params": args.max_params,
        "max_macs": args.max_macs,
        "objectives": [f"{k}:{m}" for k, m in OBJECTIVES],
        "trials": args.trials,
        "seeds": args.seeds,
        "concurrency": args.concurrency,
        "sampler_settings": {
            v.name: {
                **sampler_settings(v.plan(replace(plan, num_samples=args.trials))),
                **dict(v.kwargs),
                **{o: getattr(v.plan(plan), o) for o in SEARCHER_OPTIONS},
            }
            for v in args.variants
        },
        "paper_point": seed_point,
        "paper_point_feasible": bool(seed_row is not None and _feasible_row(seed_row, budget)),
        "paper_point_psnr_y": None if seed_row is None else float(seed_row["psnr_y"]),
        "reference_point": {"psnr_y": round(scale.ref[0], 4), "macs_720p": round(scale.ref[1])},
        "ideal_point": {"psnr_y": round(scale.ideal[0], 4), "macs_720p": round(scale.ideal[1])},
        "table_front_hv": round(table_hv, 4),
        "target_hv": round(target, 4),
        "results": results,
        "best_trials_to_target": best_other,
        "goal_met": best_other is not None and best_other <= GOAL_TRIALS,
        "wall_s": round(time.perf_counter() - t_all, 1),
    }


def _median_or_none(values: Sequence[int | None]) -> float | None:
    """Median with None counted as never (infinite); None when the median itself is never (JSON has no inf)."""
    m = float(np.median([v if v is not None else math.inf for v in values]))
    return m if math.isfinite(m) else None


def _feasible_row(row: Mapping[str, Any], budget: Budget) -> bool:
    ok = budget.max_params is None or int(row["params"]) <= budget.max_params
    return ok and (budget.max_macs is None or int(row["macs_720p"]) <= budget.max_macs)


def _summary(fig: dict[str, Any]) -> str:
    n = str(fig["trials"])
    parts = [
        f"{fig['feasible_configs']}/{fig['grid_configs']} configs feasible (max_params {fig['max_params']}); "
        f"{fig['seeds']} seeds x {fig['trials']} trials; table front HV {fig['table_front_hv']:.3f}; "
        f"target (random, {n} trials) {fig['target_hv']:.3f}"
    ]
    for name, by in fig["results"].items():
        for seeding, r in by.items():
            reach = r["trials_to_target"] if r["trials_to_target"] is not None else f">{n}"
            mid = "16" if "16" in r["hv_mean"] else next(iter(r["hv_mean"]))
            parts.append(
                f"{name}/{seeding}: HV@{mid} {r['hv_mean'][mid]:.3f}, HV@{n} {r['hv_mean'][n]:.3f}, target at {reach}"
            )
    parts.append(f"goal (<= {GOAL_TRIALS} trials) met: {fig['goal_met']}")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return bench_main(NAME, argv, _parse_args, run, _summary)


if __name__ == "__main__":
    main()
