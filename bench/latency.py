"""CPU latency of the CDISM Table I models at LR 320x180, side by side, and what folding buys.

Conventions (REFERENCE.md §5): batch 1, eval() under inference_mode, float32, ``--threads`` intra-op threads,
LR input 320x180 (W x H) for every model (x2 models, so a 640x360 output), timed by
``sr.latency.measure_latency_ms`` (``torch.utils.benchmark.Timer``). To make ratios robust to machine noise, the
models are timed *interleaved*: each round runs every model once (the order rotates per round), and a ratio is the
median over rounds of the per-round ratio. The giant ``edsr``/``swinir`` (minutes per forward pass on 2 CPUs) are
timed afterwards with few repeats and no warm-up, outside the interleaving; ``--quick`` skips them and the
SwinIR-light/mini models.

Figures: median and IQR (ms) per model; EDSRmini / EDSR_baseline latency ratio beside their MACs ratio;
IMDN-CLB (training form) vs its fold vs the plain IMDN-AIM it folds into (latency ratios, and exact equality of
params, MACs and outputs).

Run ``python -m bench.latency`` (full; 35 minutes on 2 CPUs shared with other jobs) or ``--quick`` (about 65 s of
CPU time, i.e. about a minute on 2 idle CPUs; several minutes when they are shared).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bench._common import command_for, emit, log, make_parser
from sr.complexity import build_on_meta, count_macs, count_macs_for, count_params
from sr.latency import measure_latency_ms, median_iqr_ms
from sr.models import build
from sr.reparam import fold, has_collapsible

NAME = "latency"
SCALE = 2
TABLE_I = ("edsr_baseline", "edsr_mini", "swinir_light", "swinir_mini", "imdn")
GIANTS = ("edsr", "swinir")
QUICK_SKIP = ("swinir_light", "swinir_mini")  # 16-40 s per forward pass at LR 320x180 on 2 CPUs
CLB, FOLDED, PLAIN = "imdn_clb", "imdn_clb_folded", "imdn_aim"


def _parse_size(text: str) -> tuple[int, int]:
    """``"320x180"`` (W x H) -> LR shape ``(180, 320)`` (H, W)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--lr-size {text!r} is not WxH; write it like 320x180") from None
    return h, w


def _stats(times_ms: Sequence[float]) -> dict[str, float]:
    """Median and inter-quartile range, computed as ``measure_latency_ms`` does."""
    median, iqr = median_iqr_ms(times_ms)
    return {"median_ms": round(median, 3), "iqr_ms": round(iqr, 3)}


def _once_ms(model: nn.Module, lr_shape: tuple[int, int], *, threads: int, warmup: int = 0) -> float:
    return measure_latency_ms(model, lr_shape, warmup=warmup, repeats=1, threads=threads).median_ms


def interleaved_ms(
    models: dict[str, nn.Module], lr_shape: tuple[int, int], *, rounds: int, warmup: int, threads: int
) -> dict[str, list[float]]:
    """Per-round forward times (ms) of ``models``, timed round-robin with a rotating order.

    Every model gets ``warmup`` untimed passes first; then each round times one pass of every model, so slow
    drifts of the machine's load hit all models alike.
    """
    names = list(models)
    for name in names:
        for _ in range(warmup):
            _once_ms(models[name], lr_shape, threads=threads)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(_once_ms(models[name], lr_shape, threads=threads))
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.0f}" for n in names))
    return times


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of ``num[i] / den[i]`` (both timed in the same round)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def _max_abs_diff(a: nn.Module, b: nn.Module, lr_shape: tuple[int, int]) -> float:
    x = torch.rand(1, 3, *lr_shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


def fold_check(clb: nn.Module, folded: nn.Module) -> dict[str, Any]:
    """Folded IMDN-CLB against the plain IMDN-AIM of the same size: its weights load strictly, and params, MACs
    and outputs are equal (outputs to float32 rounding)."""
    plain = build(PLAIN, scale=SCALE)
    plain.load_state_dict(folded.state_dict(), strict=True)
    small = (32, 48)
    return {
        "has_collapsible_before": has_collapsible(clb),
        "has_collapsible_after": has_collapsible(folded),
        "params_unfolded": count_params(clb),
        "params_folded": count_params(folded),
        "params_imdn_aim": count_params(plain),
        "macs_unfolded": count_macs(clb, small).macs,
        "macs_folded": count_macs(folded, small).macs,
        "macs_imdn_aim": count_macs(plain, small).macs,
        "macs_lr_shape": list(small),
        "max_abs_diff_folded_vs_unfolded": _max_abs_diff(folded, clb, small),
        "max_abs_diff_folded_vs_imdn_aim": _max_abs_diff(folded, plain, small),
    }


def _summary(figures: dict[str, Any]) -> str:
    parts = [f"LR {figures['lr_size']}, {figures['threads']} threads, {figures['rounds']} rounds"]
    for name, m in figures["models"].items():
        parts.append(f"{name} {m['median_ms']:.0f}±{m['iqr_ms']:.0f} ms")
    e = figures["edsr_mini_vs_baseline"]
    parts.append(f"EDSRmini/EDSR_baseline latency x{e['latency_ratio']:.3f} vs MACs x{e['macs_ratio']:.4f}")
    f = figures["fold"]
    parts.append(
        f"folded/unfolded IMDN-CLB x{f['folded_over_unfolded']:.3f}, folded/IMDN-AIM x{f['folded_over_imdn_aim']:.3f}"
    )
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the printed record."""
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads while timing")
    parser.add_argument("--lr-size", default="320x180", help="LR input W x H (default 320x180)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 8; quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per model before the rounds")
    parser.add_argument("--giant-repeats", type=int, default=2, help="timed passes of edsr/swinir (full mode)")
    args = parser.parse_args(argv)
    argv = list(argv) if argv is not None else sys.argv[1:]
    lr_shape = _parse_size(args.lr_size)
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 8)
    torch.manual_seed(0)

    t_start = time.perf_counter()
    archs = [a for a in TABLE_I if not (args.quick and a in QUICK_SKIP)]
    models: dict[str, nn.Module] = {a: build(a, scale=SCALE) for a in archs}
    models[CLB] = build(CLB, scale=SCALE)
    models[FOLDED] = fold(models[CLB]).eval()
    models[PLAIN] = build(PLAIN, scale=SCALE)
    times = interleaved_ms(models, lr_shape, rounds=rounds, warmup=args.warmup, threads=args.threads)
    results: dict[str, dict[str, Any]] = {
        name: {**_stats(t), "repeats": len(t), "interleaved": True} for name, t in times.items()
    }
    if not args.quick:
        for arch in GIANTS:
            log(f"timing {arch} ({args.giant_repeats} passes, no warm-up) ...")
            model = build(arch, scale=SCALE)
            t = [_once_ms(model, lr_shape, threads=args.threads) for _ in range(args.giant_repeats)]
            results[arch] = {**_stats(t), "repeats": len(t), "interleaved": False}
            del model
    # Priced on the meta device (no forward pass); the training-form IMDN-CLB with its extra branches.
    builders = {name: (lambda n=name: build(n, scale=SCALE)) for name in results if name != FOLDED}
    builders[FOLDED] = lambda: fold(build(CLB, scale=SCALE))
    for name, builder in builders.items():
        results[name]["macs"] = count_macs_for(builder, lr_shape).macs
        results[name]["params"] = count_params(build_on_meta(builder))

    macs_mini, macs_base = results["edsr_mini"]["macs"], results["edsr_baseline"]["macs"]
    figures: dict[str, Any] = {
        "lr_size": args.lr_size,
        "lr_shape": list(lr_shape),
        "scale": SCALE,
        "threads": args.threads,
        "rounds": rounds,
        "warmup": args.warmup,
        "quick": args.quick,
        "models": results,
        "edsr_mini_vs_baseline": {
            "latency_ratio": round(paired_ratio(times["edsr_mini"], times["edsr_baseline"]), 4),
            "latency_ratio_of_medians": round(
                results["edsr_mini"]["median_ms"] / results["edsr_baseline"]["median_ms"], 4
            ),
            "macs_ratio": round(macs_mini / macs_base, 5),
        },
        "fold": {
            "folded_over_unfolded": round(paired_ratio(times[FOLDED], times[CLB]), 4),
            "folded_over_imdn_aim": round(paired_ratio(times[FOLDED], times[PLAIN]), 4),
            **fold_check(models[CLB], models[FOLDED]),
        },
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    return emit(
        figures,
        name=NAME,
        command=command_for(NAME, argv),
        record=not args.no_record,
        md_path=args.benchmarks_md,
        summary=_summary(figures),
    )


if __name__ == "__main__":
    main()
