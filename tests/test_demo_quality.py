"""Select on validation, report on test, and say when a model is below bicubic (real Ray, MLflow and Optuna).

One tiny job (a random teacher, 20 training steps: every student is far below bicubic) with a test set and a
searched Laplacian level weighting runs once per module; the tests read its MLflow store through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FAST_RAY_ENV, REPO


def _write_test_set(folder: Path) -> Path:
    """Two small HR images: crops of the scikit-image eval images (disjoint from the built-in training split; they
    overlap the built-in validation images, which is fine for checking where the figures go)."""
    from PIL import Image

    from sr.data import sample_hr_images

    folder.mkdir(parents=True)
    for i, img in enumerate(sample_hr_images(split="eval")):
        Image.fromarray(np.ascontiguousarray(img[:64, :96])).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Run the tiny job once: ``(spec path, summary)``."""
    import ray

    from orchestrator.job import run_job
    from orchestrator.search import TRIAL_RESOURCE
    from tests.conftest import write_tiny_job

    tmp = tmp_path_factory.mktemp("demoq")
    test_set = _write_test_set(tmp / "bench" / "MiniSet")
    spec = write_tiny_job(
        tmp,
        **{
            "data.test": [str(test_set)],
            "student.kd_space.lap_weighting": {"choices": ["flat", "authors"]},
            "search.num_samples": 3,
        },
    )
    for k, v in FAST_RAY_ENV.items():
        os.environ.setdefault(k, v)
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, resources={TRIAL_RESOURCE: 100})
    return spec, run_job(spec)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_trials_report_test_figures_and_the_gain_over_bicubic(job):
    _, summary = job
    df = summary["trials"]
    done = df[df["status"] == "completed"]
    assert len(done) >= 2
    # the test set's figures on every completed trial (first set and per set), beside the validation objective
    assert done["test_psnr_y"].notna().all() and done["test_psnr_y_MiniSet"].notna().all()
    assert (done["test_psnr_y"] == done["test_psnr_y_MiniSet"]).all()
    assert (done["test_psnr_y"] != done["psnr_y"]).all()  # another image set than validation
    # 20 steps from a random teacher: every model is below bicubic, and says so
    assert done["vs_bicubic_db"].notna().all() and (done["vs_bicubic_db"] < 0).all()
    assert done["below_bicubic"].all()
    # the searched level weighting reached every trial (logged as its param)
    assert set(done["lap_weighting"]) <= {"flat", "authors"} and done["lap_weighting"].notna().all()
    print(done[["run_name", "lap_weighting", "psnr_y", "test_psnr_y", "vs_bicubic_db"]].to_string())


def test_bicubic_reference_is_scored_on_the_test_set_and_matches_the_trials(job):
    from orchestrator.results.pareto import query_references

    spec, summary = job
    uri = f"sqlite:///{spec.parent / 'runs' / 'mlflow.db'}"
    refs = query_references(uri, "tiny").set_index("kind")
    assert np.isfinite(refs.loc["bicubic", "test_psnr_y"]) and np.isfinite(refs.loc["teacher", "test_psnr_y"])
    assert refs.loc["bicubic", "params"] == 0
    done = summary["trials"][summary["trials"]["status"] == "completed"]
    gain = done["test_psnr_y"] - refs.loc["bicubic", "test_psnr_y"]
    assert np.allclose(gain, done["vs_bicubic_db"], atol=1e-6)  # the worker's figure = the reference run's


def test_pareto_json_and_table_mark_models_below_bicubic(job, tmp_path):
    spec, _ = job
    res = _cli("pareto", "--job", str(spec), "--json")
    assert res.returncode == 0, res.stderr
    models = json.loads(res.stdout)["models"]
    assert models and all(m["below_bicubic"] is True and m["vs_bicubic_db"] < 0 for m in models)
    assert all(m["test_psnr_y"] is not None for m in models)
    text = _cli("pareto", "--job", str(spec))
    assert text.returncode == 0 and "below bicubic" in text.stdout
    out = tmp_path / "trials.csv"
    res = _cli("table", "--job", str(spec), "-o", str(out))
    assert res.returncode == 0, res.stderr
    import pandas as pd

    table = pd.read_csv(out)
    done = table[table["status"] == "completed"]
    assert done["below_bicubic"].astype(bool).all() and (done["vs_bicubic_db"] < 0).all()


def test_run_summary_marks_front_models_below_bicubic(job, capsys):
    from orchestrator.cli.core import print_summary

    print_summary(job[1])
    out = capsys.readouterr().out
    assert "vs bicubic dB" in out and "below bicubic" in out and "test PSNR_Y" in out
    assert "warning:" in out and "score below bicubic upsampling" in out


def test_fixed_lap_weighting_reaches_the_trial_task(tiny_job):
    """A fixed kd_space.lap_weighting (and the spec default, normalized) reaches the trial's KDConfig."""
    from orchestrator.tasks import ModelRef, trial_task, trial_template
    from search_spaces import job_space, load_job_spec

    for fixed, want in ((None, "normalized"), ("flat", "flat")):
        over = {} if fixed is None else {"student.kd_space.lap_weighting": fixed}
        spec = load_job_spec(tiny_job(**over))
        space = job_space(spec)
        assert space["lap_weighting"] == want
        template = trial_template(spec, teacher=ModelRef("edsr_mini"), cache_dir=None, use_gpu=False)
        sampled = {k: space[k] for k in ("w_gt", "lap_weighting")}
        task = trial_task(template, name="t", student=ModelRef("edsr_mini"), sampled=sampled)
        assert task.kd.lap_weighting == want


def test_demo_without_shared_says_what_its_fallback_reaches(monkeypatch):
    """No ../shared: the demo trains a fallback teacher on the built-in images and says plainly what it scores."""
    import search_spaces
    from orchestrator._job_tracking import fallback_note
    from search_spaces import check_paths, load_job_spec

    monkeypatch.setenv("SRCOMPRESS_SHARED", "/nonexistent")
    spec = check_paths(load_job_spec(search_spaces.path("demo")))
    assert spec.data.train is None and spec.data.val is None and spec.data.test is None and spec.data.val_first is None
    note = fallback_note(spec, {"teacher": 32.09, "bicubic": 32.92})
    assert note is not None
    assert "fallback teacher (200 steps of imdn on the scikit-image sample images) scores 32.09 dB" in note
    assert "below bicubic" in note and "SRCOMPRESS_SHARED" in note
    assert "below bicubic" not in (fallback_note(spec, {"teacher": 34.0, "bicubic": 32.9}) or "")


def test_demo_validation_is_held_out_of_training_and_test_is_set5(shared_dir):
    """The demo's split is explicit and deterministic: validation = the first 10 BSDS200 images by name, which no
    training source holds; Set5 is the test set only."""
    import search_spaces
    from orchestrator.tasks import data_ref
    from search_spaces import check_paths, load_job_spec
    from sr.data import eval_image_files, list_images

    spec = check_paths(load_job_spec(search_spaces.path("demo")))
    ref = data_ref(spec)
    bsds = shared_dir / "data" / "BSDS200"
    held = eval_image_files(bsds, 10)
    assert [p.name for p in held] == [p.name for p in list_images(bsds / "HR")[:10]]
    train = {Path(t).resolve() for t in ref.train or ()}
    assert not set(held) & train
    assert len([t for t in train if t.parent == (bsds / "HR").resolve()]) == len(list_images(bsds / "HR")) - 10
    assert (ref.val, ref.val_first) == (str(bsds), 10) and [Path(t).name for t in ref.test] == ["Set5"]
