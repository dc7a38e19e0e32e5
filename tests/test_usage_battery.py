"""Acceptance 1 of the usage issue: a battery of malformed inputs, each run as ``python -m orchestrator ...``.

Every input must exit 2 with exactly one stderr line that names the cause and a fix, no traceback, and leave
nothing behind (the files under its folder are the same before and after; no ``job_state.json``, no MLflow
store, no empty ``runs/<name>/``). Inputs that never start Ray are grouped: two driver subprocesses run half of
them each, calling the console entry point (``orchestrator.cli.main``, what ``python -m orchestrator`` runs) once
per input in that input's folder with file descriptor 2 redirected to a file of its own, so that whatever any
library writes to stderr is counted (warning registries are cleared between inputs so nothing is hidden as
"already shown"). The inputs that talk to Ray (an unreachable ``--address``) each run as their own
``python -m orchestrator`` and fail before anything heavy starts.

Read-only outputs: the tests run as root, which ignores permission bits, so a chmod 0500 folder would not fail.
They use a path through a regular file (``afile.txt/out``: ENOTDIR for everyone, root included) and a path in
``/sys`` (sysfs refuses new files even to root: EACCES; a read-only mount gives EROFS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import FAST_RAY_ENV, REPO, write_tiny_job
from PIL import Image

# A fix is a hint after the cause: "; " then one of these words somewhere after it.
HINTS = (
    "pass", "use", "set", "run", "see", "fix", "drop", "give", "write", "pick", "replace", "lower", "point",
    "re-save", "re-download", "rerun", "check", "change", "remove", "do not", "open",
)  # fmt: skip


def _has_fix(line: str) -> bool:
    cause, sep, rest = line.partition("; ")
    return bool(sep) and any(h in rest.lower() for h in HINTS)


class _Payload:
    """Pickles as a call to ``os.system``: loading it without weights_only would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _png(path: Path, side: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Path]:
    """Read-only inputs shared by the battery: images good and bad, checkpoints wrong and malicious."""
    from sr.models import build

    d = tmp_path_factory.mktemp("battery_inputs")
    for i in range(2):
        _png(d / "imgs" / f"{i}.png", 64, seed=i)
    _png(d / "small" / "0.png", 20)
    _png(d / "tiny" / "0.png", 10)
    (d / "corrupt").mkdir()
    (d / "corrupt" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    (d / "empty").mkdir()
    (d / "afile.txt").write_text("a regular file, not a folder\n")
    torch.save(build("edsr_mini", C=8, B=1).state_dict(), d / "c8.pth")  # not edsr_mini's default C=16
    torch.save(build("edsr_mini").state_dict(), d / "edsr_mini.pth")
    torch.save({"params": _Payload(d / "PWNED")}, d / "evil.pth")
    return {"dir": d, "marker": d / "PWNED"}


def _spec_case(root: Path, name: str, overrides: dict | None = None, text: str | None = None) -> tuple[Path, Path]:
    """A tiny job in its own folder (``root/name``), changed by dotted ``overrides`` or replaced YAML ``text``."""
    folder = root / name
    folder.mkdir(parents=True)
    spec = write_tiny_job(folder, **(overrides or {}))
    if text is not None:
        spec.write_text(text)
    return spec, folder


def _cases(fx: dict[str, Path], root: Path) -> list[tuple[str, list[str], Path, str]]:
    """``(name, argv, folder that must stay unchanged, text the line must contain)``; cwd is the folder."""
    d = fx["dir"]
    imgs, small, corrupt, tiny = (str(d / n) for n in ("imgs", "small", "corrupt", "tiny"))
    through_file = d / "afile.txt"
    cases: list[tuple[str, list[str], Path, str]] = []

    def cli(name: str, argv: list[str], needle: str) -> None:
        folder = root / name
        folder.mkdir(parents=True)
        cases.append((name, argv, folder, needle))

    def spec(name: str, needle: str, *, overrides=None, text=None, extra=(), mutate=None) -> None:
        path, folder = _spec_case(root, name, overrides)
        if mutate is not None:
            data = yaml.safe_load(path.read_text())
            mutate(data)
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        if text is not None:
            path.write_text(text)
        cases.append((name, ["run", str(path), *extra], folder, needle))

    ok_w, evil_w, c8_w = str(d / "edsr_mini.pth"), str(d / "evil.pth"), str(d / "c8.pth")
    distill = ["distill", "--student-arch", "edsr_mini", "--data", imgs, "--steps", "2", "--gt-only"]
    prune = ["prune", "--arch", "edsr_mini", "--weights", ok_w, "--data", imgs, "--steps", "2"]
    compress = ["compress", "--arch", "edsr_mini", "--weights", ok_w, "--data", imgs, "--density", "0.1"]
    evaluate = ["eval", "--arch", "edsr_mini", "--data", imgs, "--weights"]
    teacher = ["--teacher-arch", "edsr_mini", "--teacher-weights"]
    # ---- item 1: command-line usage errors (typer's own classes)
    cli("bare srcompress", [], "no command given")
    cli("eval without options", ["eval"], "Missing option '--weights'")
    cli("unknown command", ["complexify"], "complexify")
    cli("unknown option", ["complexity", "edsr_mini", "--bogus"], "--bogus")
    cli("non-numeric --scale", ["complexity", "edsr_mini", "--scale", "abc"], "--scale")
    cli("non-numeric --density", ["allocate", "--arch", "edsr_baseline", "--density", "abc"], "--density")
    cli("non-numeric --port", ["ui", "--port", "abc"], "--port")
    cli("option without its value", ["complexity", "edsr_mini", "--scale"], "--scale")
    cli("run without a job", ["run"], "'job'")
    cli("export without a model", ["export"], "'model'")
    cli("distill without options", ["distill"], "--student-arch")
    cli("prune without --weights", ["prune", "--arch", "edsr_mini"], "--weights")
    # ---- item 2: errors that used to be internal ones
    cli("--set C=abc", ["complexity", "edsr_mini", "--set", "C=abc"], "C='abc'")
    cli("--set float knob", [*evaluate, ok_w, "--set", "res_scale=big"], "res_scale")
    cli("ui --port 70000", ["ui", "--port", "70000"], "65535")
    cli("ui --port 0", ["ui", "--port", "0"], "--port")
    cli("distill --out through a file", [*distill, "--out", str(through_file / "out")], "is a file")
    cli("distill --out in /sys", [*distill, "--out", "/sys/srcompress_battery"], "/sys")
    cli("prune --out through a file", [*prune, "--out", str(through_file / "p")], "is a file")
    cli("compress --out through a file", [*compress, "--kd-steps", "2", "--out", str(through_file / "c")], "is a file")
    cli("report -o through a file", ["report", "-o", str(through_file / "r.html")], "is a file")
    cli("report -o in /sys", ["report", "-o", "/sys/srcompress_battery.html"], "/sys")
    cli("table -o through a file", ["table", "-o", str(through_file / "t.parquet")], "is a file")
    cli("export -o through a file", ["export", "0123abcd", "-o", str(through_file / "m.pt2")], "is a file")
    cli("table on a missing store", ["table", "-o", "t.csv", "--tracking-uri", "sqlite:///nowhere/mlflow.db"], "store")
    # ---- item 4: messages name real options and give a fix
    cli("distill --hr-patch 40", [*distill, "--hr-patch", "40"], "--hr-patch 40")
    cli("distill --batch-size 0", [*distill, "--batch-size", "0"], "--batch-size")
    cli("distill --lr -1", [*distill, "--lr", "-1"], "--lr")
    cli("compress --kd-steps 0", [*compress, "--kd-steps", "0"], "--kd-steps")
    small_data = [*distill[:4], small, *distill[5:], "--hr-patch", "32"]
    cli("image smaller than --hr-patch", small_data, "--hr-patch")
    cli("corrupt PNG for distill", [*distill[:4], corrupt, *distill[5:], "--hr-patch", "32"], "--skip-bad")
    cli("eval on images too small for SSIM", ["eval", "--arch", "edsr_mini", "--weights", ok_w, "--data", tiny], "SSIM")
    # ---- item 5: checkpoints
    cli("eval of an os.system pickle", [*evaluate, evil_w], "posix.system")
    cli(
        "distill teacher with an os.system pickle", [*distill[:-1], "--hr-patch", "32", *teacher, evil_w], "nothing ran"
    )
    cli("eval of the wrong architecture", [*evaluate, c8_w], "does not fit arch")
    # ---- items 3-5 in a job spec (`srcompress run`): all before Ray
    spec("run: corrupt PNG in data.train", "data.skip_bad: true", overrides={"data.train": [corrupt]})
    spec("run: image smaller than hr_patch", "smaller than the 32x32", overrides={"data.train": [small]})
    spec("run: corrupt PNG in data.val", "data.val", overrides={"data.val": corrupt})
    spec("run: data.val too small for SSIM", "SSIM_Y", overrides={"data.val": tiny})
    spec("run: skip_bad but nothing usable", "no usable image",
         overrides={"data.train": [corrupt], "data.skip_bad": True})  # fmt: skip
    spec("run: teacher of another architecture", "teacher.arch", overrides={"teacher.weights": str(d / "c8.pth"),
                                                                             "teacher.set": {}})  # fmt: skip
    spec("run: teacher with an os.system pickle", "posix.system", overrides={"teacher.weights": str(d / "evil.pth")})
    spec("run: data.skip_bad not a bool", "data.skip_bad", overrides={"data.skip_bad": "sometimes"})
    spec("run: misspelt data.skip_bad", "skip_bda", overrides={"data.skip_bda": True})
    spec("run: folder without images", "holds no images", overrides={"data.train": [str(d / "empty")]})
    spec("run: hr_patch 40", "hr_patch", overrides={"data.hr_patch": 40})
    spec("run: wrong type", "training.steps", overrides={"training.steps": "many"})
    spec("run: YAML syntax error", "tiny.yaml:3", text="name: x\nteacher: {arch: imdn\n")
    spec("run: unreachable tracking URI", "127.0.0.1:9", extra=["--tracking-uri", "http://127.0.0.1:9"])
    cli("run: missing spec file", ["run", str(root / "nope.yaml")], "nope.yaml")
    return cases


def _ray_cases(root: Path) -> list[tuple[str, list[str], Path, str]]:
    cases = []
    for name, address, needle in (
        ("run: unreachable --address", "ray://127.0.0.1:9", "cannot reach the Ray cluster"),
        ("run: dashboard URL as --address", "http://127.0.0.1:8265", "srcompress submit"),
    ):
        spec, folder = _spec_case(root, name)
        cases.append((name, ["run", str(spec), "--address", address], folder, needle))
    return cases


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


_ENV = {**FAST_RAY_ENV, "PYTHONPATH": str(REPO), "SRCOMPRESS_DEBUG": "0"}

# Runs inputs [(argv, cwd, stderr file)] through the console entry point, one after another, in one process.
_DRIVER = """
import json, os, sys
from orchestrator.cli import main
results = []
for argv, cwd, err_path in json.load(open(sys.argv[1])):
    for mod in list(sys.modules.values()):  # each input sees its warnings as a fresh process would
        reg = getattr(mod, "__warningregistry__", None)
        if isinstance(reg, dict):
            reg.clear()
    os.chdir(cwd)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(err_path, "w") as err:
        os.dup2(err.fileno(), 2)
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    results.append(rc)
print(json.dumps(results))
"""


def _run_group(cases: list[tuple[str, list[str], Path, str]], work: Path) -> list[tuple]:
    """Run ``cases`` in one driver process; ``(name, rc, stderr, files before, files after, needle)`` each."""
    work.mkdir(parents=True, exist_ok=True)
    before = [_files(folder) for _, _, folder, _ in cases]
    errs = [work / f"{i}.err" for i in range(len(cases))]
    plan = work / "plan.json"
    plan.write_text(
        json.dumps([[argv, str(folder), str(e)] for (_, argv, folder, _), e in zip(cases, errs, strict=True)])
    )
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(plan)],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, **_ENV},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    return [
        (name, rc, e.read_text(), b, _files(folder), needle)
        for (name, _, folder, needle), rc, e, b in zip(cases, codes, errs, before, strict=True)
    ]


def _run(case: tuple[str, list[str], Path, str]) -> tuple:
    """One input as its own ``python -m orchestrator`` process."""
    name, argv, folder, needle = case
    before = _files(folder)
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *argv],
        capture_output=True,
        text=True,
        cwd=folder,
        env={**os.environ, **_ENV},
        timeout=300,
    )
    return name, proc.returncode, proc.stderr, before, _files(folder), needle


def test_usage_battery(fx, tmp_path):
    cases = _cases(fx, tmp_path / "cli")
    ray_cases = _ray_cases(tmp_path / "ray")
    halves = [cases[0::2], cases[1::2]]
    with ThreadPoolExecutor(max_workers=2) as pool:  # none of these start Ray
        groups = pool.map(_run_group, halves, [tmp_path / "driver0", tmp_path / "driver1"])
        results = [r for group in groups for r in group]
    results += [_run(c) for c in ray_cases]  # their own processes, one at a time

    failures = []
    for name, rc, err, before, after, needle in results:
        line = err.rstrip("\n")
        print(f"{name}: rc={rc}: {line}")
        problems = []
        if rc != 2:
            problems.append(f"exit {rc}")
        if err.count("\n") != 1 or not line.strip():
            problems.append(f"{err.count(chr(10))} stderr lines")
        if "Traceback" in err or "internal error" in err:
            problems.append("traceback/internal error")
        if not line.startswith("srcompress: error: ") or not _has_fix(line):
            problems.append("no cause; fix")
        if needle not in line:
            problems.append(f"{needle!r} not named")
        if after != before:
            problems.append(f"left behind {sorted(after - before)}")
        if any(p.endswith("job_state.json") or p.endswith("mlflow.db") for p in after):
            problems.append("job state or store written")
        if problems:
            failures.append(f"{name}: {', '.join(problems)}: {err!r}")
    assert not fx["marker"].exists(), "the os.system payload ran"
    assert not failures, "\n".join(failures)
    n = len(results)
    assert n >= 40
    print(f"{n} malformed inputs: all one line, exit 2")


def test_skip_bad_reaches_the_workers_and_the_preflight_skips(fx, tmp_path, capsys):
    """``data.skip_bad: true``: the pre-Ray check skips a corrupt image (one warning line) and the workers'
    ``DataRef`` carries the flag; without it the same data fails before Ray."""
    from orchestrator._preflight import preflight
    from orchestrator.tasks import data_ref
    from search_spaces import SpecError, check_paths, load_job_spec

    mixed = tmp_path / "mixed"
    _png(mixed / "good.png", 64)
    (mixed / "bad.png").write_bytes((fx["dir"] / "corrupt" / "0.png").read_bytes())
    path = write_tiny_job(tmp_path, **{"data.train": [str(mixed)], "data.skip_bad": True})
    spec = check_paths(load_job_spec(path), path)
    preflight(spec, path)
    out = capsys.readouterr().out
    assert out.count("warning: skipping") == 1 and "bad.png" in out
    assert data_ref(spec).skip_bad is True

    path = write_tiny_job(tmp_path, **{"data.train": [str(mixed)], "data.skip_bad": False})
    spec = check_paths(load_job_spec(path), path)
    assert data_ref(spec).skip_bad is False
    with pytest.raises(SpecError, match=r"tiny\.yaml:\d+: data\.train\[0\]: cannot read image .*bad\.png"):
        preflight(spec, path)
