"""Provenance lines for benchmark output: the git revision of the source tree a script runs from.

Standard library only, in one place for every package's benchmarks (they cannot import cofe_apps, whose
``cofe_apps.io.git_revision`` the installed commands use): a benchmark puts this folder on ``sys.path``::

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))
    from provenance import git_revision
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_revision(scope: str | Path | None = None, short: bool = True) -> str:
    """The commit of the tree (``HEAD``), with ``+dirty`` when tracked files under ``scope`` (a path relative to the
    repository root; default: all of it) differ from it; ``unknown`` outside a git checkout.

    Example:
        >>> git_revision("packages/dit")  # doctest: +SKIP
        '5166f3f+dirty'
    """
    args = ["git", "-C", str(ROOT)]
    try:
        rev = subprocess.run([*args, "rev-parse", *(["--short"] if short else []), "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
        status = subprocess.run([*args, "status", "--porcelain", "--untracked-files=no", "--", str(scope or ".")],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if status.strip() else "")
