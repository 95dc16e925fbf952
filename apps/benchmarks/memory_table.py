"""GPU memory of a `CoFEPipeline` run per preset, offload mode and DiT dtype, planned on the meta device.

    python apps/benchmarks/memory_table.py           # the tables of apps/README.md, "Sampling memory per offload mode"
    python apps/benchmarks/memory_table.py --check   # and every number again without the shortcuts (~5 min)

Nothing is allocated or downloaded: `cofe_apps.memory` builds every model on `meta` at its real size and runs each
phase there under a dispatch mode that counts live bytes (see its docstring for how each number is obtained). The
tables printed are what the README section holds, verbatim; `apps/tests/test_memory.py` fails when they differ, so
after a change to a model, the pipeline or the measurement, paste this script's tables into that section.

`--check` measures once more with `memory.REPLAY = False` (every module call and every meta kernel run, none
replayed from an earlier run with the same shapes) and reports whether every table is the same, and the time ratio.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="measure again without the replay shortcuts, compare")
    args = parser.parse_args()

    from provenance import git_revision

    from cofe_apps import memory

    start = time.perf_counter()
    tables = memory.markdown_tables()
    elapsed = time.perf_counter() - start
    versions = " | ".join(f"{p} {importlib.metadata.version(p)}" for p in ("torch", "diffusers", "transformers",
                                                                           "torchao"))  # fmt: skip
    print(f"memory_table | git {git_revision()} | {versions} | device meta (nothing allocated) | {elapsed:.1f} s")
    print()
    print(tables)
    if args.check:
        memory.REPLAY = False
        memory.clear_measurements()
        start = time.perf_counter()
        full = memory.markdown_tables()
        slow = time.perf_counter() - start
        same = "the same tables" if full == tables else "DIFFERENT tables"
        print(f"\ncheck: every call and kernel run (REPLAY = False): {same}, {slow:.0f} s, {slow / elapsed:.0f}x the "
              "time with the shortcuts (that time includes the imports and model builds)")  # fmt: skip
        if full != tables:
            print(full)
            sys.exit(1)


if __name__ == "__main__":
    main()
