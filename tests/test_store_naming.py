"""One way to name the MLflow store (issue 13, item 5): a folder, a ``.db`` file or a URI, the same in every command
(``--store``; the old ``--tracking-uri`` / ``--storage`` spellings still work) and in a spec's ``tracking.uri``; a
spec's ``storage.path`` resolves against the spec's folder like every other spec path."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import json
from pathlib import Path

import pytest
import yaml
from test_pareto import FRONT_ALL, log_synthetic_search

from orchestrator.cli import main
from search_spaces import StoreError, load_job_spec, parse_job_spec, store_uri

REPO = Path(__file__).resolve().parents[1]


def test_store_uri_accepts_a_folder_a_db_file_and_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    assert store_uri(folder) == f"sqlite:///{folder}/mlflow.db"
    assert store_uri(tmp_path / "not_yet") == f"sqlite:///{tmp_path}/not_yet/mlflow.db"  # a new folder
    assert store_uri(f"file://{folder}") == f"sqlite:///{folder}/mlflow.db"
    assert store_uri(tmp_path / "x.db") == f"sqlite:///{tmp_path}/x.db"
    assert store_uri("runs/store.sqlite", base=tmp_path) == f"sqlite:///{tmp_path}/runs/store.sqlite"
    monkeypatch.chdir(tmp_path)
    assert store_uri("runs") == f"sqlite:///{folder}/mlflow.db"  # relative: the current directory
    for uri in ("sqlite:////abs/m.db", "http://127.0.0.1:5000", "https://mlflow.example", "postgresql+psycopg2://h/db"):
        assert store_uri(uri) == uri
    monkeypatch.setenv("SR_STORE_TEST", str(folder))
    assert store_uri("${SR_STORE_TEST}") == f"sqlite:///{folder}/mlflow.db"


def test_store_uri_refuses_a_non_db_file_and_unknown_schemes(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(StoreError, match=r"--store .*notes.txt is a file but not a \.db sqlite file; pass a folder"):
        store_uri(notes, what="--store")
    with pytest.raises(StoreError, match=r"MLflow has no tracking store for ftp://"):
        store_uri("ftp://host/x")
    with pytest.raises(StoreError, match="is empty"):
        store_uri("  ")


def test_spec_paths_resolve_against_the_spec_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """storage.path and a tracking.uri folder or .db resolve against the spec's folder, from any directory."""
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    data = yaml.safe_load((REPO / "search_spaces" / "demo.yaml").read_text())
    data["storage"] = {"path": "out"}
    (spec_dir / "a.yaml").write_text(yaml.safe_dump({**data, "tracking": {"uri": "track"}}))
    (spec_dir / "b.yaml").write_text(yaml.safe_dump({**data, "tracking": {"uri": "../m.db"}}))
    monkeypatch.chdir(tmp_path)  # another directory than the spec's
    a, b = load_job_spec("specs/a.yaml"), load_job_spec(spec_dir / "b.yaml")
    assert a.storage.path == str(spec_dir / "out") == b.storage.path
    assert a.tracking_uri == f"sqlite:///{spec_dir}/track/mlflow.db"
    assert b.tracking_uri == f"sqlite:///{tmp_path}/m.db"
    # The shipped specs keep writing to the repository's srcompress_runs/ (make demo runs from the repository).
    assert load_job_spec(REPO / "search_spaces" / "demo.yaml").storage.path == str(REPO / "srcompress_runs")
    bad = yaml.safe_dump({**data, "tracking": {"uri": "gopher://x"}})
    with pytest.raises(Exception, match=r"tracking.uri.*no tracking store for gopher://"):
        parse_job_spec(bad, source="bad.yaml", base_dir=spec_dir)


@pytest.mark.mlflow
def test_every_command_takes_the_store_in_each_form(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """pareto reads the same store named as a folder, a .db path, a sqlite URI and by the old option names; a
    bad --store is one line, exit 2."""
    log_synthetic_search(tmp_path)  # tmp_path/mlflow.db
    db = tmp_path / "mlflow.db"
    forms = [
        ["--store", str(tmp_path)],
        ["--store", str(db)],
        ["--store", f"sqlite:///{db}"],
        ["--tracking-uri", str(tmp_path)],  # the old spelling, which failed with "maintenance mode" (exit 1)
        ["--storage", str(db)],
    ]
    for form in forms:
        assert main(["pareto", "--experiment", "job", *form, "--json"]) == 0, capsys.readouterr().err
        models = json.loads(capsys.readouterr().out)["models"]
        assert {m["run_name"].rsplit("_", 1)[1] for m in models} == FRONT_ALL, form
    (tmp_path / "notes.txt").write_text("x")
    cases = [
        (["pareto", "--experiment", "job", "--store", str(tmp_path / "notes.txt")], "is a file but not a .db"),
        (["report", "--experiment", "job", "--store", "ftp://h/x", "-o", str(tmp_path / "r.html")], "ftp://"),
        (["ui", "--store", str(tmp_path / "none")], f"no MLflow store at {tmp_path}/none/mlflow.db"),
        (["run", str(REPO / "search_spaces" / "demo.yaml"), "--store", str(tmp_path / "notes.txt")], "not a .db"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("srcompress: error: ") and len(err.splitlines()) == 1 and needle in err, err
