"""The READMEs' commands: every block fenced as ```bash offline runs (in a scratch folder with curated shards of
synthetic clips of a real face and a face photo, as the READMEs assume), and every `cofe` command line in any
```bash block parses with that command's own parser (so an option a README names exists)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", ROOT / "apps" / "README.md", *sorted((ROOT / "packages").glob("*/README.md"))]
FENCE = re.compile(r"^```(bash[^\n]*)\n(.*?)^```", re.M | re.S)


def blocks(tag: str | None = None) -> list[tuple[str, str, str]]:
    """``(id, info, text)`` of the bash blocks of every README (only those whose info string has ``tag``)."""
    out = []
    for readme in READMES:
        for i, m in enumerate(FENCE.finditer(readme.read_text())):
            info, text = m.group(1).split(), m.group(2)
            if tag is None or tag in info[1:]:
                out.append((f"{readme.relative_to(ROOT)}#{i}", " ".join(info), text))
    return out


def command_lines(text: str) -> list[list[str]]:
    """The shell words of each command in a block (continuations joined, comments dropped, `A && B` split)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        cmd: list[str] = []
        for w in [*words, "&&"]:
            if w in ("&&", "||", "|", ";"):
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(w)
    return out


OFFLINE = blocks("offline")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """What the offline blocks start from: `cofe curate`'s shard layout and a face photo, in a scratch folder with
    the repository's apps/ (for its configs)."""
    from PIL import Image

    from cofe_apps.synthetic import hopper, make_curated_shards

    tmp = tmp_path_factory.mktemp("readme")
    shards = tmp / "curated" / "shards"
    for i, path in enumerate(make_curated_shards(shards, shards=2, per_shard=3)):
        Path(path).rename(shards / f"rank0-{i:06d}.tar")  # as `cofe curate --out curated` names them
    Image.fromarray(hopper()).save(tmp / "face.png")
    (tmp / "apps").symlink_to(ROOT / "apps")
    return tmp


def test_there_are_offline_blocks_and_a_real_run():
    ids = [i for i, _, _ in OFFLINE]
    assert any(i.startswith("README.md") for i in ids) and any(i.startswith("apps/README.md") for i in ids)
    text = (ROOT / "README.md").read_text()
    assert "## A real run" in text and "cofe weights check" in text


@pytest.mark.parametrize(
    "block_id, info, text",
    [pytest.param(*b, marks=[pytest.mark.slow] if "slow" in b[1].split() else [], id=b[0]) for b in OFFLINE],
)
def test_offline_readme_block_runs(block_id, info, text, scratch):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}",
        "COFE_CACHE_DIR": str(scratch / "cache"),
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=scratch, env=env, capture_output=True,
                          text=True, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, (
        f"{block_id} failed:\n{text}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n" + (proc.stderr[-5000:])
    )


def _argparse_commands():
    from cofe_apps.cli import COMMANDS

    lines = []
    for block_id, _, text in blocks():
        for words in command_lines(text):
            if words[:1] == ["cofe"] and len(words) > 1 and words[1] in COMMANDS and words[1] != "fit":
                lines.append(pytest.param(words, id=f"{block_id}:{' '.join(words[:2])}"))
    return lines


@pytest.mark.parametrize("words", _argparse_commands())
def test_every_readme_cofe_command_parses(words):
    """A README's `cofe <command> ...` line is accepted by that command's parser (nothing runs)."""
    import importlib

    from cofe_apps.cli import COMMANDS

    module = importlib.import_module(COMMANDS[words[1]][0])
    args = [os.path.expandvars(w.replace("$W", "/models")) for w in words[2:]]
    if "--help" in args or "-h" in args:
        return
    module.build_parser().parse_args(args)


def _init_params(path: Path, cls: str) -> set[str]:
    """The ``__init__`` parameters of class ``cls`` in ``path``, read from the source (no Lightning import)."""
    import ast

    tree = ast.parse(path.read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
    init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    return {a.arg for a in init.args.args + init.args.kwonlyargs} - {"self"}


def test_every_readme_fit_option_exists():
    """`cofe fit` lines name options that exist: the model's and data module's arguments."""
    src = ROOT / "apps" / "src" / "cofe_apps"
    known = {f"--model.{p}" for p in _init_params(src / "module.py", "CoFEModule")}
    known |= {f"--data.{p}" for p in _init_params(src / "data.py", "ShardDataModule")}
    assert "--model.dit_weights" in known and "--data.train_shards" in known
    for _, _, text in blocks():
        for words in command_lines(text):
            if words[:2] != ["cofe", "fit"]:
                continue
            for w in words[2:]:
                if w.startswith(("--model.", "--data.")):
                    assert w.split("=")[0] in known, f"{w} is not a cofe fit option ({' '.join(words)})"


def test_command_lines_split_continuations_and_chains():
    text = "cofe a --x 1 \\\n    --y 2  # note\ncurl -o f u && unzip f\n"
    assert command_lines(text) == [["cofe", "a", "--x", "1", "--y", "2"], ["curl", "-o", "f", "u"], ["unzip", "f"]]
