"""Acceptance 6 of the search issue: malformed jobs fail before anything starts, with one line and exit code 2."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.cli import main


def _mutate(path, fn):
    spec = yaml.safe_load(path.read_text())
    fn(spec)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _empty_dir(tmp_path):
    d = tmp_path / "empty"
    d.mkdir(exist_ok=True)
    return str(d)


CASES = {
    "unknown top-level key": (lambda s, t: s.update(serach={"num_samples": 3}), "serach"),
    "unknown nested key": (lambda s, t: s["training"].update(stpes=3), "training.stpes"),
    "wrong type": (lambda s, t: s["training"].update(steps="many"), "training.steps"),
    "out of range": (lambda s, t: s["search"].update(num_samples=0), "search.num_samples"),
    "bad size string": (lambda s, t: s["budgets"].update(max_params="12 apples"), "budgets.max_params"),
    "unknown arch": (lambda s, t: s["student"].update(arch="edsr_tiny"), "edsr_tiny"),
    "unknown algorithm": (lambda s, t: s["search"].update(algorithm="grid"), "search.algorithm"),
    "infeasible budget": (lambda s, t: s["budgets"].update(max_params=100), "smallest achievable"),
    "missing teacher weights": (lambda s, t: s["teacher"].update(weights=str(t / "nope.pth")), "nope.pth"),
    "data without images": (lambda s, t: s["data"].update(train=[_empty_dir(t)]), "empty"),
    "unreachable tracking server": (
        lambda s, t: s.update(tracking={"uri": "http://127.0.0.1:9"}),
        "127.0.0.1:9",
    ),
    "patch not a multiple of 16": (lambda s, t: s["data"].update(hr_patch=40), "hr_patch"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_job_is_one_line_exit_2(case, tiny_job, tmp_path, capsys):
    mutate, needle = CASES[case]
    spec = _mutate(tiny_job(), lambda s: mutate(s, tmp_path))
    rc = main(["run", str(spec)])
    out, err = capsys.readouterr()
    print(f"{case}: {err.strip()}")
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert needle in err
    assert not (tmp_path / "runs" / "tiny" / "job_state.json").exists()  # nothing started


@pytest.mark.parametrize(
    ("address", "needle"),
    [("ray://127.0.0.1:9", "cannot reach the Ray cluster"), ("http://127.0.0.1:8265", "use 'srcompress submit'")],
)
def test_bad_address_is_one_line_exit_2(address, needle, tiny_job, capsys):
    rc = main(["run", str(tiny_job()), "--address", address])
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and needle in err


def test_missing_spec_file(tmp_path, capsys):
    rc = main(["run", str(tmp_path / "nope.yaml")])
    _, err = capsys.readouterr()
    assert rc == 2 and "nope.yaml" in err and err.count("\n") == 1


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nteacher: {arch: imdn\n")
    rc = main(["run", str(bad)])
    _, err = capsys.readouterr()
    assert rc == 2 and "bad.yaml:" in err and err.count("\n") == 1
