"""The `cofe` command: `cofe <command> [args]`, each command a module with a `main(argv) -> int`."""

from __future__ import annotations

import importlib
import os
import sys

# command -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("cofe_apps.demo", "the whole system on the CPU: curate, precompute, fit, sample, bench, compare"),
    "motion-demo": ("cofe_apps.motion_demo", "a tiny DiT learns prompt-directed motion on the CPU, samples mp4s"),
    "curate": ("cofe_apps.curate", "raw videos -> curated WebDataset shards"),
    "precompute": ("cofe_apps.precompute", "curated shards -> training shards (latents, text, expert features)"),
    "fit": ("cofe_apps.fit", "train the DiT + CoFE (LightningCLI)"),
    "sample": ("cofe_apps.sample", "reference face + first frame + prompt -> mp4; a bench manifest -> mp4s"),
    "sweep": ("cofe_apps.sweep", "a manifest sampled and benched over a grid of identity controls"),
    "export": ("cofe_apps.export", "a training checkpoint (file or sharded directory) -> one safetensors file"),
    "bench": ("cofe_apps.bench", "videos + references + prompts -> metrics per head-pose bin"),
    "compare": ("cofe_apps.compare", "MLflow runs side by side"),
    "weights": ("cofe_apps.catalog", "the public weights a real run needs; check a local weights folder"),
}


PACKAGES = ("cofe_apps", "cofe_dit", "cofe_fusion", "cofe_encoders", "cofe_curation", "cofe_bench")


def _usage() -> str:
    lines = ["usage: cofe <command> [args]   (cofe <command> --help for its options; cofe --version)", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """Every cofe package's ``__version__``, read from its source without importing it (importing would pull in
    torch), and the git revision of the tree they run from."""
    import importlib.util
    import re
    from pathlib import Path

    from cofe_apps.io import git_revision

    out = {}
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        text = Path(spec.origin).read_text() if spec and spec.origin else ""
        match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
        out[name.replace("_", "-")] = match.group(1) if match else "absent"
    out["git"] = git_revision()
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print("\n".join(f"{k} {v}" for k, v in versions().items()))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"cofe: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as exc:
        if exc.name == COMMANDS[name][0]:
            print(f"cofe: the {name!r} command is not implemented yet", file=sys.stderr)
            return 2
        raise
    try:
        return int(module.main(rest) or 0)
    except BrokenPipeError:  # `cofe weights list | head`: the reader left; not an error of ours
        sys.stdout = open(os.devnull, "w")  # stays open: Python flushes stdout at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
