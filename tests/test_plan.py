"""``srcompress plan``: the dry run of a job spec, and the spec errors it shares with ``run`` and ``submit``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.plan import count_feasible
from search_spaces import job_space, load_job_spec, student_knobs
from sr.budget import Budget, is_feasible, price

SPECS = Path(__file__).resolve().parents[1] / "search_spaces"
GPU_SPECS = ("edsr_cdism", "swinir_cdism", "imdn_cdism")


def _tiny(write, **prune) -> Path:
    path = write()
    spec = yaml.safe_load(path.read_text())
    spec["prune"] = {"enabled": True, "steps": 20, "batch_size": 4, **prune}
    spec["data"]["samples_per_epoch"] = 40  # 10 batches per epoch: 20 steps are 2 epochs, Np = 2 // 10 = 0
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize("name", GPU_SPECS)
def test_gpu_spec_schedule_has_a_prox_sg_phase_on_100_images(name):
    from orchestrator._preflight import prune_schedule

    s = prune_schedule(load_job_spec(SPECS / f"{name}.yaml"))
    assert s is not None
    print(f"{name}: {s.describe()}")
    assert s.n_images == 100 and s.samples_per_epoch == 100 and s.batches_per_epoch == 100 // 16
    assert s.np_epochs == s.epochs // 10 > 0 and not s.np_given
    assert s.prox_steps == s.switch_step == s.np_epochs * s.batches_per_epoch > 0
    assert s.orthant_steps == s.steps - s.prox_steps > 0


def test_plan_json_of_the_edsr_gpu_spec(capsys):
    """Acceptance 1 (EDSR): Prox-SG steps > 0, Np = epochs/10, 100 images; missing cluster paths only warn."""
    rc = main(["plan", str(SPECS / "edsr_cdism.yaml"), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    plan = json.loads(out)
    s = plan["prune_schedule"]
    print({k: s[k] for k in ("n_images", "epochs", "np_epochs", "prox_steps")}, plan["space"]["feasible"])
    assert s["prox_steps"] > 0 and s["np_epochs"] == s["epochs"] // 10 and s["n_images"] == 100
    assert [st["stage"] for st in plan["stages"]][:2] == ["teacher", "prune"]
    assert plan["trials"] == 48 and plan["per_trial_resources"] and plan["concurrency"]["now"] >= 1
    assert plan["storage"].endswith("/edsr_cdism_x2") and plan["tracking_uri"]
    space = plan["space"]
    assert space["configurations"] == 6 * 2 * 13 and 0 < space["feasible"] < space["configurations"]
    assert space["priced"] < space["configurations"]  # a binary search along C, not every configuration
    seed = plan["paper_rule_seed"]
    assert (seed["C"], seed["L"], seed["B"]) == (16, 1, 8)  # the paper's EDSR allocation at d = 0.03
    assert any(w.startswith("teacher.weights:") for w in plan["warnings"])  # not loaded, only reported


def test_feasible_count_equals_pricing_every_configuration(tiny_job):
    spec = load_job_spec(tiny_job())
    space = {**job_space(spec), "C": {"low": 8, "high": 32, "step": 8}, "B": {"low": 1, "high": 4}}
    budget = Budget(max_params=40_000)
    got = count_feasible(spec, space, budget)
    arch = spec.student.arch
    brute = sum(
        is_feasible(price(arch, **student_knobs({"C": c, "L": 1, "B": b}, arch=arch, scale=2)), budget)
        for c in (8, 16, 24, 32)
        for b in (1, 2, 3, 4)
    )
    print(got)
    assert got["configurations"] == 16 and got["feasible"] == brute and 0 < brute < 16


def test_no_prox_sg_phase_is_one_line_exit_2_at_plan_run_and_submit(tiny_job, capsys):
    spec = _tiny(tiny_job)
    lines = []
    for argv in (["plan", str(spec)], ["run", str(spec)], ["submit", str(spec), "--address", "http://127.0.0.1:9"]):
        rc = main(argv)
        _, err = capsys.readouterr()
        print(f"{argv[0]}: {err.strip()}")
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
        lines.append(err.split("error: ", 1)[-1])
    assert "no Prox-SG phase" in lines[0] and "prune.np_epochs" in lines[0]
    assert lines[0] == lines[1] == lines[2]  # one check, the same words everywhere


def test_explicit_orthant_only_pruning_is_accepted(tiny_job, capsys):
    spec = _tiny(tiny_job, np_epochs=0)
    assert main(["plan", str(spec), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)["prune_schedule"]
    assert s["np_given"] and s["np_epochs"] == 0 and s["prox_steps"] == 0 and s["orthant_steps"] == 20


def test_checkpoint_off_the_report_cadence_is_refused(tiny_job, capsys):
    """Trials report every val_every steps on every rank; a rank-0 checkpoint between them would hang DDP."""
    path = tiny_job()
    spec = yaml.safe_load(path.read_text())
    spec["training"].update(val_every=10, log_every=5, ckpt_every=15)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "training.ckpt_every" in err and "multiple of val_every" in err and err.count("\n") == 1
