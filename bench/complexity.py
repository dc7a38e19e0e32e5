"""Params and MACs of the published models beside the published figures, and the meta-device counter's check.

Three parts, all in one run (REFERENCE.md §5 conventions; MACs by ``FlopCounterMode``, FLOPs / 2):

1. Rows: every CDISM Table I model at x2 and the other published models (RFDN, RFDN-L at x2; E-RFDN, IMDN-AIM-B7
   and the folded IMDN-CLB-B7 at x4): params, MACs for a 1280x720 output and for a 256x256 LR input, the
   published figure and ours / published. Counted on the meta device (``sr.complexity.count_macs_for``).
2. Meta == real: for random (C, L, B) per family (edsr, swinir, imdn, rfdn), MACs counted on the meta device
   equal MACs counted with real tensors on a small LR input (total and per aten op). Mismatches must be 0.
3. Meta == real at the 720p convention for the Table I models, and the speedup of meta over real counting
   (build + count, wall time) for one mid-size model.

Run ``python -m bench.complexity`` (full; 17 minutes on 2 busy CPUs, the real 720p counts of the
giant ``edsr``/``swinir`` dominate) or ``--quick`` (under 2 minutes).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from bench._common import command_for, emit, log, make_parser
from sr.complexity import build_on_meta, count_macs, count_macs_for, count_params, lr_shape_for
from sr.models import build, get_family, list_variants
from sr.published import published_for
from sr.reparam import fold

NAME = "complexity"
TABLE_I = ("edsr", "edsr_baseline", "edsr_mini", "swinir", "swinir_light", "swinir_mini", "imdn")
# Other published models at the scale of their published figure.
EXTRAS = (("rfdn", 2), ("rfdn_l", 2), ("e_rfdn", 4), ("imdn_aim_b7", 4), ("imdn_clb_b7", 4))
# Folded IMDN-CLB-B7 is the IMDN-AIM-B7 network (sr/models/imdn_clb.py), so it is held to that published row.
_PUBLISHED_AS = {"imdn_clb_b7": "imdn_aim_b7"}
GIANTS = ("edsr", "swinir")
FAMILIES = ("edsr", "swinir", "imdn", "rfdn")
SMALL_LR = (32, 48)  # LR (H, W) of the random meta-vs-real check; multiples of SwinIR's window 8
_RELPOS = ("relative_position_bias_table",)


def _deployed(arch: str, scale: int) -> Callable[[], nn.Module]:
    # Counted as deployed: collapsible blocks folded (REFERENCE.md §5); fold is a copy for plain models.
    return lambda: fold(build(arch, scale=scale))


def model_row(arch: str, *, scale: int) -> dict[str, Any]:
    """Params and MACs (both conventions) of ``arch`` at ``scale`` with the published figure and the ratios."""
    builder = _deployed(arch, scale)
    model = build_on_meta(builder)
    row: dict[str, Any] = {
        "arch": arch,
        "scale": scale,
        "params": count_params(model),
        "params_no_relpos": count_params(model, exclude=_RELPOS),
        "macs_720p": count_macs_for(builder, lr_shape_for("720p", scale)).macs,
        "macs_lr256": count_macs_for(builder, lr_shape_for("lr256", scale)).macs,
        "published": None,
        "params_ratio": None,
        "macs_720p_ratio": None,
    }
    pub_arch = _PUBLISHED_AS.get(arch, arch)
    pub = published_for(pub_arch, scale)
    if pub is not None:
        row["published"] = {
            "arch": pub_arch,
            "label": pub.label,
            "source": pub.source,
            "params": pub.params,
            "params_exact": pub.params_exact,
            "macs_720p_g": pub.macs_720p_g,
            "note": pub.note,
        }
        if pub.params:
            row["params_ratio"] = row["params"] / pub.params
        if pub.macs_720p_g:
            row["macs_720p_ratio"] = row["macs_720p"] / (pub.macs_720p_g * 1e9)
    return row


def _random_knobs(family: str, rng: random.Random) -> dict[str, Any]:
    """Small random knobs of ``family`` that its builder accepts."""
    scale = rng.choice((2, 3, 4))
    if family == "edsr":
        return {"C": rng.randint(4, 48), "L": rng.randint(1, 3), "B": rng.randint(1, 4), "scale": scale}
    if family == "swinir":
        heads = rng.choice((1, 2, 3, 6))
        return {
            "C": heads * rng.randint(1, 24 // heads + 1),
            "L": rng.randint(1, 3),
            "B": rng.randint(1, 2),
            "heads": heads,
            "upsampler": rng.choice(("pixelshuffle", "pixelshuffledirect")),
            "scale": scale,
        }
    if family == "imdn":
        distilled = rng.randint(4, 16)  # CCA reduces 4*distilled channels by 16
        return {
            "C": distilled + rng.randint(distilled, 48),
            "B": rng.randint(1, 3),
            "distilled": distilled,
            "scale": scale,
        }
    if family == "rfdn":
        return {
            "C": rng.randint(16, 56),
            "B": rng.randint(1, 3),
            "dist_rate": rng.choice((0.25, 0.5)),
            "attention": rng.choice(("esa", "cca")),
            "scale": scale,
        }
    raise ValueError(f"no random knobs for family {family!r}; use one of {', '.join(FAMILIES)}")


def meta_vs_real(*, samples: int, lr_shape: tuple[int, int], seed: int) -> dict[str, Any]:
    """Count MACs on the meta device and with real CPU tensors for ``samples`` random knob sets per family.

    Meta counting is called directly (not ``count_macs_for``, which would fall back to real tensors and make the
    check vacuous); a model the meta device cannot run counts as a failure.
    """
    rng = random.Random(seed)
    checked = mismatches = failures = 0
    details: list[dict[str, Any]] = []
    per_family: dict[str, dict[str, float]] = {}
    for family in FAMILIES:
        fam_build = get_family(family).build
        t_meta = t_real = 0.0
        for _ in range(samples):
            knobs = _random_knobs(family, rng)
            t0 = time.perf_counter()
            real = count_macs(fam_build(**knobs), lr_shape)
            t1 = time.perf_counter()
            try:
                meta = count_macs(build_on_meta(lambda fb=fam_build, k=knobs: fb(**k)), lr_shape)
            except (NotImplementedError, RuntimeError) as exc:
                failures += 1
                details.append({"family": family, "knobs": knobs, "meta_error": str(exc).splitlines()[0]})
                continue
            t2 = time.perf_counter()
            t_real, t_meta = t_real + t1 - t0, t_meta + t2 - t1
            checked += 1
            if meta.macs != real.macs or meta.per_op != real.per_op:
                mismatches += 1
                details.append({"family": family, "knobs": knobs, "real": real.macs, "meta": meta.macs})
        per_family[family] = {"real_s": round(t_real, 3), "meta_s": round(t_meta, 3)}
    return {
        "samples_per_family": samples,
        "lr_shape": list(lr_shape),
        "seed": seed,
        "checked": checked,
        "mismatches": mismatches,
        "meta_failures": failures,
        "details": details,
        "seconds": per_family,
    }


def real_720p(arch: str, *, scale: int, meta_macs: int, meta_repeats: int) -> dict[str, Any]:
    """Real-tensor MACs of ``arch`` at the 720p convention against the meta count, with both wall times.

    Both timings include building the model (that is what pricing a candidate costs); meta is the median of
    ``meta_repeats`` runs, real is one run (it takes seconds to minutes).
    """
    builder = _deployed(arch, scale)
    lr = lr_shape_for("720p", scale)
    meta_times = []
    for _ in range(meta_repeats):
        t0 = time.perf_counter()
        count_macs(build_on_meta(builder), lr)
        meta_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    real = count_macs(builder(), lr)
    real_s = time.perf_counter() - t0
    meta_s = statistics.median(meta_times)
    return {
        "arch": arch,
        "scale": scale,
        "real_macs": real.macs,
        "meta_macs": meta_macs,
        "equal": real.macs == meta_macs,
        "real_s": round(real_s, 3),
        "meta_s": round(meta_s, 4),
        "speedup": round(real_s / meta_s, 1),
    }


def _summary(figures: dict[str, Any]) -> str:
    parts = []
    for r in figures["rows"]:
        if r["published"] is None:
            continue
        ratios = f"params x{r['params_ratio']:.3f}"
        if r["macs_720p_ratio"] is not None:
            ratios += f", 720p MACs x{r['macs_720p_ratio']:.3f}"
        parts.append(f"{r['arch']}@x{r['scale']} {r['params'] / 1e6:.3f}M/{r['macs_720p'] / 1e9:.1f}G ({ratios})")
    mvr = figures["meta_vs_real"]
    parts.append(f"meta==real {mvr['checked'] - mvr['mismatches']}/{mvr['checked'] + mvr['meta_failures']} random")
    checked = figures["real_720p"]
    parts.append(f"meta==real at 720p {sum(c['equal'] for c in checked)}/{len(checked)}")
    sp = figures.get("speedup")
    if sp:
        parts.append(
            f"meta speedup {sp['arch']} x{sp['speedup']} ({sp['meta_s'] * 1e3:.0f} ms vs {sp['real_s']:.1f} s)"
        )
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the printed record."""
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=None, help="random C/L/B per family (default 20; quick 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random C/L/B")
    parser.add_argument(
        "--speed-arch", default="edsr_baseline", help="mid-size x2 model timed for the meta-vs-real speedup"
    )
    parser.add_argument(
        "--real-720p",
        nargs="*",
        default=None,
        help="x2 models also counted with real tensors at 720p (default: all Table I; quick: all but edsr/swinir "
        "and swinir_light/swinir_mini, whose real counts take minutes on CPU)",
    )
    args = parser.parse_args(argv)
    argv = list(argv) if argv is not None else sys.argv[1:]
    samples = args.samples if args.samples is not None else (5 if args.quick else 20)
    if args.real_720p is not None:
        real_archs = list(args.real_720p)
    elif args.quick:
        real_archs = [a for a in TABLE_I if a not in GIANTS and not a.startswith("swinir")]
    else:
        real_archs = list(TABLE_I)
    if args.speed_arch not in real_archs:
        real_archs.append(args.speed_arch)
    known = set(list_variants())

    t_start = time.perf_counter()
    rows = []
    for arch, scale in [(a, 2) for a in TABLE_I] + list(EXTRAS):
        if arch not in known:
            log(f"skip {arch}: not registered")
            continue
        rows.append(model_row(arch, scale=scale))
        r = rows[-1]
        log(
            f"{arch:>14} x{scale}: {r['params']:>11,} params {r['macs_720p'] / 1e9:9.1f} G(720p) "
            f"{r['macs_lr256'] / 1e9:8.1f} G(lr256)  published "
            f"{(r['published'] or {}).get('params')} / {(r['published'] or {}).get('macs_720p_g')} G"
        )
    mvr = meta_vs_real(samples=samples, lr_shape=SMALL_LR, seed=args.seed)
    log(f"meta vs real on LR {SMALL_LR}: {mvr['checked']} checked, {mvr['mismatches']} mismatches")

    by_arch = {r["arch"]: r for r in rows if r["scale"] == 2}
    checked = []
    for arch in real_archs:
        log(f"real 720p count of {arch} ...")
        checked.append(real_720p(arch, scale=2, meta_macs=by_arch[arch]["macs_720p"], meta_repeats=5))
        log(f"  {checked[-1]}")
    speed = next(c for c in checked if c["arch"] == args.speed_arch)
    figures = {
        "convention": "MACs = FlopCounterMode FLOPs / 2; 720p = 1280x720 output; lr256 = 256x256 LR input",
        "quick": args.quick,
        "rows": rows,
        "meta_vs_real": mvr,
        "real_720p": checked,
        "speedup": {k: speed[k] for k in ("arch", "meta_s", "real_s", "speedup")},
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
