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


KD_STEP_ARGS = [
    "--quick", "--rounds", "2", "--block", "1", "--batch", "2", "--lr-patch", "16", "--teacher", "edsr_mini",
    "--threads", "1",
]  # fmt: skip


def test_kd_step_json_row_and_macs(md):
    from sr.complexity import count_macs
    from sr.models import build

    out = _run_bench("kd_step", KD_STEP_ARGS, md)
    assert out["teacher"] == "edsr_mini x2 (random weights)" and out["student"] == "edsr_mini"
    assert (out["batch"], out["lr_patch"], out["hr_patch"], out["threads"]) == (2, 16, 32, 1)
    assert set(out["modes"]) == {"bare", "fit_kd", "cache", "authors", "bare_cached"}
    for mode, m in out["modes"].items():
        assert m["steps"] == 2 and len(m["per_round_steps_per_s"]) == 2, mode
        assert m["steps_per_s"] > 0 and m["steps_per_s_wall"] > 0 and m["steps_per_cpu_s"] > 0, mode
        # MAC/s = 3 x forward MACs of the student per batch x steps/s (the convention the JSON states)
        want = 3 * out["student_fwd_gmacs_per_batch"] * m["steps_per_s"]
        assert abs(m["student_gmacs_per_s"] - want) <= 0.002 + 0.01 * want, mode
    for name in ("fit_kd/bare", "cache/authors", "cache/bare", "cache/bare_cached"):
        assert set(out["ratios"][name]) == {"unloaded", "wall", "cpu"}
        assert all(v > 0 for v in out["ratios"][name].values()), name
    fwd = count_macs(build("edsr_mini", scale=2), (16, 16)).macs * 2
    print(f"edsr_mini forward MACs per batch: {fwd / 1e9:.4f} G, bench says {out['student_fwd_gmacs_per_batch']}")
    assert out["student_fwd_gmacs_per_batch"] == round(fwd / 1e9, 4)
    assert out["teacher_fwd_gmacs_per_batch"] == out["student_fwd_gmacs_per_batch"]  # same arch as teacher
    assert out["cache_patches"] == 1 and out["conv_gmacs_per_s"] > 0
    assert set(out["goals_met"]) == {"fit_kd/bare", "cache/authors"}
    rows = _rows(md, "kd_step")
    assert len(rows) == 1 and f"`{out['command']}`" in rows[0]


OVERHEAD_ARGS = [
    "--trials", "1", "--steps", "3", "--batch", "2", "--hr-patch", "32", "--teacher", "edsr_mini",
    "--student-c", "8", "--student-b", "1", "--data", "builtin", "--no-trainer", "--job",
]  # fmt: skip


@pytest.mark.ray
@pytest.mark.mlflow
@pytest.mark.slow
def test_overhead_json_row_and_timeline(md):
    # A real local Ray, one Tune -> MLflow trial (trained in the trial), one plain run and a one-trial search.
    out = _run_bench("overhead", OVERHEAD_ARGS, md)
    assert out["trials"] == 1 and out["steps_per_trial"] == 3 and out["reports_per_trial"] == 3
    assert out["data"] == "scikit-image sample images" and out["teacher"] == "edsr_mini x2 (random weights)"
    (plain,) = out["plain"]
    (orch,) = out["orchestrated"]
    print(f"plain {plain}\norchestrated {orch}")
    assert plain["steps"] == orch["steps"] == 3  # the same work on both sides
    for r in (plain, orch):
        assert r["wall_s"] >= r["train_s"] > 0 and r["cpu_s"] > 0 and r["val_psnr_y"] > 0
    # The timeline is ordered: MLflow run opened, then the first step, then the first report, then the end.
    assert 0 < orch["to_mlflow_run_s"] < orch["to_first_report_s"] <= orch["wall_s"]
    assert orch["to_first_step_s"] < orch["to_first_report_s"] and orch["trial_wall_s"] <= orch["wall_s"]
    assert any(k.startswith("ray::") for k in orch["cpu_by_kind"])  # the trial's Ray processes were measured
    # overhead = wall outside training, orchestrated minus plain (training time varies with the machine's load)
    overhead = (orch["wall_s"] - orch["train_s"]) - (plain["wall_s"] - plain["train_s"])
    assert out["overhead_s"] == pytest.approx(overhead, abs=0.01)
    assert out["overhead_fraction"] == pytest.approx(overhead / plain["wall_s"], abs=5e-3)
    assert out["fraction_at_2min"] == pytest.approx(overhead / 120, abs=1e-3)
    assert out["goal_met"] == (out["fraction_at_2min"] <= 0.05)
    assert set(out["breakdown_s"]) == {"before_first_step", "in_loop", "after_last_report", "report_delivery_median"}
    assert "trainer_wall_s" not in out  # --no-trainer
    assert out["job_wall_s"] >= out["job_train_s"] > 0
    plain_non_train = plain["wall_s"] - plain["train_s"]
    assert out["job_overhead_s_per_trial"] == pytest.approx(
        out["job_wall_s"] - out["job_train_s"] - plain_non_train, abs=0.02
    )
    rows = _rows(md, "overhead")
    assert len(rows) == 1 and f"`{out['command']}`" in rows[0]


# ------------------------------------------------------------------------------ search replay and its KD table
KD_TABLE = REPO / "bench" / "data" / "kd_table_edsr_x2.parquet"


def _import_bench(module: str):
    sys.path.insert(0, str(REPO))
    try:
        return __import__(f"bench.{module}", fromlist=["_"])
    finally:
        sys.path.remove(str(REPO))


@pytest.fixture(scope="module")
def kd_table() -> Path:
    if not KD_TABLE.exists():
        pytest.skip(f"needs the committed KD table {KD_TABLE}; build it with python -m bench.build_kd_table")
    return KD_TABLE


def test_search_replay_json_row_and_curves(kd_table, md):
    out = _run_bench("search_replay", ["--quick", "--seeds", "2", "--trials", "12"], md)
    assert out["trials"] == 12 and out["seeds"] == 2 and out["max_params"] == 60_000
    # The budget makes part of the grid infeasible, and the paper rule gives EDSR C16 L1 B8 (49,603 params).
    assert 0 < out["feasible_configs"] < out["table_rows"]
    assert {k: out["paper_point"][k] for k in ("C", "L", "B", "w_gt")} == {"C": 16, "L": 1, "B": 8, "w_gt": 0.1}
    assert out["paper_point_feasible"]
    # make_searcher's settings at 12 trials: NSGA-II population max(4, 12 // 3), multivariate TPE with
    # max(4, 12 // 8) start-up trials; the real search's searcher answers infeasible and repeated draws.
    both = {"skip_infeasible": True, "dedupe": True}
    assert out["sampler_settings"]["nsga2"] == {"population_size": 4, **both}
    assert out["sampler_settings"]["motpe"] == {"multivariate": True, "n_startup_trials": 4, **both}
    base = "random:skip_infeasible=False,dedupe=False"  # plain random search: the target
    assert out["sampler_settings"][base] == {"skip_infeasible": False, "dedupe": False}
    assert 0 < out["table_front_hv"] < 1
    for algo in (base, "random", "nsga2", "motpe"):
        for seeding in ("no_seed", "paper_seed"):
            r = out["results"][algo][seeding]
            hv = r["hv_mean"]
            print(f"{algo}/{seeding}: HV {hv}, target at {r['trials_to_target']}, trained {r['trained_mean']}")
            assert set(hv) == {"8", "12"} and 0 <= hv["8"] <= hv["12"] <= out["table_front_hv"] + 1e-9
            assert 0 < r["trained_mean"] <= 12 and r["distinct_trained_mean"] <= r["trained_mean"]
    assert out["results"][base]["no_seed"]["hv_mean"]["12"] == pytest.approx(out["target_hv"], abs=1e-4)
    assert out["results"]["random"]["no_seed"]["trained_mean"] == 12  # skip_infeasible: every trial trains
    rows = _rows(md, "search_replay")
    assert len(rows) == 1 and "python -m bench.search_replay --quick --seeds 2 --trials 12" in rows[0]


def test_search_replay_trials_follow_the_real_search(kd_table):
    import math
    from dataclasses import replace

    import numpy as np

    from orchestrator.search import SearchPlan, make_searcher
    from sr.budget import Budget

    sr_mod = _import_bench("search_replay")
    df = sr_mod.load_table(kd_table)
    sr_mod.check_prices(df)  # the table's params/MACs are what sr.budget.price gives
    space = sr_mod.space_of(df, sr_mod.parse_grid(sr_mod.GRID))
    assert space["C"] == {"low": 8, "high": 32, "step": 8} and space["B"] == {"low": 2, "high": 8, "step": 2}
    rows = {sr_mod._key(r.C, r.L, r.B, r.w_gt): r._asdict() for r in df.itertuples(index=False)}
    plan = SearchPlan(
        name="t", storage="unused", student_arch="edsr_mini", space=space, budget=Budget(max_params=60_000),
        objectives=sr_mod.OBJECTIVES, num_samples=12, seed=3, paper_point=sr_mod.paper_point(space),
    )  # fmt: skip
    plain = sr_mod.parse_variant("random:skip_infeasible=false,dedupe=false")
    assert plain.name == sr_mod.BASELINE
    trials = sr_mod.replay_search(plan, plain, rows)
    assert len(trials) == 12
    first = trials[0]  # the enqueued paper rule comes first and is feasible
    assert first["paper_rule"] and first["key"] == (16, 1, 8, 0.1) and first["feasible"]
    assert first["psnr_y"] == pytest.approx(float(rows[(16, 1, 8, 0.1)]["psnr_y"]))
    assert not any(t["paper_rule"] for t in trials[1:])
    for t in trials:
        assert t["feasible"] == (t["params"] <= 60_000)
        if not t["feasible"]:
            assert t["train_s"] == 0 and math.isnan(t["psnr_y"])  # infeasible: never trained
    assert any(not t["feasible"] for t in trials)
    curve = sr_mod.hv_curve(trials, sr_mod.hv_scale(df[df["params"] <= 60_000]))
    assert curve[0] > 0 and (np.diff(curve) >= 0).all()
    # The replay's sampler settings are make_searcher's (the real search), at two budgets of trials.
    for n in (12, 48):
        nsga = make_searcher(replace(plan, algorithm="nsga2", num_samples=n))._sampler
        tpe = make_searcher(replace(plan, algorithm="motpe", num_samples=n))._sampler
        assert nsga.population_size == max(4, n // 3)
        assert tpe._n_startup_trials == max(4, n // 8) and tpe._multivariate
    assert make_searcher(replace(plan, algorithm="nsga2", population_size=10))._sampler.population_size == 10
    variant = sr_mod.parse_variant("nsga2:population_size=6")
    assert sr_mod.make_variant_searcher(plan, variant)._sampler.population_size == 6
    # The real search's default: the searcher answers over-budget and repeated draws itself, so every trial is a
    # new, trained configuration.
    variant = sr_mod.parse_variant("random")
    assert variant.skip_infeasible is None and variant.plan(plan).skip_infeasible and variant.plan(plan).dedupe
    trials = sr_mod.replay_search(replace(plan, paper_point=None), variant, rows)
    assert all(t["feasible"] for t in trials) and len({t["key"] for t in trials}) == 12
    assert trials[-1]["draws"] > 12  # some draws were answered without a trial


def test_build_kd_table_two_configs_resumes(tmp_path, md, set5_dir, t91_dir, imdn_x2_weights, capsys):
    import pandas as pd
    import pyarrow.parquet as pq

    from sr.errors import ConfigError

    # In-process (the subprocess path is covered by the other benchmarks): two builds share the loaded data.
    mod = _import_bench("build_kd_table")
    table = tmp_path / "kd.parquet"
    data = ["--teacher-weights", str(imdn_x2_weights), "--train-dir", str(t91_dir / "HR"), "--val-dir", str(set5_dir)]
    args = ["--quick", "--out", str(table), *data, "--benchmarks-md", str(md)]  # C8 L1 B2/B4, w_gt 0.1, 5 steps
    first = mod.main([*args, "--max-configs", "1"])
    assert first["rows"] == 1 and first["rows_new"] == 1 and not first["complete"]
    second = mod.main(args)  # resumes: runs only the missing configuration
    assert second["rows"] == 2 and second["rows_new"] == 1 and second["complete"]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [line["rows"] for line in lines] == [1, 2]  # one JSON line per run on stdout
    df = pd.read_parquet(table)
    assert sorted(zip(df["C"], df["L"], df["B"], strict=True)) == [(8, 1, 2), (8, 1, 4)]
    assert list(df["params"]) == [5_699, 8_035]  # cheapest first; sr.budget.price of EDSR C8 L1 B2 / B4
    assert df["psnr_y"].between(5, 40).all() and (df["wall_s"] > 0).all() and (df["steps"] == 5).all()
    meta = pq.read_schema(table).metadata
    assert meta[b"srcompress.command"].decode() == second["command"]
    assert "--max-configs" not in second["command"] and "--benchmarks-md" not in second["command"]
    rows = _rows(md, "build_kd_table")
    assert len(rows) == 1  # the chunked build and its resumption share one row
    with pytest.raises(ConfigError, match="other settings"):  # refuses to mix 7-step rows into a 5-step table
        mod.run(mod._parse_args([*args, "--steps", "7"]), [*args, "--steps", "7"])
