"""`cofe curate INPUT... --out DIR [--config FILE]`: raw videos -> curated WebDataset shards.

Runs the ``cofe_curation`` stages as a Lightning predict loop, so that it scales the way training does: with
``--devices N`` (and ``--num-nodes``) Lightning's launcher starts the ranks, each rank takes a disjoint part of the
inputs (``inputs[rank::world_size]``) and writes its own shards ``{out}/shards/rank{r}-{i:06d}.tar``. Within a
rank, DataLoader workers (``--workers``, one per core) each curate whole inputs with one thread, window by
window, through every stage up to the encoded clips (``cofe_curation.input_loader``); the rank's main process
only commits the results to shards.

Resumable: inputs listed in a committed shard manifest are skipped, so a rerun after a kill continues where the
run stopped and neither loses nor duplicates a clip (commit protocol in ``cofe_curation.shards``). After all ranks
finish, rank 0 clusters identities over the whole output and writes ``data.jsonl``, ``report.json`` and plots.

One run per output folder: ``--out`` is locked for the whole run (``cofe_apps.io.OutputLock``; the ranks that
Lightning starts inherit the lock), so a second ``cofe curate`` on the same folder stops at once, naming the
holder, instead of interleaving its shards with the first. ``--out`` may not lie inside an input folder, nor an
input inside ``--out`` (a rerun would curate its own shards again). Files of ranks that this run does not have
(an earlier run with more ``--devices`` was killed) are handled before finalizing
(``cofe_curation.clean_orphans``): committed shards are kept and counted once, uncommitted ones deleted after
this run has redone their inputs; ``report.json`` says which (``run_notes``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cofe_apps.io import OutputLock, OutputLocked, atomic_write_text, is_inside

if TYPE_CHECKING:  # cofe_curation (and torch) are imported where they run: `cofe curate --help` stays fast
    from torch.utils.data import DataLoader

    from cofe_curation import CurationConfig, InputResult


def _build(args: argparse.Namespace, cfg: CurationConfig):
    """The LightningModule and DataModule (imported here: `cofe --help` must not import Lightning)."""
    import lightning as L

    from cofe_curation import ShardWriter, discover_inputs, done_sources, input_loader, json_name, largest_first

    class CurationData(L.LightningDataModule):
        def predict_dataloader(self) -> DataLoader:
            rank, world = self.trainer.global_rank, self.trainer.world_size
            items = discover_inputs(args.inputs)[rank::world]
            done = done_sources(args.out)
            todo = [item for item in items if json_name(item.source) not in done]
            self.skipped = len(items) - len(todo)
            if self.skipped:
                print(f"rank {rank}: {self.skipped} of {len(items)} inputs already finished, skipped", file=sys.stderr)
            return input_loader(largest_first(todo), cfg, args.workers, args.worker_start)

    class CurationModule(L.LightningModule):
        def on_predict_start(self) -> None:
            self.writer = ShardWriter(args.out, self.global_rank, cfg.write.shard_max_clips)

        def predict_step(self, batch: InputResult, batch_idx: int) -> dict:
            self.writer.add(batch)  # curated in a worker (see cofe_curation.loader); committed here
            return {"source": batch.source, "decision": batch.decision}

        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            return batch  # curation runs on the CPU; a batch is one input's result, kept as it is

        def on_predict_end(self) -> None:
            self.writer.close()

    return L, CurationModule(), CurationData()


def load_config(path: str | None, preset: str) -> CurationConfig:
    """The config: a preset, overridden by a YAML or JSON file (sections as in ``CurationConfig``)."""
    from cofe_curation import CurationConfig

    base = CurationConfig.from_name(preset)
    if path is None:
        return base
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:
        raise ValueError(f"config file {path} could not be read: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a mapping of sections, got {type(data).__name__}")
    return CurationConfig.from_dict(data, base=base)


def output_overlap(inputs: list[str], out: Path) -> str | None:
    """Why ``out`` cannot be the output folder for ``inputs`` (``None``: it can): it lies inside an input folder,
    or an input (named, or found in a folder or list) lies inside it. Either way a rerun would curate the run's
    own shards as new inputs (3 -> 6 -> 9 clips)."""
    from cofe_curation import discover_inputs, json_name
    from cofe_curation.ingest import SHARD_SEP

    for raw in inputs:
        path = Path(raw)
        if path.is_dir() and is_inside(out, path):
            return f"--out {out} is inside the input folder {raw}: choose an output folder outside the inputs"
        if path.exists() and is_inside(path, out):
            return f"input {raw} is inside --out {out}: curated shards are not inputs of the same run"
    for item in discover_inputs(inputs):
        path = item.source.split(SHARD_SEP, 1)[0]
        if Path(path).exists() and is_inside(path, out):
            return f"input {json_name(path)} is inside --out {out}: curated shards are not inputs of the same run"
    return None


def summary_table(report: dict, seconds: float) -> str:
    """The final summary: inputs by decision, then clips in and out of each stage, then throughput."""
    from cofe_curation.speech import speech_summary

    c = report["counts"]
    st = c["stages"]
    speech_note, caption_lines = speech_summary(st["speech"])
    rows = [
        ("ingest", st["ingest"]["in"], st["ingest"]["rejected"], "inputs that do not decode"),
        ("shots", st["shots"]["in"], st["shots"]["rejected"], f"inputs with no clip; {st['shots']['clips_out']} clips"),
        ("faces", st["faces"]["in"], st["faces"]["rejected"], "clips"),
        ("identity", st["identity"]["in"], st["identity"]["rejected"], "clips"),
        ("speech", st["speech"]["in"], 0, speech_note),
        ("write", st["write"]["in"], 0, f"{st['write']['written']} clips written"),
    ]
    lines = [f"{'stage':<10}{'in':>6}{'rejected':>10}  note", "-" * 56]
    lines += [f"{name:<10}{n_in:>6}{rej:>10}  {note}" for name, n_in, rej, note in rows]
    lines.append("-" * 56)
    lines.append(
        f"inputs {c['inputs']}: {c['inputs_kept']} kept, {c['inputs_rejected']} rejected, {c['inputs_error']} errors; "
        f"clips {c['clips_kept']}/{c['clips']} kept; {report['identities']} identities"
    )
    rate = c["seconds_in"] / seconds if seconds > 0 else 0.0
    lines.append(f"{c['seconds_in']:.1f} s of video in {seconds:.1f} s ({rate:.2f} video s per s)")
    lines += caption_lines
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The arguments of `cofe curate` (nothing heavy imported: ``--help`` stays fast)."""
    from cofe_apps.helptext import HelpFormatter

    parser = argparse.ArgumentParser(prog="cofe curate", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("inputs", nargs="+", help="videos, folders, list files (.txt/.lst) or WebDataset .tar shards")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output directory: OUT/shards/rank{r}-{i:06d}.tar (resumed if it exists)",
    )
    parser.add_argument(
        "--config", help="YAML or JSON file overriding the preset (sections as in CurationConfig); default: none"
    )
    parser.add_argument(
        "--preset", default="default", choices=("default", "tiny"), help="config preset (tiny: tests and demos)"
    )
    parser.add_argument("--devices", default="1", help="Lightning devices (processes on CPU), or 'auto'")
    parser.add_argument("--num-nodes", type=int, default=1, help="nodes, each running --devices ranks")
    parser.add_argument(
        "--accelerator",
        default="cpu",
        help="Lightning accelerator of the ranks: cpu (face analysis runs on CPUs) or auto",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="DataLoader workers per rank, each curating whole inputs with one thread (0: in the main process)",
    )
    parser.add_argument(
        "--worker-start", default="spawn", choices=["spawn", "forkserver", "fork"], help="how workers start"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.inputs = [str(p) for p in args.inputs]
    try:
        cfg = load_config(args.config, args.preset)
    except ValueError as exc:
        print(f"cofe curate: {exc}", file=sys.stderr)
        return 2
    overlap = output_overlap(args.inputs, args.out)
    if overlap:
        print(f"cofe curate: {overlap}", file=sys.stderr)
        return 2
    try:
        with OutputLock(args.out, "cofe curate"):
            return _run(args, cfg)
    except OutputLocked as exc:
        print(f"cofe curate: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # finalize refusing an output it cannot account for
        print(f"cofe curate: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, cfg: CurationConfig) -> int:
    from cofe_curation import clean_orphans, finalize

    L, module, data = _build(args, cfg)
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=devices,
        num_nodes=args.num_nodes,
        strategy="ddp" if devices not in (1, "1") or args.num_nodes > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=not args.no_progress,
        enable_model_summary=False,
        use_distributed_sampler=False,  # inputs are split per rank by the DataModule, without padding
    )
    tic = time.perf_counter()
    trainer.predict(module, datamodule=data, return_predictions=False)
    trainer.strategy.barrier("curate-finalize")
    if trainer.is_global_zero:
        # No rank writes files of ranks >= world size: safe now, with the lock held, after this run redid the
        # inputs of their uncommitted shards.
        notes = clean_orphans(args.out, trainer.world_size)
        for note in notes:
            print(f"cofe curate: {note}", file=sys.stderr)
        report = finalize(args.out, cfg.identity.cluster_threshold, cfg.write.plots, cfg.identity.linkage, notes)
        atomic_write_text(args.out / "config.json", json.dumps(cfg.to_dict(), indent=1))
        print(summary_table(report, time.perf_counter() - tic))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
