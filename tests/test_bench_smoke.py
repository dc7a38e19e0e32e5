"""Smoke tests of the benchmark scripts: each runs as ``python -m bench.<name>`` with tiny settings.

No timing is asserted; the tests check the one JSON line, the row recorded in a temporary BENCHMARKS.md, and
the exact (non-timing) figures: meta-device MACs equal real-tensor MACs, the published EDSR_baseline ratios,
and a folded IMDN-CLB equal to the plain IMDN-AIM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run_bench(name: str, args: list[str], md: Path) -> dict:
    # A subprocess runs the documented command from the repo root (bench/ is not an installed package).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *args, "--benchmarks-md", str(md)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got {len(lines)}"
    return json.loads(lines[0])


def _rows(md: Path, section: str) -> list[str]:
    text = md.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| date |")]


@pytest.fixture(scope="module")
def md(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro kept as is\n")
    return path


COMPLEXITY_ARGS = ["--quick", "--samples", "1", "--real-720p", "--speed-arch", "edsr_mini"]


@pytest.fixture(scope="module")
def complexity(md) -> dict:
    return _run_bench("complexity", COMPLEXITY_ARGS, md)


def test_complexity_json_and_row(complexity, md):
    for key in ("bench", "rows", "meta_vs_real", "real_720p", "speedup", "machine", "date", "command"):
        assert key in complexity
    assert complexity["bench"] == "complexity"
    assert complexity["command"] == "python -m bench.complexity " + " ".join(COMPLEXITY_ARGS)
    for key in ("cpu", "logical_cores", "torch_threads", "torch", "gpu", "python"):
        assert key in complexity["machine"]
    rows = _rows(md, "complexity")
    assert len(rows) == 1 and f"`{complexity['command']}`" in rows[0]
    assert "intro kept as is" in md.read_text()


def test_complexity_meta_equals_real(complexity):
    mvr = complexity["meta_vs_real"]
    print(f"meta vs real: {mvr['checked']} checked, {mvr['mismatches']} mismatches, details {mvr['details']}")
    assert mvr["checked"] == 4  # one random (C, L, B) per family
    assert mvr["mismatches"] == 0 and mvr["meta_failures"] == 0
    (check,) = complexity["real_720p"]
    assert check["arch"] == "edsr_mini" and check["equal"] and check["real_macs"] > 0


def test_complexity_edsr_baseline_matches_published(complexity):
    row = next(r for r in complexity["rows"] if r["arch"] == "edsr_baseline")
    print(
        f"edsr_baseline: ours {row['params']:,} params / {row['macs_720p'] / 1e9:.2f} G, "
        f"published {row['published']['params']:,} / {row['published']['macs_720p_g']} G"
    )
    assert abs(row["params_ratio"] - 1) <= 0.01
    assert abs(row["macs_720p_ratio"] - 1) <= 0.01
    archs = {(r["arch"], r["scale"]) for r in complexity["rows"]}
    assert {("edsr", 2), ("swinir_mini", 2), ("imdn", 2), ("e_rfdn", 4), ("imdn_clb_b7", 4)} <= archs


LATENCY_ARGS = ["--quick", "--lr-size", "24x16", "--rounds", "2", "--warmup", "0", "--threads", "1"]


def test_latency_json_row_and_fold(md):
    out = _run_bench("latency", LATENCY_ARGS, md)
    for key in ("models", "edsr_mini_vs_baseline", "fold", "threads", "lr_shape", "machine", "date"):
        assert key in out
    assert out["lr_shape"] == [16, 24] and out["threads"] == 1
    for name in ("edsr_baseline", "edsr_mini", "imdn", "imdn_clb", "imdn_clb_folded", "imdn_aim"):
        m = out["models"][name]
        assert m["repeats"] == 2 and m["median_ms"] > 0 and m["iqr_ms"] >= 0
    ratio = out["edsr_mini_vs_baseline"]
    assert 0 < ratio["macs_ratio"] < 0.05 and ratio["latency_ratio"] > 0
    fold = out["fold"]
    assert fold["has_collapsible_before"] and not fold["has_collapsible_after"]
    assert fold["params_folded"] == fold["params_imdn_aim"] < fold["params_unfolded"]
    assert fold["macs_folded"] == fold["macs_imdn_aim"] < fold["macs_unfolded"]
    assert fold["max_abs_diff_folded_vs_imdn_aim"] == 0.0
    assert fold["max_abs_diff_folded_vs_unfolded"] < 1e-4
    rows = _rows(md, "latency")
    assert len(rows) == 1 and "python -m bench.latency --quick" in rows[0]


def test_record_row_replaces_same_command(tmp_path):
    sys.path.insert(0, str(REPO))
    try:
        from bench._common import command_for, record_row
    finally:
        sys.path.remove(str(REPO))
    md = tmp_path / "B.md"
    md.write_text("# B\n\n## x\n\nnotes stay\n\n## y\n\ntext\n")
    cmd = command_for("x", ["--quick", "--benchmarks-md", "/tmp/a.md", "--no-record"])
    assert cmd == "python -m bench.x --quick"
    record_row(md, name="x", cells=["d1", f"`{cmd}`", "m", "a|b"])
    record_row(md, name="x", cells=["d2", "`python -m bench.x`", "m", "c"])
    record_row(md, name="x", cells=["d3", f"`{cmd}`", "m", "e"])
    rows = _rows(md, "x")
    assert rows == ["| d3 | `python -m bench.x --quick` | m | e |", "| d2 | `python -m bench.x` | m | c |"]
    text = md.read_text()
    assert "notes stay" in text and "## y\n\ntext" in text and "\n\n\n" not in text
