"""The layout rules of docs/architecture.md, checked on the source itself: imports go one way
between the three layers, no module imports itself back through others (lazy imports inside
functions included), and no file or function outgrows what a reader takes in at once."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"isrt.kernels": REPO / "kernels", "isrt.engine": REPO / "engine", "isrt": REPO / "isrt"}
MAX_FILE_LINES, MAX_FUNCTION_LINES = 500, 80


def _modules() -> dict[str, Path]:
    """import name -> file, for every module of the three folders (setup.py's package_dir)."""
    out = {}
    for prefix, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Modules of ours that `name` imports anywhere in its file (top level or inside a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # "isrt.engine.io.read_json" -> "isrt.engine.io"
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own parents load first anyway
                found.add(t)
    return found


def _layer(name: str) -> int:
    return 0 if name.startswith("isrt.kernels") else 1 if name.startswith("isrt.engine") else 2


def test_imports_go_one_way_between_layers():
    wrong = [(m, t) for m, p in MODULES.items() for t in _imports(m, p) if _layer(t) > _layer(m)]
    assert not wrong, f"a lower layer imports a higher one: {wrong}"


def test_no_import_cycle_lazy_imports_included():
    graph = {m: _imports(m, p) for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_files_and_functions_stay_short(name):
    path = MODULES[name]
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= MAX_FILE_LINES, f"{path.relative_to(REPO)}: over {MAX_FILE_LINES} lines"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.relative_to(REPO)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_checker_sees_lazy_imports_and_our_modules():
    assert "isrt.engine.video" in MODULES and "isrt.kernels" in MODULES
    lazy = _imports("isrt.loop", MODULES["isrt.loop"])  # the loop imports the warm start inside a method
    assert "isrt.warmstart" in lazy and "isrt.config" in lazy
