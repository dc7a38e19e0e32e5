"""Smoke test of ``python -m bench.kd_quality``: a few steps, 2 seeds, one student, every mode.

No PSNR threshold is asserted (2 steps train nothing); the test checks the JSON line's structure, the per-seed
statistics, the gradient split at init (authors: the low-pass level carries most of the KD gradient) and the row
recorded in a temporary BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_kd_quality_json_row_and_stats(tmp_path, set5_dir, t91_dir, imdn_x2_weights):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nintro kept as is\n")
    args = [
        "--steps", "2", "--seeds", "2", "--batch", "2", "--hr-patch", "32", "--students", "edsr_mini",
        "--teacher-weights", str(imdn_x2_weights), "--train-dir", str(t91_dir / "HR"), "--test-dir", str(set5_dir),
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "bench.kd_quality", *args, "--benchmarks-md", str(md)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert (out["steps"], out["seeds"], out["batch"], out["hr_patch"]) == (2, 2, 2, 32)
    assert out["teacher_psnr_y"] == pytest.approx(38.0, abs=0.05)  # the official IMDN x2 weights
    assert out["bicubic_psnr_y"] < out["teacher_psnr_y"]
    s = out["students"]["edsr_mini"]
    assert s["knobs"] == {"res_scale": 1.0}
    assert set(s["modes"]) == {"gt", "authors", "flat", "normalized"}
    for mode, f in s["modes"].items():
        assert len(f["per_seed"]) == 2, mode
        assert f["mean"] == pytest.approx(statistics.fmean(f["per_seed"]), abs=1e-3)
        assert f["sd"] == pytest.approx(statistics.stdev(f["per_seed"]), abs=1e-3)
    for mode in ("authors", "flat", "normalized"):
        gain = s["modes"][mode]["gain_over_gt_db"]["mean"]
        assert gain == pytest.approx(s["modes"][mode]["mean"] - s["modes"]["gt"]["mean"], abs=2e-3)
    assert s["best_kd"] in ("authors", "flat", "normalized")
    assert s["goal_met"] == (s["best_kd_minus_gt_db"] >= 0.10)
    split = s["grad_split_at_init"]
    assert split["authors"]["lowpass_share"] > 0.5 > split["flat"]["lowpass_share"]
    assert sum(split["flat"]["level_shares"]) == pytest.approx(1.0, abs=0.01)
    assert "goal" in out and isinstance(out["goal_met"], bool)
    text = md.read_text()
    assert "intro kept as is" in text and "## kd_quality" in text
    assert f"`{out['command']}`" in text


def test_channels_last_json_row(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    args = ["--quick", "--batch", "2", "--threads", "1", "--benchmarks-md", str(md)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.channels_last", *args],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip())
    assert (out["batch"], out["lr_patch"], out["threads"]) == (2, 16, 1)
    for kind in ("kd_step", "student_fwd_bwd", "conv"):
        g = out["gmacs_per_s"][kind]
        assert g["nchw"] > 0 and g["channels_last"] > 0, kind
        assert out["channels_last_speedup"][kind] == pytest.approx(g["channels_last"] / g["nchw"], rel=0.01)
    assert out["faster_kd_step"] in ("nchw", "channels_last")
    assert isinstance(out["goal_met"], bool)
    assert "## channels_last" in md.read_text() and f"`{out['command']}`" in md.read_text()
