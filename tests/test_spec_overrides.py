"""Spec overrides (``--override FILE``, ``--set dotted.key=VALUE``): applied before validation, errors blame them."""

from __future__ import annotations

import pytest

from orchestrator.cli import main
from search_spaces import Overrides, SpecError, load_job_spec, path
from sr.errors import UserError

SMOKE = str(path("edsr_cdism").parent / "overrides" / "cpu_smoke.yaml")


def test_overlay_then_sets_in_order(tmp_path) -> None:
    spec = load_job_spec(
        path("edsr_cdism"),
        Overrides(files=(SMOKE,), sets=("training.steps=8", "search.num_samples=3", f"storage.path={tmp_path}")),
    )
    assert spec.training.steps == 8 and spec.search.num_samples == 3  # --set wins over the overlay
    assert spec.prune.steps == 20 and spec.prune.milestones == []  # the overlay replaced the spec's values
    assert spec.resources.use_gpu is False and spec.resources.gpus_per_worker is None
    assert spec.prune.lr == 5.0e-3 and spec.student.arch == "edsr_mini"  # untouched keys keep the spec's
    assert spec.storage.path == str(tmp_path)
    assert Overrides(files=("a.yaml",), sets=("x=1",)).cli_args() == ["--override", "a.yaml", "--set", "x=1"]


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("training.stepz=3", "--set training.stepz=3: training.stepz: unknown key, did you mean 'steps'"),
        ("objectives[0].metric=foo", "--set objectives[0].metric=foo: objectives[0].metric:"),
        ("data.train[5]=x", "no list item [5]"),
        ("training=3", "--set training=3: training: expected a mapping"),
        ("nokey", "is not KEY=VALUE"),
    ],
)
def test_wrong_set_is_one_line_naming_it(item, needle) -> None:
    with pytest.raises(SpecError) as exc:
        load_job_spec(path("edsr_cdism"), Overrides(sets=(item,)))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_wrong_overlay_key_names_the_overlay(tmp_path) -> None:
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("prune:\n  stepz: 3\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: prune\.stepz: unknown key"):
        load_job_spec(path("edsr_cdism"), Overrides(files=(str(overlay),)))
    with pytest.raises(SpecError, match="cannot read the overlay"):
        load_job_spec(path("edsr_cdism"), Overrides(files=(str(tmp_path / "nope.yaml"),)))


def test_submit_passes_overrides_to_the_job(tmp_path) -> None:
    from orchestrator.submit import plan_submission  # deferred: pulls in torch for the schedule check

    sub = plan_submission(path("edsr_cdism"), overrides=Overrides(files=(SMOKE,), sets=("training.steps=8",)))
    assert sub.entrypoint == (
        "python -m orchestrator.cli run search_spaces/edsr_cdism.yaml --override "
        "search_spaces/overrides/cpu_smoke.yaml --set training.steps=8 --address auto"
    )
    outside = tmp_path / "o.yaml"
    outside.write_text("search: {num_samples: 2}\n")
    with pytest.raises(UserError, match="outside the uploaded folder"):
        plan_submission(path("edsr_cdism"), overrides=Overrides(files=(str(outside),)))


@pytest.mark.parametrize(
    ("item", "needle"),
    [("training.stepz=3", "did you mean 'steps'"), ("prune.steps=many", "prune.steps"), ("oops", "KEY=VALUE")],
)
def test_wrong_override_on_the_cli_is_one_line_exit_2(item, needle, tmp_path, capsys) -> None:
    rc = main(["plan", str(path("edsr_cdism")), "--override", SMOKE, "--set", item])
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert needle in err and "--set" in err
