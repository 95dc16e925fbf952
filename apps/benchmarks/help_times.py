"""How long each `cofe <command> --help` takes, and where the time goes.

    python apps/benchmarks/help_times.py [--repeat 3] [--breakdown 8] [--commands fit,sample]

For every command: the wall time of ``cofe <command> --help`` in a fresh interpreter (best of ``--repeat``), next to
the bare interpreter start (``python -c pass``) measured in the same run, and the top-level packages that
``python -X importtime`` charges the import time to. `cofe fit --help` is timed twice: from the help cache (what
a user sees after the first call) and rendered (the cache off: LightningCLI and Lightning imported). On a loaded
machine wall times stretch; the import breakdown says what is ours and what is the libraries'.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "apps" / "src"))


def run(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if out.returncode not in (0,):
        raise RuntimeError(f"{' '.join(args)} exited {out.returncode}: {out.stderr[-2000:]}")
    return wall, out.stderr


def breakdown(stderr: str, top: int) -> list[tuple[str, float]]:
    """Seconds of import time per top-level package (the ``self`` column of ``-X importtime``, summed)."""
    per = collections.Counter()
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        per[name.split(".")[0]] += int(self_us) / 1e6
    return per.most_common(top)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3, help="runs per command; the best is reported (default: 3)")
    p.add_argument("--breakdown", type=int, default=6, help="packages shown per command (default: 6)")
    p.add_argument("--commands", help="comma-separated commands (default: all)")
    a = p.parse_args()
    from cofe_apps.cli import COMMANDS

    commands = a.commands.split(",") if a.commands else list(COMMANDS)
    cache = tempfile.mkdtemp(prefix="cofe-help-cache-")
    env = {**os.environ, "COFE_CACHE_DIR": cache}
    cofe = [sys.executable, "-c", "import sys; from cofe_apps.cli import main; sys.exit(main(sys.argv[1:]))"]
    base = min(run([sys.executable, "-c", "pass"], env)[0] for _ in range(a.repeat))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        from cofe_apps.io import git_revision

        rev = git_revision()
    except ImportError:
        rev = "unknown"
    print(f"cofe --help times | git {rev} | {platform.processor() or platform.machine()} | {os.cpu_count()} cores | "
          f"load {load:.1f} | python start {base:.3f} s")  # fmt: skip
    print(f"{'command':<22}{'wall s':>8}{'- start':>9}   import time by package (self, s)")
    cases = [(c, {}) for c in commands]
    if "fit" in commands:
        run([*cofe, "fit", "--help"], env)  # fill the cache: the first call a user makes renders it
        cases.insert(commands.index("fit") + 1, ("fit (no cache)", {"COFE_HELP_CACHE": "0"}))
    for name, extra in cases:
        command = name.split()[0]
        e = {**env, **extra}
        wall = min(run([*cofe, command, "--help"], e)[0] for _ in range(a.repeat))
        _, stderr = run([sys.executable, "-X", "importtime", *cofe[1:], command, "--help"], e)
        parts = ", ".join(f"{pkg} {sec:.2f}" for pkg, sec in breakdown(stderr, a.breakdown))
        print(f"{name:<22}{wall:>8.2f}{wall - base:>9.2f}   {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
