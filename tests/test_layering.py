"""The code's shape, checked from its own source: layering, import cycles, deferred imports, sizes.

- Dependencies point one way, ``orchestrator/ -> search_spaces/ -> sr/``; ``sr/`` imports no Ray, Optuna or MLflow.
- No import cycle among the project's modules, counting imports inside functions (``TYPE_CHECKING`` excluded).
- An import inside a function defers a heavy dependency and says so in a comment on it or just above its run of
  imports.
- No module over 600 lines and no function over 100 lines, unless the file says why (``# size-exempt: <reason>``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sr", "search_spaces", "orchestrator")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100
EXEMPT_MARK = "# size-exempt:"


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_pkg: bool) -> list[str]:
    """The project modules an import statement names (``from a import b`` may name module ``a.b``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_pkg else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    return [base, *(f"{base}.{a.name}" for a in node.names)]


def _project_imports(module: str, path: Path) -> set[str]:
    """Every project module ``module`` imports, at module level or inside a function (a deferred import still
    makes a cycle), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for b in ast.walk(tree) if isinstance(b, ast.If) and _is_type_checking(b) for n in ast.walk(b)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skip:
            found.update(n for n in _resolve(module, node, path.name == "__init__.py") if n in MODULES)
    found.discard(module)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles():
    graph = {}
    for name, path in MODULES.items():
        # A package's __init__ importing its own submodules (re-exports) is not a cycle of the code's logic.
        graph[name] = {
            m for m in _project_imports(name, path) if not (m.startswith(name + ".") and path.name == "__init__.py")
        }
    cycles = _cycles(graph)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize(
    ("pkg", "forbidden"),
    [
        ("sr", ("ray", "optuna", "mlflow", "orchestrator", "search_spaces")),
        ("search_spaces", ("orchestrator", "ray", "mlflow")),
    ],
)
def test_layering(pkg, forbidden):
    bad = []
    for name, path in MODULES.items():
        if not name.startswith(pkg):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad += [f"{name}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert not bad, f"{pkg}/ must not import {forbidden}: {bad}"


def _import_groups(tree: ast.AST):
    """Runs of consecutive import statements inside functions (one comment may cover a run)."""
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            for field in ("body", "orelse", "finalbody"):
                run: list[ast.stmt] = []
                stmts = getattr(node, field, None)
                if not isinstance(stmts, list):
                    continue
                for stmt in [*stmts, None]:
                    if isinstance(stmt, ast.Import | ast.ImportFrom):
                        run.append(stmt)
                    elif run:
                        yield run
                        run = []


def test_imports_inside_functions_say_why():
    missing = []
    count = 0
    for path in MODULES.values():
        lines = path.read_text().splitlines()
        seen: set[int] = set()
        for run in _import_groups(ast.parse("\n".join(lines))):
            first, last = run[0].lineno, run[-1].end_lineno or run[-1].lineno
            if first in seen:
                continue
            seen.add(first)
            count += len(run)
            above = lines[first - 2].strip() if first > 1 else ""
            if not any("#" in line for line in lines[first - 1 : last]) and not above.startswith("#"):
                missing.append(f"{path.relative_to(REPO)}:{first}")
    print(f"{count} imports inside functions, each run with its reason")
    assert not missing, f"imports inside functions without a comment saying why: {missing}"


def test_module_and_function_sizes():
    over = []
    for path in MODULES.values():
        text = path.read_text()
        if EXEMPT_MARK in text:
            continue
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            over.append(f"{path.relative_to(REPO)}: {n} lines")
        for fn in ast.walk(ast.parse(text)):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    over.append(f"{path.relative_to(REPO)}:{fn.lineno} {fn.name}: {length} lines")
    assert not over, f"over {MAX_MODULE_LINES} lines per module / {MAX_FUNCTION_LINES} per function: {over}"
