"""Workspace-level checks: every package imports, has a version, a README and a CHANGELOG entry for it."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "cofe_encoders": ROOT / "packages/encoders",
    "cofe_fusion": ROOT / "packages/fusion",
    "cofe_dit": ROOT / "packages/dit",
    "cofe_curation": ROOT / "packages/curation",
    "cofe_bench": ROOT / "packages/bench",
    "cofe_apps": ROOT / "apps",
}


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_package_has_version_readme_and_changelog(module):
    mod = importlib.import_module(module)
    assert re.fullmatch(r"\d+\.\d+\.\d+", mod.__version__), mod.__version__
    folder = PACKAGES[module]
    assert (folder / "README.md").read_text().strip()
    changelog = (folder / "CHANGELOG.md").read_text()
    assert f"## {mod.__version__}" in changelog, f"{folder}/CHANGELOG.md has no entry for {mod.__version__}"


@pytest.mark.parametrize("module", sorted(m for m in PACKAGES if m != "cofe_apps"))
def test_library_packages_do_not_import_apps(module):
    src = PACKAGES[module] / "src" / module
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "cofe_apps" not in text, f"{path} imports cofe_apps; library packages must not depend on apps"


def test_dit_knows_nothing_of_cofe():
    for path in (ROOT / "packages/dit/src/cofe_dit").rglob("*.py"):
        text = path.read_text()
        for other in ("cofe_fusion", "cofe_encoders", "lightning", "omegaconf", "mlflow"):
            assert f"import {other}" not in text and f"from {other}" not in text, f"{path} imports {other}"


def _imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that the file imports anywhere (module level or inside functions)."""
    import ast

    tree = ast.parse(path.read_text())
    typing_only = set()  # `if TYPE_CHECKING:` imports never run
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            typing_only |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(package + ".")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == package:
                found |= {f"{package}.{a.name}" for a in node.names}
            elif node.module.startswith(package + "."):
                found.add(node.module)
    return found


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_no_import_cycle_inside_a_package(module):
    """No module of a package reaches itself through imports, not even through imports hidden inside functions
    (a function-level import that breaks a cycle is still a cycle of responsibilities)."""
    src = PACKAGES[module] / "src" / module
    graph = {}
    for path in src.rglob("*.py"):
        rel = path.relative_to(src).with_suffix("")
        name = ".".join((module, *rel.parts)).removesuffix(".__init__")
        graph[name] = {m for m in _imports(path, module) if m != name}
    names = set(graph)
    # A package's __init__ re-exports its modules: edges into the package itself are not cycles.
    edges = {n: {m for m in deps if m in names and m != module} for n, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
