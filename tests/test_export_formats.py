"""Export to pt2 and ONNX with dynamic batch, height and width, each verified against eager at two batch sizes and
two input sizes, reloaded independently here at a third shape, written 0644 and logged to the trial's run."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import json
import stat

import pytest
import torch

from orchestrator.cli import main
from orchestrator.results.export import export_model
from orchestrator.tracking import KIND_TAG, Tracker
from sr.models import build
from sr.reparam import deploy_model
from sr.stages import save_weights


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return deploy_model(build("imdn_clb", C=16, B=1, distilled=4, scale=2)).eval()


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_export_is_dynamic_and_checked_at_two_batches_and_two_sizes(tiny, tmp_path, fmt):
    out = tmp_path / f"m.{fmt}"
    old = os.umask(0o022)
    try:
        res = export_model(tiny, out, fmt=fmt, sample_hw=(24, 32))
    finally:
        os.umask(old)
    checked = {(c["input_shape"][0], *c["input_shape"][2:]) for c in res["checks"] if "max_abs_diff" in c}
    reloaded = {(c["input_shape"][0], *c["input_shape"][2:]) for c in res["reloaded_checks"] if "max_abs_diff" in c}
    assert checked == reloaded == {(1, 24, 32), (2, 24, 32), (1, 29, 35), (2, 29, 35)}
    assert res["dynamic"] and max(c["max_abs_diff"] for c in res["reloaded_checks"]) <= 1e-4
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # shared like any new file, not mkstemp's 0600
    x = torch.rand(3, 3, 21, 30)
    with torch.no_grad():
        want = tiny(x)
    if fmt == "pt2":
        with torch.no_grad():
            got = torch.export.load(out).module()(x)
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    d = float((got - want).abs().max())
    print(f"{fmt}: checks {sorted(checked)}, 3x21x30 after reload {d:.2e}")
    assert got.shape == (3, 3, 42, 60) and d <= 1e-4


@pytest.mark.mlflow
def test_cli_export_logs_the_file_to_the_trial_run(tmp_path, capsys):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", deadline_s=10)
    exp = tracker.experiment_id("exp", artifact_location=str(tmp_path / "artifacts"))
    rid = tracker.start_run(exp, "trial", tags={KIND_TAG: "trial"})
    torch.manual_seed(0)
    save_weights(tmp_path / "weights.pth", build("edsr_mini", C=8, B=1, scale=2))  # record: no config.json needed
    tracker.log_artifact(rid, tmp_path / "weights.pth", "checkpoint")
    tracker.end_run(rid)
    out = tmp_path / "out" / "m.onnx"
    rc = main(["export", rid, "--format", "onnx", "-o", str(out), "--tracking-uri", tracker.uri, "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and out.is_file() and res["logged_to"] == {"run_id": rid, "artifact": "export/m.onnx"}
    logged = [f.path for f in tracker.client.list_artifacts(rid, "export")]
    assert logged == ["export/m.onnx"]
    assert res["source"]["arch"] == "edsr_mini" and res["source"]["tag"] == "edsr_C8L1B1_x2"
