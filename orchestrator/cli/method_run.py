"""The CDISM stages behind ``srcompress prune``, ``distill`` and ``compress``, run in this process (no Ray).

Each command turns its options into a frozen config (:class:`sr.prune.PruneConfig`, :class:`sr.distill.KDConfig`)
and calls the same Ray-free stage the Ray workers call (:mod:`sr.stages`), adding what only the command line
needs: a progress display, ``OUT/ckpt`` checkpoints with ``--resume``, validation tables and the summary files
(``density.json`` through ``sr.stages.prune_stage``, ``metrics.json``, ``summary.json``). ``orchestrator.cli.method``
imports this module inside its commands, so the other commands start without torch.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import warnings
from pathlib import Path
from typing import Any

from orchestrator.cli._progress import Progress, check_fresh, interruptible, note, step_of
from sr import stages
from sr._train import find_latest_checkpoint
from sr.allocate import allocate_student
from sr.budget import price
from sr.data import fallback_eval_pairs, load_eval_pairs, resolve_train_sources
from sr.distill import KDConfig
from sr.errors import ConfigError, UserError
from sr.evaluate import evaluate_bicubic, evaluate_model
from sr.models import arch_tag, family_of
from sr.prune import PruneConfig
from sr.prune_schedule import PruneSchedule, list_image_items, prune_dataset, resolve_prune_schedule
from sr.teacher_cache import state_dict_hash

__all__ = ["allocate_student", "kd_config", "run_compress", "run_distill_stage", "run_prune_stage", "val_pairs"]

_FALLBACK_VAL = "scikit-image sample pairs"


def val_pairs(val: str | None, scale: int, *, skip_bad: bool) -> tuple[list, str]:
    """Evaluation pairs of ``--val`` (or the scikit-image fallback) and a name for them."""
    if val:
        return load_eval_pairs(val, scale, skip_bad=skip_bad), str(val)
    return fallback_eval_pairs(scale), _FALLBACK_VAL


def _scores(res: Any) -> dict[str, float]:
    return {"psnr_y": res.psnr_y, "ssim_y": res.ssim_y}


def _int_list(text: str | None, option: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"{option} {text!r} is not a comma-separated list of integers; write e.g. 64,160") from None


# ------------------------------------------------------------------------------------------------------ prune
def _prune_config(
    *, arch: str, steps: int, batch_size: int, n_images: int, opts: dict[str, Any], quiet: bool
) -> tuple[PruneConfig, PruneSchedule]:
    """The :class:`PruneConfig` of the command's options (``opts``: lr, lambda_, epsilon, np_epochs, ...) and its
    schedule (``sr.prune_schedule``: an epoch is one pass over the ``n_images`` images, or ``--batches-per-epoch``)."""
    bpe = opts["batches_per_epoch"]
    schedule = resolve_prune_schedule(
        steps=steps,
        batch_size=batch_size,
        n_images=n_images,
        samples_per_epoch=bpe * batch_size if bpe is not None else None,
        np_epochs=opts["np_epochs"],
        quirk_epoch_in_samples=opts["quirk_epoch_in_samples"],
        require_prox=False,  # a quick in-process run may be Orthant-only: said in one line below
    )
    if schedule.np_epochs == 0 and opts["np_epochs"] is None:
        note(
            f"{steps} steps are {schedule.epochs} epoch(s) of {schedule.batches_per_epoch} batches, so Np = "
            f"epochs / 10 = 0: no Prox-SG phase; pass --np-epochs to have one",
            quiet=quiet,
        )
    cfg = PruneConfig(
        family=family_of(arch),
        steps=steps,
        batch_size=batch_size,
        lr=opts["lr"],
        lambda_=opts["lambda_"],
        epsilon=opts["epsilon"],
        np_epochs=schedule.np_epochs,
        batches_per_epoch=schedule.batches_per_epoch,
        quirk_epoch_in_samples=opts["quirk_epoch_in_samples"],
        seed=opts["seed"],
        shuffle=False,  # the data is one pass per epoch in its own seeded order (sr.prune_schedule)
        log_every=opts["log_every"],
        checkpoint_every=opts["ckpt_every"],
    )
    return cfg, schedule


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
    t0 = time.perf_counter()
    ckpt_dir = out / "ckpt"
    resumed = step_of(find_latest_checkpoint(ckpt_dir))
    check_fresh(ckpt_dir, resumed, resume=resume)
    knobs = {**knobs, "scale": scale}
    model = stages.load_model(arch, knobs, weights)
    pairs, val_name = val_pairs(val, scale, skip_bad=skip_bad)
    if not isinstance(steps, int) or steps < 1:
        raise UserError(f"--steps must be a positive integer, got {steps!r}; pass e.g. --steps 1000")
    items = list_image_items(resolve_train_sources([data]))
    log_every = log_every or max(1, steps // 10)
    ckpt_every = ckpt_every or log_every
    settings = {"data": str(data), "scale": scale, "steps": steps, "batch_size": batch_size, "hr_patch": hr_patch}
    settings.update(lr=lr, epsilon=epsilon, np_epochs=np_epochs, batches_per_epoch=batches_per_epoch, seed=seed)
    settings.update({"lambda": lambda_, "quirk_epoch_in_samples": quirk_epoch_in_samples})
    settings.update(log_every=log_every, ckpt_every=ckpt_every)
    opts = {**settings, "lambda_": lambda_}
    cfg, schedule = _prune_config(
        arch=arch, steps=steps, batch_size=batch_size, n_images=len(items), opts=opts, quiet=quiet
    )
    dataset = prune_dataset(items, schedule, scale=scale, hr_patch=hr_patch, seed=seed, skip_bad=skip_bad)
    before = evaluate_model(model, pairs, scale=scale)
    if resumed is not None:
        note(f"resumed pruning from {ckpt_dir}/step_{resumed:07d} (step {resumed} of {steps})", quiet=False)

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

    with Progress("prune", total=steps, start=resumed or 0, quiet=quiet) as prog:

        def report(m: dict[str, Any], ckpt: str | None) -> None:
            prog.line(
                f"step {m['step']}/{steps}: loss {m['loss']:.4g}, density {m['density']:.4f} ({m['phase']}), "
                f"lr {m['lr']:.3g}"
            )

        with interruptible(prog, lambda: find_latest_checkpoint(ckpt_dir)), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Prox-SG phase is empty")  # noted above in one line
            staged = stages.prune_stage(
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


# ---------------------------------------------------------------------------------------------------- distill
# KDConfig's fields as the options that set them, so that its errors name what the user typed.
_KD_OPTIONS = {
    "steps": "--steps",
    "batch_size": "--batch-size",
    "hr_patch": "--hr-patch",
    "patch_sizes": "--patch-sizes",
    "patch_boundaries": "--patch-boundaries",
    "scale": "--scale",
    "lr": "--lr",
    "optimizer": "--optimizer",
    "ema_decay": "--ema-decay",
    "w_gt": "--w-gt",
    "w_lap": "--w-lap",
    "w_hf": "--w-hf",
    "val_every": "--val-every",
    "ckpt_every": "--ckpt-every",
    "seed": "--seed",
}


def _as_options(message: str, names: dict[str, str]) -> str:
    """A KDConfig message with ``KDConfig.field`` (or a bare ``field=``) replaced by the command-line option."""
    message = re.sub(r"KDConfig\.(\w+)", lambda m: names.get(m[1], m[1]), message)
    return re.sub(r"\b(\w+)=", lambda m: f"{names[m[1]]} " if m[1] in names else m[0], message)


def _check_patch_sides(sizes: tuple[int, ...], option: str) -> None:
    """Every HR patch side a multiple of 16 (the Laplacian KD loss halves it 4 times), as ``--help`` says."""
    for side in sizes:
        if side <= 0 or side % 16:
            lo, hi = max(16, side // 16 * 16), (max(side, 0) // 16 + 1) * 16
            raise UserError(f"{option} {side} is not a positive multiple of 16 (px); pass e.g. {option} {lo} or {hi}")


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
    option_names: dict[str, str] | None = None,
) -> KDConfig:
    """The :class:`sr.distill.KDConfig` of the command-line options (one-line errors naming the options).

    ``option_names`` overrides the option a field is set by (``compress`` sets ``steps`` with ``--kd-steps``).
    """
    names = {**_KD_OPTIONS, **(option_names or {})}
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
    _check_patch_sides(sizes or (hr_patch,), names["patch_sizes" if sizes else "hr_patch"])  # type: ignore[arg-type]
    if not isinstance(steps, int) or steps < 1:
        o = names["steps"]
        raise UserError(f"{o} must be a positive integer, got {steps!r}; pass e.g. {o} 1000")
    if ckpt_every is None:
        ckpt_every = max(1, steps // 10)
    try:
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
    except ConfigError as exc:
        raise UserError(_as_options(str(exc), names)) from None


def _teacher(cfg: KDConfig, arch: str | None, knobs: dict[str, Any], weights: str | None, cache: int | None) -> Any:
    """The frozen teacher (None for GT-only runs), after the one-line checks of the teacher/cache options."""
    uses_teacher = bool(cfg.w_lap or cfg.w_hf)
    if uses_teacher and not (arch and weights):
        raise UserError("distillation needs --teacher-arch and --teacher-weights; pass them, or --gt-only")
    if cache is not None and not uses_teacher:
        raise UserError("--cache stores teacher outputs, but this run has no teacher terms; drop --cache")
    if cache is not None and len(cfg.patches) > 1:
        raise UserError("--cache holds one patch size; use --hr-patch instead of --patch-sizes with --cache")
    if not uses_teacher:
        return None
    return stages.load_model(arch, {**knobs, "scale": cfg.scale}, weights)  # type: ignore[arg-type]


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
    """KD of a fresh ``student_arch`` from the teacher (or GT only when ``cfg`` has no teacher terms) through
    ``sr.stages.distill_stage``, which writes ``out/student.pth`` (the EMA weights when EMA is on); this adds
    ``out/metrics.json``, and checkpoints go to ``out/ckpt``.

    Returns:
        The content of ``metrics.json``.
    """
    ckpt_dir = out / "ckpt"
    resumed = step_of(find_latest_checkpoint(ckpt_dir))
    check_fresh(ckpt_dir, resumed, resume=resume)
    t_knobs = {k: v for k, v in teacher_knobs.items() if k != "scale"}
    teacher = _teacher(cfg, teacher_arch, t_knobs, teacher_weights, cache)
    uses_teacher = teacher is not None
    s_knobs = {**student_knobs, "scale": cfg.scale}
    pairs, val_name = val_pairs(val, cfg.scale, skip_bad=skip_bad)
    sources = resolve_train_sources([data])
    cache_info = None
    if cache is not None:
        root = Path(cache_dir) if cache_dir else out / "cache"
        note(f"teacher-output cache: {cache} patches of {cfg.patches[0]} px under {root}", quiet=quiet)
        cache_info = stages.teacher_cache_stage(
            teacher, sources, scale=cfg.scale, hr_patch=cfg.patches[0], seed=cfg.seed, n_patches=cache,
            out_dir=root, skip_bad=skip_bad,
        )  # fmt: skip
        note(
            f"teacher-output cache {'built' if cache_info.built else 'reused'}: {cache_info.path} "
            f"({cache_info.nbytes / 2**20:.1f} MiB, {cache_info.wall_s:.1f} s)",
            quiet=quiet,
        )
        teacher = None  # its outputs are in the cache
    if resumed is not None:
        note(f"resumed distillation from {ckpt_dir}/step_{resumed:07d} (step {resumed} of {cfg.steps})", quiet=False)
    with Progress("distill", total=cfg.steps, start=resumed or 0, quiet=quiet) as prog:

        def report(m: dict[str, Any], ckpt: str | None) -> None:
            val_txt = f", val PSNR_Y {m['val_psnr_y']:.3f}" if "val_psnr_y" in m else ""
            prog.line(f"step {m['step']}/{cfg.steps}: loss {m['loss']:.4g}, {m['it_per_s']:.2f} it/s{val_txt}")

        with interruptible(prog, lambda: find_latest_checkpoint(ckpt_dir)):
            result = stages.distill_stage(
                cfg,
                student_arch=student_arch,
                student_knobs=s_knobs,
                teacher=teacher,
                sources=sources,
                cache_dir=cache_info.path if cache_info is not None else None,
                skip_bad=skip_bad,
                val_pairs=pairs,
                report=report,
                progress=lambda s, _n, m: prog.update(s, m.get("loss")),
                checkpoint_dir=ckpt_dir,
                resume=resume,
                out=out,
            )
    teacher_info = {"arch": teacher_arch, "knobs": {**teacher_knobs, "scale": cfg.scale}, "weights": teacher_weights}
    summary = _distill_summary(cfg, result, student_arch, s_knobs, out=out, resumed=resumed, val_name=val_name)
    summary["teacher"] = teacher_info if uses_teacher else None
    summary["cache"] = dataclasses.asdict(cache_info) if cache_info is not None else None
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    return summary


def _distill_summary(
    cfg: KDConfig, result: Any, arch: str, knobs: dict[str, Any], *, out: Path, resumed: int | None, val_name: str
) -> dict[str, Any]:
    cost = price(arch, **knobs)
    m = result.metrics
    return {
        "student": {"arch": arch, "knobs": knobs, "tag": arch_tag(arch, **knobs)},
        "teacher": None,
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
        "weights_sha256": state_dict_hash(result.model),
        "cache": None,
        "config": dataclasses.asdict(cfg),
    }


# --------------------------------------------------------------------------------------------------- compress
def run_compress(
    *,
    arch: str,
    weights: str,
    data: str,
    knobs: dict[str, Any],
    cfg: KDConfig,
    prune: dict[str, Any] | None,
    density: float | None,
    val: str | None,
    cache: int | None,
    root: Path,
    resume: bool,
    skip_bad: bool,
    quiet: bool,
) -> dict[str, Any]:
    """CDISM end to end: prune (``prune``: the :func:`run_prune_stage` options; skipped with ``density``) ->
    C/L/B allocation -> distillation; writes ``root/summary.json`` and returns its content."""
    scale = cfg.scale
    common = {"data": data, "val": val, "resume": resume, "skip_bad": skip_bad, "quiet": quiet}
    pruned: dict[str, Any] | None = None
    if density is None:
        done = root / "prune" / "density.json"
        if resume and done.is_file():
            pruned = json.loads(done.read_text())
            note(f"reusing the finished pruning stage {done}", quiet=quiet)
        else:
            pruned = run_prune_stage(
                arch=arch, knobs=knobs, weights=weights, scale=scale, out=root / "prune", **prune or {}, **common
            )
        density = float(pruned["density"])
    alloc, s_knobs = allocate_student(arch, {**knobs, "scale": scale}, density)
    note(
        f"density {density:.4f} -> student C{alloc.C} L{alloc.L} B{alloc.B} "
        f"({arch_tag(arch, **s_knobs)}; C'^2L'B'/(C^2LB) = {alloc.predicted_ratio:.4f})",
        quiet=quiet,
    )
    kd = run_distill_stage(
        cfg=cfg, student_arch=arch, student_knobs=s_knobs, teacher_arch=arch, teacher_knobs=knobs,
        teacher_weights=weights, cache=cache, out=root / "distill", **common,
    )  # fmt: skip
    if pruned is not None:
        t_scores, bic = pruned["val"]["before"], pruned["val"]["bicubic"]
    else:
        pairs, _ = val_pairs(val, scale, skip_bad=skip_bad)
        teacher = stages.load_model(arch, {**knobs, "scale": scale}, weights)
        t_scores = _scores(evaluate_model(teacher, pairs, scale=scale))
        bic = _scores(evaluate_bicubic(pairs, scale=scale))
    t_cost = price(arch, **{**knobs, "scale": scale})
    summary = {
        "density": density,
        "pruned": None if pruned is None else {k: pruned[k] for k in ("density", "history", "steps", "val")},
        "allocation": {"C": alloc.C, "L": alloc.L, "B": alloc.B, "predicted_ratio": alloc.predicted_ratio},
        "val_data": kd["val_data"],
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
    return summary
