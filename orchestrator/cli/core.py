"""``srcompress complexity / eval / allocate / run``: model sizes, benchmark scores and the search job.

Registered on the app by ``orchestrator.cli``. The ``sr`` imports (torch) sit inside the commands so that the
CLI starts fast for commands that never touch a model.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator._driver_log import DRIVER_LOG, driver_log_path, tee_to
from orchestrator._log_text import describe_allocation, describe_density
from orchestrator.cli._common import (
    JsonOpt,
    SetOpt,
    SpecOverrideOpt,
    SpecSetOpt,
    StoreOpt,
    _fmt_g,
    _fmt_int,
    _print_table,
    check_knobs,
    parse_knobs,
    spec_overrides,
    store_option,
)
from search_spaces import load_job_spec
from sr.errors import UserError


# ---------------------------------------------------------------------------------------------------- complexity
def complexity_row(arch: str, *, scale: int, knobs: dict[str, Any]) -> dict[str, Any]:
    """Params and MACs of ``arch`` (both conventions) with the published figure beside them."""
    # deferred: torch is heavy; only the model commands need it
    from sr.complexity import COUNTER_NAME, build_on_meta, count_macs_for, count_params, lr_shape_for
    from sr.models import arch_tag, build
    from sr.published import published_for
    from sr.reparam import fold

    def builder():
        # Counted as deployed: collapsible blocks folded (REFERENCE.md §5).
        return fold(build(arch, scale=scale, **knobs))

    model = build_on_meta(builder)
    row: dict[str, Any] = {
        "arch": arch,
        "tag": arch_tag(arch, scale=scale, **knobs),
        "scale": scale,
        "params": count_params(model),
        "params_no_relpos": count_params(model, exclude=("relative_position_bias_table",)),
        "macs_720p": count_macs_for(builder, lr_shape_for("720p", scale)).macs,
        "macs_lr256": count_macs_for(builder, lr_shape_for("lr256", scale)).macs,
        "counter": COUNTER_NAME,
        "torch": __import__("torch").__version__,
    }
    pub = published_for(arch, scale) if not knobs else None
    if pub is not None:
        row["published"] = {
            "label": pub.label,
            "source": pub.source,
            "params": pub.params,
            "params_exact": pub.params_exact,
            "macs_720p_g": pub.macs_720p_g,
            "note": pub.note,
        }
        if pub.macs_720p_g:
            row["macs_720p_ratio_to_published"] = row["macs_720p"] / (pub.macs_720p_g * 1e9)
    return row


def complexity(
    arch: Annotated[list[str], typer.Argument(help="Variant name(s), e.g. edsr_mini swinir_light, or 'all'")],
    set_: SetOpt = None,
    scale: Annotated[int, typer.Option(help="Upscaling factor")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Params and MACs (1280x720 output and 256x256 LR) with the published figure beside ours."""
    # deferred: torch is heavy; only the model commands need it
    from sr.models import list_variants

    knobs = parse_knobs(set_)
    archs = list_variants() if arch == ["all"] else arch
    for a in archs:
        check_knobs(a, knobs)
    rows = [complexity_row(a, scale=scale, knobs=knobs) for a in archs]
    if as_json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
        return
    table = []
    for r in rows:
        pub = r.get("published") or {}
        table.append(
            {
                "arch": r["tag"],
                "params": _fmt_int(r["params"]),
                "params w/o relpos": _fmt_int(r["params_no_relpos"]),
                "published params": _fmt_int(pub.get("params")),
                "MACs 720p": _fmt_g(r["macs_720p"]),
                "published MACs 720p": "-" if not pub.get("macs_720p_g") else f"{pub['macs_720p_g']}G",
                "ours/published": f"{r['macs_720p_ratio_to_published']:.3f}"
                if "macs_720p_ratio_to_published" in r
                else "-",
                "MACs LR256": _fmt_g(r["macs_lr256"]),
            }
        )
    _print_table(table, list(table[0]), title=f"x{scale}; MACs by {rows[0]['counter']} (torch {rows[0]['torch']})")
    for r in rows:
        note = (r.get("published") or {}).get("note")
        if note:
            print(f"note ({r['arch']}): {note}")


# ---------------------------------------------------------------------------------------------------------- eval
def eval_(
    weights: Annotated[
        str,
        typer.Option(
            help="Checkpoint (.pth, loaded with weights_only=True), a trial run id, models:/NAME/VERSION, "
            "models:/NAME@ALIAS or runs:/RUN_ID/..."
        ),
    ],
    data: Annotated[str, typer.Option(help="Benchmark folder (HR/ + LR_bicubic/X{s}/), DIV2K root or HR folder")],
    arch: Annotated[
        str | None, typer.Option(help="Variant name, e.g. imdn (default: the checkpoint's, when it records one)")
    ] = None,
    scale: Annotated[int | None, typer.Option(help="Upscaling factor (default: the checkpoint's, else 2)")] = None,
    set_: SetOpt = None,
    lr_source: Annotated[str, typer.Option(help="auto | shipped | generated (bicubic from HR)")] = "auto",
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images with a warning")] = False,
    save: Annotated[str | None, typer.Option("--save", help="Folder to write the SR images to (PNG)")] = None,
    store: StoreOpt = None,  # the MLflow store of a run id / models:/ URI, named as everywhere else
    job: Annotated[str | None, typer.Option("--job", help="Job spec YAML whose MLflow store to read")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-image and mean PSNR_Y / SSIM_Y of a checkpoint on a benchmark, with the bicubic baseline.

    A checkpoint written by srcompress records its architecture (arch, knobs, scale, pixel range): --arch, --set
    and --scale may then be left out, and given, must agree with it. Published checkpoints need --arch; their
    family's official pixel range is used (e.g. [0, 255] for RFDN).
    """
    # deferred: torch is heavy; only the model commands need it
    from orchestrator.cli._eval_io import EachImage, check_save_dir, describe, load_eval_model
    from sr.data import load_eval_pairs, lr_source_used
    from sr.evaluate import evaluate_bicubic, evaluate_model
    from sr.models import arch_tag

    if lr_source not in ("auto", "shipped", "generated"):
        raise UserError(f"--lr-source {lr_source!r} is not valid; use auto, shipped or generated")
    knobs = check_knobs(arch, parse_knobs(set_)) if arch else parse_knobs(set_)
    save_dir = check_save_dir(save)
    model, rec, source = load_eval_model(weights, arch=arch, knobs=knobs, scale=scale, tracking_uri=store, job=job)
    s = rec.scale
    pairs = load_eval_pairs(data, s, lr_source=lr_source, skip_bad=skip_bad)  # type: ignore[arg-type]
    used = lr_source_used(data, s, lr_source)  # type: ignore[arg-type]
    tag = arch_tag(rec.arch, **rec.knobs)
    line = describe(tag, rec, source, lr_source=lr_source, lr_used=used)
    if not as_json:
        print(f"[srcompress] {line}", flush=True)
    each = EachImage(save=save_dir)
    res = evaluate_model(model, pairs, scale=s, pixel_range=rec.pixel_range, each=each)
    bic = evaluate_bicubic(pairs, scale=s)
    out = {
        "arch": rec.arch,
        "knobs": dict(rec.knobs),
        "tag": tag,
        "pixel_range": rec.pixel_range,
        **source,
        "data": str(data),
        "scale": s,
        "lr_source": used,
        "model": res.as_dict(),
        "bicubic": bic.as_dict(),
        **({"saved": each.written} if save_dir is not None else {}),
    }
    if as_json:
        print(json.dumps(out))
        return
    _print_eval(res, bic, title=f"{out['tag']} on {data} ({used} LR)")
    if save_dir is not None:
        print(f"[srcompress] wrote {len(each.written)} SR images (PNG) to {save_dir}")


def _print_eval(res: Any, bic: Any, *, title: str) -> None:
    rows = [
        {
            "image": m.name,
            "PSNR_Y": f"{m.psnr_y:.3f}",
            "SSIM_Y": f"{m.ssim_y:.4f}",
            "bicubic PSNR_Y": f"{b.psnr_y:.3f}",
            "bicubic SSIM_Y": f"{b.ssim_y:.4f}",
        }
        for m, b in zip(res.per_image, bic.per_image, strict=True)
    ]
    rows.append(
        {
            "image": "mean",
            "PSNR_Y": f"{res.psnr_y:.3f}",
            "SSIM_Y": f"{res.ssim_y:.4f}",
            "bicubic PSNR_Y": f"{bic.psnr_y:.3f}",
            "bicubic SSIM_Y": f"{bic.ssim_y:.4f}",
        }
    )
    _print_table(rows, list(rows[0]), title=title)


# ------------------------------------------------------------------------------------------------------ allocate
def allocate(
    arch: Annotated[str, typer.Option(help="Teacher variant whose C/L/B is compressed, e.g. edsr_baseline")],
    density: Annotated[float, typer.Option(help="Density d from pruning (non-zero fraction of deep weights)")],
    scale: Annotated[int, typer.Option(help="Upscaling factor")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """The paper's C/L/B allocation for a density, with the exact params/MACs of the compact model."""
    from sr.allocate import allocate_arch  # deferred: torch is heavy; only the model commands need it
    from sr.models import arch_tag

    alloc, knobs = allocate_arch(arch, density)
    knobs = {**knobs, "scale": scale}
    row = complexity_row(arch, scale=scale, knobs={k: v for k, v in knobs.items() if k != "scale"})
    out = {
        "arch": arch,
        "density": density,
        "C": alloc.C,
        "L": alloc.L,
        "B": alloc.B,
        "tag": arch_tag(arch, **knobs),
        "predicted_ratio": alloc.predicted_ratio,
        "params": row["params"],
        "macs_720p": row["macs_720p"],
        "macs_lr256": row["macs_lr256"],
    }
    if as_json:
        print(json.dumps(out))
        return
    print(
        f"{arch} at d={density}: C{alloc.C} L{alloc.L} B{alloc.B} ({out['tag']}); params {out['params']:,}; "
        f"MACs {_fmt_g(out['macs_720p'])} (720p) / {_fmt_g(out['macs_lr256'])} (LR256); "
        f"C'^2L'B'/(C^2LB) = {alloc.predicted_ratio:.4f}"
    )


# ----------------------------------------------------------------------------------------------------------- run
FAILED_TRIALS_EXIT = 3  # `run` ended but some trials failed (1 is an internal error, 2 a user error, 130 Ctrl-C)


def run(
    job: Annotated[str, typer.Argument(help="Job spec YAML, e.g. search_spaces/demo.yaml")],
    address: Annotated[
        str | None, typer.Option(help="Ray cluster: omit for a local one, 'auto', or ray://HOST:10001")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the job stored under the spec's storage: finished stages and trials are kept, "
            "unfinished and failed trials run again from their last checkpoint",
        ),
    ] = False,
    allow_changed_spec: Annotated[
        bool,
        typer.Option(
            "--allow-changed-spec",
            help="With --resume: accept a spec that changed since the job started (otherwise refused, with what "
            "changed). Safe: resources.* and failure.* (how trials run, not what they train). Anything else "
            "(training, data, budgets, the search space) applies only to trials that start or restart after the "
            "resume, and search.* keeps its first values, so one front would mix settings. A changed "
            "tracking.experiment/uri is always refused",
        ),
    ] = False,
    store: StoreOpt = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray cluster (default: all)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Ray's worker logs too")] = False,
    override: SpecOverrideOpt = None,
    set_: SpecSetOpt = None,
) -> None:
    """Prune -> allocate -> cache -> multi-objective search; prints the Pareto front.

    Exit codes: 0 every trial ended; 3 the search ended with failed trials (rerun with --resume to retry them);
    2 a usage error; 130 interrupted (Ctrl-C; rerun with --resume to continue); 1 an internal error.
    """
    # A local cluster: say explicitly what Ray 2.60 does by default (token authentication on), which keeps it on
    # and spares the driver Ray's warning that it chose so. Read when ray is imported, hence before the import.
    # Once ray is imported its mode is fixed, and a changed variable would reach only the cluster's processes.
    if address in (None, "", "local") and "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")

    overrides = spec_overrides(override, set_)
    shown = shlex.join([job, *overrides.cli_args()])
    again = f"srcompress run {shown} --resume"
    spec = load_job_spec(job, overrides)
    log_path, ready, keep_log = _driver_log_target(spec)
    try:
        with tee_to(log_path, header=f"srcompress run {shown}{' --resume' if resume else ''}", ready=ready):
            # deferred: the job pulls in ray, mlflow, optuna and torch; imported inside the tee so that the log
            # handlers they make at import write through it
            from orchestrator.job import JobInterrupted, run_job

            try:
                summary = run_job(
                    job,
                    address=address,
                    resume=resume,
                    tracking_uri=store_option(store),  # default: the spec's tracking.uri (sqlite under storage)
                    num_cpus=num_cpus,
                    verbose=verbose,
                    allow_changed_spec=allow_changed_spec,
                    overrides=overrides,
                )
            except JobInterrupted as exc:
                print(f"srcompress: interrupted: {exc}; continue it with: {again}", file=sys.stderr, flush=True)
                raise typer.Exit(130) from None
            print_summary(summary)
            failed = int(summary.get("failed", 0))
            if failed:
                total = sum(int(v) for k, v in summary.get("counts", {}).items() if k != "infeasible") or failed
                print(
                    f"srcompress: error: {failed} of {total} trials failed; retry them from their last checkpoint "
                    f"with: {again}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        keep_log()  # a remote store gets the log even when the job stopped on an error
    _log_driver_log(summary, log_path)
    if failed:
        raise typer.Exit(FAILED_TRIALS_EXIT)


def _driver_log_target(spec: Any) -> tuple[Path, Any, Any]:
    """``(local log file, ready(), keep())`` for the job's driver log. A local store: ``<job folder>/driver.log``,
    opened once the job holds its folder (its state file), so a job refused at the start leaves none; ``keep`` does
    nothing. A remote store (``s3://``...): a local copy (the store's log first, so a resumed job appends to it)
    that ``keep`` uploads to ``<job>/driver.log`` once the job holds its folder there."""
    from orchestrator import storage  # deferred: pyarrow is heavy for the light commands of this module

    out = storage.join(spec.storage.path, spec.name)
    local_out = storage.local_path(out)
    if local_out is not None:
        return driver_log_path(local_out), (local_out / "job_state.json").is_file, lambda: None
    remote_log = storage.join(out, DRIVER_LOG)
    local_log = Path(tempfile.mkdtemp(prefix="srcompress_driver_")) / DRIVER_LOG
    if storage.is_file(remote_log):
        storage.download(remote_log, local_log)

    def keep() -> None:
        if storage.is_file(storage.join(out, "job_state.json")) and local_log.is_file():
            storage.upload(local_log, remote_log)

    return local_log, lambda: True, keep


def _log_driver_log(summary: dict[str, Any], log_path: Path) -> None:
    """The driver log as an artifact of the search's parent run (the file itself stays in the job's storage)."""
    from orchestrator.tracking import Tracker  # deferred: mlflow is heavy

    if summary.get("parent_run_id") and summary.get("tracking_uri"):
        Tracker(summary["tracking_uri"]).log_artifact(summary["parent_run_id"], log_path, "logs")
    print(f"[srcompress] driver log: {log_path}", flush=True)


def print_summary(summary: dict[str, Any]) -> None:
    counts = summary.get("counts", {})
    front = summary.get("front")
    trained = counts.get("completed", 0) + counts.get("stopped-early", 0)
    print(
        f"[srcompress] done in {summary.get('seconds', 0):.0f}s: {trained} trained "
        f"({counts.get('completed', 0)} completed, {counts.get('stopped-early', 0)} stopped early), "
        f"{counts.get('infeasible', 0)} infeasible skipped (0 trained"
        + (f"; {summary['answered']} answered by the searcher" if summary.get("answered") else "")
        + f"), {counts.get('failed', 0)} failed; "
        f"density {describe_density(summary.get('density'))}, "
        f"paper rule {describe_allocation(summary.get('allocation'))}"
    )
    trials = summary.get("trials")
    if trials is None or not len(trials):
        return
    front_ids = set(front["run_id"]) if front is not None and len(front) else set()
    rows = []
    for _, r in trials.sort_values("psnr_y", ascending=False, na_position="last").iterrows():
        rows.append(
            {
                "front": "*" if r["run_id"] in front_ids else "",
                "trial": r.get("run_name", ""),
                "status": r.get("status", ""),
                "paper rule": "yes" if r.get("paper_rule") is True else "",
                "val PSNR_Y": _num(r.get("psnr_y"), ".3f"),
                "val SSIM_Y": _num(r.get("ssim_y"), ".4f"),
                "test PSNR_Y": _num(r.get("test_psnr_y"), ".3f"),
                "vs bicubic dB": _num(r.get("vs_bicubic_db"), "+.3f")
                + (" below bicubic" if r.get("below_bicubic") is True else ""),
                "params": "-" if _num(r.get("params"), "d") == "-" else _fmt_int(int(r["params"])),
                "MACs 720p": "-" if _num(r.get("macs_720p"), "g") == "-" else _fmt_g(r.get("macs_720p")),
                "run id": r.get("run_id", ""),
            }
        )
    _print_table(
        rows,
        list(rows[0]),
        title="Trials (* = Pareto front, validation PSNR_Y vs MACs; test = reported only; vs bicubic on the test "
        "set, else the validation set; infeasible ones never trained)",
    )
    below = [r["trial"] for r in rows if r["front"] and "below" in r["vs bicubic dB"]]
    if below:
        print(
            f"[srcompress] warning: {len(below)} front model(s) score below bicubic upsampling, which has no "
            f"parameters and so dominates them: {', '.join(map(str, below))}; train longer (training.steps) or "
            "widen the space"
        )


def _num(v: Any, fmt: str) -> str:
    """A metric for a table cell: ``-`` when missing (None, NA or NaN)."""
    try:
        return "-" if v is None or v != v else format(int(v) if fmt == "d" else float(v), fmt)
    except TypeError:  # pandas NA (a failed trial has no params)
        return "-"
