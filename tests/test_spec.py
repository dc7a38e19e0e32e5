"""Job spec: the shipped YAMLs validate, and malformed specs fail with one line naming the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

import search_spaces
from search_spaces import (
    JobSpec,
    Range,
    SpecError,
    check_paths,
    load_job_spec,
    parse_job_spec,
    parse_size,
)
from sr.errors import ConfigError, UserError
from sr.models import list_variants

BASE = """\
name: t1
teacher:
  arch: edsr_baseline
student:
  arch: edsr_mini
  space:
    C: {low: 8, high: 32, step: 8}
    L: {low: 1, high: 2}
    B: {low: 2, high: 8}
training:
  steps: 100
  val_every: 10
  log_every: 10
  ckpt_every: 50
"""


def _line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------------------ shipped specs


def test_shipped_spec_names() -> None:
    assert {"demo", "edsr_cdism", "swinir_cdism", "imdn_cdism"} <= set(search_spaces.names())
    assert search_spaces.path("demo") == search_spaces.path("demo.yaml")
    with pytest.raises(ConfigError, match="valid: .*demo"):
        search_spaces.path("nope")


@pytest.mark.parametrize("name", search_spaces.names())
def test_every_shipped_spec_validates(name: str) -> None:
    spec = load_job_spec(search_spaces.path(name))
    variants = list_variants()
    assert spec.teacher.arch in variants and spec.student.arch in variants
    assert spec.objectives[0].metric == "psnr_y" and spec.objectives[0].mode == "max"
    assert spec.data.patch_at(0) % 16 == 0
    assert spec.source == str(search_spaces.path(name))
    flat = spec.to_flat_dict()
    assert flat["name"] == spec.name and flat["training.steps"] == spec.training.steps
    assert len(spec.spec_hash()) == 12


def test_demo_is_small_and_budgeted() -> None:
    spec = load_job_spec(search_spaces.path("demo"))
    assert spec.name == "demo"  # `srcompress pareto --experiment demo` after `make demo`
    # The budget cuts the space: its largest configs are infeasible, the paper-rule seed (C24 L1 B8) is not.
    assert spec.budgets.max_params == 120_000
    assert spec.student.space["C"] == Range(low=16, high=32, step=8)  # no C=8 student: near bicubic at 500 steps
    assert spec.training.steps <= 500 and spec.search.num_samples <= 8
    # the level weighting the kd_quality benchmark found best, and a held-out validation split + a test set
    assert spec.student.kd_space.lap_weighting == "normalized"
    assert spec.data.val_first == 10 and spec.data.test is not None and len(spec.data.test) == 1
    assert spec.resources.use_gpu is False and spec.resources.workers_per_trial == 1
    assert spec.data.cache.enabled and spec.data.hr_patch % 16 == 0


def test_demo_falls_back_without_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRCOMPRESS_SHARED", str(tmp_path / "absent"))
    spec = load_job_spec(search_spaces.path("demo"))
    assert spec.teacher.weights == str(tmp_path / "absent" / "weights" / "IMDN_x2.pth")
    run = check_paths(spec)
    assert run.teacher.weights is None and run.teacher.arch == "imdn"
    assert run.data.train is None and run.data.val is None and run.data.test is None
    assert spec.teacher.weights is not None  # the input spec is unchanged (frozen)


def test_demo_uses_shared_when_present(imdn_x2_weights: Path, t91_dir: Path, set5_dir: Path) -> None:
    run = check_paths(load_job_spec(search_spaces.path("demo")))
    assert Path(run.teacher.weights).samefile(imdn_x2_weights)
    assert run.data.train is not None and Path(run.data.train[0]).samefile(t91_dir)
    assert Path(run.data.val).samefile(t91_dir.parent / "BSDS200") and run.data.val_first == 10
    assert run.data.test is not None and Path(run.data.test[0]).samefile(set5_dir)  # Set5: test only


@pytest.mark.parametrize("name", ["edsr_cdism", "swinir_cdism", "imdn_cdism"])
def test_cluster_specs_need_their_weights(name: str) -> None:
    path = search_spaces.path(name)
    spec = load_job_spec(path)
    assert spec.resources.use_gpu is True and spec.storage.path.startswith("/mnt/srcompress")
    if Path(spec.teacher.weights).exists():
        pytest.skip("the placeholder weights exist on this machine")
    with pytest.raises(SpecError) as info:
        check_paths(spec)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{_line(path.read_text(), '  weights:')}: teacher.weights: ")


# ------------------------------------------------------------------------------------------------ malformed


def _case(name: str, text: str, key: str, needle: str, fragment: str) -> object:
    return pytest.param(text, key, _line(text, needle), fragment, id=name)


MALFORMED = [
    _case("unknown-top-key", BASE + "bogus: 1\n", "bogus", "bogus", "unknown key"),
    _case(
        "unknown-nested-key",
        BASE.replace("  steps: 100", "  stpes: 100"),
        "training.stpes",
        "stpes",
        "did you mean 'steps'",
    ),
    _case(
        "unknown-range-key",
        BASE.replace("{low: 8, high: 32, step: 8}", "{lo: 8, high: 32}"),
        "student.space.C.lo",
        "    C:",
        "valid: low, high, step, log",
    ),
    _case("wrong-type", BASE.replace("  steps: 100", "  steps: many"), "training.steps", "steps:", "integer"),
    _case(
        "out-of-range",
        BASE.replace("  steps: 100", "  steps: -5"),
        "training.steps",
        "steps:",
        "greater than or equal to 1",
    ),
    _case("not-a-mapping", BASE + "prune: 5\n", "prune", "prune:", "expected a mapping"),
    _case(
        "low-gt-high",
        BASE.replace("{low: 1, high: 2}", "{low: 3, high: 1}"),
        "student.space.L",
        "    L:",
        "low (3) > high (1)",
    ),
    _case("bad-size", BASE + "budgets:\n  max_params: 12 parsecs\n", "budgets.max_params", "parsecs", "k, M, G"),
    _case(
        "unknown-arch",
        BASE.replace("arch: edsr_baseline", "arch: edsr_huge"),
        "teacher.arch",
        "edsr_huge",
        "edsr_baseline",
    ),
    _case("unknown-algorithm", BASE + "search:\n  algorithm: grid\n", "search.algorithm", "grid", "nsga2"),
    _case(
        "unknown-knob",
        BASE.replace("    B: {low: 2, high: 8}", "    heads: 4"),
        "student.space.heads",
        "heads",
        "valid: C, L, B",
    ),
    _case(
        "float-range-for-int-knob",
        BASE.replace("{low: 8, high: 32, step: 8}", "{low: 8.5, high: 32}"),
        "student.space.C",
        "    C:",
        "integer",
    ),
    _case(
        "wrong-objective-mode",
        BASE + "objectives:\n  - {metric: psnr_y, mode: min}\n",
        "objectives[0].mode",
        "metric: psnr_y",
        "use mode: max",
    ),
    _case("patch-not-16", BASE + "data:\n  hr_patch: 50\n", "data.hr_patch", "hr_patch", "multiple of 16"),
    _case(
        "milestones-order",
        BASE.replace("  steps: 100", "  steps: 100\n  milestones: [50, 20]"),
        "training.milestones",
        "milestones",
        "increasing",
    ),
    _case("missing-section", "name: x\nstudent: {arch: edsr_mini}\n", "teacher", "name:", "missing"),
    _case("duplicate-key", BASE + "seed: 1\nseed: 2\n", "seed", "seed: 2", "duplicate"),
    _case(
        "val-is-train",
        BASE + "data:\n  train: [a, b]\n  val: b\n",
        "data.val",
        "val: b",
        "val_first",
    ),
    _case("val-first-no-val", BASE + "data:\n  val_first: 3\n", "data.val_first", "val_first", "needs data.val"),
    _case("test-is-train", BASE + "data:\n  train: [a]\n  test: [s5, a]\n", "data.test[1]", "test:", "held out"),
    _case(
        "lap-weighting",
        BASE.replace("student:\n  arch: edsr_mini", "student:\n  arch: edsr_mini\n  kd_space: {lap_weighting: flatt}"),
        "student.kd_space.lap_weighting",
        "lap_weighting",
        "normalized",
    ),
    _case(
        "scale-mismatch",
        BASE.replace("  arch: edsr_baseline", "  arch: edsr_baseline\n  scale: 3"),
        "teacher.scale",
        "scale: 3",
        "data.scale",
    ),
    _case(
        "swinir-heads",
        BASE.replace("arch: edsr_mini", "arch: swinir_mini").replace("step: 8}", "step: 8}\n    heads: 6"),
        "student.space.C",
        "    C:",
        "multiple of heads",
    ),
    _case(
        "asha-grace",
        BASE + "search:\n  scheduler: {type: asha, grace_period: 50}\n",
        "search.scheduler.grace_period",
        "scheduler:",
        "validation reports",
    ),
]


@pytest.mark.parametrize(("text", "key", "line", "fragment"), MALFORMED)
def test_malformed_spec_names_file_line_and_key(tmp_path: Path, text: str, key: str, line: int, fragment: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_job_spec(path)
    msg = str(info.value)
    print(msg)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line}: {key}: "), msg
    assert fragment in msg
    assert "; " in msg  # cause; fix
    assert (info.value.line, info.value.key) == (line, key)
    assert isinstance(info.value, UserError)


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    text = BASE + "data: {scale: 2\nprune: {}\n"
    path = _write(tmp_path, text)
    with pytest.raises(SpecError, match=r"YAML syntax error") as info:
        load_job_spec(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}:")
    assert info.value.line is not None and info.value.line >= _line(text, "data:")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path, "- a\n- b\n")
    with pytest.raises(SpecError, match=r":1: the top level must be a mapping"):
        load_job_spec(path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope\.yaml: job spec not found") as info:
        load_job_spec(tmp_path / "nope.yaml")
    assert "\n" not in str(info.value)
    with pytest.raises(SpecError, match="empty"):
        load_job_spec(_write(tmp_path, "# only a comment\n"))


def test_unset_env_var_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SRCOMPRESS_TEST_UNSET", raising=False)
    text = BASE.replace("arch: edsr_baseline", "arch: edsr_baseline\n  weights: ${SRCOMPRESS_TEST_UNSET}/w.pth")
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_job_spec(path)
    assert str(info.value).startswith(f"{path}:{_line(text, 'weights:')}: teacher.weights: ")
    assert "SRCOMPRESS_TEST_UNSET" in str(info.value)


def test_several_problems_are_counted(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + "seed: -1\nsearch: {num_samples: 0}\n")
    with pytest.raises(SpecError, match=r"and 1 more problem\(s\): search\.num_samples"):
        load_job_spec(path)


# ---------------------------------------------------------------------------------------------- values, paths


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("100k", 100_000),
        ("100K", 100_000),
        ("1.2M", 1_200_000),
        ("20G", 20_000_000_000),
        ("0.5k", 500),
        ("49603", 49_603),
        (49603, 49_603),
        (2e6, 2_000_000),
        ("60_000", 60_000),
        ("1e5", 100_000),
    ],
)
def test_parse_size(text: str | int | float, want: int) -> None:
    assert parse_size(text) == want


@pytest.mark.parametrize("bad", ["12 parsecs", "1.5", "1.2345k", "-3k", "0", "k", "", True, 1.5])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="k, M, G or T") as info:
        parse_size(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, UserError)  # the one size parser: the CLI prints it as a one-line error too


def test_values_types_and_defaults() -> None:
    spec = parse_job_spec(
        BASE
        + "budgets: {max_params: 1.2M, max_macs: 20g}\n"
        + "objectives: [psnr_y, 'params:min']\n"
        + "prune: {lambda: 2e-4}\n"
    )
    assert spec.budgets.max_params == 1_200_000 and spec.budgets.max_macs == 20_000_000_000
    assert [(o.metric, o.mode) for o in spec.objectives] == [("psnr_y", "max"), ("params", "min")]
    assert spec.prune.lambda_ == pytest.approx(2e-4)
    # YAML 1.1 reads "1e-4" as a string; range bounds take numbers only, so this needs the float resolver.
    lr = parse_job_spec(BASE.replace("  space:", "  kd_space: {lr: {low: 1e-4, high: 1e-3, log: true}}\n  space:"))
    assert lr.student.kd_space.lr == Range(low=1e-4, high=1e-3, log=True)
    assert spec.student.space["C"].is_int and spec.student.space["L"].step is None
    assert spec.student.kd_space.w_gt == pytest.approx(0.1)  # the authors' weight by default
    assert spec.experiment_name == "t1" and spec.search_seed == 0
    assert spec.tracking_uri.startswith("sqlite:///") and spec.tracking_uri.endswith("mlflow.db")


def test_spec_is_frozen_and_strict() -> None:
    spec = parse_job_spec(BASE)
    with pytest.raises(pydantic.ValidationError):
        spec.seed = 3  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        JobSpec.model_validate({**spec.model_dump(by_alias=True), "extra": 1})


def test_paths_resolve_against_spec_folder_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRC_TEST_ROOT", "/data/root")
    text = BASE.replace(
        "arch: edsr_baseline",
        "arch: edsr_baseline\n  weights: ../w/teacher.pth",
    ) + ("data:\n  train: ['${SRC_TEST_ROOT}/DIV2K', '${SRC_TEST_MISSING:-rel}/T91']\nstorage: {path: out}\n")
    spec = parse_job_spec(text, base_dir=tmp_path / "specs")
    assert spec.teacher.weights == str(tmp_path / "w" / "teacher.pth")
    assert spec.data.train == ["/data/root/DIV2K", str(tmp_path / "specs" / "rel" / "T91")]
    assert spec.storage.path == str(tmp_path / "specs" / "out")  # like every other spec path


def test_check_paths_reports_missing_and_empty(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    text = BASE + "data:\n  train: [empty]\n"
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        check_paths(load_job_spec(path))
    assert str(info.value).startswith(f"{path}:{_line(text, 'train:')}: data.train[0]: ")
    assert "holds no images" in str(info.value)
    text = BASE.replace("arch: edsr_baseline", "arch: edsr_baseline\n  weights: gone.pth")
    path = _write(tmp_path, text)
    with pytest.raises(SpecError, match=r"gone\.pth does not exist; .*if_missing: train"):
        check_paths(load_job_spec(path))


def test_check_paths_accepts_images_and_weights(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "imgs" / "HR").mkdir(parents=True)  # DIV2K-style root: images one level down
    Image.new("RGB", (32, 32)).save(tmp_path / "imgs" / "HR" / "a.png")
    (tmp_path / "bench").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "bench" / "b.png")
    (tmp_path / "testset").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "testset" / "c.png")
    (tmp_path / "t.pth").write_bytes(b"x")
    text = BASE.replace("arch: edsr_baseline", "arch: edsr_baseline\n  weights: t.pth") + (
        "data:\n  train: [imgs]\n  val: bench\n  test: testset\n"
    )
    spec = load_job_spec(_write(tmp_path, text))
    assert check_paths(spec) == spec
    assert spec.data.test == [str(tmp_path / "testset")]  # one path is a list of one test set


def test_fallback_teacher_arch_drops_overrides(tmp_path: Path) -> None:
    text = BASE.replace(
        "arch: edsr_baseline",
        "arch: edsr_baseline\n  weights: gone.pth\n  if_missing: train\n  set: {res_scale: 0.5}\n"
        "  fallback: {arch: edsr_mini, steps: 10}",
    )
    run = check_paths(load_job_spec(_write(tmp_path, text)))
    assert (run.teacher.arch, run.teacher.weights, run.teacher.set) == ("edsr_mini", None, {})


def test_flat_dict_and_hash() -> None:
    a = parse_job_spec(BASE, base_dir="/x")
    reordered = BASE.replace("name: t1\n", "") + "name: t1   # same job\n"
    b = parse_job_spec(reordered, base_dir="/x")
    c = parse_job_spec(BASE.replace("steps: 100", "steps: 200"), base_dir="/x")
    assert a.spec_hash() == b.spec_hash() != c.spec_hash()
    flat = a.to_flat_dict()
    assert flat["student.space.C.step"] == 8 and flat["objectives.1.metric"] == "macs"
    assert flat["prune.lambda"] == pytest.approx(1e-4)
    assert all(not isinstance(v, dict) or v == {} for v in flat.values())


def test_patch_schedule() -> None:
    spec = parse_job_spec(BASE + "data: {patch_sizes: [64, 160], patch_boundaries: [50]}\n")
    assert spec.data.hr_patch is None
    assert [spec.data.patch_at(s) for s in (0, 49, 50, 99)] == [64, 64, 160, 160]
    with pytest.raises(SpecError, match="patch_boundaries"):
        parse_job_spec(BASE + "data: {patch_sizes: [64, 160]}\n")


def test_teacher_cache_rejects_a_patch_curriculum() -> None:
    # The cache holds patches of one size; a curriculum with it would fail inside every trial's worker.
    text = BASE + "data: {patch_sizes: [64, 160], patch_boundaries: [50], cache: {enabled: true}}\n"
    with pytest.raises(SpecError, match=r"data\.cache\.enabled: .*patch_sizes is a curriculum"):
        parse_job_spec(text)
    assert parse_job_spec(BASE + "data: {hr_patch: 64, cache: {enabled: true}}\n").data.cache.enabled
