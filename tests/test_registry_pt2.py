"""Registered Pareto models: MLflow's pt2 format (no pickle), dynamic batch/height/width, loadable where srcompress
cannot be imported, aliases over the front, and no new version when the same runs are registered again.

A real MLflow sqlite store in a tmp dir; the trial runs hold what ``orchestrator.workers.log_final_artifacts``
writes (``checkpoint/weights.pth`` from ``sr.stages.save_weights``, with its architecture record, and
``config.json``), and a validation PSNR_Y measured on small images, as a trial logs it.
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import json
import logging
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import mlflow.artifacts
import numpy as np
import pytest
import torch

from orchestrator.results.export import load_model_uri
from orchestrator.results.model_registry import register_pareto_models, using_tracking_uri
from orchestrator.tracking import KIND_TAG, STATUS_TAG, Tracker
from sr.complexity import count_params
from sr.data import EvalPair
from sr.degrade import bicubic_downsample
from sr.evaluate import evaluate_model
from sr.metrics import psnr_y
from sr.models import build
from sr.reparam import fold
from sr.stages import save_weights

pytestmark = pytest.mark.mlflow

# Two students of different size; which one is best or smallest is read from the logged metrics, not assumed.
STUDENTS = [
    ("edsr_mini", {"C": 8, "B": 1, "scale": 2}),
    ("imdn_clb", {"C": 16, "B": 1, "distilled": 4, "scale": 2}),
]


def _pairs() -> list[EvalPair]:
    """Two small smooth-plus-noise images and their bicubic LR: enough for a PSNR to compare."""
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate(((40, 56), (34, 30))):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(xx / (5 + c)) + np.cos(yy / (7 + c)) for c in range(3)], -1)
        hr = np.clip(127 + 50 * base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        out.append(EvalPair(f"img{i}", bicubic_downsample(hr, 2), hr))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow_registry")
    tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", deadline_s=10)
    exp = tracker.experiment_id("exp", artifact_location=str(tmp / "artifacts"))
    parent = tracker.start_run(exp, "search_x2", tags={KIND_TAG: "search"})
    torch.manual_seed(0)
    pairs = _pairs()
    runs = {}
    for arch, knobs in STUDENTS:
        model = build(arch, **knobs).eval()
        with torch.no_grad():  # a little off identity, so the two students score differently
            for p in model.parameters():
                p.mul_(0.5)
        res = evaluate_model(model, pairs, scale=2)
        rid = tracker.start_run(exp, arch, parent_run_id=parent, tags={KIND_TAG: "trial", STATUS_TAG: "completed"})
        tracker.log_params(rid, {"arch": arch, **knobs})
        params = count_params(fold(model))
        tracker.log_metrics(rid, {"psnr_y": res.psnr_y, "params": params, "macs_720p": params * 921600.0})
        with tempfile.TemporaryDirectory() as d:
            save_weights(Path(d) / "weights.pth", model)
            (Path(d) / "config.json").write_text(json.dumps({"student": {"arch": arch, "knobs": knobs}}))
            tracker.log_artifact(rid, Path(d) / "weights.pth", "checkpoint")
            tracker.log_artifact(rid, Path(d) / "config.json")
        tracker.end_run(rid)
        runs[arch] = (rid, res.psnr_y, params)
    return tracker, parent, runs, pairs, tmp


@pytest.fixture(scope="module")
def registered(store):
    tracker, parent, runs, _, _ = store
    small = min(p for _, _, p in runs.values())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logs = _LogCatcher()
        logging.getLogger("mlflow").addHandler(logs)
        try:
            regs = register_pareto_models(
                tracker, "exp", parent, objectives="psnr_y:max,params:min", alias_budgets={"params": small}
            )
        finally:
            logging.getLogger("mlflow").removeHandler(logs)
    said = [str(w.message) for w in caught] + logs.lines
    return regs, said


class _LogCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_registered_as_pt2_without_pickle_or_srcompress_requirement(store, registered):
    tracker, _, runs, _, tmp = store
    regs, said = registered
    on_front = {r["run_id"] for r in regs if r.get("model_uri")}
    assert on_front <= {rid for rid, _, _ in runs.values()} and on_front
    assert not [s for s in said if "pickle" in s.lower()], said  # MLflow warns about pickles: none here
    for r in regs:
        mv = tracker.client.get_model_version("exp_pareto", r["model_uri"].rsplit("/", 1)[1])
        with using_tracking_uri(tracker.uri):  # models:/ resolves through the fluent registry URI
            folder = Path(mlflow.artifacts.download_artifacts(r["model_uri"], dst_path=str(tmp / f"dl{mv.version}")))
        reqs = (folder / "requirements.txt").read_text().split()
        print(f"{r['model_uri']}: requirements {reqs}")
        files = sorted(p.name for p in (folder / "data").iterdir())
        assert files == ["model.pt2"], files  # a torch.export program, no pickled model.pth
        assert not [q for q in reqs if q.startswith(("srcompress", "cloudpickle"))], reqs
        assert f"torch=={torch.__version__.split('+')[0]}" in reqs


def test_aliases_name_the_best_and_the_smallest(store, registered):
    tracker, _, runs, _, _ = store
    regs, _ = registered
    uri_of = {r["run_id"]: r["model_uri"] for r in regs if r.get("model_uri")}
    members = [v for v in runs.values() if v[0] in uri_of]
    best = max(members, key=lambda v: v[1])[0]
    smallest = min(members, key=lambda v: v[2])
    client = tracker.client
    assert client.get_model_version_by_alias("exp_pareto", "best-psnr").run_id == best
    assert client.get_model_version_by_alias("exp_pareto", "smallest").run_id == smallest[0]
    label = f"best-psnr-params-{smallest[2] / 1e3:g}k".replace(".", "p")
    assert client.get_model_version_by_alias("exp_pareto", label).run_id == smallest[0]  # the one within the budget
    assert {a for r in regs for a in r.get("aliases", [])} >= {"best-psnr", "smallest", label}


def test_front_aliases_pick_per_objective_and_budget():
    import pandas as pd

    from orchestrator.results.model_registry import front_aliases

    front = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "psnr_y": [33.0, 32.0, 31.0],
            "params": [300_000, 90_000, 20_000],
            "latency_ms": [9.0, 4.0, 5.0],
        }
    )
    uris = {"a": "models:/m/1", "b": "models:/m/2", "c": "models:/m/3"}
    got = front_aliases(front, uris, {"params": 100_000, "latency_ms": 4.5})
    assert got == {
        "best-psnr": "models:/m/1",
        "smallest": "models:/m/3",
        "fastest": "models:/m/2",
        "best-psnr-params-100k": "models:/m/2",
        "best-psnr-latency-4p5ms": "models:/m/2",
    }
    assert front_aliases(front, {"c": "models:/m/3"}, {"params": 10_000}) == {
        "best-psnr": "models:/m/3",
        "smallest": "models:/m/3",
        "fastest": "models:/m/3",
    }  # only registered members are aliased; a budget nothing meets gets no alias


def test_registering_the_same_runs_again_adds_no_version(store, registered):
    tracker, parent, _, _, _ = store
    regs, _ = registered
    before = sorted(int(v.version) for v in tracker.client.search_model_versions("name = 'exp_pareto'"))
    again = register_pareto_models(tracker, "exp", parent, objectives="psnr_y:max,params:min")
    after = sorted(int(v.version) for v in tracker.client.search_model_versions("name = 'exp_pareto'"))
    assert after == before and len(before) == len([r for r in regs if r.get("model_uri")])
    assert all(r.get("already_registered") for r in again)
    assert [r["model_uri"] for r in again] == [r["model_uri"] for r in regs if r.get("model_uri")]


# Run with `python -I` (no PYTHONPATH, no script folder or cwd on sys.path) and a meta-path blocker on top: the
# registered model must load and run with mlflow + torch alone.
_CLEAN = r"""
import sys, json, numpy as np
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('sr', 'orchestrator', 'search_spaces'):
            raise ImportError(f'{name} is blocked: srcompress must not be needed')
sys.meta_path.insert(0, Block())
for mod in ('sr', 'orchestrator'):
    try:
        __import__(mod)
        raise SystemExit(f'{mod} imported')
    except ImportError:
        pass
import mlflow, mlflow.pytorch, torch
uri, store, out = sys.argv[1:4]
mlflow.set_tracking_uri(store)
model = mlflow.pytorch.load_model(uri)
res = {}
for n, h, w in ((1, 24, 32), (2, 40, 56), (1, 17, 9)):
    x = torch.from_numpy(np.load(f'{out}/x_{n}_{h}_{w}.npy'))
    with torch.no_grad():
        res[f'{n}_{h}_{w}'] = model(x).numpy()
for name in json.loads(sys.argv[4]):
    lr = np.load(f'{out}/lr_{name}.npy')
    x = torch.from_numpy(lr.astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = model(x)[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    np.save(f'{out}/sr_{name}.npy', y)
np.savez(f'{out}/shapes.npz', **res)
print('loaded', uri, 'modules:', sorted(m for m in sys.modules if m.split('.')[0] in ('sr', 'orchestrator')))
"""


def test_registered_model_runs_where_srcompress_cannot_be_imported(store, registered, tmp_path):
    tracker, _, runs, pairs, _ = store
    regs, _ = registered
    uri = "models:/exp_pareto@best-psnr"
    model, meta = load_model_uri(uri, tracking_uri=tracker.uri)  # srcompress's own weights-only load
    inputs = {}
    for n, h, w in ((1, 24, 32), (2, 40, 56), (1, 17, 9)):
        inputs[f"{n}_{h}_{w}"] = torch.rand(n, 3, h, w)
        np.save(tmp_path / f"x_{n}_{h}_{w}.npy", inputs[f"{n}_{h}_{w}"].numpy())
    for p in pairs:
        np.save(tmp_path / f"lr_{p.name}.npy", p.lr)
    names = json.dumps([p.name for p in pairs])
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _CLEAN, uri, tracker.uri, str(tmp_path), names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "modules: []" in proc.stdout, proc.stdout
    got = np.load(tmp_path / "shapes.npz")
    for key, x in inputs.items():
        with torch.no_grad():
            want = model(x).numpy()
        assert got[key].shape == want.shape and float(np.abs(got[key] - want).max()) <= 1e-5, key
    # its PSNR on the trial's images equals the PSNR the trial logged
    scores = [psnr_y(np.load(tmp_path / f"sr_{p.name}.npy"), p.hr, crop=2) for p in pairs]
    logged = next(v[1] for v in runs.values() if v[0] == meta["run_id"])
    print(f"{uri}: PSNR_Y without srcompress {np.mean(scores):.4f} dB, trial logged {logged:.4f} dB")
    # the registered copy is the folded model, the trial scored the training-time one: equal up to rounding
    assert abs(float(np.mean(scores)) - logged) < 1e-3
