"""How every `cofe` command presents its help: plain text and every option's default.

Docstrings in this project are written in reStructuredText (``code``, :class:`Name`); a terminal shows that markup
raw, so :func:`plain` removes it. :class:`HelpFormatter` (argparse) and :class:`FitHelpFormatter` (LightningCLI's
jsonargparse parser) both apply it, keep the paragraphs and lists of a docstring used as a description, and show
each option's default: ``(required)``, ``(default: off)`` for a flag, ``(default: X)`` otherwise. An option whose
default is ``None`` says in its own help what happens without it (the options test checks that it does).

:func:`cached_help` keeps the rendered ``cofe fit --help`` (which needs Lightning imported, several seconds) in the
user's cache, keyed by everything that shapes it.

No import here is heavier than the standard library: every command's ``--help`` goes through this module.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

# :role:`~a.b.C` -> C, :role:`text <target>` -> text, :role:`a.b` -> a.b (Sphinx cross-references).
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`<]*?)\s*(?:<[^>]*>)?`")
_LITERAL = re.compile(r"``(.+?)``", re.S)
_LINK = re.compile(r"`([^`<]+?)\s*<([^>]+)>`__?")  # `text <url>`_ -> text (url)
_EMPHASIS = re.compile(r"(?<![\w*])\*\*?([^*\s][^*]*?)\*\*?(?![\w*])")
_DIRECTIVE = re.compile(r"^\s*\.\. ([a-z-]+)::\s*", re.M)


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return target.rsplit(".", 1)[-1] if tilde else target


def plain(text: str) -> str:
    """``text`` with reStructuredText inline markup removed: literals, roles, links, emphasis, directives.

    Example:
        >>> plain("a :class:`~cofe_dit.DiTConfig` field (``face_dim``) and :func:`cofe_apps.io.read_mp4`")
        'a DiTConfig field (face_dim) and cofe_apps.io.read_mp4'
    """
    if not text:
        return text
    text = _LINK.sub(r"\1 (\2)", text)
    text = _ROLE.sub(_role, text)
    text = _LITERAL.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    return _DIRECTIVE.sub(lambda m: m.group(1).capitalize() + ": ", text)


def with_default(action: argparse.Action, text: str) -> str:
    """``text`` plus how the option's default reads, unless the text already says it."""
    if action.default is argparse.SUPPRESS or not action.option_strings or re.search(r"default[:\s]", text):
        return text
    if action.required:
        return f"{text} (required)"
    if action.nargs == 0:  # a flag (store_true / store_false / count)
        return f"{text} (default: {'on' if action.default else 'off'})"
    if action.default is None:
        return text  # the help itself says what happens without the option
    return f"{text} (default: %(default)s)"


def _fill(text: str, width: int, indent: str) -> str:
    """Paragraph-aware filling: blank-line separated paragraphs, and list items (``-``, ``*``, ``1.``) each filled
    with a hanging indent, so a module docstring reads as written."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text.strip("\n")):
        lines = para.splitlines()
        items: list[list[str]] = []
        for line in lines:
            if re.match(r"\s*([-*]|\d+\.)\s", line) or not items:
                items.append([line])
            else:
                items[-1].append(line)
        filled = []
        for item in items:
            first = item[0]
            lead = re.match(r"\s*([-*]|\d+\.)\s+", first)
            body = " ".join(s.strip() for s in item)
            if lead:
                hang = " " * len(lead.group(0).lstrip())
                body = " ".join([first.strip()] + [s.strip() for s in item[1:]])
                filled.append(textwrap.fill(body, width, initial_indent=indent, subsequent_indent=indent + hang))
            else:
                filled.append(textwrap.fill(body, width, initial_indent=indent, subsequent_indent=indent))
        out.append("\n".join(filled))
    return "\n\n".join(out)


class HelpFormatter(argparse.HelpFormatter):
    """argparse help in plain text: descriptions keep their paragraphs and lists, every option shows its default."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 30, width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position, width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return _fill(plain(text), width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        return with_default(action, plain(action.help or ""))


def fit_formatter():
    """The jsonargparse formatter for ``cofe fit``: its own (types and defaults per option), in plain text.

    Built on call: jsonargparse is imported only when ``cofe fit`` builds its parser.
    """
    from jsonargparse import DefaultHelpFormatter

    class FitHelpFormatter(DefaultHelpFormatter):
        def _expand_help(self, action: argparse.Action) -> str:
            return plain(super()._expand_help(action))

        def _fill_text(self, text: str, width: int, indent: str) -> str:
            return _fill(plain(text), width, indent)

        def start_section(self, heading: str | None) -> None:  # group titles are class docstrings' first lines
            super().start_section(plain(heading) if heading else heading)

    return FitHelpFormatter


# ------------------------------------------------------------------------------------------------- help cache


def cache_dir() -> Path:
    """Where rendered help is kept: ``$COFE_CACHE_DIR``, else ``$XDG_CACHE_HOME/cofe``, else ``~/.cache/cofe``."""
    if os.environ.get("COFE_CACHE_DIR"):
        return Path(os.environ["COFE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cofe"


def cached_help(name: str, key: list[str], render: Callable[[], str]) -> str:
    """The help text ``render()`` produces, kept in :func:`cache_dir` under a hash of ``key``.

    ``key`` must name everything the text depends on (source files, package versions, environment defaults,
    terminal width). ``COFE_HELP_CACHE=0`` renders every time; a cache that cannot be read or written is skipped.
    """
    if os.environ.get("COFE_HELP_CACHE", "1") == "0":
        return render()
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:20]
    path = cache_dir() / "help" / f"{name}-{digest}.txt"
    try:
        return path.read_text()
    except OSError:
        pass
    text = render()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        pass
    return text
