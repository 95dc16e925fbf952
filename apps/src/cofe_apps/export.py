"""`cofe export --checkpoint CKPT --out FILE.safetensors [--ema]`: a training checkpoint becomes one safetensors file.

The checkpoint may be a Lightning checkpoint file of `cofe fit` or the distributed-checkpoint directory of a sharded
(FSDP2) run; the export holds the full model weights (DiT + CoFE; with ``--ema`` the EMA of the trained ones) and,
in its metadata, the run's hyper-parameters, the DiT and CoFE configs and the components record of the training
data: what a user shares, or samples from with ``cofe sample --checkpoint FILE.safetensors``. The file is written
through a temporary file: a failed export leaves nothing at ``--out``. The output folder is locked while it writes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def export(checkpoint: str | Path, out: str | Path, ema: bool = False, dit_weights: str | None = None) -> Path:
    """Write the export; returns its path."""
    from cofe_apps.io import OutputLock
    from cofe_apps.weights import load_model, write_export

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: the export is a .safetensors file")
    if Path(checkpoint).is_file() and Path(checkpoint).suffix == ".safetensors":
        raise ValueError(f"{checkpoint} is already an export")
    # The network alone, each tensor in the dtype training stored it in (no EMA mirror, no LightningModule).
    loaded = load_model(checkpoint, ema=ema, dit_weights=dit_weights)
    meta = {k: v for k, v in loaded.meta.items() if k != "base"}
    meta.update(checkpoint_mode="full", ema=ema, source=str(Path(checkpoint).resolve()))
    hparams = {k: v for k, v in loaded.hparams.items() if not k.startswith("_")}
    hparams.update(components=None, dit_weights=None, checkpoint_mode="full")
    state = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    with OutputLock(out.parent, "cofe export"):
        return write_export(out, state, hparams, meta, loaded.step)


def build_parser() -> argparse.ArgumentParser:
    """The arguments of `cofe export` (no torch import: ``--help`` stays fast)."""
    from cofe_apps.helptext import HelpFormatter

    p = argparse.ArgumentParser(prog="cofe export", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a Lightning checkpoint file of `cofe fit` (last.ckpt) or a sharded checkpoint directory",
    )
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--ema", action="store_true", help="export the EMA of the trained weights")
    p.add_argument(
        "--dit-weights",
        help="the base Wan folder, for slim checkpoints only (they hold no base weights; default: none)",
    )
    return p


def main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    from cofe_apps.io import OutputLocked
    from cofe_apps.weights import TrainingCheckpointError

    start = time.perf_counter()
    try:
        path = export(a.checkpoint, a.out, a.ema, a.dit_weights)
    except (ValueError, FileNotFoundError, TrainingCheckpointError, OutputLocked) as exc:
        print(f"cofe export: {exc}", file=sys.stderr)
        return 2
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MiB{', EMA weights' if a.ema else ''}, {time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
