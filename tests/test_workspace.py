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
