"""Load a searched model back from MLflow and export it for deployment (``torch.export`` .pt2, or ONNX).

Every completed trial run holds ``config.json`` (its ``orchestrator.tasks.TrialTask`` as JSON; ``config["student"] =
{"arch", "knobs", "weights"}``) and ``checkpoint/weights.pth`` (``{"params": state_dict}`` of the training-time
model). Loading rebuilds the student, loads the weights with ``weights_only=True`` and folds collapsible blocks
(``sr.reparam.deploy_model``), so the exported graph is the deployed model. ``models:/`` and ``runs:/`` URIs resolve
to their source run and load the same way: no pickled model is ever unpickled here.

An export is verified before anything is written: the exported program must match the eager model within
``atol`` on a sample input; the written file is reloaded and checked again before it is moved into place.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from orchestrator.results._store import as_tracker
from orchestrator.tracking import Tracker
from sr.checkpoint import load_weights
from sr.complexity import count_params
from sr.errors import UserError
from sr.models import arch_tag, build
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


def load_run_model(tracker_or_uri: Tracker | str, run_id: str) -> tuple[nn.Module, dict[str, Any]]:
    """The folded eval model of a trial run, rebuilt from its ``config.json`` and ``checkpoint/weights.pth``.

    Args:
        tracker_or_uri: a ``Tracker`` or a tracking URI.
        run_id: the trial's MLflow run id.

    Returns:
        ``(model, meta)``: the deployed model (folded, ``eval()``) and ``{run_id, run_name, arch, knobs, tag,
        params}`` (``params`` counted on the folded model).

    Raises:
        UserError: unknown run, missing artifacts, or a config without ``student.arch``.
    """
    tracker = as_tracker(tracker_or_uri)
    run = _get_run(tracker, run_id)
    with tempfile.TemporaryDirectory(prefix="srcompress_load_") as tmp:
        cfg_path = _download(tracker, run_id, CONFIG_ARTIFACT, tmp)
        weights = _download(tracker, run_id, WEIGHTS_ARTIFACT, tmp)
        try:
            student = json.loads(cfg_path.read_text())["student"]
            arch, knobs = str(student["arch"]), dict(student.get("knobs") or {})
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(
                f"run {run_id}'s {CONFIG_ARTIFACT} has no student.arch ({type(exc).__name__}: {exc}); "
                "export a trial run of an srcompress search"
            ) from None
        model = build(arch, **knobs)
        load_weights(model, weights, arch=arch, key="params")
    model = deploy_model(model)
    meta = {
        "run_id": run_id,
        "run_name": run.info.run_name,
        "arch": arch,
        "knobs": knobs,
        "tag": arch_tag(arch, **knobs),
        "params": count_params(model),
    }
    return model, meta


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
def _sample(hw: tuple[int, int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, int(hw[0]), int(hw[1]), generator=g)


def _max_abs_diff(fn: Any, x: torch.Tensor, ref: torch.Tensor) -> float:
    with torch.no_grad():
        out = fn(x)
    if tuple(out.shape) != tuple(ref.shape):
        return float("inf")
    return float((out - ref).abs().max())


def _export_program(model: nn.Module, x: torch.Tensor) -> tuple[Any, bool, str]:
    """``torch.export`` with dynamic H/W when the model allows it; returns (program, dynamic, note)."""
    Dim = torch.export.Dim
    errors = []
    # Named dims first (any size >= 8); Dim.AUTO lets torch add guards it found (e.g. SwinIR's H % 8 == 0).
    attempts = (
        ("named", {2: Dim("H", min=8), 3: Dim("W", min=8)}),
        ("auto", {2: Dim.AUTO, 3: Dim.AUTO}),
    )
    for label, dims in attempts:
        try:
            ep = torch.export.export(model, (x,), dynamic_shapes=(dims,))
        except Exception as exc:  # torch raises UserError/ConstraintViolation/GuardOnDataDependent...
            errors.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            continue
        return ep, True, "" if label == "named" else "dynamic H/W with torch-inferred constraints"
    ep = torch.export.export(model, (x,))
    return ep, False, "dynamic H/W export failed, exported for the sample size only (" + "; ".join(errors) + ")"


def _range_text(ep: Any) -> str:
    return ", ".join(f"{k}: [{v.lower}, {v.upper}]" for k, v in ep.range_constraints.items())


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401  (deferred: an optional dependency)
    except ImportError:
        raise UserError("ONNX export needs the onnx package; pip install onnx, or use --format pt2") from None


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

    Args:
        model: the deployed model (e.g. from :func:`load_run_model`); put in ``eval()`` mode here.
        out_path: file to write (``.pt2`` or ``.onnx``); written only when every check passes.
        fmt: ``"pt2"`` (``torch.export.save``) or ``"onnx"`` (needs the ``onnx`` package).
        sample_hw: LR height and width of the random sample input (pixels).
        atol: largest allowed absolute difference from eager (the outputs are in [0, 1]-scaled pixel units).
        seed: seed of the sample inputs.

    Returns:
        ``{path, format, max_abs_diff, reloaded_max_abs_diff, dynamic, dynamic_check, note, params, input_shape,
        output_shape}``; ``dynamic_check`` holds the check at a second input size when the export is dynamic.

    Raises:
        UserError: unknown format, onnx missing, or an exported program that differs from eager.
    """
    if fmt not in ("pt2", "onnx"):
        raise UserError(f"export format {fmt!r} is not known; use pt2 or onnx")
    if fmt == "onnx":
        require_onnx()
    out_path = Path(out_path)
    model = model.eval()
    x = _sample(sample_hw, seed)
    with torch.no_grad():
        ref = model(x)
    ep, dynamic, note = _export_program(model, x)
    diff = _max_abs_diff(ep.module(), x, ref)
    if not diff <= atol:
        raise UserError(
            f"the exported program differs from the eager model by {diff:.3g} (> {atol:g}) on a "
            f"{tuple(x.shape)} input; nothing was written: report this model (arch/knobs) as an export bug"
        )
    result: dict[str, Any] = {
        "path": str(out_path),
        "format": fmt,
        "max_abs_diff": diff,
        "dynamic": dynamic,
        "params": count_params(model),
        "input_shape": list(x.shape),
        "output_shape": list(ref.shape),
    }
    if dynamic:
        # A second, odd size shows whether the dynamic graph really takes other sizes (and still matches eager).
        x2 = _sample((int(sample_hw[0]) + 5, int(sample_hw[1]) + 3), seed + 1)
        with torch.no_grad():
            ref2 = model(x2)
        try:
            d2: float | None = _max_abs_diff(ep.module(), x2, ref2)
        except Exception as exc:  # a guard (e.g. H % 8 == 0) refused the odd size: dynamic within constraints
            d2, guard = None, str(exc).splitlines()[0][:160]
            result["dynamic_check"] = {"input_shape": list(x2.shape), "refused": guard}
            note = (note + "; " if note else "") + f"sizes are constrained ({guard})"
        if d2 is not None:
            result["dynamic_check"] = {"input_shape": list(x2.shape), "max_abs_diff": d2}
            if not d2 <= atol:
                raise UserError(
                    f"the dynamic-shape export differs from eager by {d2:.3g} (> {atol:g}) on a {tuple(x2.shape)} "
                    "input; nothing was written: report this model (arch/knobs) as an export bug"
                )
        note = f"{note}; ranges {_range_text(ep)}" if note else "takes any LR height and width >= 8 pixels"
    result["note"] = note
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pt2":
        result["reloaded_max_abs_diff"] = _write_pt2(ep, out_path, x, ref, atol=atol)
    else:
        result.update(_write_onnx(ep, out_path, x, ref, atol=atol, dynamic=dynamic))
    result["bytes"] = out_path.stat().st_size
    return result


def _tmp_beside(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _write_pt2(ep: Any, out_path: Path, x: torch.Tensor, ref: torch.Tensor, *, atol: float) -> float:
    """Save to a temporary file beside ``out_path``, reload, re-check, then move into place."""
    tmp = _tmp_beside(out_path)
    try:
        torch.export.save(ep, tmp)
        back = torch.export.load(tmp)  # our own file, just written
        diff = _max_abs_diff(back.module(), x, ref)
        if not diff <= atol:
            raise UserError(
                f"the reloaded {out_path.name} differs from eager by {diff:.3g} (> {atol:g}); nothing was written: "
                "report this as an export bug"
            )
        os.replace(tmp, out_path)
        return diff
    finally:
        tmp.unlink(missing_ok=True)


def _write_onnx(
    ep: Any, out_path: Path, x: torch.Tensor, ref: torch.Tensor, *, atol: float, dynamic: bool
) -> dict[str, Any]:
    """ONNX via the dynamo exporter from the verified program; re-checked with onnxruntime when installed."""
    import onnx  # deferred: an optional dependency

    tmp = _tmp_beside(out_path)
    try:
        try:
            torch.onnx.export(ep, (x,), str(tmp), dynamo=True, external_data=False)
        except Exception as exc:  # onnxscript missing, an unsupported op...
            raise UserError(
                f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                "pip install onnxscript, or use --format pt2"
            ) from None
        onnx.checker.check_model(str(tmp))
        info: dict[str, Any] = {"reloaded_max_abs_diff": None}
        try:
            import onnxruntime as ort  # deferred: an optional dependency
        except ImportError:
            info["note_onnx"] = "structure checked with onnx.checker; install onnxruntime to re-check the numbers"
        else:
            sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
            diff = float(abs(torch.from_numpy(out) - ref).max())
            if not diff <= atol:
                raise UserError(
                    f"the ONNX model differs from eager by {diff:.3g} (> {atol:g}) in onnxruntime; nothing was "
                    "written: use --format pt2"
                )
            info["reloaded_max_abs_diff"] = diff
        os.replace(tmp, out_path)
        return info
    finally:
        tmp.unlink(missing_ok=True)
