"""``srcompress`` commands that run the CDISM method in this process: ``prune``, ``distill`` and ``compress``.

Plain PyTorch, no Ray: ``prune`` fine-tunes a model with OBProx-SG (``sr.prune``), ``distill`` trains a student
from a frozen teacher (``sr.distill``; optionally from a teacher-output cache, ``sr.teacher_cache``), and
``compress`` chains prune -> C/L/B allocation (``sr.allocate``) -> distill. Training loops checkpoint under
``OUT/ckpt``, show a progress bar on stderr (when it is a terminal and ``--json`` is off; otherwise one line per
log step, none with ``--json``), stop cleanly on Ctrl-C or SIGTERM (exit 130, checkpoints kept) and continue
with ``--resume``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.cli import JsonOpt, SetOpt, _fmt_g, _fmt_int, _print_table, load_model, parse_knobs
from sr.errors import UserError

if TYPE_CHECKING:  # torch-heavy; imported inside the commands so other commands start fast
    from sr.allocate import Allocation
    from sr.distill import KDConfig

DataOpt = Annotated[
    str, typer.Option("--data", help="Training images: a folder of HR images, or a benchmark / DIV2K root")
]
ValOpt = Annotated[
    str | None,
    typer.Option("--val", help="Validation set (e.g. a Set5 folder); default: the scikit-image sample pairs"),
]
ScaleOpt = Annotated[int, typer.Option("--scale", help="Upscaling factor")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Global batch (patches per step)")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seeds the data order, the patches and the global RNGs")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint under --out")]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable or too-small images with a warning")]
LambdaOpt = Annotated[float, typer.Option("--lambda", help="L1 weight of OBProx-SG")]
EpsilonOpt = Annotated[float, typer.Option("--epsilon", help="Orthant projection threshold")]
NpEpochsOpt = Annotated[
    int | None, typer.Option("--np-epochs", help="Prox-SG epochs before the Orthant phase (default: epochs / 10)")
]
BpeOpt = Annotated[
    int | None,
    typer.Option("--batches-per-epoch", help="Steps per OBProx-SG epoch (default: training images // batch size)"),
]
QuirkOpt = Annotated[
    bool,
    typer.Option(
        "--quirk-epoch-in-samples", help="Count OBProx-SG epochs in samples like the authors' code (Orthant late)"
    ),
]
CacheOpt = Annotated[
    int | None,
    typer.Option("--cache", help="Run the teacher once on this many fixed patches and train from the stored outputs"),
]
CacheDirOpt = Annotated[
    str | None, typer.Option("--cache-dir", help="Root of teacher-output caches (default OUT/cache); shareable")
]
OptimizerOpt = Annotated[str, typer.Option("--optimizer", help="adam (authors' code) or adamax (the paper's text)")]

_FALLBACK_VAL = "scikit-image sample pairs"


# ---------------------------------------------------------------------------------------------------- helpers
def _val_pairs(val: str | None, scale: int, *, skip_bad: bool) -> tuple[list, str]:
    """Evaluation pairs of ``--val`` (or the scikit-image fallback) and a name for them."""
    from sr.data import fallback_eval_pairs, load_eval_pairs

    if val:
        return load_eval_pairs(val, scale, skip_bad=skip_bad), str(val)
    return fallback_eval_pairs(scale), _FALLBACK_VAL


def _train_sources(data: str) -> list:
    from sr.data import resolve_train_sources

    return resolve_train_sources([data])


def _scores(res: Any) -> dict[str, float]:
    return {"psnr_y": res.psnr_y, "ssim_y": res.ssim_y}


def _check_fresh(ckpt_dir: Path, step: int | None, *, resume: bool) -> None:
    """Refuse to start over a previous run's checkpoints unless ``--resume`` says to continue them."""
    if step is not None and not resume:
        raise UserError(
            f"{ckpt_dir} holds checkpoints of an earlier run (up to step {step}); pass --resume to continue it, "
            f"or another --out (or delete {ckpt_dir}) to start over"
        )


def _step_of(path: Path | None) -> int | None:
    return None if path is None else int(path.name.split("_")[-1])


def _note(msg: str, *, quiet: bool) -> None:
    if not quiet:
        print(f"[srcompress] {msg}", file=sys.stderr, flush=True)


def _int_list(text: str | None, option: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"{option} {text!r} is not a comma-separated list of integers; write e.g. 64,160") from None


class _Progress:
    """Last step reached (for the interrupt message) plus, when asked, a rich bar or plain log lines on stderr."""

    def __init__(self, label: str, *, total: int, start: int, quiet: bool) -> None:
        self.label, self.total, self.step = label, total, start
        self._first: tuple[int, float] | None = None
        self._bar: Any = None
        self._task: Any = None
        self.lines = not quiet and not sys.stderr.isatty()
        self.show_bar = not quiet and sys.stderr.isatty()

    def __enter__(self) -> _Progress:
        if self.show_bar:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]} it/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.step, loss="-", rate="-")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, step: int, loss: float | None) -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first = (self.step, now)
        self.step = step
        if self._bar is not None:
            s0, t0 = self._first
            rate = (step - s0) / (now - t0) if now > t0 else 0.0
            shown = "-" if loss is None else f"{loss:.4g}"
            self._bar.update(self._task, completed=step, loss=shown, rate=f"{rate:.2f}")

    def line(self, text: str) -> None:
        if self.lines:
            print(f"[srcompress] {self.label} {text}", file=sys.stderr, flush=True)


@contextmanager
def _interruptible(progress: _Progress, latest: Callable[[], Path | None]) -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt; on either, say where the run stopped and exit 130."""
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.getsignal(signal.SIGTERM) if main_thread else None

    def _on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if main_thread:
        signal.signal(signal.SIGTERM, _on_term)
    try:
        yield
    except KeyboardInterrupt:
        last = latest()
        kept = f"checkpoint step {_step_of(last)} kept in {last.parent}" if last is not None else "no checkpoint yet"
        print(
            f"srcompress: interrupted at step {progress.step} ({kept}); rerun with --resume to continue",
            file=sys.stderr,
            flush=True,
        )
        raise typer.Exit(130) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old)


# ------------------------------------------------------------------------------------------------------ prune
def run_prune_stage(
    *,
    arch: str,
    knobs: dict[str, Any],
    weights: str,
    data: str,
    val: str | None,
    scale: int,
    steps: int,
    batch_size: int = 16,
    hr_patch: int = 96,
    lr: float = 5e-3,
    lambda_: float = 1e-4,
    epsilon: float = 1e-4,
    np_epochs: int | None = None,
    batches_per_epoch: int | None = None,
    quirk_epoch_in_samples: bool = False,
    log_every: int | None = None,
    ckpt_every: int | None = None,
    seed: int = 0,
    out: Path,
    resume: bool = False,
    skip_bad: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """OBProx-SG fine-tune of ``arch`` (loaded from ``weights``) through ``sr.stages.prune_stage``, which writes
    ``out/pruned.pth`` and ``out/density.json``.

    Returns:
        The content of ``density.json`` (density, history, per-layer densities, settings, validation scores of
        the model before and after pruning and of bicubic).
    """
    # deferred: torch-heavy, and this module loads with every srcompress command
    from sr._train import find_latest_checkpoint
    from sr.evaluate import evaluate_bicubic, evaluate_model
    from sr.models import arch_tag, family_of
    from sr.prune import PruneConfig
    from sr.stages import patch_data, prune_stage

    t0 = time.perf_counter()
    ckpt_dir = out / "ckpt"
    resumed = _step_of(find_latest_checkpoint(ckpt_dir))
    _check_fresh(ckpt_dir, resumed, resume=resume)
    knobs = {**knobs, "scale": scale}
    model = load_model(arch, scale=scale, knobs={k: v for k, v in knobs.items() if k != "scale"}, weights=weights)
    pairs, val_name = _val_pairs(val, scale, skip_bad=skip_bad)
    if not isinstance(steps, int) or steps < 1:
        raise UserError(f"--steps must be a positive integer, got {steps!r}; pass e.g. --steps 1000")
    dataset = patch_data(_train_sources(data), scale=scale, seed=seed, samples=steps * batch_size, skip_bad=skip_bad)
    dataset = dataset(hr_patch)
    # A real epoch is one pass over the training images (REFERENCE §1: Np counted in real epochs).
    bpe = batches_per_epoch if batches_per_epoch is not None else max(1, len(dataset.hr) // batch_size)
    log_every = log_every or max(1, steps // 10)
    ckpt_every = ckpt_every or log_every
    cfg = PruneConfig(
        family=family_of(arch),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        lambda_=lambda_,
        epsilon=epsilon,
        np_epochs=np_epochs,
        batches_per_epoch=bpe,
        quirk_epoch_in_samples=quirk_epoch_in_samples,
        seed=seed,
        log_every=log_every,
        checkpoint_every=ckpt_every,
    )
    before = evaluate_model(model, pairs, scale=scale)
    if np_epochs is None and int(math.ceil(steps / bpe) / 10) == 0:
        _note(
            f"{steps} steps are {math.ceil(steps / bpe)} epoch(s) of {bpe} batches, so Np = epochs / 10 = 0: "
            f"no Prox-SG phase; pass --np-epochs to have one",
            quiet=quiet,
        )
    if resumed is not None:
        _note(f"resumed pruning from {ckpt_dir}/step_{resumed:07d} (step {resumed} of {steps})", quiet=False)
    settings = {"data": str(data), "scale": scale, "steps": steps, "batch_size": batch_size, "hr_patch": hr_patch}
    settings.update(lr=lr, epsilon=epsilon, np_epochs=np_epochs, batches_per_epoch=batches_per_epoch, seed=seed)
    settings.update({"lambda": lambda_, "quirk_epoch_in_samples": quirk_epoch_in_samples})
    settings.update(log_every=log_every, ckpt_every=ckpt_every)

    def extra(pruned_model: Any) -> dict[str, Any]:
        pruned = evaluate_model(pruned_model, pairs, scale=scale)
        bicubic = _scores(evaluate_bicubic(pairs, scale=scale))
        val_scores = {"data": val_name, "before": _scores(before), "pruned": _scores(pruned), "bicubic": bicubic}
        return {"arch": arch, "tag": arch_tag(arch, **knobs), "knobs": knobs, "weights": str(weights)} | {
            "resumed_from_step": resumed,
            "settings": settings,
            "val": val_scores,
            "wall_s": time.perf_counter() - t0,
        }

    with _Progress("prune", total=steps, start=resumed or 0, quiet=quiet) as prog:

        def report(m: dict[str, Any], ckpt: str | None) -> None:
            prog.line(
                f"step {m['step']}/{steps}: loss {m['loss']:.4g}, density {m['density']:.4f} ({m['phase']}), "
                f"lr {m['lr']:.3g}"
            )

        with _interruptible(prog, lambda: find_latest_checkpoint(ckpt_dir)), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Prox-SG phase is empty")  # noted above in one line
            staged = prune_stage(
                model,
                cfg,
                train_data=dataset,
                out=out,
                checkpoint_dir=ckpt_dir,
                resume=resume,
                report=report,
                progress=lambda s, _n, loss: prog.update(s, loss),
                extra=extra,
            )
    return staged.summary


def _print_prune(s: dict[str, Any]) -> None:
    v = s["val"]
    d0 = s["history"][0][1]
    rows = [
        {"model": f"{s['tag']} (input)", "density": f"{d0:.4f}", **_score_cells(v["before"])},
        {"model": f"{s['tag']} (pruned)", "density": f"{s['density']:.4f}", **_score_cells(v["pruned"])},
        {"model": "bicubic", "density": "-", **_score_cells(v["bicubic"])},
    ]
    _print_table(
        rows, list(rows[0]), title=f"OBProx-SG pruning, {s['steps']} steps; x{s['knobs']['scale']} on {v['data']}"
    )
    hist = ", ".join(f"{st}: {d:.4f}" for st, d in s["history"])
    print(f"density history (step: density): {hist}")
    if s["switch_step"] > 0:
        schedule = (
            f"Prox-SG for steps 0-{s['switch_step'] - 1}, then Orthant "
            f"({s['batches_per_epoch']} batches/epoch, Np {s['np_epochs']})"
        )
    else:
        schedule = "Orthant steps only (Np 0)"
    print(f"density {s['density']:.4f} = {s['nonzero']:,} / {s['total']:,} deep-feature weights non-zero; {schedule}")
    print(f"wrote {s['pruned_weights']} and {Path(s['pruned_weights']).parent / 'density.json'}")


def _score_cells(sc: dict[str, float] | None) -> dict[str, str]:
    if not sc:
        return {"PSNR_Y": "-", "SSIM_Y": "-"}
    return {"PSNR_Y": f"{sc['psnr_y']:.3f}", "SSIM_Y": f"{sc['ssim_y']:.4f}"}


def prune(
    arch: Annotated[str, typer.Option(help="Variant name of the model to prune, e.g. imdn")],
    weights: Annotated[str, typer.Option(help="Its trained weights (.pth)")],
    data: DataOpt,
    steps: Annotated[int, typer.Option(help="Optimizer steps of fine-tuning")],
    val: ValOpt = None,
    scale: ScaleOpt = 2,
    set_: SetOpt = None,
    batch_size: BatchOpt = 16,
    hr_patch: Annotated[int, typer.Option("--hr-patch", help="HR patch side in px (a multiple of scale)")] = 96,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate (alpha)")] = 5e-3,
    lambda_: LambdaOpt = 1e-4,
    epsilon: EpsilonOpt = 1e-4,
    np_epochs: NpEpochsOpt = None,
    batches_per_epoch: BpeOpt = None,
    quirk_epoch_in_samples: QuirkOpt = False,
    log_every: Annotated[int | None, typer.Option(help="Density/loss log interval (default steps / 10)")] = None,
    ckpt_every: Annotated[int | None, typer.Option(help="Checkpoint interval, a multiple of --log-every")] = None,
    seed: SeedOpt = 0,
    out: Annotated[str, typer.Option(help="Output folder")] = "srcompress_prune",
    resume: ResumeOpt = False,
    skip_bad: SkipBadOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """CDISM stage 1: L1 fine-tuning with OBProx-SG; writes OUT/pruned.pth and OUT/density.json."""
    summary = run_prune_stage(
        arch=arch,
        knobs=parse_knobs(set_),
        weights=weights,
        data=data,
        val=val,
        scale=scale,
        steps=steps,
        batch_size=batch_size,
        hr_patch=hr_patch,
        lr=lr,
        lambda_=lambda_,
        epsilon=epsilon,
        np_epochs=np_epochs,
        batches_per_epoch=batches_per_epoch,
        quirk_epoch_in_samples=quirk_epoch_in_samples,
        log_every=log_every,
        ckpt_every=ckpt_every,
        seed=seed,
        out=Path(out),
        resume=resume,
        skip_bad=skip_bad,
        quiet=as_json,
    )
    if as_json:
        print(json.dumps({k: v for k, v in summary.items() if k != "per_layer"}))
    else:
        _print_prune(summary)


# ---------------------------------------------------------------------------------------------------- distill
def kd_config(
    *,
    steps: int,
    batch_size: int,
    hr_patch: int | None,
    patch_sizes: str | None,
    patch_boundaries: str | None,
    scale: int,
    lr: float,
    optimizer: str,
    w_gt: float | None,
    w_lap: float | None,
    w_hf: float | None,
    paper_alpha: float | None,
    gt_only: bool,
    ema_decay: float,
    val_every: int,
    ckpt_every: int | None,
    seed: int,
) -> KDConfig:
    """The :class:`sr.distill.KDConfig` of the command-line options (one-line errors for conflicting ones)."""
    from sr.distill import KDConfig

    explicit = {k: v for k, v in (("--w-gt", w_gt), ("--w-lap", w_lap), ("--w-hf", w_hf)) if v is not None}
    if gt_only and (explicit or paper_alpha is not None):
        raise UserError("--gt-only sets the loss weights itself; drop --w-gt/--w-lap/--w-hf/--paper-alpha")
    if paper_alpha is not None and explicit:
        raise UserError(f"--paper-alpha sets w_gt = 1 and w_lap = w_hf = alpha; drop {', '.join(explicit)}")
    if gt_only:
        weights = {"w_gt": 1.0, "w_lap": 0.0, "w_hf": 0.0}
    elif paper_alpha is not None:
        weights = {"w_gt": 1.0, "w_lap": paper_alpha, "w_hf": paper_alpha}
    else:  # the authors' code: w_dis = 1, w_gt = 0.1
        weights = {"w_gt": 0.1 if w_gt is None else w_gt, "w_lap": w_lap if w_lap is not None else 1.0}
        weights["w_hf"] = w_hf if w_hf is not None else 1.0
    sizes = _int_list(patch_sizes, "--patch-sizes")
    bounds = _int_list(patch_boundaries, "--patch-boundaries")
    if sizes and hr_patch is not None:
        raise UserError("--hr-patch and --patch-sizes are both given; pass one of them")
    if bounds and not sizes:
        raise UserError("--patch-boundaries needs --patch-sizes; pass e.g. --patch-sizes 64,160 --patch-boundaries 500")
    if not sizes and hr_patch is None:
        hr_patch = 96
    if not isinstance(steps, int) or steps < 1:
        raise UserError(f"--steps must be a positive integer, got {steps!r}; pass e.g. --steps 1000")
    if ckpt_every is None:
        ckpt_every = max(1, steps // 10)
    return KDConfig(
        steps=steps,
        batch_size=batch_size,
        hr_patch=hr_patch,
        patch_sizes=sizes,
        patch_boundaries=bounds,
        scale=scale,
        lr=lr,
        optimizer=optimizer,  # type: ignore[arg-type]
        ema_decay=ema_decay if ema_decay > 0 else None,
        val_every=val_every,
        log_every=min(ckpt_every, max(1, steps // 20)),
        ckpt_every=ckpt_every,
        seed=seed,
        **weights,
    )


def run_distill_stage(
    *,
    cfg: KDConfig,
    student_arch: str,
    student_knobs: dict[str, Any],
    teacher_arch: str | None,
    teacher_knobs: dict[str, Any],
    teacher_weights: str | None,
    data: str,
    val: str | None,
    cache: int | None = None,
    cache_dir: str | None = None,
    out: Path,
    resume: bool = False,
    skip_bad: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """KD of a fresh ``student_arch`` from the teacher (or GT only when ``cfg`` has no teacher terms).

    Writes ``out/student.pth`` (``{"params": state_dict}``, the EMA weights when EMA is on) and
    ``out/metrics.json``; checkpoints go to ``out/ckpt``.

    Returns:
        The content of ``metrics.json``.
    """
    from sr.budget import price
    from sr.checkpoint import save_checkpoint
    from sr.data import PatchDataset
    from sr.distill import find_latest_checkpoint, fit_kd
    from sr.models import arch_tag, build
    from sr.teacher_cache import state_dict_hash

    ckpt_dir = out / "ckpt"
    resumed = _step_of(find_latest_checkpoint(ckpt_dir))
    _check_fresh(ckpt_dir, resumed, resume=resume)
    scale = cfg.scale
    s_knobs = {**student_knobs, "scale": scale}
    uses_teacher = bool(cfg.w_lap or cfg.w_hf)
    if uses_teacher and not (teacher_arch and teacher_weights):
        raise UserError("distillation needs --teacher-arch and --teacher-weights; pass them, or --gt-only")
    if cache is not None and not uses_teacher:
        raise UserError("--cache stores teacher outputs, but this run has no teacher terms; drop --cache")
    if cache is not None and len(cfg.patches) > 1:
        raise UserError("--cache holds one patch size; use --hr-patch instead of --patch-sizes with --cache")
    teacher = None
    if uses_teacher:
        t_knobs = {k: v for k, v in teacher_knobs.items() if k != "scale"}
        teacher = load_model(teacher_arch, scale=scale, knobs=t_knobs, weights=teacher_weights)  # type: ignore[arg-type]
    import torch

    torch.manual_seed(cfg.seed)  # the student's initial weights, so a run is a function of --seed
    student = build(student_arch, **s_knobs)
    pairs, val_name = _val_pairs(val, scale, skip_bad=skip_bad)
    sources = _train_sources(data)

    cache_info = None
    if cache is not None:
        from sr.teacher_cache import CachedKDDataset, build_teacher_cache

        # Un-augmented pool: CachedKDDataset applies the flips/rotations when it reads.
        pool = PatchDataset(
            sources,
            scale=scale,
            hr_patch=cfg.patches[0],
            seed=cfg.seed,
            samples_per_epoch=cache,
            augment=False,
            skip_bad=skip_bad,
        )
        root = Path(cache_dir) if cache_dir else out / "cache"
        _note(f"teacher-output cache: {cache} patches of {cfg.patches[0]} px under {root}", quiet=quiet)
        cache_info = build_teacher_cache(teacher, pool, n_patches=cache, out_dir=root, batch_size=16)  # type: ignore[arg-type]
        _note(
            f"teacher-output cache {'built' if cache_info.built else 'reused'}: {cache_info.path} "
            f"({cache_info.nbytes / 2**20:.1f} MiB, {cache_info.wall_s:.1f} s)",
            quiet=quiet,
        )
        train_data: Any = CachedKDDataset(cache_info.path, augment=True, seed=cfg.seed)
        teacher = None  # its outputs are in the cache
    else:
        made: dict[int, PatchDataset] = {}

        def train_data(hr_patch: int) -> PatchDataset:
            if hr_patch not in made:
                # len = steps x batch: a fresh patch for every sample of the run
                made[hr_patch] = PatchDataset(
                    sources,
                    scale=scale,
                    hr_patch=hr_patch,
                    seed=cfg.seed,
                    samples_per_epoch=cfg.steps * cfg.batch_size,
                    skip_bad=skip_bad,
                )
            return made[hr_patch]

        train_data(cfg.patches[0])  # bad data fails now, before any training

    if resumed is not None:
        _note(f"resumed distillation from {ckpt_dir}/step_{resumed:07d} (step {resumed} of {cfg.steps})", quiet=False)
    with _Progress("distill", total=cfg.steps, start=resumed or 0, quiet=quiet) as prog:

        def report(m: dict[str, Any], ckpt: str | None) -> None:
            val_txt = f", val PSNR_Y {m['val_psnr_y']:.3f}" if "val_psnr_y" in m else ""
            prog.line(f"step {m['step']}/{cfg.steps}: loss {m['loss']:.4g}, {m['it_per_s']:.2f} it/s{val_txt}")

        with _interruptible(prog, lambda: find_latest_checkpoint(ckpt_dir)):
            result = fit_kd(
                cfg,
                student=student,
                teacher=teacher,
                train_data=train_data,
                val_pairs=pairs,
                report=report,
                checkpoint_dir=ckpt_dir,
                resume=resume,
                progress=lambda s, _n, m: prog.update(s, m.get("loss")),
            )

    model = result.model
    save_checkpoint(out / "student.pth", {"params": {k: v.detach().cpu() for k, v in model.state_dict().items()}})
    cost = price(student_arch, **s_knobs)
    m = result.metrics
    summary: dict[str, Any] = {
        "student": {"arch": student_arch, "knobs": s_knobs, "tag": arch_tag(student_arch, **s_knobs)},
        "teacher": {"arch": teacher_arch, "knobs": {**teacher_knobs, "scale": scale}, "weights": teacher_weights}
        if uses_teacher
        else None,
        "val_data": val_name,
        "val_psnr_y": m.get("val_psnr_y"),
        "val_ssim_y": m.get("val_ssim_y"),
        "val_per_image": m.get("val_per_image"),
        "loss": m.get("loss"),
        "steps": result.steps,
        "steps_run": result.steps_run,
        "resumed_from_step": resumed,
        "wall_s": result.wall_s,
        "steps_per_s": result.steps_per_s,
        "params": cost.params,
        "macs_720p": cost.macs_720p,
        "macs_lr256": cost.macs_lr256,
        "weights": str(out / "student.pth"),
        "weights_sha256": state_dict_hash(model),
        "cache": dataclasses.asdict(cache_info) if cache_info is not None else None,
        "config": dataclasses.asdict(cfg),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    return summary


def _print_distill(s: dict[str, Any]) -> None:
    print(
        f"{s['student']['tag']}: val PSNR_Y {s['val_psnr_y']:.3f} / SSIM_Y {s['val_ssim_y']:.4f} on {s['val_data']}; "
        f"params {_fmt_int(s['params'])}, MACs {_fmt_g(s['macs_720p'])} (720p); {s['steps']} steps "
        f"({s['steps_run']} run now, {s['steps_per_s']:.2f} steps/s, {s['wall_s']:.1f} s)"
    )
    print(f"wrote {s['weights']} and {Path(s['weights']).parent / 'metrics.json'}")


def distill(
    student_arch: Annotated[str, typer.Option(help="Student variant, e.g. edsr_mini (knobs via --set)")],
    data: DataOpt,
    steps: Annotated[int, typer.Option(help="Optimizer steps")],
    teacher_arch: Annotated[str | None, typer.Option(help="Teacher variant, e.g. imdn")] = None,
    teacher_weights: Annotated[str | None, typer.Option(help="Teacher weights (.pth)")] = None,
    teacher_set: Annotated[
        list[str] | None, typer.Option("--teacher-set", help="Teacher knob override KEY=VALUE (repeatable)")
    ] = None,
    set_: SetOpt = None,
    val: ValOpt = None,
    scale: ScaleOpt = 2,
    batch_size: BatchOpt = 16,
    hr_patch: Annotated[
        int | None, typer.Option("--hr-patch", help="HR patch side in px, divisible by 16 (default 96)")
    ] = None,
    patch_sizes: Annotated[str | None, typer.Option(help="Patch curriculum, e.g. 64,160")] = None,
    patch_boundaries: Annotated[str | None, typer.Option(help="Steps where the next patch size starts")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate")] = 2e-4,
    optimizer: OptimizerOpt = "adam",
    w_gt: Annotated[float | None, typer.Option(help="Weight of L1(S, GT) (default 0.1)")] = None,
    w_lap: Annotated[float | None, typer.Option(help="Weight of Lap(S, T) (default 1)")] = None,
    w_hf: Annotated[float | None, typer.Option(help="Weight of Lap(HF(S), HF(T)) (default 1)")] = None,
    paper_alpha: Annotated[float | None, typer.Option(help="The paper's L_gt + alpha L_dis instead")] = None,
    gt_only: Annotated[bool, typer.Option("--gt-only", help="No teacher: train on the ground truth only")] = False,
    ema_decay: Annotated[float, typer.Option(help="Weight EMA decay (0: off)")] = 0.999,
    cache: CacheOpt = None,
    cache_dir: CacheDirOpt = None,
    val_every: Annotated[int, typer.Option(help="Validate every N steps (0: at the end only)")] = 0,
    ckpt_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps (default steps / 10)")] = None,
    seed: SeedOpt = 0,
    out: Annotated[str, typer.Option(help="Output folder")] = "srcompress_distill",
    resume: ResumeOpt = False,
    skip_bad: SkipBadOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """CDISM stage 3: distil a student from a frozen teacher; writes OUT/student.pth and OUT/metrics.json."""
    cfg = kd_config(
        steps=steps,
        batch_size=batch_size,
        hr_patch=hr_patch,
        patch_sizes=patch_sizes,
        patch_boundaries=patch_boundaries,
        scale=scale,
        lr=lr,
        optimizer=optimizer,
        w_gt=w_gt,
        w_lap=w_lap,
        w_hf=w_hf,
        paper_alpha=paper_alpha,
        gt_only=gt_only,
        ema_decay=ema_decay,
        val_every=val_every,
        ckpt_every=ckpt_every,
        seed=seed,
    )
    summary = run_distill_stage(
        cfg=cfg,
        student_arch=student_arch,
        student_knobs=parse_knobs(set_),
        teacher_arch=teacher_arch,
        teacher_knobs=parse_knobs(teacher_set),
        teacher_weights=teacher_weights,
        data=data,
        val=val,
        cache=cache,
        cache_dir=cache_dir,
        out=Path(out),
        resume=resume,
        skip_bad=skip_bad,
        quiet=as_json,
    )
    if as_json:
        print(json.dumps({k: v for k, v in summary.items() if k != "val_per_image"}))
    else:
        _print_distill(summary)


# --------------------------------------------------------------------------------------------------- compress
def allocate_student(arch: str, knobs: dict[str, Any], density: float) -> tuple[Allocation, dict[str, Any]]:
    """The paper's C/L/B allocation of ``arch`` (with knob overrides ``knobs``) at ``density``.

    Without overrides this is :func:`sr.allocate.allocate_arch`; with them the same rule runs from the
    overridden C/L/B (``allocate_arch`` reads the registered variant's sizes only).

    Returns:
        ``(Allocation, knobs for sr.models.build)``; ``scale`` is taken from ``knobs`` when given.
    """
    from sr.allocate import allocate, allocate_arch
    from sr.models import family_of, resolve_knobs

    sizes = {k: v for k, v in knobs.items() if k != "scale"}
    if not sizes:
        alloc, new = allocate_arch(arch, density)
    else:
        full = resolve_knobs(arch, **sizes)
        if "C" not in full or "B" not in full:
            raise UserError(f"arch {arch!r} has no C/B knobs, so C/L/B allocation cannot size a student")
        alloc = allocate(
            C=full["C"],
            L=full.get("L", 1),
            B=full["B"],
            density=density,
            family=family_of(arch),
            heads=full.get("heads"),
        )
        new = {**full, "C": alloc.C, "B": alloc.B, **({"L": alloc.L} if "L" in full else {})}
        if isinstance(full.get("distilled"), int):  # IMDN's split width follows C, as in allocate_arch
            new["distilled"] = max(1, math.floor(full["distilled"] * alloc.C / full["C"] + 0.5))
    if "scale" in knobs:
        new["scale"] = knobs["scale"]
    return alloc, new


def compress(
    arch: Annotated[str, typer.Option(help="Teacher variant to compress, e.g. imdn")],
    weights: Annotated[str, typer.Option(help="Its trained weights (.pth)")],
    data: DataOpt,
    kd_steps: Annotated[int, typer.Option(help="Distillation steps of the compact student")],
    prune_steps: Annotated[int | None, typer.Option(help="OBProx-SG fine-tuning steps")] = None,
    density: Annotated[
        float | None, typer.Option(help="Skip pruning and allocate for this density (e.g. 0.03)")
    ] = None,
    val: ValOpt = None,
    scale: ScaleOpt = 2,
    set_: SetOpt = None,
    batch_size: BatchOpt = 16,
    hr_patch: Annotated[int, typer.Option("--hr-patch", help="HR patch side in px, divisible by 16")] = 96,
    prune_lr: Annotated[float, typer.Option(help="Learning rate of pruning")] = 5e-3,
    lambda_: LambdaOpt = 1e-4,
    epsilon: EpsilonOpt = 1e-4,
    np_epochs: NpEpochsOpt = None,
    batches_per_epoch: BpeOpt = None,
    quirk_epoch_in_samples: QuirkOpt = False,
    kd_lr: Annotated[float, typer.Option(help="Learning rate of distillation")] = 2e-4,
    optimizer: OptimizerOpt = "adam",
    paper_alpha: Annotated[float | None, typer.Option(help="KD loss L_gt + alpha L_dis (default: authors')")] = None,
    cache: CacheOpt = None,
    seed: SeedOpt = 0,
    out: Annotated[str, typer.Option(help="Output folder (prune/, distill/, summary.json)")] = "srcompress_out",
    resume: ResumeOpt = False,
    skip_bad: SkipBadOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """CDISM end to end: prune -> C/L/B allocation -> distillation, with a teacher/student/bicubic table."""
    from sr.budget import price
    from sr.evaluate import evaluate_bicubic, evaluate_model
    from sr.models import arch_tag

    root = Path(out)
    knobs = parse_knobs(set_)
    if density is None and prune_steps is None:
        raise UserError("give --prune-steps N to prune first, or --density D to skip pruning")
    # Validate the KD settings before spending time on pruning.
    cfg = kd_config(
        steps=kd_steps,
        batch_size=batch_size,
        hr_patch=hr_patch,
        patch_sizes=None,
        patch_boundaries=None,
        scale=scale,
        lr=kd_lr,
        optimizer=optimizer,
        w_gt=None,
        w_lap=None,
        w_hf=None,
        paper_alpha=paper_alpha,
        gt_only=False,
        ema_decay=0.999,
        val_every=0,
        ckpt_every=None,
        seed=seed,
    )
    pruned: dict[str, Any] | None = None
    if density is None:
        done = root / "prune" / "density.json"
        if resume and done.is_file():
            pruned = json.loads(done.read_text())
            _note(f"reusing the finished pruning stage {done}", quiet=as_json)
        else:
            pruned = run_prune_stage(
                arch=arch,
                knobs=knobs,
                weights=weights,
                data=data,
                val=val,
                scale=scale,
                steps=prune_steps,  # type: ignore[arg-type]
                batch_size=batch_size,
                hr_patch=hr_patch,
                lr=prune_lr,
                lambda_=lambda_,
                epsilon=epsilon,
                np_epochs=np_epochs,
                batches_per_epoch=batches_per_epoch,
                quirk_epoch_in_samples=quirk_epoch_in_samples,
                seed=seed,
                out=root / "prune",
                resume=resume,
                skip_bad=skip_bad,
                quiet=as_json,
            )
        density = float(pruned["density"])
    alloc, s_knobs = allocate_student(arch, {**knobs, "scale": scale}, density)
    _note(
        f"density {density:.4f} -> student C{alloc.C} L{alloc.L} B{alloc.B} "
        f"({arch_tag(arch, **s_knobs)}; C'^2L'B'/(C^2LB) = {alloc.predicted_ratio:.4f})",
        quiet=as_json,
    )
    kd = run_distill_stage(
        cfg=cfg,
        student_arch=arch,
        student_knobs=s_knobs,
        teacher_arch=arch,
        teacher_knobs=knobs,
        teacher_weights=weights,
        data=data,
        val=val,
        cache=cache,
        out=root / "distill",
        resume=resume,
        skip_bad=skip_bad,
        quiet=as_json,
    )

    val_name = kd["val_data"]
    if pruned is not None:
        t_scores = pruned["val"]["before"]
        bic = pruned["val"]["bicubic"]
    else:
        pairs, _ = _val_pairs(val, scale, skip_bad=skip_bad)
        teacher = load_model(arch, scale=scale, knobs=knobs, weights=weights)
        t_scores = _scores(evaluate_model(teacher, pairs, scale=scale))
        bic = _scores(evaluate_bicubic(pairs, scale=scale))
    t_cost = price(arch, **{**knobs, "scale": scale})
    summary = {
        "density": density,
        "pruned": None if pruned is None else {k: pruned[k] for k in ("density", "history", "steps", "val")},
        "allocation": {"C": alloc.C, "L": alloc.L, "B": alloc.B, "predicted_ratio": alloc.predicted_ratio},
        "val_data": val_name,
        "teacher": {"tag": arch_tag(arch, **{**knobs, "scale": scale}), **t_cost.as_dict(), **t_scores},
        "student": {
            "tag": kd["student"]["tag"],
            "knobs": s_knobs,
            "params": kd["params"],
            "macs_720p": kd["macs_720p"],
            "macs_lr256": kd["macs_lr256"],
            "psnr_y": kd["val_psnr_y"],
            "ssim_y": kd["val_ssim_y"],
            "weights": kd["weights"],
        },
        "bicubic": {"params": 0, **bic},
        "kd_steps": kd["steps"],
        "kd_wall_s": kd["wall_s"],
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    if as_json:
        print(json.dumps(summary))
        return
    rows = []
    for role in ("teacher", "student", "bicubic"):
        r = summary[role]
        rows.append(
            {
                "model": role,
                "arch": r.get("tag", "-"),
                "params": _fmt_int(r["params"]),
                "MACs (720p)": _fmt_g(r.get("macs_720p")),
                **_score_cells(r),
            }
        )
    d_src = f"pruned in {pruned['steps']} steps" if pruned is not None else "given"
    _print_table(rows, list(rows[0]), title=f"CDISM x{scale}: density {density:.4f} ({d_src}); val {val_name}")
    print(f"student weights: {kd['weights']}; summary: {root / 'summary.json'}")
