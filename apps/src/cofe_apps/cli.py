"""The `cofe` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cofe", description="CoFE: identity-preserving video generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a tiny DiT on synthetic clips on the CPU and sample mp4 videos")
    demo.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    demo.add_argument("--train-steps", type=int, default=1000)
    demo.add_argument("--sample-steps", type=int, default=20)
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from cofe_apps.demo import DemoConfig, run_demo

        summary = run_demo(
            args.out, DemoConfig(train_steps=args.train_steps, sample_steps=args.sample_steps, seed=args.seed)
        )
        return 0 if summary["prompts_correct"] > 0 else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
