"""The layout a newcomer reads: layers import only downwards, no import cycle, no module too long to read.

Imports are read from the source (every `import`, also inside functions), so a lazy import that closes a cycle
or reaches up a layer counts as much as a top-level one.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "capture", "train", "export")
LINTED = (*PACKAGES, "tests", "benchmarks")  # and setup.py
MAX_LINES = 500

# A module may import modules of its own layer and of the layers listed for it, nothing else in the project.
LAYERS: dict[str, set[str]] = {
    "edge.core": set(),
    "edge.runtime": {"edge.core"},
    "train": {"edge.core"},
    # plain capture writes a dataset: it may read frames, nothing that serves, trains or exports
    "capture": {"edge.core", "edge.runtime"},
    "export": {"edge.core", "edge.runtime"},
    "edge.service": {"edge.core", "edge.runtime"},
    # the applications: teach (edge teach, capture --web) serves, trains and exports; the CLIs call everything
    "edge.teach": {"edge.core", "edge.runtime", "edge.service", "train", "export", "capture"},
    "capture.cli": {"edge.core", "edge.runtime", "capture", "edge.teach"},
    "capture.__main__": {"capture.cli"},
    "edge.cli": {"edge.core", "edge.runtime", "edge.service", "train", "export", "capture", "edge.teach"},
}
TOP = {"edge"}  # the package itself (edge/__init__.py, __version__) may be imported from anywhere


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (relative imports resolved; `from pkg import mod` -> pkg.mod)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import edge.core.errors.x` style attribute paths -> the module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _layer(name: str) -> str | None:
    return max((layer for layer in LAYERS if name == layer or name.startswith(layer + ".")), key=len, default=None)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_is_in_a_layer(graph):
    loose = [m for m in graph if _layer(m) is None and m not in TOP and m.count(".") > 0 and not m.endswith("__main__")]
    assert not loose, f"modules outside edge.core/runtime/service/cli, train, export, capture: {loose}"
    assert not [m for m in graph if m.startswith("edge.") and m.count(".") == 1 and _layer(m) is None
                and not m.endswith("__main__")], "edge/ keeps only its layer subpackages"


def test_lower_layers_never_import_higher_ones(graph):
    bad = []
    for mod, deps in graph.items():
        layer = _layer(mod)
        if layer is None:
            continue
        allowed = LAYERS[layer] | {layer}
        for dep in deps:
            dep_layer = _layer(dep)
            if dep in TOP or dep_layer is None:
                continue
            if dep_layer not in allowed:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports that reach up a layer:\n" + "\n".join(sorted(bad))


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of 2+ modules (Tarjan): each one is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w in TOP:
                continue
            if w not in index:
                visit(w)
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
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle(graph):
    assert not find_cycles(graph), f"import cycles: {find_cycles(graph)}"


def test_the_checker_counts_function_level_imports_and_finds_cycles(tmp_path):
    # the cycle test is only worth something if a lazy import inside a function closes a cycle too
    pkg = tmp_path / "edge" / "core"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("def f():\n    from edge.core import b\n")
    (pkg / "b.py").write_text("from .a import f\n")
    known = {"edge", "edge.core", "edge.core.a", "edge.core.b"}
    graph = {m: _imports(m, pkg / f"{m[-1]}.py", known) for m in ("edge.core.a", "edge.core.b")}
    assert graph == {"edge.core.a": {"edge.core.b"}, "edge.core.b": {"edge.core.a"}}
    assert find_cycles(graph) == [["edge.core.a", "edge.core.b"]]
    assert find_cycles({"edge.core.a": {"edge.core.b"}, "edge.core.b": set()}) == []


def test_no_module_longer_than_a_reader_can_hold():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_test_module_imports_another():
    # shared test code lives in conftest.py fixtures or plain helper modules (export_helpers, serve_helpers...),
    # so every test module runs alone and in any order
    tests = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    bad = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path.name} imports {n}" for n in names if n.split(".")[0] in tests]
    assert not bad, bad


def _linted_files() -> list[Path]:
    return [p for d in LINTED for p in sorted((ROOT / d).rglob("*.py"))] + [ROOT / "setup.py"]


def test_every_noqa_names_its_rule_and_says_why():
    # a bare suppression hides every rule and tells the next reader nothing: name the rule, then say why
    form = re.compile(r"# noqa: [A-Z]+[0-9]+(, [A-Z]+[0-9]+)* - \S")
    bad = []
    for path in _linted_files():
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
        bad += [f"{path.relative_to(ROOT)}:{t.start[0]}: {t.string}" for t in tokens
                if t.type == tokenize.COMMENT and "noqa" in t.string.lower() and not form.search(t.string)]
    assert not bad, "\n".join(bad)


def _ruff() -> list[str] | None:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    found = shutil.which("ruff")
    return [found] if found else None


def test_the_linter_passes():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e .[dev])")
    run = subprocess.run([*ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
