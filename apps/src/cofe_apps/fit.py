"""`cofe fit`: the entry of the training command, light enough to answer ``--help`` without Lightning.

Training itself is :mod:`cofe_apps.train` (LightningCLI over ``CoFEModule`` and ``ShardDataModule``). Its help is
built by LightningCLI from the signatures and docstrings of the Trainer, the module and the data module, which means
importing Lightning (and through it torchmetrics, torchvision and transformers): several seconds on a fast machine.
So ``cofe fit --help`` (exactly that: no other arguments) is answered from a copy rendered once and kept in the
user's cache (``~/.cache/cofe/help``, see :func:`cofe_apps.helptext.cached_help`), keyed by the source of the
modules that define the options, the versions of Lightning, jsonargparse and torch, the environment variables that
set defaults and the terminal width. ``COFE_HELP_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# The modules whose code and docstrings shape `cofe fit --help`.
HELP_SOURCES = ("train.py", "module.py", "data.py", "helptext.py", "fit.py")
HELP_PACKAGES = ("lightning", "jsonargparse", "torch", "docstring-parser")
HELP_ENV = ("MLFLOW_TRACKING_URI", "COFE_EXPERIMENT")


def help_key() -> list[str]:
    """Everything the rendered help depends on (cheap: file contents and package metadata, no imports)."""
    import importlib.metadata

    here = Path(__file__).resolve().parent
    key = [sys.version, f"columns={shutil.get_terminal_size().columns}"]
    key += [(here / name).read_text() for name in HELP_SOURCES]
    for name in HELP_PACKAGES:
        try:
            key.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            key.append(f"{name} absent")
    key += [f"{var}={os.environ.get(var, '')}" for var in HELP_ENV]
    return key


def render_help() -> str:
    """LightningCLI's own ``fit --help``, captured (imports Lightning)."""
    import contextlib
    import io

    from cofe_apps.train import main as train_main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            train_main(["--help"])
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
    return buf.getvalue()


def main(argv: list[str]) -> int:
    """`cofe fit --config FILE [overrides]`; `cofe fit --help` from the cache."""
    if list(argv) in (["-h"], ["--help"]):
        from cofe_apps.helptext import cached_help

        sys.stdout.write(cached_help("fit", help_key(), render_help))
        return 0
    from cofe_apps.train import main as train_main

    return train_main(list(argv))
