"""``srcompress`` commands for choosing and shipping models: ``pareto``, ``report``, ``table``, ``export``, ``ui``.

Registered on the app by ``orchestrator.cli``; the work is done by ``orchestrator.results`` (imported inside each
command: it loads pandas, pyarrow and torch, which the other commands do not need).

They read a job's MLflow store: ``--store`` when given (a folder holding ``mlflow.db``, a ``.db`` file or a URI,
resolved by ``search_spaces.store_uri`` like the spec's ``tracking.uri``; ``--tracking-uri`` and ``--storage`` are
older spellings), else the store of ``--job JOB.yaml`` (its ``tracking.uri``, or ``<storage.path>/mlflow.db``),
else ``./srcompress_runs/mlflow.db`` (where ``search_spaces/demo.yaml`` writes when run from the repository). A
sqlite file that does not exist is an error rather than a new empty store.
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator import ui as _ui
from orchestrator.cli._common import JsonOpt, StoreOpt, _fmt_g, _fmt_int, _print_table, check_output, store_option
from orchestrator.tracking import Tracker, check_reachable, default_artifact_root, default_tracking_uri
from search_spaces import load_job_spec, parse_size
from sr.errors import UserError

DEFAULT_STORAGE = "./srcompress_runs"

TrackingOpt = StoreOpt  # default: the --job's store, else ./srcompress_runs
JobOpt = Annotated[str | None, typer.Option("--job", help="Job spec YAML whose store (and experiment) to read")]
ExperimentOpt = Annotated[
    str | None, typer.Option("--experiment", help="MLflow experiment name (default: the --job's experiment)")
]
ObjectivesOpt = Annotated[str, typer.Option("--objectives", help="NAME:max|min pairs, e.g. psnr_y:max,macs_720p:min")]
MaxParamsOpt = Annotated[str | None, typer.Option("--max-params", help="Parameter budget, e.g. 100k")]
MaxMacsOpt = Annotated[str | None, typer.Option("--max-macs", help="MAC budget for a 1280x720 output, e.g. 20G")]
MaxLatencyOpt = Annotated[float | None, typer.Option("--max-latency-ms", help="Latency budget in milliseconds")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="Only latencies measured on this device, e.g. cpu")]
ParentOpt = Annotated[str | None, typer.Option("--parent-run-id", help="Only this search's trials (its parent run)")]


# ----------------------------------------------------------------------------------------------- the store
def resolve_store(tracking_uri: str | None, job: str | None) -> tuple[str, str | None]:
    """``(tracking URI, the job's experiment or None)``; one-line errors for a missing store or a dead server."""
    experiment = None
    given = store_option(tracking_uri)
    if job is not None:
        spec = load_job_spec(job)
        experiment = spec.experiment_name
        uri = given or spec.tracking_uri
    else:
        uri = given or default_tracking_uri(DEFAULT_STORAGE)
    db = _ui.sqlite_path(uri)
    if db is not None and not db.is_file():
        hint = "--store/--job" if (tracking_uri or job) else "--store FOLDER|FILE.db|URI or --job JOB.yaml"
        raise UserError(f"no MLflow store at {db}; run a job first (srcompress run JOB.yaml) or pass {hint}")
    check_reachable(uri)
    return uri, experiment


def _experiment(experiment: str | None, from_job: str | None) -> str:
    name = experiment or from_job
    if not name:
        raise UserError("no experiment given; pass --experiment NAME (or --job JOB.yaml)")
    return name


def _size(text: str | None) -> int | None:

    return None if text is None else parse_size(text)


def _jsonable(v: Any) -> Any:
    # deferred: pandas is heavy
    import numpy as np
    import pandas as pd

    if v is None or v is pd.NA:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(v)
    return str(v)


def _model_uri(row: dict[str, Any]) -> str:
    uri = row.get("model_uri")
    return str(uri) if uri else f"runs:/{row['run_id']}/checkpoint"


# --------------------------------------------------------------------------------------------------- pareto
def pareto_rows(
    uri: str,
    experiment: str,
    *,
    objectives: str,
    max_params: int | None = None,
    max_macs: int | None = None,
    max_latency_ms: float | None = None,
    device: str | None = None,
    parent_run_id: str | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """The front as JSON-ready dicts (model_uri filled in) and the number of trials considered."""
    from orchestrator.results.pareto import search_front  # deferred: pandas is heavy

    found = search_front(
        uri,
        experiment,
        parent_run_id,
        objectives=objectives,
        max_params=max_params,
        max_macs=max_macs,
        max_latency_ms=max_latency_ms,
        device=device,
    )
    rows = []
    for rec in found.front.to_dict(orient="records"):
        row = {k: _jsonable(v) for k, v in rec.items()}
        row["model_uri"] = _model_uri(row)
        rows.append(row)
    return rows, len(found.trials)


def pareto(
    experiment: ExperimentOpt = None,
    tracking_uri: TrackingOpt = None,
    job: JobOpt = None,
    objectives: ObjectivesOpt = "psnr_y:max,macs_720p:min",
    max_params: MaxParamsOpt = None,
    max_macs: MaxMacsOpt = None,
    max_latency_ms: MaxLatencyOpt = None,
    device: DeviceOpt = None,
    parent_run_id: ParentOpt = None,
    as_json: JsonOpt = False,
    as_table: Annotated[bool, typer.Option("--table", help="Print a table (the default)")] = False,
) -> None:
    """The Pareto-optimal models of a search under budgets, with the URI to export each one."""
    from orchestrator.results.pareto import parse_objectives  # deferred: pandas is heavy

    if as_json and as_table:
        raise UserError("--json and --table exclude each other; pass one")
    uri, job_exp = resolve_store(tracking_uri, job)
    name = _experiment(experiment, job_exp)
    objs = parse_objectives(objectives)
    budgets = {
        "max_params": _size(max_params),
        "max_macs": _size(max_macs),
        "max_latency_ms": max_latency_ms,
        "device": device,
    }
    rows, n_trials = pareto_rows(uri, name, objectives=objectives, parent_run_id=parent_run_id, **budgets)
    if as_json:
        out = {
            "experiment": name,
            "tracking_uri": uri,
            "objectives": [list(o) for o in objs],
            "budgets": budgets,
            "n_trials": n_trials,
            "models": rows,
        }
        print(json.dumps(out))
        return
    if not rows:
        print(f"no completed trial of {n_trials} in {name!r} meets the budgets; loosen them or check the search")
        return
    table = [
        {
            "#": i + 1,
            "run": r.get("run_name") or "",
            "arch": r.get("arch") or "",
            "C/L/B": "/".join("-" if r.get(k) is None else str(r[k]) for k in ("C", "L", "B")),
            "PSNR_Y": "-" if r.get("psnr_y") is None else f"{r['psnr_y']:.3f}",
            "test PSNR_Y": "-" if r.get("test_psnr_y") is None else f"{r['test_psnr_y']:.3f}",
            "vs bicubic dB": ("-" if r.get("vs_bicubic_db") is None else f"{r['vs_bicubic_db']:+.3f}")
            + (" below bicubic" if r.get("below_bicubic") else ""),
            "params": _fmt_int(r.get("params")),
            "MACs 720p": _fmt_g(r.get("macs_720p")),
            "latency ms": "-" if r.get("latency_ms") is None else f"{r['latency_ms']:.1f} ({r.get('latency_device')})",
            "run id": r["run_id"],
            "model URI": r["model_uri"],
        }
        for i, r in enumerate(rows)
    ]
    extra = [
        n for n, _ in objs if n not in ("psnr_y", "test_psnr_y", "vs_bicubic_db", "macs_720p", "params", "latency_ms")
    ]
    for r, t in zip(rows, table, strict=True):
        for n in extra:
            t[n] = "-" if r.get(n) is None else f"{r[n]:g}"
    shown = ", ".join(f"{k}={v}" for k, v in budgets.items() if v is not None) or "none"
    _print_table(
        table, list(table[0]), title=f"Pareto front of {name} ({objectives}); {n_trials} trials; budgets: {shown}"
    )


# --------------------------------------------------------------------------------------------------- report
def report(
    output: Annotated[str, typer.Option("-o", "--output", help="HTML file to write")],
    experiment: ExperimentOpt = None,
    tracking_uri: TrackingOpt = None,
    job: JobOpt = None,
    objectives: ObjectivesOpt = "psnr_y:max,macs_720p:min",
    max_params: MaxParamsOpt = None,
    max_macs: MaxMacsOpt = None,
    max_latency_ms: MaxLatencyOpt = None,
    device: DeviceOpt = None,
    parent_run_id: ParentOpt = None,
    assets: Annotated[
        str | None, typer.Option("--assets", help="Write the figures as PNGs into DIR and link them (default: inlined)")
    ] = None,
    parquet: Annotated[
        str | None, typer.Option("--parquet", help="Also write the trials table to this .parquet file")
    ] = None,
    log: Annotated[
        bool, typer.Option("--log/--no-log", help="Also log the report to the search's parent run in MLflow")
    ] = False,
) -> None:
    """An HTML report (trade-off plots, Pareto table, progress) of a search: one file, figures inlined."""
    from orchestrator.results.report import report_for_experiment  # deferred: pandas, pyarrow, matplotlib

    check_output(output, "-o")
    if parquet is not None:
        if Path(parquet).suffix.lower() != ".parquet":
            raise UserError(f"--parquet {parquet!r} is not a .parquet file name; write e.g. trials.parquet")
        check_output(parquet, "--parquet")
    if assets is not None:
        check_output(assets, "--assets", folder=True)
    uri, job_exp = resolve_store(tracking_uri, job)
    name = _experiment(experiment, job_exp)
    html = report_for_experiment(
        uri,
        name,
        output,
        objectives=objectives,
        parent_run_id=parent_run_id,
        max_params=_size(max_params),
        max_macs=_size(max_macs),
        max_latency_ms=max_latency_ms,
        device=device,
        assets_dir=assets,
        parquet=parquet,
        log_to_mlflow=log,
    )
    extras = (f"; figures in {assets}" if assets else "") + (f"; trials table {parquet}" if parquet else "")
    print(f"[srcompress] report of {name}: {html}{extras}" + ("; logged to the search's parent run" if log else ""))


# ---------------------------------------------------------------------------------------------------- table
def table(
    output: Annotated[str, typer.Option("-o", "--output", help="File to write: .parquet (typed schema) or .csv")],
    experiment: ExperimentOpt = None,
    tracking_uri: TrackingOpt = None,
    job: JobOpt = None,
    parent_run_id: ParentOpt = None,
) -> None:
    """Every trial of an experiment (params, metrics, status) as one Parquet or CSV table."""
    # deferred: pandas and pyarrow are heavy
    from orchestrator.results.pareto import search_trials
    from orchestrator.results.table import write_trials_parquet

    suffix = Path(output).suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise UserError(f"cannot write {output!r}: use a .parquet or .csv file name")
    check_output(output, "-o")
    uri, job_exp = resolve_store(tracking_uri, job)
    name = _experiment(experiment, job_exp)
    df = search_trials(uri, name, parent_run_id)
    if suffix == ".parquet":
        path = write_trials_parquet(df, output)
    else:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)
    print(f"[srcompress] {len(df)} trials of {name} -> {path}")


# --------------------------------------------------------------------------------------------------- export
def _parse_hw(text: str) -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    try:
        hw = (int(h), int(w))
    except ValueError:
        hw = (0, 0)
    if not sep or min(hw) < 8:
        raise UserError(f"--sample-size {text!r} is not HxW with both >= 8; write e.g. 48x64")
    return hw


def export(
    model: Annotated[
        str, typer.Argument(help="Trial run id, models:/NAME/VERSION, models:/NAME@ALIAS or runs:/ID/...")
    ],
    output: Annotated[str, typer.Option("-o", "--output", help="File to write, e.g. model.pt2 or model.onnx")],
    fmt: Annotated[str, typer.Option("--format", help="pt2 (torch.export) or onnx (checked in onnxruntime)")] = "pt2",
    tracking_uri: TrackingOpt = None,
    job: JobOpt = None,
    sample_size: Annotated[str, typer.Option(help="LR HxW of the check input")] = "48x64",
    atol: Annotated[float, typer.Option(help="Largest allowed |exported - eager|")] = 1e-4,
    log: Annotated[bool, typer.Option("--log/--no-log", help="Log the exported file to the trial's MLflow run")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Export a searched model (folded for deployment) after checking it against the eager model.

    The exported model takes any batch size and LR height/width (within the constraints the note prints); it is
    checked at batch 1 and 2 and at two LR sizes, reloaded from the file, and logged to the trial's run.
    """
    # deferred: torch, mlflow
    from orchestrator.results.export import export_model, load_model_uri, log_export, require_onnx

    if fmt not in ("pt2", "onnx"):
        raise UserError(f"--format {fmt!r} is not known; use pt2 or onnx")
    if fmt == "onnx":
        require_onnx()  # before the slow load
    hw = _parse_hw(sample_size)
    check_output(output, "-o")
    uri, _ = resolve_store(tracking_uri, job)
    net, meta = load_model_uri(model, tracking_uri=uri)
    res = export_model(net, output, fmt=fmt, sample_hw=hw, atol=atol)  # type: ignore[arg-type]
    res["source"] = {k: meta[k] for k in ("uri", "run_id", "run_name", "arch", "knobs", "tag", "pixel_range")}
    if log:
        res["logged_to"] = {"run_id": meta["run_id"], "artifact": log_export(uri, meta["run_id"], res["path"])}
    if as_json:
        print(json.dumps(res, default=str))
        return
    _print_export(res, meta, fmt=fmt, atol=atol)


def _print_export(res: dict[str, Any], meta: dict[str, Any], *, fmt: str, atol: float) -> None:
    def shape(c: dict[str, Any]) -> str:
        return "x".join(map(str, c["input_shape"]))

    done = [c for c in res["reloaded_checks"] if "max_abs_diff" in c]
    print(
        f"[srcompress] check: max |exported - eager| = {res['max_abs_diff']:.3g} on {shape(res)} (atol {atol:g}); "
        f"reloaded file: {res['reloaded_max_abs_diff']:.3g}, "
        + ", ".join(f"{c['max_abs_diff']:.3g} at {shape(c)}" for c in done)
    )
    dyn = "dynamic batch and H/W" if res["dynamic"] else "static shape"
    print(
        f"[srcompress] exported {meta['tag']} (run {meta['run_name']}, {_fmt_int(res['params'])} params, folded) "
        f"-> {res['path']} [{fmt}, {dyn}, {res['bytes']:,} bytes]"
    )
    if res.get("logged_to"):
        print(f"[srcompress] logged to run {res['logged_to']['run_id']} as {res['logged_to']['artifact']}")
    if meta.get("pixel_range", 1.0) != 1.0:
        print(f"[srcompress] note: the model takes pixel values in [0, {meta['pixel_range']:g}]")
    if res.get("note"):
        print(f"[srcompress] note: {res['note']}")


# ------------------------------------------------------------------------------------------------------- ui
def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def ui(
    store: StoreOpt = None,
    job: JobOpt = None,
    port: Annotated[int, typer.Option(help="TCP port", min=1, max=65535)] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes the UI to the network")] = "127.0.0.1",
    wait_s: Annotated[float, typer.Option(help="Seconds to wait for the server to come up")] = 60.0,
    experiment: ExperimentOpt = None,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the job's runs view in a web browser once the server is up")
    ] = False,
) -> None:
    """Start the MLflow UI on a job's store, print the deep link to its runs view, and block until Ctrl-C."""
    if store is not None and job is not None:
        raise UserError("--store and --job exclude each other; pass one")
    job_experiment = None
    if job is not None:
        backend, artifacts, job_experiment = _ui.store_of_job(job)
    else:
        backend = store_option(store) or default_tracking_uri(DEFAULT_STORAGE)
        artifacts = None
    db = _ui.sqlite_path(backend)
    if db is None:
        raise UserError(f"the job tracks to {backend}, a server already; open it in a browser instead of srcompress ui")
    if not db.is_file():
        raise UserError(f"no MLflow store at {db}; run a job first (srcompress run JOB.yaml) or pass --store/--job")
    artifacts = artifacts or default_artifact_root(db.parent)
    experiment = experiment or job_experiment
    links = _ui.experiments_with_runs(Tracker(backend).client, experiment)
    if experiment is not None and not links:
        raise UserError(f"no MLflow experiment named {experiment!r} in {db}; check --experiment/--job")
    proc = _ui.start_mlflow_server(backend, artifacts, host=host, port=port, wait_s=wait_s)
    url = proc.url  # type: ignore[attr-defined]
    print(f"[srcompress] MLflow UI on {backend}: {url}", flush=True)
    for name, exp_id in links:
        print(f"[srcompress] runs of {name}: {_ui.runs_url(url, exp_id)}", flush=True)
    if open_browser:
        # The job's runs view (the newest experiment's without --job/--experiment), else the UI's home page.
        target = _ui.runs_url(url, links[0][1]) if links else url
        import webbrowser  # deferred: only --open needs a browser

        if not webbrowser.open(target):
            print(f"[srcompress] no web browser found here; open {target} yourself", flush=True)
    print(f"[srcompress] server log: {proc.log_path}; Ctrl-C stops it", flush=True)  # type: ignore[attr-defined]
    # The server runs in its own session, so Ctrl-C reaches only this process: stop the server on it and on TERM.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        print("[srcompress] stopping the MLflow server", flush=True)
        _ui.stop_server(proc)
        return
    finally:
        signal.signal(signal.SIGTERM, previous)
    raise UserError(f"the MLflow server exited with code {code} ({_ui.log_tail(proc.log_path)}); see {proc.log_path}")  # type: ignore[attr-defined]
