"""Library and module code reports through `logging` (Lightning's rank-aware `rank_zero_info` in the modules), never
`print`: a print runs on every rank of a distributed job and cannot be silenced. Commands (the `cofe` entry points,
benchmarks, tests) print their own output."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "apps" / "src" / "cofe_apps"
# apps modules that are library code (used by the commands, the LightningModule and the DataModule), not commands.
APPS_LIBRARY = (
    "model.py",
    "pipeline.py",
    "module.py",
    "data.py",
    "components.py",
    "weights.py",
    "specs.py",
    "io.py",
    "synthetic.py",
)
LIBRARY = sorted([*ROOT.glob("packages/*/src/**/*.py"), *(APPS / name for name in APPS_LIBRARY)])


def prints(path: Path) -> list[int]:
    """Lines where ``print`` is called or passed on (``log=print``)."""
    tree = ast.parse(path.read_text())
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "print"]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_print_in_library_code(path):
    lines = prints(path)
    assert not lines, f"{path.relative_to(ROOT)} prints at lines {lines}: use logging (rank_zero_info in modules)"


def test_the_check_sees_a_print(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f(log=print):\n    print('x')\n")
    assert prints(sample) == [1, 2]
