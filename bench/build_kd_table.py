"""A tabular benchmark for search algorithms: real short KD runs over a grid of EDSR students, stored as Parquet.

Every configuration of the grid (C, L, B and the KD weight w_gt; w_lap = w_hf = 1) is distilled for the same few
steps from one teacher-output cache (``sr.teacher_cache``: the official IMDN x2 run once on T91 patches), with the
same seed (so one student initialisation per architecture and one batch order for all), then scored on Set5 x2
(shipped LR; PSNR_Y / SSIM_Y, crop 2). A row holds the configuration, its params and 720p MACs (``sr.budget.price``,
as the real search prices it), the scores and the run's wall time. ``bench/search_replay.py`` replays search
algorithms against the table.

The student is ``edsr_mini`` with ``res_scale 1`` (the registered variant's 2.0 is the authors' setting for 800k
steps; over a few hundred steps 1 trains more evenly across C). Short runs rank architectures by how far they get
in a fixed step budget, not by converged quality: at 200 steps every student is still below bicubic on Set5, and
larger students get further. That is the ordering a search with a fixed short training budget (or ASHA's first
rung) sees.

Resumable: rows are appended to the Parquet file (rewritten atomically) after every run and configurations already
present are skipped, so an interrupted build continues where it stopped. A table built with other settings (steps,
batch, patch, lr, seed, data) is refused rather than mixed. Configurations run cheapest first (720p MACs), so a
partial table covers the small end of the grid. The command that built the table is stored in the Parquet schema
metadata (``srcompress.command``) along with the settings.

Run ``python -m bench.build_kd_table`` (96 configurations: C 8/16/24/32 x L 1/2 x B 2/4/6/8 x w_gt 0.03/0.1/0.3;
71 min of one thread in all on the 2-CPU host under a load average of 2-30, 6 s to 3.7 min per run; on a quiet
core ~10 s for a 16-channel student) or
``--quick`` (two tiny configurations, 5 steps, written to a temporary file unless ``--out`` is given).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench._common import REPO, bench_main, command_for, log, make_parser
from sr.budget import price
from sr.errors import ConfigError

NAME = "build_kd_table"
SCALE = 2
STUDENT = "edsr_mini"
FAMILY = "edsr"
RES_SCALE = 1.0
TEACHER = "imdn"
DEFAULT_OUT = REPO / "bench" / "data" / "kd_table_edsr_x2.parquet"
SHARED = Path(os.environ.get("SRCOMPRESS_SHARED", REPO.parent / "shared"))
META_COMMAND = b"srcompress.command"
META_SETTINGS = b"srcompress.settings"

FULL = {"C": "8,16,24,32", "L": "1,2", "B": "2,4,6,8", "w_gt": "0.03,0.1,0.3", "steps": 200}
QUICK = {"C": "8", "L": "1", "B": "2,4", "w_gt": "0.1", "steps": 5}
# Settings that must match between the rows of one table (a resumed build checks them).
_SETTING_KEYS = ("student", "res_scale", "scale", "teacher", "steps", "batch", "hr_patch", "lr", "milestones",
                 "ema_decay", "seed", "w_lap", "w_hf", "train_data", "val_data")  # fmt: skip
KEY_COLUMNS = ("C", "L", "B", "w_gt")
_UNRECORDED = ("--max-configs", "--cache-dir")


def _ints(text: str) -> list[int]:
    return sorted({int(t) for t in text.split(",") if t.strip()})


def _floats(text: str) -> list[float]:
    return sorted({float(t) for t in text.split(",") if t.strip()})


def _parse_args(argv: Sequence[str]) -> Any:
    p = make_parser(NAME, "Short KD runs over a C/L/B/w_gt grid of EDSR students, appended to a Parquet table.")
    p.add_argument("--out", type=Path, default=None, help=f"Parquet table (default {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument("--C", default=None, help="channel widths, comma-separated (default 8,16,24,32)")
    p.add_argument("--L", default=None, help="conv layers per block (default 1,2)")
    p.add_argument("--B", default=None, help="residual blocks (default 2,4,6,8)")
    p.add_argument("--w-gt", default=None, help="GT-loss weights (default 0.03,0.1,0.3; w_lap = w_hf = 1)")
    p.add_argument("--steps", type=int, default=None, help="KD steps per configuration (default 200; quick 5)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--hr-patch", type=int, default=48, help="HR patch side, a multiple of 16 (default 48)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, halved at 50%% and 75%% of the steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--max-configs", type=int, default=None, help="stop after this many new runs (resume later)")
    p.add_argument("--teacher-weights", type=Path, default=SHARED / "weights" / "IMDN_x2.pth")
    p.add_argument("--train-dir", type=Path, default=SHARED / "data" / "T91" / "HR")
    p.add_argument("--val-dir", type=Path, default=SHARED / "data" / "Set5")
    p.add_argument("--cache-dir", type=Path, default=None, help="keep the teacher cache here (default: temporary)")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key in ("C", "L", "B", "w_gt", "steps"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    try:
        args.C, args.L, args.B = _ints(args.C), _ints(args.L), _ints(args.B)
        args.w_gt = _floats(args.w_gt)
    except ValueError as exc:
        p.error(f"--C/--L/--B take integers and --w-gt numbers, comma-separated ({exc})")
    if not (args.C and args.L and args.B and args.w_gt) or min(args.C + args.L + args.B) < 1 or min(args.w_gt) < 0:
        p.error("--C, --L, --B need positive integers and --w-gt non-negative numbers")
    if args.steps < 1 or args.batch < 1 or args.threads < 1:
        p.error("--steps, --batch and --threads must be positive")
    if args.max_configs is not None and args.max_configs < 0:
        p.error("--max-configs must be >= 0")
    for path in (args.teacher_weights, args.train_dir, args.val_dir):
        if not path.exists():
            p.error(f"{path} does not exist; pass its location (or set SRCOMPRESS_SHARED to the shared folder)")
    return args


def settings_of(args: Any) -> dict[str, Any]:
    """The settings every row of one table shares (stored in the Parquet metadata and checked on resume)."""
    return {
        "student": STUDENT,
        "res_scale": RES_SCALE,
        "scale": SCALE,
        "teacher": f"{TEACHER} ({Path(args.teacher_weights).name})",
        "steps": args.steps,
        "batch": args.batch,
        "hr_patch": args.hr_patch,
        "lr": args.lr,
        "milestones": list(_milestones(args.steps)),
        "ema_decay": None,
        "seed": args.seed,
        "w_lap": 1.0,
        "w_hf": 1.0,
        "train_data": "/".join(Path(args.train_dir).parts[-2:]),
        "val_data": "/".join(Path(args.val_dir).parts[-2:]),
    }


def _milestones(steps: int) -> tuple[int, ...]:
    # lr halved at 50% and 75% of the run (as bench.kd_modes); no EMA: over 200 steps an EMA of 0.999 would
    # still be mostly the random initialisation.
    return tuple(sorted({m for m in (steps // 2, 3 * steps // 4) if 0 < m < steps}))


def grid(args: Any) -> list[dict[str, Any]]:
    """Every configuration of the grid, cheapest first (720p MACs, then params, then the grid order)."""
    cfgs = [
        {"C": C, "L": L, "B": B, "w_gt": w}
        for C in args.C
        for L in args.L
        for B in args.B
        for w in args.w_gt
    ]  # fmt: skip
    for cfg in cfgs:
        cfg["_price"] = price(STUDENT, C=cfg["C"], L=cfg["L"], B=cfg["B"], res_scale=RES_SCALE, scale=SCALE)
    return sorted(cfgs, key=lambda c: (c["_price"].macs_720p, c["_price"].params, c["C"], c["L"], c["B"], c["w_gt"]))


def read_table(path: Path) -> tuple[pd.DataFrame, dict[str, Any] | None, str | None]:
    """The table's rows, its stored settings and the command that built it (empty frame when absent)."""
    if not path.exists():
        return pd.DataFrame(), None, None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"cannot read KD table {path} ({exc}); delete it or pass another --out") from None
    meta = table.schema.metadata or {}
    settings = json.loads(meta[META_SETTINGS]) if META_SETTINGS in meta else None
    command = meta[META_COMMAND].decode() if META_COMMAND in meta else None
    return table.to_pandas(), settings, command


def write_table(path: Path, df: pd.DataFrame, *, settings: dict[str, Any], command: str) -> None:
    """Write ``df`` with its settings and command in the schema metadata (temporary file, then rename)."""
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[META_SETTINGS] = json.dumps(settings, sort_keys=True).encode()
    meta[META_COMMAND] = command.encode()
    table = table.replace_schema_metadata(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)


def _key(row: dict[str, Any] | pd.Series) -> tuple[int, int, int, float]:
    return int(row["C"]), int(row["L"]), int(row["B"]), round(float(row["w_gt"]), 6)


def _run_one(cfg: dict[str, Any], args: Any, *, cached: Any, val_pairs: Any) -> dict[str, Any]:
    """Distil one student from the cache and score it on Set5; returns the table row."""
    from sr.distill import KDConfig, fit_kd
    from sr.evaluate import evaluate_model
    from sr.models import build

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)  # the same initialisation for every w_gt of an architecture
    student = build(STUDENT, C=cfg["C"], L=cfg["L"], B=cfg["B"], res_scale=RES_SCALE, scale=SCALE)
    kd = KDConfig(
        steps=args.steps,
        batch_size=args.batch,
        hr_patch=args.hr_patch,
        scale=SCALE,
        lr=args.lr,
        milestones=_milestones(args.steps),
        ema_decay=None,
        w_gt=cfg["w_gt"],
        w_lap=1.0,
        w_hf=1.0,
        log_every=args.steps,
        seed=args.seed,
    )
    res = fit_kd(kd, student=student, teacher=None, train_data=cached, device="cpu")
    ev = evaluate_model(res.model, val_pairs, scale=SCALE)
    p = cfg["_price"]
    return {
        "family": FAMILY,
        "arch": STUDENT,
        "C": cfg["C"],
        "L": cfg["L"],
        "B": cfg["B"],
        "res_scale": RES_SCALE,
        "scale": SCALE,
        "w_gt": cfg["w_gt"],
        "w_lap": 1.0,
        "w_hf": 1.0,
        "params": p.params,
        "macs_720p": p.macs_720p,
        "psnr_y": round(ev.psnr_y, 4),
        "ssim_y": round(ev.ssim_y, 5),
        "final_loss": round(float(res.metrics["loss"]), 6),
        "wall_s": round(time.perf_counter() - t0, 2),  # build + train + Set5 evaluation
        "train_s": round(res.steps_run / res.steps_per_s, 2) if res.steps_per_s else None,
        "load_avg_1min": round(load, 2),  # the host's load when the run started (wall_s depends on it)
        "threads": args.threads,
        "steps": args.steps,
        "seed": args.seed,
    }


def _recorded_command(argv: Sequence[str]) -> str:
    """The build command without ``--max-configs`` and ``--cache-dir`` (chunking a build or keeping its cache
    does not change the table)."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _UNRECORDED:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in _UNRECORDED)):
            kept.append(a)
    return command_for(NAME, kept)


def run(args: Any, argv: Sequence[str]) -> dict[str, Any]:
    """Fill the table: build the teacher cache once, then run every configuration not yet present."""
    from sr.checkpoint import load_weights
    from sr.data import PatchDataset, load_eval_pairs
    from sr.evaluate import evaluate_bicubic
    from sr.models import build
    from sr.teacher_cache import CachedKDDataset, build_teacher_cache

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    out = args.out or (DEFAULT_OUT if not args.quick else Path(tempfile.mkdtemp(prefix="kd_table_")) / "quick.parquet")
    settings = settings_of(args)
    command = _recorded_command(argv)
    df, old_settings, _old_command = read_table(out)
    if old_settings is not None and old_settings != settings:
        diff = [
            f"{k} {old_settings.get(k)!r} -> {settings[k]!r}"
            for k in _SETTING_KEYS
            if old_settings.get(k) != settings[k]
        ]
        raise ConfigError(
            f"KD table {out} was built with other settings ({'; '.join(diff[:3])}); "
            f"pass the same settings to resume it, or another --out"
        )
    configs = grid(args)
    done = {_key(r) for _, r in df.iterrows()} if len(df) else set()
    todo = [c for c in configs if _key(c) not in done]
    if args.max_configs is not None:
        todo = todo[: args.max_configs]
    log(f"{out}: {len(df)} rows present, {len(configs)} configurations in the grid, {len(todo)} to run now")

    val_pairs = load_eval_pairs(args.val_dir, SCALE, lr_source="shipped")
    bicubic = evaluate_bicubic(val_pairs, scale=SCALE)
    cache_s = 0.0
    if todo:
        teacher = load_weights(build(TEACHER, scale=SCALE), args.teacher_weights, arch=TEACHER)
        teacher = teacher.eval().requires_grad_(False)
        # One pass of CachedKDDataset's 8 flips/rotations over n patches = steps x batch samples.
        n_patches = math.ceil(args.steps * args.batch / 8)
        with tempfile.TemporaryDirectory(prefix="kd_table_cache_") as tmp:
            root = args.cache_dir if args.cache_dir is not None else Path(tmp)
            source = PatchDataset(
                args.train_dir, scale=SCALE, hr_patch=args.hr_patch, augment=False, seed=args.seed,
                samples_per_epoch=n_patches,
            )  # fmt: skip
            info = build_teacher_cache(teacher, source, n_patches=n_patches, out_dir=root, device="cpu")
            cache_s = info.wall_s
            log(f"teacher cache: {n_patches} patches of {args.hr_patch} px in {info.wall_s:.1f} s (built={info.built})")
            cached = CachedKDDataset(info.path, augment=True, seed=args.seed)
            for i, cfg in enumerate(todo, 1):
                row = _run_one(cfg, args, cached=cached, val_pairs=val_pairs)
                df = pd.concat([df, pd.DataFrame([row])], ignore_index=True) if len(df) else pd.DataFrame([row])
                write_table(out, df, settings=settings, command=command)
                log(
                    f"[{i}/{len(todo)}; {len(df)}/{len(configs)} in table] C{row['C']} L{row['L']} B{row['B']} "
                    f"w_gt {row['w_gt']:g}: {row['psnr_y']:.3f} dB, {row['params']:,} params, "
                    f"{row['macs_720p'] / 1e9:.2f} GMACs, {row['wall_s']:.1f} s (load {row['load_avg_1min']:.1f})"
                )
    elif len(df):
        write_table(out, df, settings=settings, command=command)  # refresh the stored command

    grid_keys = {_key(c) for c in configs}
    n_in_grid = sum(_key(r) in grid_keys for _, r in df.iterrows()) if len(df) else 0
    figures: dict[str, Any] = {
        "quick": bool(args.quick),
        "table": str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out),
        "table_bytes": out.stat().st_size if out.exists() else 0,
        "configs_in_grid": len(configs),
        "rows": len(df),
        "rows_new": len(todo),
        "complete": n_in_grid == len(configs),
        "settings": settings,
        "bicubic_psnr_y": round(bicubic.psnr_y, 3),
        "cache_build_s": round(cache_s, 1),
        "wall_s": round(time.perf_counter() - t_all, 1),
    }
    if len(df):
        best = df.loc[df["psnr_y"].idxmax()]
        figures.update(
            psnr_y_min=round(float(df["psnr_y"].min()), 3),
            psnr_y_max=round(float(df["psnr_y"].max()), 3),
            best=f"C{best['C']} L{best['L']} B{best['B']} w_gt {best['w_gt']:g}",
            table_run_s=round(float(df["wall_s"].sum()), 1),
            run_s_min=round(float(df["wall_s"].min()), 1),
            run_s_max=round(float(df["wall_s"].max()), 1),
            load_avg_median=round(float(df["load_avg_1min"].median()), 1),
        )
    return figures


def _summary(fig: dict[str, Any]) -> str:
    s = fig["settings"]
    parts = [
        f"{fig['rows']}/{fig['configs_in_grid']} configs ({'complete' if fig['complete'] else 'partial'}) in "
        f"{fig['table']} ({fig['table_bytes'] / 1024:.0f} KiB)",
        f"{s['steps']} steps x batch {s['batch']} @ HR {s['hr_patch']}, lr {s['lr']:g}",
        f"bicubic {fig['bicubic_psnr_y']:.2f} dB",
    ]
    if "psnr_y_min" in fig:
        parts += [
            f"PSNR_Y {fig['psnr_y_min']:.2f}-{fig['psnr_y_max']:.2f} dB (best {fig['best']})",
            f"runs {fig['run_s_min']:.0f}-{fig['run_s_max']:.0f} s, {fig['table_run_s'] / 60:.0f} min in all "
            f"(median load {fig['load_avg_median']:.1f})",
        ]
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    return bench_main(NAME, argv, _parse_args, lambda args: run(args, argv), _summary, command=_recorded_command)


if __name__ == "__main__":
    main()
