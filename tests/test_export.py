"""Loading trial runs back from a real MLflow sqlite store, exporting them (torch.export .pt2) with numeric checks,
and registering a Pareto model in the Model Registry."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import json
import tempfile
from pathlib import Path

import pytest
import torch

from orchestrator.cli import main
from orchestrator.results.export import export_model, load_model_uri, load_run_model
from orchestrator.tracking import KIND_TAG, STATUS_TAG, Tracker
from sr.complexity import count_params
from sr.errors import UserError
from sr.models import build
from sr.reparam import fold, has_collapsible

# name, arch, knobs, psnr_y, GMACs 720p: both on the (psnr_y, MACs) front, imdn_clb first (higher PSNR).
STUDENTS = [
    ("edsr_C8L1B2_x2", "edsr_mini", {"C": 8, "B": 2, "scale": 2}, 30.0, 1.0),
    ("imdn_clb_C16B1_x2", "imdn_clb", {"C": 16, "B": 1, "distilled": 4, "scale": 2}, 31.0, 2.0),
]


def log_trial_run(tracker: Tracker, exp: str, parent: str, name: str, arch: str, knobs: dict, model, metrics: dict):
    """A completed trial run with the artifacts ``workers._log_final_artifacts`` writes."""
    rid = tracker.start_run(exp, name, parent_run_id=parent, tags={KIND_TAG: "trial", STATUS_TAG: "completed"})
    tracker.log_params(rid, {"arch": arch, "family": arch.split("_")[0], **knobs})
    tracker.log_metrics(rid, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        torch.save({"params": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, out / "weights.pth")
        config = {"student": {"arch": arch, "knobs": knobs}, "kd": {"steps": 1}, "tracking": {"run_id": rid}}
        (out / "config.json").write_text(json.dumps(config))
        tracker.log_artifact(rid, out / "weights.pth", "checkpoint")
        tracker.log_artifact(rid, out / "config.json")
    tracker.end_run(rid)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow_export")
    tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", deadline_s=10)
    exp = tracker.experiment_id("exp", artifact_location=str(tmp / "artifacts"))
    parent = tracker.start_run(exp, "search_x2", tags={KIND_TAG: "search"})
    torch.manual_seed(0)
    runs = {}
    for i, (name, arch, knobs, psnr, gmacs) in enumerate(STUDENTS):
        model = build(arch, **knobs).eval()  # training-time model: imdn_clb still has its 1x1 branches
        metrics = {"psnr_y": psnr, "ssim_y": 0.9, "params": count_params(fold(model)), "macs_720p": gmacs * 1e9}
        rid = log_trial_run(tracker, exp, parent, name, arch, knobs, model, metrics)
        tracker.set_tags(rid, {"trial_number": i})
        runs[arch] = (rid, model)
    # a trial without artifacts (e.g. failed before logging its weights)
    bare = tracker.start_run(exp, "bare", parent_run_id=parent, tags={KIND_TAG: "trial", STATUS_TAG: "failed"})
    return tracker, parent, runs, bare, tmp


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.mlflow
@pytest.mark.parametrize("arch", ["edsr_mini", "imdn_clb"])
def test_load_run_model_is_folded_and_equal(store, arch):
    tracker, _, runs, _, _ = store
    rid, trained = runs[arch]
    model, meta = load_run_model(tracker.uri, rid)
    assert not has_collapsible(model) and not model.training
    assert meta["arch"] == arch and meta["params"] == count_params(fold(trained))
    if arch == "imdn_clb":
        assert has_collapsible(trained) and count_params(trained) > meta["params"]  # the fold removed branches
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        d = _diff(model(x), trained(x))
    print(f"{arch}: folded-vs-trained max abs diff {d:.2e}")
    assert d <= 1e-5


@pytest.mark.mlflow
@pytest.mark.parametrize("arch", ["edsr_mini", "imdn_clb"])
def test_cli_export_pt2_matches_eager_at_another_size(store, tmp_path, capsys, arch):
    tracker, _, runs, _, _ = store
    rid, trained = runs[arch]
    target = rid if arch == "edsr_mini" else f"runs:/{rid}/checkpoint"
    out = tmp_path / "x.pt2"
    rc = main(["export", target, "--format", "pt2", "-o", str(out), "--tracking-uri", tracker.uri, "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and out.is_file() and res["path"] == str(out)
    assert res["max_abs_diff"] <= 1e-4 and res["reloaded_max_abs_diff"] <= 1e-4
    assert res["dynamic"] is True and res["dynamic_check"]["max_abs_diff"] <= 1e-4
    assert res["source"]["run_id"] == rid and res["params"] == count_params(fold(trained))
    ep = torch.export.load(out)
    x = torch.rand(1, 3, 37, 51)  # neither the export size (48x64) nor the check size
    with torch.no_grad():
        got, want = ep.module()(x), trained(x)  # vs the training-time (unfolded) model
    d = _diff(got, want)
    print(f"{arch}: export check {res['max_abs_diff']:.2e}, reloaded {res['reloaded_max_abs_diff']:.2e}, 37x51 {d:.2e}")
    assert got.shape == (1, 3, 74, 102) and d <= 1e-4
    assert not list(tmp_path.glob(".x.pt2.*"))  # the temporary file was moved into place


@pytest.mark.mlflow
def test_cli_export_prints_the_check(store, tmp_path, capsys):
    tracker, _, runs, _, _ = store
    out = tmp_path / "m.pt2"
    rc = main(["export", runs["edsr_mini"][0], "-o", str(out), "--tracking-uri", tracker.uri])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "max |exported - eager| = " in text and "dynamic batch and H/W" in text and "logged to run" in text


def test_export_model_refuses_a_mismatch_and_writes_nothing(tmp_path):
    class Drifts(torch.nn.Module):
        """Eager differs from its traced program: a Python-side counter changes the output every call."""

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return x * float(self.calls)

    out = tmp_path / "bad.pt2"
    with pytest.raises(UserError, match="differs from the eager model") as err:
        export_model(Drifts(), out, fmt="pt2")
    assert "\n" not in str(err.value) and not out.exists()


@pytest.mark.mlflow
def test_export_errors_are_one_line_exit_2(store, tmp_path, capsys):
    tracker, _, runs, bare, tmp = store
    rid = runs["edsr_mini"][0]
    cases = [
        (["export", rid, "--format", "onnx", "-o", str(tmp_path / "x.onnx"), "--tracking-uri", tracker.uri], "onnx"),
        (
            ["export", rid, "--format", "tflite", "-o", str(tmp_path / "x"), "--tracking-uri", tracker.uri],
            "pt2 or onnx",
        ),
        (["export", "0" * 32, "-o", str(tmp_path / "x.pt2"), "--tracking-uri", tracker.uri], "no MLflow run"),
        (
            ["export", bare, "-o", str(tmp_path / "x.pt2"), "--tracking-uri", tracker.uri],
            "no artifact checkpoint/weights.pth",
        ),
        (["export", "models:/nope/1", "-o", str(tmp_path / "x.pt2"), "--tracking-uri", tracker.uri], "not registered"),
        (["export", rid, "-o", str(tmp_path / "x.pt2"), "--tracking-uri", f"sqlite:///{tmp}/absent.db"], "no MLflow"),
    ]
    try:
        import onnx  # noqa: F401

        cases = cases[1:]  # with onnx installed the first case would export
    except ImportError:
        pass
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("srcompress: error: ") and len(err.splitlines()) == 1, err
        assert needle in err, err
        print(err)
    assert not list(tmp_path.iterdir())  # nothing written by any failed export
    assert not (tmp / "absent.db").exists()  # a missing store is not created empty


@pytest.mark.mlflow
@pytest.mark.slow
def test_register_pareto_model_and_load_it_back(store, monkeypatch):
    from orchestrator.results.model_registry import register_pareto_models, using_tracking_uri

    tracker, parent, runs, _, _ = store
    rid, trained = runs["imdn_clb"]
    before = tracker.client.get_run(rid).info
    regs = register_pareto_models(tracker, "exp", parent, objectives="psnr_y:max,macs_720p:min", max_models=1)
    assert [r["run_id"] for r in regs] == [rid]  # best first by PSNR, one model only
    uri = regs[0]["model_uri"]
    assert uri == "models:/exp_pareto/1"
    after = tracker.client.get_run(rid)
    assert after.data.tags["srcompress.model_uri"] == uri  # every srcompress run tag has the prefix
    assert (after.info.status, after.info.end_time) == (before.status, before.end_time)  # not made to look re-run
    mv = tracker.client.get_model_version("exp_pareto", "1")
    assert mv.run_id == rid
    assert mv.tags["arch"] == "imdn_clb" and mv.tags["C"] == "16" and mv.tags["B"] == "1"
    assert int(mv.tags["params"]) == count_params(fold(trained)) and float(mv.tags["psnr_y"]) == 31.0

    model, meta = load_model_uri(uri, tracking_uri=tracker.uri)
    x = torch.rand(1, 3, 23, 17)
    with torch.no_grad():
        want = trained(x)
        d = _diff(model(x), want)
    assert meta["run_id"] == rid and d <= 1e-5

    # The copy MLflow stored (pt2, dynamic batch/H/W) loads without allowing pickles, at any batch and size.
    import mlflow.pytorch

    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    with using_tracking_uri(tracker.uri):
        logged = mlflow.pytorch.load_model(uri)
    with torch.no_grad():
        d2 = _diff(logged(x), want)
        x2 = torch.rand(2, 3, 24, 32)
        d2 = max(d2, _diff(logged(x2), trained(x2)))
    print(f"registered {uri}: weights-only load diff {d:.2e}, MLflow pt2 copy diff {d2:.2e}")
    assert d2 <= 1e-5
