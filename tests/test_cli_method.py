"""``srcompress prune / distill / compress`` end to end on tiny models and images (CPU, one thread).

The kill-and-resume test is the issue's acceptance line 6: a ``distill`` process killed with SIGKILL mid-run and
rerun with ``--resume`` ends with the same weights (sha256) and validation PSNR as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

# orchestrator.cli registers every command, the method commands (orchestrator.cli.method) included.
from orchestrator.cli import main
from sr.checkpoint import load_weights
from sr.data import load_eval_pairs
from sr.evaluate import evaluate_model
from sr.models import build
from sr.prune import density

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "C=8", "--set", "B=2"]
TEACHER_SET = ["--teacher-set", "C=8", "--teacher-set", "B=2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Four 96 px training crops and two 64x48 validation crops of scikit-image photos; random edsr C8 B2."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "train").mkdir()
    (root / "val").mkdir()
    for name in ("astronaut", "rocket", "coffee", "chelsea"):
        img = getattr(skimage.data, name)()
        Image.fromarray(np.ascontiguousarray(img[40:136, 60:156])).save(root / "train" / f"{name}.png")
    for name in ("astronaut", "coffee"):
        img = getattr(skimage.data, name)()
        Image.fromarray(np.ascontiguousarray(img[200:248, 200:264])).save(root / "val" / f"{name}.png")
    torch.manual_seed(1)
    teacher = build("edsr_mini", C=8, B=2)
    torch.save({"params": teacher.state_dict()}, root / "teacher.pth")
    return {"train": root / "train", "val": root / "val", "teacher": root / "teacher.pth", "root": root}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def distill_args(tiny: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "distill",
        "--teacher-arch", "edsr_mini", *TEACHER_SET, "--teacher-weights", tiny["teacher"],
        "--student-arch", "edsr_mini", *TINY,
        "--data", tiny["train"], "--val", tiny["val"],
        "--batch-size", "4", "--hr-patch", "32", "--out", out, *extra,
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------------ prune
def test_prune_density_decreases(capsys, tiny, tmp_path):
    out = tmp_path / "prune"
    rc, stdout, _ = run_cli(
        capsys,
        "prune", "--arch", "edsr_mini", *TINY, "--weights", tiny["teacher"],
        "--data", tiny["train"], "--val", tiny["val"],
        "--steps", "20", "--batch-size", "4", "--hr-patch", "32",
        "--lr", "1e-2", "--lambda", "0.2", "--np-epochs", "1", "--batches-per-epoch", "5", "--log-every", "4",
        "--out", out,
    )  # fmt: skip
    assert rc == 0, stdout
    rep = json.loads((out / "density.json").read_text())
    hist = [d for _, d in rep["history"]]
    print("density history:", rep["history"])
    assert [s for s, _ in rep["history"]] == [0, 4, 8, 12, 16, 20]
    assert hist[0] == 1.0 and rep["density"] == hist[-1] < 1.0
    assert all(a > b for a, b in zip(hist, hist[1:], strict=False)), hist
    assert rep["switch_step"] == 5 and rep["val"]["pruned"]["psnr_y"] > 0
    # pruned.pth really is the pruned model: its zeros give the reported density
    model = load_weights(build("edsr_mini", C=8, B=2), out / "pruned.pth", arch="edsr_mini")
    assert density(model, "edsr").nonzero == rep["nonzero"]
    assert "density history" in stdout and "(pruned)" in stdout and "bicubic" in stdout


# ---------------------------------------------------------------------------------------------------- distill
def test_distill_with_cache_writes_files_and_reuses_cache(capsys, tiny, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    rc, _, err = run_cli(capsys, *distill_args(tiny, a, "--steps", "6", "--cache", "16", "--ema-decay", "0"))
    assert rc == 0, err
    m1 = json.loads((a / "metrics.json").read_text())
    assert m1["cache"]["built"] is True and m1["cache"]["n_patches"] == 16 and "built" in err
    assert m1["steps"] == 6 and m1["params"] == 5_699 and m1["macs_720p"] > 0 and m1["steps_per_s"] > 0
    # the saved student is the evaluated one
    student = load_weights(build("edsr_mini", C=8, B=2), a / "student.pth", arch="edsr_mini")
    psnr = evaluate_model(student, load_eval_pairs(tiny["val"], 2), scale=2).psnr_y
    assert psnr == pytest.approx(m1["val_psnr_y"], abs=1e-9)

    rc, out, err = run_cli(
        capsys, *distill_args(tiny, b, "--steps", "6", "--cache", "16", "--ema-decay", "0", "--cache-dir", a / "cache")
    )
    assert rc == 0, err
    m2 = json.loads((b / "metrics.json").read_text())
    assert m2["cache"]["built"] is False and m2["cache"]["path"] == m1["cache"]["path"] and "reused" in err
    assert m2["weights_sha256"] == m1["weights_sha256"]  # same seed, same cache: same student
    assert "edsr_C8L1B2_x2: val PSNR_Y" in out


def _cli_cmd(*args: str | Path) -> list[str]:
    # -c instead of -m orchestrator.cli: run as __main__, cli.py would be a second module whose app lacks these
    code = "import sys; from orchestrator.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *map(str, args)]


def test_distill_killed_and_resumed_equals_uninterrupted(capsys, tiny, tmp_path):
    """Acceptance line 6: SIGKILL mid-run, rerun with --resume; final metrics equal an uninterrupted run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count as this process (conftest)
    common = ["--steps", "60", "--ckpt-every", "10", "--seed", "3"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli_cmd(*distill_args(tiny, killed, *common)),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    target = killed / "ckpt" / "step_0000020"
    deadline = time.monotonic() + 120
    while not target.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    still_running = proc.poll() is None
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.communicate()
    assert target.is_dir(), "the run never reached its step-20 checkpoint"
    assert still_running and not (killed / "metrics.json").exists(), "the run finished before it could be killed"

    res = subprocess.run(
        _cli_cmd(*distill_args(tiny, killed, *common, "--resume")),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    resumed = json.loads((killed / "metrics.json").read_text())
    m = re.search(r"resumed distillation from \S+ \(step (\d+) of 60\)", res.stderr)
    assert m and int(m[1]) >= 10 and resumed["resumed_from_step"] == int(m[1]), res.stderr
    assert resumed["steps_run"] == 60 - int(m[1])

    rc, _, err = run_cli(capsys, *distill_args(tiny, tmp_path / "straight", *common))
    assert rc == 0, err
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    print("resumed from step", m[1], "val PSNR_Y", resumed["val_psnr_y"], "vs", straight["val_psnr_y"])
    assert resumed["weights_sha256"] == straight["weights_sha256"]
    assert resumed["val_psnr_y"] == straight["val_psnr_y"] and resumed["val_ssim_y"] == straight["val_ssim_y"]


def test_sigterm_keeps_checkpoint_and_says_how_to_resume(capsys, tiny, tmp_path):
    out = tmp_path / "term"
    running = threading.Event()
    running.set()

    def send_term_after_first_checkpoint() -> None:
        while running.is_set() and not (out / "ckpt" / "step_0000002").is_dir():
            time.sleep(0.01)
        if running.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    # a harmless handler underneath the CLI's, in case the signal lands after the command returned
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    sender = threading.Thread(target=send_term_after_first_checkpoint, daemon=True)
    try:
        sender.start()
        rc, _, err = run_cli(capsys, *distill_args(tiny, out, "--steps", "5000", "--ckpt-every", "2", "--gt-only"))
    finally:
        running.clear()
        sender.join(timeout=5)
        signal.signal(signal.SIGTERM, previous)
    assert rc == 130
    line = err.strip().splitlines()[-1]
    assert re.fullmatch(
        r"srcompress: interrupted at step \d+ \(checkpoint step \d+ kept in \S+\); rerun with --resume to continue",
        line,
    ), line
    assert (out / "ckpt" / "step_0000002" / "state.pt").is_file()
    assert not (out / "metrics.json").exists()


# --------------------------------------------------------------------------------------------------- compress
def test_compress_end_to_end_prints_summary_table(capsys, tiny, tmp_path):
    out = tmp_path / "cdism"
    rc, stdout, err = run_cli(
        capsys,
        "compress", "--arch", "edsr_mini", *TINY, "--weights", tiny["teacher"],
        "--data", tiny["train"], "--val", tiny["val"],
        "--prune-steps", "10", "--kd-steps", "4", "--batch-size", "4", "--hr-patch", "32",
        "--prune-lr", "1e-2", "--lambda", "0.2", "--np-epochs", "1", "--batches-per-epoch", "5",
        "--out", out,
    )  # fmt: skip
    assert rc == 0, err
    print(stdout)
    rows = {line.split("│")[1].strip(): line for line in stdout.splitlines() if line.startswith("│")}
    assert set(rows) == {"teacher", "student", "bicubic"}
    assert "edsr_C8L1B2_x2" in rows["teacher"] and "5,699" in rows["teacher"]
    s = json.loads((out / "summary.json").read_text())
    assert 0 < s["density"] < 1 and s["pruned"]["steps"] == 10
    assert s["student"]["params"] < s["teacher"]["params"] and s["bicubic"]["psnr_y"] > 30
    assert (out / "prune" / "pruned.pth").is_file() and Path(s["student"]["weights"]).is_file()


def test_compress_with_given_density_skips_pruning(capsys, tiny, tmp_path):
    out = tmp_path / "cdism_d"
    rc, stdout, err = run_cli(
        capsys,
        "compress", "--arch", "edsr_mini", "--weights", tiny["teacher"], *TINY, "--data", tiny["train"],
        "--val", tiny["val"], "--density", "0.03", "--kd-steps", "2", "--batch-size", "2", "--hr-patch", "32",
        "--out", out, "--json",
    )  # fmt: skip
    assert rc == 0, err
    s = json.loads(stdout)
    assert s["pruned"] is None and not (out / "prune").exists()
    assert s["allocation"] == {"C": 8, "L": 1, "B": 1, "predicted_ratio": 0.5}


def test_allocate_student_matches_allocate_arch_without_overrides():
    from sr.allocate import allocate_arch, allocate_student

    alloc, knobs = allocate_student("edsr_baseline", {"scale": 2}, 0.03)
    ref_alloc, ref_knobs = allocate_arch("edsr_baseline", 0.03)
    assert (alloc.C, alloc.L, alloc.B) == (16, 1, 8) == (ref_alloc.C, ref_alloc.L, ref_alloc.B)
    assert knobs == ref_knobs
    # with overrides the same rule runs from the overridden sizes (imdn's split width follows C)
    alloc, knobs = allocate_student("imdn", {"C": 32, "scale": 3}, 0.25)
    assert knobs["C"] == alloc.C and knobs["distilled"] == round(16 * alloc.C / 32) and knobs["scale"] == 3


# ------------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing_weights", "checkpoint not found"),
        ("hr_patch_50", "--hr-patch 50"),
        ("wrong_arch", "does not fit arch 'imdn'"),
        ("no_images", "no images in"),
        ("teacherless", "--teacher-arch"),
    ],
)
def test_bad_inputs_are_one_line_exit_2(capsys, tiny, tmp_path, case, needle):
    base = distill_args(tiny, tmp_path / "o", "--steps", "2")
    args = {
        "missing_weights": [*base[:-2], "--teacher-weights", tmp_path / "nope.pth", *base[-2:]],
        "hr_patch_50": [*base, "--hr-patch", "50"],
        "wrong_arch": ["prune", "--arch", "imdn", "--weights", tiny["teacher"], "--data", tiny["train"], "--steps", 2],
        "no_images": [*base, "--data", tmp_path],
        "teacherless": ["distill", "--student-arch", "edsr_mini", "--data", tiny["train"], "--steps", "2"],
    }[case]
    rc, _, err = run_cli(capsys, *args)
    print(err)
    assert rc == 2 and err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_fresh_run_over_old_checkpoints_asks_for_resume(capsys, tiny, tmp_path):
    out = tmp_path / "again"
    args = distill_args(tiny, out, "--steps", "2", "--gt-only")
    assert run_cli(capsys, *args)[0] == 0
    rc, _, err = run_cli(capsys, *args)
    assert rc == 2 and "pass --resume" in err and err.count("\n") == 1
    rc, _, err = run_cli(capsys, *args, "--resume")  # a finished run: 0 steps, same metrics
    assert rc == 0 and json.loads((out / "metrics.json").read_text())["steps_run"] == 0
