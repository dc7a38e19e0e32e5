"""The student's KD training step in NCHW vs ``torch.channels_last`` memory format, beside a single conv's rate.

Student: ``edsr_mini`` at x2; batch 16, LR patch 48 (HR 96); 1 torch thread by default (a 1-CPU trial worker).
The step is the cached-teacher KD step (``fit_kd`` over a teacher cache computes the same): student forward,
:func:`sr.losses.kd_loss` with the authors' weights (``0.1 L1(S, GT) + MultiLap(S, T)``), backward, Adam step and
a weight EMA, on preloaded random batches (speed does not depend on pixel values). ``channels_last``: the model
(``model.to(memory_format=torch.channels_last)``) and the LR/HR/teacher tensors converted. Also timed per format:
the student's forward + backward alone (loss = output sum), and a single ``Conv2d(16, 16, 3)`` on
``batch x 16 x 48 x 48`` forward + backward (input gradient too, as a mid-network conv).

MAC/s: forward MACs (``sr.complexity.count_macs``) x 3 for forward + backward, over the measured time (the
kd_step convention). Rounds interleave every measurement (rotating the order) and the figures are medians over
rounds of the wall time minus the thread's run-queue wait (``/proc/thread-self/schedstat``), so other processes'
load is mostly taken out. The goal line of the issue: the KD step >= 0.7 of the best single-conv rate.

This bench only measures; it does not switch the training code's memory format.

Run ``python -m bench.channels_last`` (5 rounds x 4 steps) or ``--quick`` (2 rounds x 1 step at LR 16).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench._common import bench_main, log, make_parser
from sr.complexity import count_macs, count_params
from sr.losses import kd_loss
from sr.models import build

NAME = "channels_last"
SCALE = 2
STUDENT = "edsr_mini"
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
GOAL_STEP_VS_CONV = 0.7  # the goal: KD step >= 0.7 x the best single-conv rate at that shape
FULL = {"rounds": 5, "block": 4, "lr_patch": 48}
QUICK = {"rounds": 2, "block": 1, "lr_patch": 16}
CONV_REPEATS = 8


def _parse_args(argv: Sequence[str]) -> Any:
    p = make_parser(NAME, "KD step and single-conv GMAC/s in NCHW vs channels_last memory format.")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 2)")
    p.add_argument("--block", type=int, default=None, help="steps per measurement per round (default 4; quick 1)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--lr-patch", type=int, default=None, help="LR side; HR = x2, multiple of 16 (default 48)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key in ("rounds", "block", "lr_patch"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if min(args.rounds, args.block, args.batch, args.threads, args.lr_patch) < 1:
        p.error("--rounds, --block, --batch, --threads and --lr-patch must be positive")
    if (args.lr_patch * SCALE) % 16:
        p.error(f"--lr-patch {args.lr_patch} gives HR {args.lr_patch * SCALE}, not a multiple of 16 (Laplacian loss)")
    return args


def _wait_s() -> float:
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn`` took, minus the time this thread sat runnable while other processes held the CPUs."""
    w0, q0 = time.perf_counter(), _wait_s()
    fn()
    return max(time.perf_counter() - w0 - (_wait_s() - q0), 1e-9)


class _Step:
    """The cached-teacher KD step of one student in one memory format (student, Adam and EMA persist)."""

    def __init__(self, init: nn.Module, fmt: torch.memory_format, batch: tuple[torch.Tensor, ...]) -> None:
        self.student = copy.deepcopy(init).to(memory_format=fmt).train()
        self.opt = torch.optim.Adam(self.student.parameters(), lr=2e-4)
        self.ema = copy.deepcopy(self.student).eval().requires_grad_(False)
        self.lr, self.hr, self.t = (x.contiguous(memory_format=fmt) for x in batch)

    def kd(self, steps: int) -> None:
        for _ in range(steps):
            terms = kd_loss(self.student(self.lr), self.t, self.hr, w_gt=0.1, w_lap=1.0, w_hf=1.0)
            self.opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            self.opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(list(self.ema.parameters()), list(self.student.parameters()), 1.0 - 0.999)

    def fwd_bwd(self, steps: int) -> None:
        for _ in range(steps):
            self.student(self.lr).sum().backward()
            self.student.zero_grad(set_to_none=True)


def _conv(batch: int, side: int, fmt: torch.memory_format) -> Callable[[], None]:
    conv = nn.Conv2d(16, 16, 3, padding=1).to(memory_format=fmt)
    x = torch.randn(batch, 16, side, side).contiguous(memory_format=fmt).requires_grad_(True)

    def run() -> None:
        for _ in range(CONV_REPEATS):
            conv(x).sum().backward()
            conv.zero_grad(set_to_none=True)
            x.grad = None

    return run


def run(args: Any) -> dict[str, Any]:
    """Time every (format, measurement) in interleaved rounds and gather GMAC/s."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    init = build(STUDENT, scale=SCALE)
    s, hs = args.lr_patch, args.lr_patch * SCALE
    batch = (torch.rand(args.batch, 3, s, s), torch.rand(args.batch, 3, hs, hs), torch.rand(args.batch, 3, hs, hs))
    steps = {f: _Step(init, fmt, batch) for f, fmt in FORMATS.items()}
    jobs: dict[str, Callable[[], None]] = {}
    for f in FORMATS:
        jobs[f"kd_step/{f}"] = lambda f=f: steps[f].kd(args.block)
        jobs[f"student_fwd_bwd/{f}"] = lambda f=f: steps[f].fwd_bwd(args.block)
        jobs[f"conv/{f}"] = _conv(args.batch, s, FORMATS[f])
    for job in jobs.values():  # warm-up: allocator, kernels, oneDNN primitive caches
        job()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    names = list(jobs)
    for r in range(args.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:  # rotate the order every round
            times[name].append(_timed(jobs[name]))
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in names))

    fwd_macs = count_macs(init, (s, s)).macs * args.batch
    conv_macs = 16 * 16 * 9 * s * s * args.batch
    work = {"kd_step": 3 * fwd_macs * args.block, "student_fwd_bwd": 3 * fwd_macs * args.block}
    work["conv"] = 3 * conv_macs * CONV_REPEATS
    gmacs = {name: round(work[name.split("/")[0]] / statistics.median(ts) / 1e9, 3) for name, ts in times.items()}
    by_kind: dict[str, dict[str, float]] = {}
    for name, v in gmacs.items():
        kind, fmt = name.split("/")
        by_kind.setdefault(kind, {})[fmt] = v
    best_conv = max(by_kind["conv"].values())
    return {
        "quick": bool(args.quick),
        "student": STUDENT,
        "student_params": count_params(init),
        "batch": args.batch,
        "lr_patch": s,
        "threads": args.threads,
        "rounds": args.rounds,
        "block": args.block,
        "gmacs_per_s": by_kind,
        "channels_last_speedup": {k: round(v["channels_last"] / v["nchw"], 3) for k, v in by_kind.items()},
        "kd_step_s": {f: round(statistics.median(times[f"kd_step/{f}"]) / args.block, 4) for f in FORMATS},
        "kd_step_vs_best_conv": {f: round(by_kind["kd_step"][f] / best_conv, 3) for f in FORMATS},
        "faster_kd_step": max(FORMATS, key=lambda f: by_kind["kd_step"][f]),
        "goal": f"KD step >= {GOAL_STEP_VS_CONV} x best single-conv GMAC/s",
        "goal_met": max(by_kind["kd_step"].values()) >= GOAL_STEP_VS_CONV * best_conv,
        "macs_convention": "3 x forward MACs (fwd + bwd); conv: Conv2d(16, 16, 3) fwd + bwd incl. input grad",
        "student_fwd_gmacs_per_batch": round(fwd_macs / 1e9, 4),
    }


def _summary(fig: dict[str, Any]) -> str:
    g = fig["gmacs_per_s"]
    parts = [f"{fig['student']}, batch {fig['batch']}, LR {fig['lr_patch']}, {fig['threads']} thread(s)"]
    for kind, v in g.items():
        parts.append(
            f"{kind} GMAC/s NCHW {v['nchw']:.2f} vs channels_last {v['channels_last']:.2f} "
            f"(x{fig['channels_last_speedup'][kind]:.2f})"
        )
    parts.append(
        f"KD step vs best conv: NCHW {fig['kd_step_vs_best_conv']['nchw']:.2f}, channels_last "
        f"{fig['kd_step_vs_best_conv']['channels_last']:.2f}; faster: {fig['faster_kd_step']}; "
        f"{fig['goal']}: {fig['goal_met']}"
    )
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return bench_main(NAME, argv, _parse_args, run, _summary)


if __name__ == "__main__":
    main()
