"""Steps/s of one KD step through the project's training path vs its compute bound, in one run on one machine.

Teacher: the official IMDN x2 (``../shared/weights/IMDN_x2.pth``) when present, else ``edsr_baseline`` with random
weights (the figures say which). Student: ``edsr_mini`` at x2. Batch 16, LR patch 48 (HR 96). Modes:

- ``bare``: the compute bound: batches preloaded in memory, teacher ``eval()`` under ``no_grad``, student forward,
  :func:`sr.losses.kd_loss`, backward, Adam step and the weight EMA (the same math ``fit_kd`` does per step);
- ``fit_kd``: the project's full path: :func:`sr.distill.fit_kd` over a ``sr.data.PatchDataset`` (T91) with the
  live frozen teacher (dataset + prefetch + loop);
- ``cache``: ``fit_kd`` over a :class:`sr.teacher_cache.CachedKDDataset` (teacher outputs stored once by
  :func:`sr.teacher_cache.build_teacher_cache`; no teacher forward per step);
- ``authors``: ``fit_kd`` with ``KDConfig(teacher_mode="train_autograd")``: the authors' recipe, teacher in train
  mode with autograd through it on every step;
- ``bare_cached``: the compute bound of ``cache``: preloaded ``(lr, hr, teacher_out)``, student step only.

Every mode runs the same number of steps in ``--rounds`` blocks of ``--block`` steps; the rounds interleave the
modes (rotating their order) so machine noise spreads over all of them. A ``fit_kd`` block is one ``fit_kd`` call;
its steps/s is ``KDResult.steps_per_s`` (the training loop, first batch included, setup excluded). Ratios are the
median of per-round ratios. MAC/s: student forward MACs (``sr.complexity.count_macs`` at the LR patch, times the
batch) x 3 for forward + backward (the usual convention: backward costs two forwards), over the measured step
time; beside it the MAC/s torch reaches on one representative conv of the student (16 -> 16 channels, 3x3, on
``batch x 16 x 48 x 48``, forward + backward, same x3 convention).

Run ``python -m bench.kd_step`` (5 rounds x 6 steps per mode) or ``--quick`` (2 rounds x 2 steps).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench._common import REPO, bench_main, log, make_parser
from sr.complexity import count_macs, count_params
from sr.data import PatchDataset, default_train_sources
from sr.distill import KDConfig, fit_kd
from sr.losses import kd_loss
from sr.teacher_cache import CachedKDDataset, build_teacher_cache

NAME = "kd_step"
SCALE = 2
STUDENT = "edsr_mini"
MODES = ("bare", "fit_kd", "cache", "authors", "bare_cached")
SHARED = Path(os.environ.get("SRCOMPRESS_SHARED", REPO.parent / "shared"))
IMDN_WEIGHTS = SHARED / "weights" / "IMDN_x2.pth"
T91 = SHARED / "data" / "T91" / "HR"
# Goals of the benchmark issue.
GOAL_CACHE_VS_AUTHORS = 4.0
GOAL_FIT_KD_VS_BARE = 0.95
FULL = {"rounds": 5, "block": 6}
QUICK = {"rounds": 2, "block": 2}
CONV_REPEATS = 10  # timed fwd+bwd passes of the reference conv per round
CLOCKS = ("unloaded", "wall", "cpu")
CLOCK_NOTE = (
    "steps_per_s = steps / (wall - the main thread's run-queue wait, from /proc/thread-self/schedstat): the wall "
    "time with the time other processes held the CPUs taken out; _wall: plain wall clock; cpu: steps per CPU "
    "second of the process (all its threads); ratios are medians of per-round ratios on each clock"
)
RATIOS = {
    "fit_kd/bare": ("fit_kd", "bare"),
    "cache/authors": ("cache", "authors"),
    "cache/bare": ("cache", "bare"),
    "cache/bare_cached": ("cache", "bare_cached"),
    "fit_kd/authors": ("fit_kd", "authors"),
}


def _parse_args(argv: Sequence[str]) -> Any:
    p = make_parser(NAME, "Steps/s of a KD step: bare loop vs fit_kd vs teacher cache vs the authors' recipe.")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 2)")
    p.add_argument("--block", type=int, default=None, help="steps per mode per round (default 6; quick 2)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--lr-patch", type=int, default=48, help="LR patch side; HR = x2, a multiple of 16 (default 48)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as a 1-CPU trial worker)")
    p.add_argument(
        "--teacher",
        default="auto",
        help="auto: IMDN x2 with the official weights when present, else edsr_baseline with random weights; "
        "or a registered arch name (random weights)",
    )
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key in ("rounds", "block"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        p.error(f"--modes {','.join(bad) or '(empty)'} is not a subset of {','.join(MODES)}")
    if min(args.rounds, args.block, args.batch, args.threads, args.lr_patch) < 1:
        p.error("--rounds, --block, --batch, --threads and --lr-patch must be positive")
    if (args.lr_patch * SCALE) % 16:
        p.error(f"--lr-patch {args.lr_patch} gives HR {args.lr_patch * SCALE}, not a multiple of 16 (Laplacian loss)")
    return args


# ------------------------------------------------------------------------------------------------- models


def _build(arch: str) -> nn.Module:
    from sr.models import build

    return build(arch, scale=SCALE)


def _teacher(choice: str) -> tuple[nn.Module, str]:
    """The teacher and a description of it (which model, which weights)."""
    if choice == "auto":
        if IMDN_WEIGHTS.is_file():
            from sr.checkpoint import load_weights

            return load_weights(_build("imdn"), IMDN_WEIGHTS, arch="imdn"), f"imdn x2 (official weights {IMDN_WEIGHTS})"
        choice = "edsr_baseline"
    return _build(choice), f"{choice} x2 (random weights)"


# ------------------------------------------------------------------------------------------------- modes


@dataclass(frozen=True)
class _Sample:
    """One timed block: wall seconds, CPU seconds of the process, and seconds the calling thread sat runnable
    while other processes held the CPUs (Linux schedstat; 0 where unavailable)."""

    steps: int
    wall_s: float
    cpu_s: float
    wait_s: float

    def rate(self, clock: str) -> float:
        seconds = {"wall": self.wall_s, "unloaded": self.wall_s - self.wait_s, "cpu": self.cpu_s}[clock]
        return self.steps / max(seconds, 1e-9)


def _thread_wait_ns() -> int:
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _timed(fn: Callable[[], Any], steps: int) -> _Sample:
    w0, c0, q0 = time.perf_counter(), time.process_time(), _thread_wait_ns()
    fn()
    return _Sample(
        steps=steps,
        wall_s=time.perf_counter() - w0,
        cpu_s=time.process_time() - c0,
        wait_s=(_thread_wait_ns() - q0) / 1e9,
    )


class _Bare:
    """The hand-written KD step over preloaded batches: what ``fit_kd`` computes, without data path or
    bookkeeping. Keeps its student, Adam and EMA across blocks, like a long run."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, batches: list[tuple[torch.Tensor, ...]]) -> None:
        self.student, self.teacher, self.batches = student.train(), teacher, batches
        self.opt = torch.optim.Adam(self.student.parameters(), lr=2e-4, betas=(0.9, 0.999))
        self.ema = copy.deepcopy(student).eval().requires_grad_(False)
        self.i = 0

    def run(self, steps: int) -> None:
        if self.teacher is not None:
            self.teacher.eval()
        for _ in range(steps):
            batch = self.batches[self.i % len(self.batches)]
            self.i += 1
            lr, hr = batch[0], batch[1]
            sr = self.student(lr)
            if len(batch) == 3:
                t_out = batch[2]
            else:
                with torch.no_grad():
                    t_out = self.teacher(lr)
            terms = kd_loss(sr, t_out, hr, w_gt=0.1, w_lap=1.0, w_hf=1.0)
            self.opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            self.opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(list(self.ema.parameters()), list(self.student.parameters()), 1.0 - 0.999)
        float(terms["total"].detach())  # one sync, as fit_kd does at its log step


def _conv_block(batch: int, side: int, repeats: int) -> tuple[Callable[[], None], int]:
    """A 16 -> 16 3x3 conv on ``batch x 16 x side x side``: ``repeats`` forward + backward passes, and their MACs
    (3x the forward MACs)."""
    conv = nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(batch, 16, side, side, requires_grad=True)  # a mid-network conv also computes grad_input

    def run() -> None:
        for _ in range(repeats):
            conv(x).sum().backward()
            conv.zero_grad(set_to_none=True)
            x.grad = None

    return run, 3 * 16 * 16 * 9 * side * side * batch * repeats


# --------------------------------------------------------------------------------------------------- run


def run(args: Any) -> dict[str, Any]:
    """Build models, data and cache; time every mode in interleaved rounds; gather the figures."""
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    torch.manual_seed(args.seed)
    teacher, teacher_desc = _teacher(args.teacher)
    init = _build(STUDENT)
    hr_patch = args.lr_patch * SCALE
    n_items = args.block * args.batch  # every block replays the same items: fit_kd restarts at step 0
    sources = [T91] if T91.is_dir() else default_train_sources()
    data_desc = str(T91) if T91.is_dir() else "scikit-image sample images"
    t0 = time.perf_counter()
    # T91 has a few images smaller than a 96 px patch: skip them (skip_bad) rather than shrink the patch.
    data = PatchDataset(
        sources, scale=SCALE, hr_patch=hr_patch, seed=args.seed, samples_per_epoch=n_items, skip_bad=True
    )
    load_s = time.perf_counter() - t0
    cfg = KDConfig(steps=args.block, batch_size=args.batch, hr_patch=hr_patch, scale=SCALE, seed=args.seed)
    data_desc += f" ({len(data.hr)} images of >= {hr_patch} px)"
    log(f"teacher {teacher_desc}; student {STUDENT}; data {data_desc} loaded in {load_s:.1f} s")

    # The bare loop's batches: exactly the items of a fit_kd block (fit_kd's step order is a permutation of them).
    items = [data[i] for i in range(n_items)]
    bare_batches = [
        tuple(torch.stack([it[j] for it in items[b : b + args.batch]]) for j in range(2))
        for b in range(0, n_items, args.batch)
    ]

    figures: dict[str, Any] = {"quick": bool(args.quick)}
    with tempfile.TemporaryDirectory(prefix="kd_step_cache_") as tmp:
        cached = None
        if "cache" in args.modes or "bare_cached" in args.modes:
            n_patches = math.ceil(n_items / 8)  # augment=True serves each stored patch under 8 transforms
            plain = PatchDataset(
                sources,
                scale=SCALE,
                hr_patch=hr_patch,
                seed=args.seed,
                samples_per_epoch=n_patches,
                augment=False,
                skip_bad=True,
            )
            info = build_teacher_cache(teacher, plain, n_patches=n_patches, out_dir=tmp, device="cpu")
            cached = CachedKDDataset(info.path, augment=True, seed=args.seed)
            figures.update(cache_patches=n_patches, cache_build_s=round(info.wall_s, 2))
            log(f"cache: {n_patches} patches built in {info.wall_s:.1f} s")
        students = {m: copy.deepcopy(init) for m in args.modes}
        runners: dict[str, Callable[[int], None]] = {}
        if "bare" in args.modes:
            runners["bare"] = _Bare(students["bare"], teacher, bare_batches).run
        if "bare_cached" in args.modes:
            assert cached is not None
            citems = [cached[i] for i in range(n_items)]
            cbatches = [
                tuple(torch.stack([it[j] for it in citems[b : b + args.batch]]) for j in range(3))
                for b in range(0, n_items, args.batch)
            ]
            runners["bare_cached"] = _Bare(students["bare_cached"], None, cbatches).run
        fit_args = {
            "fit_kd": (cfg, teacher, data),
            "cache": (cfg, None, cached),
            "authors": (dataclasses.replace(cfg, teacher_mode="train_autograd"), teacher, data),
        }
        for mode, (c, t, d) in fit_args.items():
            if mode in args.modes:
                # One block = one fit_kd call on this mode's student (a fresh optimizer; its cost is in the time).
                runners[mode] = lambda n, c=c, t=t, d=d, s=students[mode]: fit_kd(
                    dataclasses.replace(c, steps=n), student=s, teacher=t, train_data=d, device="cpu"
                )

        # Warm-up: one step of every mode (allocator, kernels, page cache of the memmaps).
        for mode in args.modes:
            runners[mode](1)
        samples: dict[str, list[_Sample]] = {m: [] for m in args.modes}
        conv_run, conv_macs = _conv_block(args.batch, args.lr_patch, CONV_REPEATS)
        conv_run()
        conv: list[_Sample] = []
        for r in range(args.rounds):
            k = r % len(args.modes)
            for mode in args.modes[k:] + args.modes[:k]:  # rotate the order every round
                samples[mode].append(_timed(lambda mode=mode: runners[mode](args.block), args.block))
            conv.append(_timed(conv_run, conv_macs))  # "steps" = MACs, so rate() is MAC/s
            log(
                f"round {r + 1}/{args.rounds} (load {os.getloadavg()[0]:.1f}) steps/s wall | wall-wait | cpu: "
                + ", ".join(
                    f"{m} {x[-1].rate('wall'):.3f} | {x[-1].rate('unloaded'):.3f} | {x[-1].rate('cpu'):.3f}"
                    for m, x in samples.items()
                )
                + f"; conv {conv[-1].rate('unloaded') / 1e9:.2f} GMAC/s"
            )

    def med(values: Sequence[float], nd: int = 4) -> float:
        return round(statistics.median(values), nd)

    def ratio(a: str, b: str, clock: str) -> float | None:
        if a not in samples or b not in samples:
            return None
        return med([x.rate(clock) / y.rate(clock) for x, y in zip(samples[a], samples[b], strict=True)], 3)

    student_fwd_macs = count_macs(init, (args.lr_patch, args.lr_patch)).macs * args.batch
    teacher_fwd_macs = count_macs(teacher, (args.lr_patch, args.lr_patch)).macs * args.batch
    step_macs = 3 * student_fwd_macs  # fwd + bwd of the student (backward ~ 2 forwards)
    conv_macs_per_s = {c: statistics.median(x.rate(c) for x in conv) for c in CLOCKS}
    modes: dict[str, dict[str, Any]] = {}
    for m, xs in samples.items():
        # MACs computed per step: the student's fwd+bwd, plus the teacher's forward (live, no_grad) or its
        # forward + backward (authors' recipe: autograd through the teacher).
        all_macs = step_macs + {"bare": 1, "fit_kd": 1, "authors": 3}.get(m, 0) * teacher_fwd_macs
        sps = med([x.rate("unloaded") for x in xs])
        modes[m] = {
            "steps": sum(x.steps for x in xs),
            "steps_per_s": sps,
            "steps_per_s_wall": med([x.rate("wall") for x in xs]),
            "steps_per_cpu_s": med([x.rate("cpu") for x in xs]),
            "per_round_steps_per_s": [round(x.rate("unloaded"), 4) for x in xs],
            "per_round_steps_per_s_wall": [round(x.rate("wall"), 4) for x in xs],
            "student_gmacs_per_s": round(step_macs * sps / 1e9, 3),
            "all_gmacs_per_s": round(all_macs * sps / 1e9, 3),
        }
    ratios = {
        name: {c: ratio(a, b, c) for c in CLOCKS} for name, (a, b) in RATIOS.items() if a in samples and b in samples
    }
    figures.update(
        teacher=teacher_desc,
        student=STUDENT,
        student_params=count_params(init),
        teacher_params=count_params(teacher),
        batch=args.batch,
        lr_patch=args.lr_patch,
        hr_patch=hr_patch,
        threads=args.threads,
        rounds=args.rounds,
        block=args.block,
        data=data_desc,
        clocks=CLOCK_NOTE,
        modes=modes,
        ratios=ratios,
        student_fwd_gmacs_per_batch=round(student_fwd_macs / 1e9, 4),
        teacher_fwd_gmacs_per_batch=round(teacher_fwd_macs / 1e9, 4),
        macs_convention="student step = 3 x forward MACs (fwd + bwd); count_macs = FlopCounterMode FLOPs / 2",
        conv_ref=f"Conv2d(16, 16, 3) on {args.batch}x16x{args.lr_patch}x{args.lr_patch}, fwd + bwd = 3 x fwd MACs",
        conv_gmacs_per_s=round(conv_macs_per_s["unloaded"] / 1e9, 3),
        conv_gmacs_per_s_wall=round(conv_macs_per_s["wall"] / 1e9, 3),
        goals={"fit_kd/bare": GOAL_FIT_KD_VS_BARE, "cache/authors": GOAL_CACHE_VS_AUTHORS},
        load_avg_1min=round(os.getloadavg()[0], 2),
        cpus=os.cpu_count(),
        wall_s=round(time.perf_counter() - t_all, 1),
    )
    for m in ("cache", "bare_cached"):
        if m in modes:
            figures[f"{m}_student_vs_conv"] = round(modes[m]["student_gmacs_per_s"] / figures["conv_gmacs_per_s"], 3)
    figures["goals_met"] = {
        name: ratios[name]["unloaded"] >= goal for name, goal in figures["goals"].items() if name in ratios
    }
    return figures


def _summary(fig: dict[str, Any]) -> str:
    teacher = fig["teacher"].split(" (")[0] + (" random" if "random" in fig["teacher"] else "")
    parts = [
        f"teacher {teacher}, {fig['student']}, batch {fig['batch']}, LR {fig['lr_patch']}, {fig['threads']} "
        f"thread(s), {fig['rounds']}x{fig['block']} steps/mode",
        "steps/s (wall-wait) " + ", ".join(f"{m} {v['steps_per_s']:.3g}" for m, v in fig["modes"].items()),
    ]
    for name, r in fig["ratios"].items():
        parts.append(f"{name} x{r['unloaded']:.3f} (wall x{r['wall']:.3f}, cpu x{r['cpu']:.3f})")
    for m in ("bare_cached", "cache"):
        if m in fig["modes"]:
            parts.append(
                f"{m} student step {fig['modes'][m]['student_gmacs_per_s']:.2f} GMAC/s vs conv "
                f"{fig['conv_gmacs_per_s']:.2f} GMAC/s (x{fig[m + '_student_vs_conv']:.2f})"
            )
    parts += [f"goal {k} met: {v}" for k, v in fig["goals_met"].items()]
    parts.append(f"1-min load {fig['load_avg_1min']} on {fig.get('cpus', '?')} CPUs")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return bench_main(NAME, argv, _parse_args, run, _summary)


if __name__ == "__main__":
    main()
