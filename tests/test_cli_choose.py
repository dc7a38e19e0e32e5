"""``srcompress pareto | report | table`` on a real MLflow sqlite store holding the synthetic search of
tests/test_pareto.py, and their one-line errors (exit code 2)."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import json
import socket
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from test_pareto import FRONT_60K, FRONT_ALL, TRIALS, log_synthetic_search

from orchestrator.cli import main
from orchestrator.results.table import TRIALS_SCHEMA
from orchestrator.ui import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow_choose")
    tracker, parent, ids = log_synthetic_search(tmp)
    tracker.client.delete_tag(ids["t00"], "model_uri")  # a front member that was never registered
    return tracker, parent, ids, tmp


def _names(models: list[dict]) -> set[str]:
    return {m["run_name"].rsplit("_", 1)[1] for m in models}


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.mlflow
def test_pareto_json_front_budgets_and_uris(search, capsys):
    tracker, parent, ids, _ = search
    base = ["pareto", "--experiment", "job", "--tracking-uri", tracker.uri, "--json"]
    out = _json(capsys, base)
    assert _names(out["models"]) == FRONT_ALL and out["n_trials"] == len(TRIALS)
    assert out["objectives"] == [["psnr_y", "max"], ["macs_720p", "min"]]
    psnr = [m["psnr_y"] for m in out["models"]]
    assert psnr == sorted(psnr, reverse=True)  # best first
    by_name = {m["run_name"].rsplit("_", 1)[1]: m for m in out["models"]}
    assert by_name["t03"]["model_uri"] == f"runs:/{ids['t03']}/model"  # the registered/tagged URI
    assert by_name["t00"]["model_uri"] == f"runs:/{ids['t00']}/checkpoint"  # no tag: the trial's checkpoint
    assert by_name["t03"]["params"] == 61_000 and by_name["t03"]["C"] == 16 and by_name["t03"]["arch"] == "edsr"

    out = _json(capsys, [*base, "--max-params", "60k"])
    assert _names(out["models"]) == FRONT_60K and out["budgets"]["max_params"] == 60_000
    assert all(m["params"] <= 60_000 for m in out["models"])
    out = _json(capsys, [*base, "--max-latency-ms", "10", "--device", "cpu"])
    assert _names(out["models"]) == {"t06", "t00", "t02", "t03"}  # t01 ran on cuda; t05 takes 16 ms
    out = _json(capsys, [*base, "--max-macs", "4G", "--parent-run-id", parent])
    assert _names(out["models"]) == {"t06", "t00", "t01", "t03"}
    out = _json(capsys, [*base, "--parent-run-id", "0" * 32])
    assert out["models"] == [] and out["n_trials"] == 0
    out = _json(capsys, [*base, "--objectives", "psnr_y:max,params:min"])
    assert _names(out["models"]) == {"t06", "t07", "t00", "t01", "t04", "t11", "t03"}  # t05 stopped early


@pytest.mark.mlflow
def test_pareto_table_and_job_spec(search, capsys, tmp_path):
    tracker, _, ids, tmp = search
    assert main(["pareto", "--experiment", "job", "--tracking-uri", tracker.uri, "--table"]) == 0
    text = capsys.readouterr().out
    assert "Pareto front of job" in text and ids["t03"] in text and "edsr_C16L1B4_x2_t03" in text
    assert "edsr_C12L1B3_x2_t02" not in text  # dominated
    # --job reads the spec's store (sqlite under storage.path) and its experiment name.
    spec = yaml.safe_load((REPO / "search_spaces" / "demo.yaml").read_text())
    spec["name"], spec["storage"] = "job", {"path": str(tmp)}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    out = _json(capsys, ["pareto", "--job", str(job), "--json"])
    assert _names(out["models"]) == FRONT_ALL and out["tracking_uri"] == f"sqlite:///{tmp}/mlflow.db"


@pytest.mark.mlflow
def test_report_and_table_write_files(search, capsys, tmp_path):
    tracker, parent, _, _ = search
    html = tmp_path / "r" / "report.html"
    argv = ["report", "--experiment", "job", "--tracking-uri", tracker.uri, "-o", str(html)]
    assert main([*argv, "--max-params", "60k"]) == 0
    assert str(html) in capsys.readouterr().out
    text = html.read_text()
    assert text.startswith("<!DOCTYPE html>") or "<html" in text[:500]
    assert "edsr_C16L1B3_x2_t04" in text  # on the 60k front
    assert not tracker.client.list_artifacts(parent)  # --log is off by default: the parent run is left alone
    assert [p.name for p in html.parent.iterdir()] == ["report.html"]  # one file: no figures or Parquet beside it

    pq_path = tmp_path / "t" / "trials.parquet"
    assert main(["table", "--experiment", "job", "--tracking-uri", tracker.uri, "-o", str(pq_path)]) == 0
    assert f"{len(TRIALS)} trials" in capsys.readouterr().out
    table = pq.read_table(pq_path)
    assert table.num_rows == len(TRIALS) and table.schema.equals(TRIALS_SCHEMA)
    csv = tmp_path / "trials.csv"
    assert main(["table", "--experiment", "job", "--tracking-uri", tracker.uri, "-o", str(csv)]) == 0
    df = pd.read_csv(csv)
    assert len(df) == len(TRIALS) and {"run_id", "psnr_y", "status"} <= set(df.columns)


@pytest.mark.mlflow
def test_errors_are_one_line_exit_2(search, capsys, tmp_path):
    tracker, *_ = search
    uri = tracker.uri
    dead = f"http://127.0.0.1:{free_port()}"
    cases = [
        (["pareto", "--experiment", "nope", "--tracking-uri", uri], "no MLflow experiment named 'nope'"),
        (["pareto", "--experiment", "job", "--tracking-uri", f"sqlite:///{tmp_path}/x.db"], "no MLflow store"),
        (["pareto", "--experiment", "job", "--tracking-uri", dead], "unreachable"),
        (["pareto", "--tracking-uri", uri], "no experiment given"),
        (["pareto", "--experiment", "job", "--tracking-uri", uri, "--objectives", "psnr_y"], "NAME:max|min"),
        (["pareto", "--experiment", "job", "--tracking-uri", uri, "--objectives", "flops:min"], "not a logged metric"),
        (["pareto", "--experiment", "job", "--tracking-uri", uri, "--max-params", "lots"], "size 'lots'"),
        (["pareto", "--experiment", "job", "--tracking-uri", uri, "--json", "--table"], "exclude each other"),
        (["table", "--experiment", "job", "--tracking-uri", uri, "-o", str(tmp_path / "t.txt")], ".parquet or .csv"),
        (["report", "--experiment", "nope", "--tracking-uri", uri, "-o", str(tmp_path / "r.html")], "nope"),
        (["pareto", "--experiment", "job", "--job", str(tmp_path / "absent.yaml")], "absent.yaml"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("srcompress: error: ") and len(err.splitlines()) == 1, err
        assert needle in err, err
    assert not (tmp_path / "x.db").exists() and not list(tmp_path.iterdir())


@pytest.mark.mlflow
def test_ui_and_default_store_errors(search, capsys, tmp_path, monkeypatch):
    _, _, _, store = search
    monkeypatch.chdir(tmp_path)  # no ./srcompress_runs here
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        cases = [
            (["pareto", "--experiment", "job"], f"no MLflow store at {tmp_path}/srcompress_runs/mlflow.db"),
            (["ui"], "srcompress_runs/mlflow.db"),
            (["ui", "--storage", str(tmp_path / "nothing")], "no MLflow store"),
            (["ui", "--storage", str(store), "--job", "x.yaml"], "exclude each other"),
            (["ui", "--storage", str(store), "--port", port], f"port {port} on 127.0.0.1 is already in use"),
        ]
        for argv, needle in cases:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip()
            assert err.startswith("srcompress: error: ") and len(err.splitlines()) == 1, err
            assert needle in err, err
    assert not list(tmp_path.iterdir())
