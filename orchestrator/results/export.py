"""Load a searched model back from MLflow and export it for deployment (``torch.export`` .pt2, or ONNX).

Every completed trial run holds ``config.json`` (its ``orchestrator.tasks.TrialTask`` as JSON; ``config["student"] =
{"arch", "knobs", "weights"}``) and ``checkpoint/weights.pth`` (``{"params": state_dict, "srcompress": record}`` of
the training-time model; the record says its arch, knobs, scale and pixel range, see ``sr.arch_record``; older runs
have no record and are rebuilt from ``config.json``). Loading rebuilds the student from the record, loads the
weights with ``weights_only=True`` and folds collapsible blocks
(``sr.reparam.deploy_model``), so the exported graph is the deployed model. ``models:/`` and ``runs:/`` URIs resolve
to their source run and load the same way: no pickled model is ever unpickled here.

An export is verified before anything is written: the exported program (dynamic batch, height and width) must match
the eager model within ``atol`` at two batch sizes and two input sizes; the written file is reloaded (onnxruntime for
ONNX) and checked again before it is moved into place, with mode 0644 under the usual umask.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from orchestrator.results._store import as_tracker
from orchestrator.tracking import Tracker
from sr.arch_record import ArchRecord
from sr.checkpoint import arch_record, load_checkpoint_model
from sr.complexity import count_params
from sr.errors import UserError
from sr.models import arch_tag
from sr.reparam import deploy_model

ExportFormat = Literal["pt2", "onnx"]

# Two small files per load: MLflow's tqdm bars would only clutter the CLI's one-line output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
CONFIG_ARTIFACT = "config.json"
WEIGHTS_ARTIFACT = "checkpoint/weights.pth"


# --------------------------------------------------------------------------------------------- loading
def _download(tracker: Tracker, run_id: str, artifact: str, dst: str) -> Path:
    from mlflow.exceptions import MlflowException  # deferred: mlflow is heavy; exporting from a file needs none

    try:
        return Path(
            tracker._call(f"download {artifact}", lambda: tracker.client.download_artifacts(run_id, artifact, dst))
        )
    except (MlflowException, OSError) as exc:
        raise UserError(
            f"run {run_id} has no artifact {artifact} ({type(exc).__name__}); only trials that finished training "
            f"log {CONFIG_ARTIFACT} and {WEIGHTS_ARTIFACT}: export another run listed by `srcompress pareto`"
        ) from None


def _get_run(tracker: Tracker, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException  # deferred: mlflow is heavy; exporting from a file needs none

    try:
        return tracker._call("get run", lambda: tracker.client.get_run(run_id))
    except MlflowException:
        raise UserError(f"no MLflow run {run_id} at {tracker.uri}; check the run id and --tracking-uri") from None


def _config_record(cfg_path: Path, run_id: str) -> ArchRecord:
    """The architecture in a run's ``config.json`` (``student.arch/knobs``): for runs whose weights file predates
    the record, and trained by srcompress, so in [0, 1]."""
    try:
        student = json.loads(cfg_path.read_text())["student"]
        return ArchRecord(str(student["arch"]), dict(student.get("knobs") or {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"run {run_id}'s {CONFIG_ARTIFACT} has no student.arch ({type(exc).__name__}: {exc}); "
            "export a trial run of an srcompress search"
        ) from None


def load_run_checkpoint(
    tracker_or_uri: Tracker | str,
    run_id: str,
    *,
    arch: str | None = None,
    knobs: dict[str, Any] | None = None,
    scale: int | None = None,
) -> tuple[nn.Module, ArchRecord]:
    """The training-time model of a trial run, rebuilt from the record in its ``checkpoint/weights.pth`` (or, for
    older runs, its ``config.json``); ``arch``/``knobs``/``scale`` given by hand must agree with it."""
    tracker = as_tracker(tracker_or_uri)
    _get_run(tracker, run_id)
    with tempfile.TemporaryDirectory(prefix="srcompress_load_") as tmp:
        weights = _download(tracker, run_id, WEIGHTS_ARTIFACT, tmp)
        fallback = None
        if arch_record(weights) is None:
            fallback = _config_record(_download(tracker, run_id, CONFIG_ARTIFACT, tmp), run_id)
        return load_checkpoint_model(weights, arch=arch, knobs=knobs, scale=scale, fallback=fallback)


def load_run_model(tracker_or_uri: Tracker | str, run_id: str) -> tuple[nn.Module, dict[str, Any]]:
    """The folded eval model of a trial run (see :func:`load_run_checkpoint`).

    Args:
        tracker_or_uri: a ``Tracker`` or a tracking URI.
        run_id: the trial's MLflow run id.

    Returns:
        ``(model, meta)``: the deployed model (folded, ``eval()``) and ``{run_id, run_name, arch, knobs, tag,
        scale, pixel_range, params}`` (``params`` counted on the folded model).

    Raises:
        UserError: unknown run, missing artifacts, or no architecture in the weights or ``config.json``.
    """
    tracker = as_tracker(tracker_or_uri)
    run = _get_run(tracker, run_id)
    model, rec = load_run_checkpoint(tracker, run_id)
    model = deploy_model(model)
    meta = {
        "run_id": run_id,
        "run_name": run.info.run_name,
        "arch": rec.arch,
        "knobs": dict(rec.knobs),
        "tag": arch_tag(rec.arch, **rec.knobs),
        "scale": rec.scale,
        "pixel_range": rec.pixel_range,
        "params": count_params(model),
    }
    return model, meta


def log_export(tracker_or_uri: Tracker | str, run_id: str, path: str | Path) -> str:
    """Log an exported file into its trial run under ``export/``; returns the artifact path."""
    tracker = as_tracker(tracker_or_uri)
    tracker.log_artifact(run_id, Path(path), "export")
    return f"export/{Path(path).name}"


def run_id_of_uri(uri: str, *, tracker: Tracker) -> str:
    """The source run id behind ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``models:/m-<id>``,
    ``runs:/<id>/...`` or a bare run id."""
    from mlflow.exceptions import MlflowException  # deferred: mlflow is heavy; exporting from a file needs none

    uri = uri.strip()
    if _RUN_ID_RE.match(uri):
        return uri
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/") :].strip("/").split("/", 1)[0]
        if not run_id:
            raise UserError(f"{uri!r} names no run; write runs:/<run id>/model")
        return run_id
    if not uri.startswith("models:/"):
        raise UserError(
            f"{uri!r} is neither a run id nor a models:/ or runs:/ URI; write e.g. models:/demo_pareto/1 or a run id"
        )
    ref = uri[len("models:/") :].strip("/")
    client = tracker.client
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            mv = tracker._call("get model alias", lambda: client.get_model_version_by_alias(name, alias))
            return mv.run_id
        if "/" in ref:
            name, version = ref.rsplit("/", 1)
            if version == "latest":
                versions = tracker._call("list versions", lambda: client.search_model_versions(f"name = '{name}'"))
                if not versions:
                    raise UserError(f"registered model {name!r} has no versions at {tracker.uri}")
                version = str(max(int(v.version) for v in versions))
            mv = tracker._call("get model version", lambda: client.get_model_version(name, version))
            return mv.run_id
        logged = tracker._call("get logged model", lambda: client.get_logged_model(ref))
        return logged.source_run_id
    except MlflowException:
        raise UserError(
            f"{uri} is not registered at {tracker.uri}; list models with `srcompress pareto` or fix --tracking-uri"
        ) from None


def load_model_uri(uri: str, *, tracking_uri: Tracker | str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The folded eval model behind a ``models:/`` or ``runs:/`` URI (or a run id), loaded weights-only.

    The URI is resolved to its source trial run, whose checkpoint is loaded as in :func:`load_run_model`; the
    pickled copy that ``mlflow.pytorch.log_model`` stored is not unpickled.
    """
    import mlflow  # deferred: mlflow is heavy; exporting from a file needs none

    tracker = as_tracker(tracking_uri if tracking_uri is not None else mlflow.get_tracking_uri())
    model, meta = load_run_model(tracker, run_id_of_uri(uri, tracker=tracker))
    return model, {**meta, "uri": uri}


# -------------------------------------------------------------------------------------------- exporting
def _sample(shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """A random LR batch ``(N, 3, H, W)`` with values in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(int(shape[0]), 3, int(shape[1]), int(shape[2]), generator=g)


def _max_abs_diff(fn: Any, x: torch.Tensor, ref: torch.Tensor) -> float:
    with torch.no_grad():
        out = fn(x)
    out = torch.as_tensor(out)
    if tuple(out.shape) != tuple(ref.shape):
        return float("inf")
    return float((out - ref).abs().max())


def _export_program(model: nn.Module, x: torch.Tensor) -> tuple[Any, bool, str]:
    """``torch.export`` with dynamic batch, H and W when the model allows it; returns (program, dynamic, note).

    The batch is always a named dim (any N >= 1): a sample of batch 2 keeps torch from specialising it to 1.
    """
    Dim = torch.export.Dim
    errors = []
    batch = Dim("N", min=1, max=4096)
    # Named dims first (any size >= 8); Dim.AUTO lets torch add guards it found (e.g. SwinIR's H % 8 == 0).
    attempts = (
        ("named", {0: batch, 2: Dim("H", min=8), 3: Dim("W", min=8)}),
        ("auto", {0: batch, 2: Dim.AUTO, 3: Dim.AUTO}),
    )
    for label, dims in attempts:
        try:
            ep = torch.export.export(model, (x,), dynamic_shapes=(dims,))
        except Exception as exc:  # torch raises UserError/ConstraintViolation/GuardOnDataDependent...
            errors.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            continue
        return ep, True, "" if label == "named" else "dynamic batch and H/W with torch-inferred constraints"
    ep = torch.export.export(model, (x,))
    return ep, False, "dynamic export failed, exported for the sample shape only (" + "; ".join(errors) + ")"


def _range_text(ep: Any) -> str:
    return ", ".join(f"{k}: [{v.lower}, {v.upper}]" for k, v in ep.range_constraints.items())


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401  (deferred: an optional dependency)
        import onnxruntime  # noqa: F401  (deferred: an optional dependency, needed for the numeric check)
    except ImportError:
        raise UserError(
            "ONNX export needs the onnx and onnxruntime packages; pip install onnx onnxruntime onnxscript, or use "
            "--format pt2"
        ) from None


def _check_shapes(sample_hw: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(N, H, W) of the checks: two batch sizes times two LR sizes (the second odd, unlike the sample)."""
    h, w = int(sample_hw[0]), int(sample_hw[1])
    return [(n, hh, ww) for hh, ww in ((h, w), (h + 5, w + 3)) for n in (1, 2)]


def _verify(name: str, fn: Any, refs: list[tuple[torch.Tensor, torch.Tensor]], *, atol: float) -> list[dict]:
    """Run ``fn`` on every check input against the eager outputs; a shape the program refuses (a guard such as
    SwinIR's H % 8 == 0) is recorded as refused, a numeric difference above ``atol`` is an error."""
    out: list[dict] = []
    for x, ref in refs:
        try:
            d = _max_abs_diff(fn, x, ref)
        except Exception as exc:  # a shape guard of the exported program / onnxruntime's reshape check
            out.append({"input_shape": list(x.shape), "refused": str(exc).splitlines()[0][:160]})
            continue
        if not d <= atol:
            raise UserError(
                f"the {name} differs from the eager model by {d:.3g} (> {atol:g}) on a {tuple(x.shape)} input; "
                "nothing was written: report this model (arch/knobs) as an export bug"
            )
        out.append({"input_shape": list(x.shape), "max_abs_diff": d})
    if not any("max_abs_diff" in c for c in out):
        raise UserError(f"the {name} ran on none of the check inputs ({out[0]['refused']}); nothing was written")
    return out


def export_model(
    model: nn.Module,
    out_path: str | Path,
    *,
    fmt: ExportFormat = "pt2",
    sample_hw: tuple[int, int] = (48, 64),
    atol: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """Export ``model`` (already folded) to ``out_path`` after checking the export against eager.

    The program is traced on a batch of 2 with batch, height and width dynamic, then checked at two batch sizes
    (1, 2) and two LR sizes (``sample_hw`` and an odd one 5x3 pixels larger): first the program, then the
    written file reloaded (``torch.export.load``, or onnxruntime for ONNX).

    Args:
        model: the deployed model (e.g. from :func:`load_run_model`); put in ``eval()`` mode here.
        out_path: file to write (``.pt2`` or ``.onnx``); written only when every check passes, mode 0644 (umask).
        fmt: ``"pt2"`` (``torch.export.save``) or ``"onnx"`` (onnx + onnxscript, checked in onnxruntime).
        sample_hw: LR height and width of the sample input (pixels).
        atol: largest allowed absolute difference from eager (the outputs are in [0, 1]-scaled pixel units).
        seed: seed of the sample inputs.

    Returns:
        ``{path, format, max_abs_diff, reloaded_max_abs_diff, dynamic, dynamic_check, checks, reloaded_checks,
        note, params, input_shape, output_shape, bytes}``; ``dynamic_check`` is the check at the second size.

    Raises:
        UserError: unknown format, onnx missing, or an exported program that differs from eager.
    """
    if fmt not in ("pt2", "onnx"):
        raise UserError(f"export format {fmt!r} is not known; use pt2 or onnx")
    if fmt == "onnx":
        require_onnx()
    out_path = Path(out_path)
    model = model.eval()
    x = _sample((2, *sample_hw), seed)
    with torch.no_grad():
        ref = model(x)
        refs = [(xi, model(xi)) for xi in (_sample(s, seed + 1 + i) for i, s in enumerate(_check_shapes(sample_hw)))]
    ep, dynamic, note = _export_program(model, x)
    if not dynamic:
        refs = [(xi, r) for xi, r in refs if tuple(xi.shape) == tuple(x.shape)] or [(x, ref)]
    checks = _verify("exported program", ep.module(), [(x, ref), *refs], atol=atol)
    refused = [c for c in checks if "refused" in c]
    if refused:
        note = (note + "; " if note else "") + f"sizes are constrained ({refused[0]['refused']})"
    if dynamic:
        note = f"{note}; ranges {_range_text(ep)}" if note else "takes any batch and any LR height and width >= 8"
    result: dict[str, Any] = {
        "path": str(out_path),
        "format": fmt,
        "max_abs_diff": checks[0]["max_abs_diff"],
        "dynamic": dynamic,
        "checks": checks[1:],
        "params": count_params(model),
        "input_shape": list(x.shape),
        "output_shape": list(ref.shape),
        "note": note,
    }
    odd = [c for c in checks[1:] if c["input_shape"][2:] != list(x.shape[2:])]
    if dynamic and odd:
        result["dynamic_check"] = odd[-1]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write = _write_pt2 if fmt == "pt2" else _write_onnx
    reloaded = write(ep, out_path, [(x, ref), *refs], atol=atol)
    result["reloaded_max_abs_diff"] = reloaded[0]["max_abs_diff"]
    result["reloaded_checks"] = reloaded[1:]
    result["bytes"] = out_path.stat().st_size
    return result


def _tmp_beside(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file 0600; an exported model is meant to be shared: the mode a new file gets (umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


def _write_pt2(ep: Any, out_path: Path, refs: list, *, atol: float) -> list[dict]:
    """Save to a temporary file beside ``out_path``, reload, re-check every input, then move into place."""
    tmp = _tmp_beside(out_path)
    try:
        torch.export.save(ep, tmp)
        back = torch.export.load(tmp)  # our own file, just written
        checks = _verify(f"reloaded {out_path.name}", back.module(), refs, atol=atol)
        os.replace(tmp, out_path)
        return checks
    finally:
        tmp.unlink(missing_ok=True)


def _write_onnx(ep: Any, out_path: Path, refs: list, *, atol: float) -> list[dict]:
    """ONNX via the dynamo exporter from the verified program (dynamic dims kept), re-checked in onnxruntime."""
    # deferred: optional dependencies, needed only for ONNX
    import onnx
    import onnxruntime as ort

    tmp = _tmp_beside(out_path)
    # The exporter logs one warning per torchvision op it cannot register (torchvision is never installed here).
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        try:
            # its progress lines ("[torch.onnx] ...") and a FutureWarning from inside the exporter (torch 2.13)
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch.onnx.export(ep, (refs[0][0],), str(tmp), dynamo=True, external_data=False, verbose=False)
        except Exception as exc:  # onnxscript missing, an unsupported op...
            raise UserError(
                f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                "pip install onnxscript, or use --format pt2"
            ) from None
        onnx.checker.check_model(str(tmp))
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # a shape the graph refuses is reported in the result, not logged in red
        sess = ort.InferenceSession(str(tmp), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(sess.run(None, {name: x.numpy()})[0])

        checks = _verify("ONNX model (onnxruntime)", run, refs, atol=atol)
        os.replace(tmp, out_path)
        return checks
    finally:
        tmp.unlink(missing_ok=True)
