"""The `cofe` command: `cofe <command> [args]`, each command a module with a `main(argv) -> int`."""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("cofe_apps.demo", "the whole system on the CPU: curate, precompute, fit, sample, bench, compare"),
    "motion-demo": ("cofe_apps.motion_demo", "a tiny DiT learns prompt-directed motion on the CPU, samples mp4s"),
    "curate": ("cofe_apps.curate", "raw videos -> curated WebDataset shards"),
    "precompute": ("cofe_apps.precompute", "curated shards -> training shards (latents, text, expert features)"),
    "fit": ("cofe_apps.train", "train the DiT + CoFE (LightningCLI)"),
    "sample": ("cofe_apps.sample", "reference face + first frame + prompt -> mp4"),
    "export": ("cofe_apps.export", "a training checkpoint (file or sharded directory) -> one safetensors file"),
    "bench": ("cofe_apps.bench", "videos + references + prompts -> metrics per head-pose bin"),
    "compare": ("cofe_apps.compare", "MLflow runs side by side"),
}


def _usage() -> str:
    lines = ["usage: cofe <command> [args]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
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
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
