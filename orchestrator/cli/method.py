"""``srcompress`` commands that run the CDISM method in this process: ``prune``, ``distill`` and ``compress``.

Plain PyTorch, no Ray: ``prune`` fine-tunes a model with OBProx-SG (``sr.prune``), ``distill`` trains a student
from a frozen teacher (``sr.distill``; optionally from a teacher-output cache, ``sr.teacher_cache``), and
``compress`` chains prune -> C/L/B allocation (``sr.allocate``) -> distill. Training loops checkpoint under
``OUT/ckpt``, show a progress bar on stderr (when it is a terminal and ``--json`` is off; otherwise one line per
log step, none with ``--json``), stop cleanly on Ctrl-C or SIGTERM (exit 130, checkpoints kept) and continue
with ``--resume``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli._common import (
    JsonOpt,
    SetOpt,
    _fmt_g,
    _fmt_int,
    _print_table,
    check_knobs,
    check_output,
    parse_knobs,
)
from sr.errors import UserError

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


# ------------------------------------------------------------------------------------------------------ prune
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
    import orchestrator.cli.method_run as method_run  # deferred: torch-heavy, so the other commands start fast

    summary = method_run.run_prune_stage(
        arch=arch,
        knobs=check_knobs(arch, parse_knobs(set_)),
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
        out=check_output(out, "--out", folder=True),
        resume=resume,
        skip_bad=skip_bad,
        quiet=as_json,
    )
    if as_json:
        print(json.dumps({k: v for k, v in summary.items() if k != "per_layer"}))
    else:
        _print_prune(summary)


# ---------------------------------------------------------------------------------------------------- distill
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
    import orchestrator.cli.method_run as method_run  # deferred: torch-heavy, so the other commands start fast

    cfg = method_run.kd_config(
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
    summary = method_run.run_distill_stage(
        cfg=cfg,
        student_arch=student_arch,
        student_knobs=check_knobs(student_arch, parse_knobs(set_)),
        teacher_arch=teacher_arch,
        teacher_knobs=check_knobs(teacher_arch, parse_knobs(teacher_set), "--teacher-set")
        if teacher_arch
        else parse_knobs(teacher_set),
        teacher_weights=teacher_weights,
        data=data,
        val=val,
        cache=cache,
        cache_dir=cache_dir,
        out=check_output(out, "--out", folder=True),
        resume=resume,
        skip_bad=skip_bad,
        quiet=as_json,
    )
    if as_json:
        print(json.dumps({k: v for k, v in summary.items() if k != "val_per_image"}))
    else:
        _print_distill(summary)


# --------------------------------------------------------------------------------------------------- compress
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
    import orchestrator.cli.method_run as method_run  # deferred: torch-heavy, so the other commands start fast

    if density is None and prune_steps is None:
        raise UserError("give --prune-steps N to prune first, or --density D to skip pruning")
    # Validate the KD settings before spending time on pruning.
    cfg = method_run.kd_config(
        steps=kd_steps, batch_size=batch_size, hr_patch=hr_patch, patch_sizes=None, patch_boundaries=None,
        scale=scale, lr=kd_lr, optimizer=optimizer, w_gt=None, w_lap=None, w_hf=None, paper_alpha=paper_alpha,
        gt_only=False, ema_decay=0.999, val_every=0, ckpt_every=None, seed=seed,
        option_names={"steps": "--kd-steps", "lr": "--kd-lr"},
    )  # fmt: skip
    prune_opts = {"steps": prune_steps, "batch_size": batch_size, "hr_patch": hr_patch, "lr": prune_lr}
    prune_opts.update(lambda_=lambda_, epsilon=epsilon, np_epochs=np_epochs, batches_per_epoch=batches_per_epoch)
    prune_opts.update(quirk_epoch_in_samples=quirk_epoch_in_samples, seed=seed)
    summary = method_run.run_compress(
        arch=arch, weights=weights, data=data, knobs=check_knobs(arch, parse_knobs(set_)), cfg=cfg, prune=prune_opts,
        density=density, val=val, cache=cache, root=check_output(out, "--out", folder=True), resume=resume,
        skip_bad=skip_bad, quiet=as_json,
    )  # fmt: skip
    if as_json:
        print(json.dumps(summary))
    else:
        _print_compress(summary, scale=scale, root=Path(out))


def _print_compress(summary: dict[str, Any], *, scale: int, root: Path) -> None:
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
    pruned, density = summary["pruned"], summary["density"]
    d_src = f"pruned in {pruned['steps']} steps" if pruned is not None else "given"
    title = f"CDISM x{scale}: density {density:.4f} ({d_src}); val {summary['val_data']}"
    _print_table(rows, list(rows[0]), title=title)
    print(f"student weights: {summary['student']['weights']}; summary: {root / 'summary.json'}")
