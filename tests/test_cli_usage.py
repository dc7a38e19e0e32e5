"""The CLI package: explicit command registration, and usage errors / Ctrl-C as one line with exit 2 / 130."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import orchestrator.cli.core
from orchestrator.cli import commands, get_app, main

REPO = Path(__file__).resolve().parents[1]

USAGE_ERRORS = {
    "missing options": (["eval"], "Missing option '--weights'"),
    "bad value": (["complexity", "edsr_mini", "--scale", "abc"], "'--scale'"),
    "unknown option": (["complexity", "edsr_mini", "--bogus"], "--bogus"),
    "unknown command": (["complexify"], "complexify"),
    "no command": ([], "no command given"),
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_error_is_one_line_exit_2(case, capsys):
    args, needle = USAGE_ERRORS[case]
    rc = main(args)
    _, err = capsys.readouterr()
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("srcompress: error: ") and needle in err
    assert "Traceback" not in err and "internal error" not in err


def test_usage_error_names_the_command_help(capsys):
    assert main(["eval"]) == 2
    assert "see srcompress eval --help" in capsys.readouterr().err


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(orchestrator.cli.core, "complexity_row", interrupted)
    rc = main(["complexity", "edsr_mini"])
    _, err = capsys.readouterr()
    assert rc == 130 and err == "srcompress: interrupted\n"


def test_help_exits_0_and_lists_every_command_in_order(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    section = out.split(" Commands ", 1)[1]
    listed = [m.group(1) for m in re.finditer(r"^\W+([a-z]+)  ", section, flags=re.MULTILINE)]
    assert listed == [name for name, _ in commands()]


def test_every_command_is_registered_once_from_the_list():
    get_app()
    registered = [c.name for c in get_app().registered_commands]  # a second call registers nothing again
    assert registered == [name for name, _ in commands()]
    assert len(set(registered)) == len(registered)
    assert {"complexity", "eval", "run", "pareto", "export", "submit", "prune", "compress"} <= set(registered)


def test_command_modules_do_not_import_the_package():
    """No cycle: only ``orchestrator/cli/__init__.py`` gathers the commands; command modules never import it."""
    for path in sorted((REPO / "orchestrator").glob("**/*.py")):
        if path == REPO / "orchestrator" / "cli" / "__init__.py" or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "orchestrator.cli":
                raise AssertionError(f"{path.relative_to(REPO)} imports orchestrator.cli; use orchestrator.cli._common")
            if isinstance(node, ast.ImportFrom) and node.module == "orchestrator":
                assert "cli" not in {a.name for a in node.names}, path


def test_method_module_imported_first_still_registers():
    """``orchestrator.cli.method`` imported on its own first (as tests and workers may): registration still works."""
    code = "import orchestrator.cli.method as m, orchestrator.cli as c; raise SystemExit(c.main(['prune', '--help']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("module", ["orchestrator", "orchestrator.cli"])
def test_entry_points_exit_2_on_a_usage_error(module):
    """``python -m orchestrator`` (= ``srcompress``) and ``python -m orchestrator.cli`` (the Ray Jobs entrypoint)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, "complexity", "edsr_mini", "--scale", "abc"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
