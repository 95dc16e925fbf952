"""The surface of the `cofe` command: every option documented with its default, help in plain text, `--help`
without the training stack, and `cofe fit --help` documenting every model and data argument."""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import subprocess
import sys

import pytest

from cofe_apps.cli import COMMANDS
from cofe_apps.helptext import cached_help, plain

ARGPARSE_COMMANDS = sorted(name for name in COMMANDS if name != "fit")
RAW_MARKUP = re.compile(r"``|:(class|func|meth|mod|attr|obj|exc|data):`")


def _parsers(parser: argparse.ArgumentParser, name: str):
    """The parser and its sub-command parsers (``cofe weights list`` ...), with their names."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _parsers(subparser, f"{name} {sub}")


@pytest.mark.parametrize("command", ARGPARSE_COMMANDS)
def test_every_option_has_help_and_shows_its_default(command):
    module = importlib.import_module(COMMANDS[command][0])
    assert hasattr(module, "build_parser"), f"{COMMANDS[command][0]} has no build_parser()"
    for name, parser in _parsers(module.build_parser(), f"cofe {command}"):
        formatter = parser._get_formatter()
        text = parser.format_help()
        assert not RAW_MARKUP.search(text), f"`{name} --help` shows raw reST markup: {RAW_MARKUP.search(text)[0]}"
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            label = "/".join(action.option_strings) or action.dest
            assert action.help and action.help is not argparse.SUPPRESS, f"{name}: {label} has no help"
            if not action.option_strings:
                continue
            shown = formatter._expand_help(action)
            assert "default" in shown or "(required)" in shown, f"{name}: {label} does not say its default: {shown!r}"
            if action.choices and action.metavar:  # a metavar hides the choices in the usage line: help must list them
                assert all(str(c) in shown for c in action.choices), f"{name}: {label} hides its choices"


def test_an_undocumented_option_fails_the_check():
    """The check above can fail: an option without help, and one whose None default is not explained."""
    from cofe_apps.helptext import HelpFormatter

    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--silent")
    p.add_argument("--vague", help="something")
    fmt = p._get_formatter()
    silent, vague = p._actions[1], p._actions[2]
    assert not silent.help
    assert "default" not in fmt._expand_help(vague)
    p.add_argument("--count", type=int, default=3, help="how many")
    assert fmt._expand_help(p._actions[3]) == "how many (default: 3)"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_imports_neither_torch_nor_lightning(command, tmp_path, monkeypatch):
    """`cofe <command> --help` builds its parser without the training stack (fit: from the help cache)."""
    import os

    monkeypatch.setenv("COFE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "100")  # the same terminal width here and in the child
    if command == "fit":
        from cofe_apps.fit import help_key

        cached_help("fit", help_key(), lambda: "usage: cofe fit (cached)\n")  # as a first `cofe fit --help` leaves it
    code = (
        "import sys\nfrom cofe_apps.cli import main\n"
        "try:\n    code = main([sys.argv[1], '--help'])\nexcept SystemExit as exc:\n    code = exc.code\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'webdataset', 'mlflow') if m in sys.modules)\n"
        "print('HEAVY', ','.join(heavy), code)"
    )
    out = subprocess.run([sys.executable, "-c", code, command], capture_output=True, text=True, env=os.environ.copy(),
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last == "HEAVY  0", f"cofe {command} --help imported {last}"
    if command == "fit":
        assert "usage: cofe fit (cached)" in out.stdout


def test_help_cache_is_keyed_and_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("COFE_CACHE_DIR", str(tmp_path))
    calls = []

    def render():
        calls.append(1)
        return f"help {len(calls)}"

    assert cached_help("fit", ["a"], render) == "help 1"
    assert cached_help("fit", ["a"], render) == "help 1" and len(calls) == 1  # from the cache
    assert cached_help("fit", ["b"], render) == "help 2"  # another key (a changed source file): rendered again
    monkeypatch.setenv("COFE_HELP_CACHE", "0")
    assert cached_help("fit", ["a"], render) == "help 3"


def test_fit_help_key_follows_the_sources(monkeypatch):
    from cofe_apps.fit import HELP_SOURCES, help_key

    assert {"train.py", "module.py", "data.py"} <= set(HELP_SOURCES)
    key = help_key()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    assert help_key() != key  # a default shown in the help changed


def test_plain_removes_rest_markup():
    assert plain("``face_dim`` of :class:`~cofe_dit.DiTConfig` and :func:`cofe_apps.io.read_mp4`") == (
        "face_dim of DiTConfig and cofe_apps.io.read_mp4"
    )
    assert plain("see `the docs <https://x.org>`_") == "see the docs (https://x.org)"
    assert plain("**fit** (``cofe fit``)") == "fit (cofe fit)"
    assert plain("a * b * c") == "a * b * c"  # arithmetic is not emphasis


def _help_blocks(text: str) -> dict[str, str]:
    """``--model.lr`` -> the help text of that option in `cofe fit --help` (jsonargparse's layout: the option, then
    its help on the same line after two spaces or on the lines below, indented)."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"  (--[\w.]+)", line)
        if m:
            current = m.group(1)
            parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            blocks[current] = parts[1:]
        elif current and line.startswith(" " * 10) and line.strip():
            blocks[current].append(line.strip())
        else:
            current = None
    return {k: " ".join(v) for k, v in blocks.items()}


@pytest.fixture(scope="module")
def fit_help():
    from cofe_apps.fit import render_help

    return render_help()


def test_fit_help_documents_every_model_and_data_argument(fit_help):
    from cofe_apps.data import ShardDataModule
    from cofe_apps.module import CoFEModule

    assert not RAW_MARKUP.search(fit_help), RAW_MARKUP.search(fit_help)[0]
    blocks = _help_blocks(fit_help)
    for prefix, cls in (("model", CoFEModule), ("data", ShardDataModule)):
        params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name not in ("self",)]
        for p in params:
            if p.name.startswith("_"):
                continue
            option = f"--{prefix}.{p.name}"
            assert option in blocks, f"{option} is not in `cofe fit --help`"
            description = blocks[option].split("(type:", 1)[0].strip()
            assert len(description) > 8, f"{option} has no description in `cofe fit --help`: {blocks[option]!r}"
    for option, choices in (("--model.freeze", "{cofe,adapter,full}"), ("--data.mode", "{precomputed,raw}")):
        assert f"{option} {choices}" in fit_help
    assert "Literal['float32', 'bfloat16', 'float16']" in blocks["--model.frozen_dtype"]
    assert "--ckpt_path last" in fit_help  # the run folder and resume, from train.py's docstring


def test_fit_help_blocks_parser_reads_descriptions():
    text = (
        "options:\n  --model.lr LR         AdamW peak learning rate. (type: float,\n"
        f"{' ' * 24}default: 1)\n  --model.dit_overrides DIT_OVERRIDES\n{' ' * 24}(type: dict)\n"
    )
    blocks = _help_blocks(text)
    assert blocks["--model.lr"] == "AdamW peak learning rate. (type: float, default: 1)"
    assert blocks["--model.dit_overrides"] == "(type: dict)"  # no description: the test above would fail on it


def test_version_lists_every_package_and_the_revision(capsys):
    from cofe_apps.cli import PACKAGES, main

    assert main(["--version"]) == 0
    lines = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    assert {p.replace("_", "-") for p in PACKAGES} | {"git"} == set(lines)
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", lines[p.replace("_", "-")]) for p in PACKAGES)


def test_unknown_command_lists_the_commands(capsys):
    from cofe_apps.cli import main

    assert main(["nonsense"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'nonsense'" in err and all(name in err for name in COMMANDS)


def test_precompute_sizes_come_from_the_preset(capsys):
    from cofe_apps.precompute import bucket, build_parser

    p = build_parser()
    a = p.parse_args(["x.tar", "--out", "o", "--preset", "wan2.2-ti2v-5b", "--frames", "17"])
    assert bucket(a) == (17, 704, 1280)  # given frames, the preset's Wan size otherwise
    a = p.parse_args(["x.tar", "--out", "o", "--rehearse", "wan2.1-t2v-1.3b"])
    assert bucket(a) == (81, 480, 832)
    assert bucket(p.parse_args(["x.tar", "--out", "o", "--tiny"])) == (17, 64, 64)
    with pytest.raises(ValueError, match="give --preset"):
        bucket(p.parse_args(["x.tar", "--out", "o", "--vae", "v"]))
    with pytest.raises(ValueError, match="not a cofe_dit preset"):
        bucket(p.parse_args(["x.tar", "--out", "o", "--preset", "wan9"]))
    # the sizes the help quotes are the presets'
    text = p.format_help().replace("\n", " ")
    text = re.sub(r"\s+", " ", text)
    for preset in ("wan2.1-t2v-1.3b", "wan2.2-ti2v-5b", "wan2.1-i2v-14b"):
        assert "x".join(map(str, bucket(p.parse_args(["x", "--out", "o", "--preset", preset])))) in text


def test_precompute_refuses_a_real_run_without_real_experts(capsys):
    from cofe_apps.precompute import main

    with pytest.raises(SystemExit):
        main(["x.tar", "--out", "o", "--vae", "v", "--text-encoder", "t", "--preset", "wan2.1-t2v-1.3b"])
    assert "give --semantic and --detail" in capsys.readouterr().err


def test_weights_list_names_every_preset_component_and_bench_network(capsys):
    from cofe_apps.catalog import BENCH, EXPERTS, PRESETS, main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for preset, parts in PRESETS.items():
        assert f"{preset}\n" in out
        assert {c.key for c in parts} >= {"dit", "vae", "text", "tokenizer"}
    assert "image" in {c.key for c in PRESETS["wan2.1-i2v-14b"]}
    for c in [*EXPERTS, *BENCH]:
        assert c.repo in out and c.licence.split(" (")[0] in out
    for needle in ("hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "glintr100.onnx", "w600k_r50.onnx",
                   "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "timm/vit_large_patch14_dinov2.lvd142m",
                   "glint360k_curricular_face_r101_backbone.bin", "inception_v3_google-0cc3c7bd.pth",
                   "openai/clip-vit-base-patch32", "6DRepNet_300W_LP_AFLW2000.pth"):  # fmt: skip
        assert needle in out, needle
