"""`cofe demo`: the whole system, end to end, on a CPU in six to seven minutes on two cores.

1. **inputs**: raw videos made from real faces that ship inside installed wheels (the nine people of
   ``cofe_curation.synth.IDENTITIES``), each turning its head, with caption sidecars, plus clips that curation must
   reject (two faces, no face, a tiny face) and, when it is on this machine, a real webcam clip of a person speaking
   (``movie-hello.mp4``, fetched by ``make test``).
2. **curate** (``cofe curate``): shards of one-face, pose-varying, identity-consistent clips, clustered into
   identities.
3. **split**: a LaFID-style benchmark set of held-out identities (``cofe_bench.build_lafid_manifest``); training
   never sees them.
4. **precompute** (``cofe precompute``): latents, text states and the three experts' features. There are no VAE
   weights on a fresh machine and a random VAE decodes noise, so latents come from a linear codec fitted to the
   clips (``--fit-linear-vae 16``: PCA of 8x8 pixel blocks, the Wan 2.1 VAE's 16 channels and 1 + 4k frames); the
   identity expert is the real SFace recogniser; text and the other two experts are tiny random models.
5. **fit** (``cofe fit``): a small DiT + CoFE for 1500 steps from scratch, tracked in MLflow.
6. **sample**: one video per benchmark identity (its reference face, first frame and caption) from the trained
   model and from the same model untrained.
7. **bench** (``cofe bench``, protocol ``cofe``): the trained samples, the untrained ones and the real clips; identity
   scored by dlib's ResNet (``--recognizer dlib``), not by the SFace expert that conditions the model.
8. **compare** (``cofe compare``): the table, and where to open everything in MLflow.

Every command is the one a user runs, called in this process (Lightning is imported once).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Captions as a data vendor writes them: some claim speech the clip does not have (curation corrects them).
CAPTIONS = (
    "a person slowly turns their head to the side and back, plain white background",
    "a person talking to the camera while turning their head, white background",
    "close-up portrait of a person looking around, soft studio light",
)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; the defaults take six to seven minutes on two cores (1500 steps: 0.2 s each).

    Attributes:
        identities: how many of the nine people to film (``cofe_curation.synth.IDENTITIES``, in order).
        clips_per_identity: turning clips per person (different sweeps and noise).
        seconds, fps: length and rate of each raw clip.
        bench_identities: identities held out for the benchmark set.
        size: training and sampling resolution (square; a multiple of 16).
        frames, stride: frames per training clip (1 + 4k) and the frame step that picks them.
        train_steps, batch_size: optimisation length.
        sample_steps: sampler steps per video.
        workers: curation's decoding workers.
        real_clip: also curate the real webcam clip when it is on this machine.
    """

    identities: int = 9
    clips_per_identity: int = 2
    seconds: float = 2.5
    fps: float = 16.0
    bench_identities: int = 3
    size: int = 128
    frames: int = 17
    stride: int = 2
    train_steps: int = 1500
    batch_size: int = 4
    sample_steps: int = 30
    workers: int = 1
    real_clip: bool = True
    seed: int = 0


def make_inputs(folder: Path, cfg: DemoConfig) -> list[Path]:
    """Raw videos with caption sidecars: turning faces of every identity, then the kinds curation rejects."""
    from cofe_curation.synth import IDENTITIES, compose, real_clip, tone, turning_clip, write_clip

    folder.mkdir(parents=True, exist_ok=True)
    sweeps = [(-0.16, 0.14), (0.15, -0.15), (-0.1, 0.18)]
    paths = []
    if not 2 <= cfg.identities <= len(IDENTITIES):
        raise ValueError(f"identities={cfg.identities}: choose 2 to {len(IDENTITIES)}")
    for i, name in enumerate(IDENTITIES[: cfg.identities]):
        for j in range(cfg.clips_per_identity):
            path = folder / f"{name}-{j}.mp4"
            if not path.exists():
                frames = turning_clip(name, sweeps[j % len(sweeps)], cfg.seconds, cfg.fps, seed=cfg.seed + 10 * i + j)
                audio = tone(cfg.seconds) if (i + j) % 2 else None  # half with a (speechless) audio track
                write_clip(path, frames, cfg.fps, audio)
                path.with_suffix(".txt").write_text(CAPTIONS[(i + j) % len(CAPTIONS)], encoding="utf-8")
            paths.append(path)
    for kind in ("two_faces", "no_face", "tiny"):
        path = folder / f"reject-{kind}.mp4"
        if not path.exists():
            write_clip(path, compose(kind, seconds=cfg.seconds, fps=cfg.fps, seed=cfg.seed), cfg.fps)
        paths.append(path)
    real = real_clip(download=False) if cfg.real_clip else None
    if real is not None:
        link = folder / "movie-hello.mp4"
        if not link.exists():
            link.symlink_to(real)
            link.with_suffix(".txt").write_text("a man sitting at his desk looks into the webcam", encoding="utf-8")
        paths.append(link)
    return paths


def pick_bench_clusters(data_jsonl: Path, count: int) -> tuple[list[str], list[str]]:
    """``count`` identity clusters held out for the benchmark, evenly spread over the clusters in id order, and
    the clusters left for training."""
    clusters = sorted(
        {int(json.loads(line)["identity_cluster"]) for line in data_jsonl.read_text().splitlines() if line.strip()}
    )
    if len(clusters) <= count:
        raise RuntimeError(
            f"curation kept {len(clusters)} identities ({data_jsonl}); the demo needs more than {count} "
            "(some for training, some held out for the benchmark)"
        )
    picks = set(np.linspace(0, len(clusters) - 1, count + 2)[1:-1].round().astype(int))  # not the first or last
    held_out = [str(c) for i, c in enumerate(clusters) if i in picks]
    return held_out, [str(c) for i, c in enumerate(clusters) if i not in picks]


def fit_config(cfg: DemoConfig, out: Path) -> dict:
    """The ``cofe fit`` config of the demo (written to ``out/fit.yaml``): a small TI2V DiT over the linear codec's
    16 latent channels, CoFE over the SFace / tiny CLIP / tiny DINOv2 features that precompute stored."""
    return {
        "seed_everything": cfg.seed,
        "name": "demo-fit",
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "gradient_clip_val": 1.0,
            "max_steps": cfg.train_steps,
            "default_root_dir": str(out / "fit"),
        },
        "model": {
            "dit": "tiny-ti2v",
            "dit_overrides": {
                "in_dim": 16,
                "out_dim": 16,
                "text_dim": 16,
                "dim": 128,
                "ffn_dim": 384,
                "num_heads": 4,
                "num_layers": 4,
                "freq_dim": 64,
            },
            "cofe": "tiny",  # expert widths come from precompute's config.json (SFace 128, tiny CLIP 64, DINOv2 48)
            "components": str(out / "train" / "config.json"),
            # From random initialisation the whole DiT trains (CoFE's freezing policy needs a pretrained DiT).
            "freeze": "full",
            "lr": 2.0e-3,
            "warmup_steps": 50,
            "ema_decay": 0.99,
            # Unshifted timesteps: copying the given first frame's details is learnt at low and middle noise.
            "flow_shift": 1.0,
            "log_gates_every": 50,
        },
        "data": {
            "train_shards": str(out / "train" / "*.tar"),
            "batch_size": cfg.batch_size,
            "num_workers": 0,
            "shuffle_buffer": 16,
            "resampled": True,
            "epoch_samples": 100 * cfg.batch_size,
            "text_len": 16,
        },
        "checkpoint": {"dirpath": str(out / "fit" / "checkpoints"), "every_n_train_steps": max(cfg.train_steps, 1)},
        "export": {"every_n_steps": max(cfg.train_steps, 1)},
    }


def _stage(n: int, name: str, what: str) -> float:
    print(f"\n[{n}/8] {name}: {what}", flush=True)
    return time.perf_counter()


def _done(start: float, timings: dict, name: str) -> None:
    timings[name] = round(time.perf_counter() - start, 1)
    print(f"      {name} done in {timings[name]:.1f}s", flush=True)


def sample_videos(pipe, items, out_dir: Path, cfg: DemoConfig, label: str) -> None:
    """One mp4 per benchmark item: its reference face, its first frame and its prompt."""
    from tqdm import tqdm

    from cofe_apps.io import load_image, write_mp4
    from cofe_dit import SamplerConfig

    config = SamplerConfig(steps=cfg.sample_steps, shift=1.0, solver="dpmpp_2m", text_scale=3.0, face_scale=1.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(tqdm(items, desc=f"sampling ({label})")):
        video = pipe(
            load_image(item.reference),
            item.prompt,
            load_image(item.first_frame),
            frames=cfg.frames,
            height=cfg.size,
            width=cfg.size,
            config=config,
            seed=cfg.seed + i,
        )
        write_mp4(video, out_dir / item.video_name, fps=cfg.fps / cfg.stride)


def log_demo_run(uri: str, out: Path, summary: dict) -> str:
    """One MLflow run (experiment ``cofe-demo``, beside the fit run) with every artifact the stages wrote that is
    not already in a run: curation's report, data list and plots, precompute's config, report and codec, the
    benchmark set, the sampled videos, the comparison and the summary."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from cofe_apps.bench import new_run

    client = MlflowClient(uri)
    run = new_run(client, "cofe-demo", "demo", {"cofe.command": "demo"})
    rid = run.info.run_id
    now = int(time.time() * 1000)
    client.log_batch(
        rid,
        metrics=[Metric(f"time_s/{k}", float(v), now, 0) for k, v in summary["timings_s"].items()],
        params=[Param(k, str(v)) for k, v in summary["config"].items()],
    )
    for rel, dest in (
        ("curated/report.json", "curation"),
        ("curated/data.jsonl", "curation"),
        ("curated/config.json", "curation"),
        ("curated/plots", "curation/plots"),
        ("train/config.json", "precompute"),
        ("train/report.jsonl", "precompute"),
        ("train/linear_vae.npz", "precompute"),
        ("benchset/manifest.jsonl", "benchset"),
        ("samples", "samples"),
        ("compare", "compare"),
        ("fit.yaml", None),
        ("summary.json", None),
    ):
        path = out / rel
        if path.is_dir():
            client.log_artifacts(rid, str(path), dest)
        elif path.is_file():
            client.log_artifact(rid, str(path), dest)
    client.set_terminated(rid)
    return rid


def run_demo(out: str | Path, cfg: DemoConfig | None = None) -> dict:
    """Every stage, in order, into ``out``; returns the summary (also ``out/summary.json``)."""
    import torch
    import yaml

    from cofe_apps import bench, compare, curate, precompute, train
    from cofe_apps.module import CoFEModule
    from cofe_apps.pipeline import CoFEPipeline
    from cofe_apps.specs import ComponentsSpec
    from cofe_bench import build_lafid_manifest, read_manifest

    cfg = cfg or DemoConfig()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    timings: dict[str, float] = {}
    total = time.perf_counter()
    torch.manual_seed(cfg.seed)

    t = _stage(1, "inputs", "raw videos of nine real people turning their heads, plus clips curation must reject")
    inputs = make_inputs(out / "raw", cfg)
    print(f"      {len(inputs)} videos in {out / 'raw'}")
    _done(t, timings, "inputs")

    t = _stage(2, "curate", "cofe curate raw/ --out curated/ --preset tiny")
    args = [str(out / "raw"), "--out", str(out / "curated"), "--preset", "tiny", "--workers", str(cfg.workers)]
    if curate.main(args) != 0:
        raise RuntimeError("cofe curate failed")
    _done(t, timings, "curate")

    t = _stage(3, "split", "a benchmark set of held-out identities (LaFID-style, balanced over yaw bins)")
    held_out, training = pick_bench_clusters(out / "curated" / "data.jsonl", cfg.bench_identities)
    shards = sorted((out / "curated" / "shards").glob("*.tar"))
    build_lafid_manifest(shards, out / "benchset", exclude_clusters=training, per_bin=10)
    items = read_manifest(out / "benchset" / "manifest.jsonl")  # paths resolved against the manifest's folder
    print(f"      identities held out for the benchmark: {', '.join(held_out)}; {len(items)} benchmark items")
    _done(t, timings, "split")

    t = _stage(4, "precompute", "cofe precompute --fit-linear-vae 16 --tiny (latents, text states, expert features)")
    args = [
        str(out / "curated" / "shards" / "*.tar"),
        "--out",
        str(out / "train"),
        "--tiny",
        "--fit-linear-vae",
        "16",
        "--frames",
        str(cfg.frames),
        "--height",
        str(cfg.size),
        "--width",
        str(cfg.size),
        "--stride",
        str(cfg.stride),
        "--exclude-clusters",
        ",".join(held_out),
        "--device",
        "cpu",
    ]
    if precompute.main(args) != 0:
        raise RuntimeError("cofe precompute wrote no training samples")
    _done(t, timings, "precompute")

    t = _stage(5, "fit", f"cofe fit --config fit.yaml ({cfg.train_steps} steps of the tiny DiT + CoFE)")
    fit_yaml = out / "fit.yaml"
    fit = fit_config(cfg, out)
    fit_yaml.write_text(yaml.safe_dump(fit, sort_keys=False))
    last = out / "fit" / "checkpoints" / "last.ckpt"
    shutil.rmtree(last.parent, ignore_errors=True)  # a rerun trains again (curation and precompute resume)
    env = {"MLFLOW_TRACKING_URI": uri, "COFE_EXPERIMENT": "cofe-demo"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        train.main(["--config", str(fit_yaml)])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if not last.is_file():
        raise RuntimeError(f"cofe fit left no checkpoint at {last}")
    _done(t, timings, "fit")

    t = _stage(6, "sample", "one video per benchmark item, from the trained and from the untrained model")
    trained = CoFEPipeline.from_pretrained(last, ema=True, device="cpu")  # the training data's components
    untrained = CoFEModule(**fit["model"], seed=cfg.seed + 1)
    untrained.configure_model()
    baseline = CoFEPipeline(untrained.net, ComponentsSpec.from_dict(untrained.record), encoders=trained.enc)
    sample_videos(trained, items, out / "samples" / "trained", cfg, "trained")
    sample_videos(baseline, items, out / "samples" / "untrained", cfg, "untrained")
    _done(t, timings, "sample")

    t = _stage(7, "bench", "cofe bench --protocol cofe --recognizer dlib on trained, untrained and the real clips")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")  # run names of this demo, so compare shows only its runs
    run_names = []
    for name, videos in (
        ("real clips", out / "benchset" / "real"),
        ("untrained", out / "samples" / "untrained"),
        ("trained", out / "samples" / "trained"),
    ):
        tag = name.replace(" ", "-")
        args = [
            "--manifest",
            str(out / "benchset" / "manifest.jsonl"),
            "--videos",
            str(videos),
            "--protocol",
            "cofe",
            # FaceSim by dlib's ResNet, not by SFace: SFace is the identity expert that conditions the model.
            "--recognizer",
            "dlib",
            "--out",
            str(out / "bench" / tag),
            "--tracking-uri",
            uri,
            "--experiment",
            "cofe-demo-bench",
            "--run-name",
            f"{name} ({stamp})",
        ]
        if bench.main(args) != 0:
            raise RuntimeError(f"cofe bench failed on {videos}")
        run_names.append(f"{name} ({stamp})")
    _done(t, timings, "bench")

    t = _stage(8, "compare", "cofe compare --experiment cofe-demo-bench")
    compare.main(
        ["--experiment", "cofe-demo-bench", "--tracking-uri", uri, "--out", str(out / "compare"), "--runs", *run_names]
    )
    _done(t, timings, "compare")
    timings["total"] = round(time.perf_counter() - total, 1)
    summary = {
        "config": asdict(cfg),
        "inputs": len(inputs),
        "held_out_clusters": held_out,
        "bench_items": len(items),
        "timings_s": timings,
        "tracking_uri": uri,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    run_id = log_demo_run(uri, out, summary)
    print(f"\ndemo run {run_id} (experiment 'cofe-demo') holds the inputs' reports, samples and the comparison")
    print(f"\ndemo finished in {timings['total']:.0f}s; every run is in MLflow: open it with")
    print(f"  mlflow ui --backend-store-uri {uri}")
    return summary


def _quiet() -> None:
    """Keep the demo's output to its stages, progress bars and tables: no library deprecation notices or tips."""
    import logging
    import warnings

    noise = ("ignore::FutureWarning", "ignore::DeprecationWarning")
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), *noise]))  # workers
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for message in ("isinstance\\(treespec", "Consider setting `persistent_workers", "You have overridden `transfer"):
        warnings.filterwarnings("ignore", message=message)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # OpenCV's DNN notes about targets, here and in workers
    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: lower them after that)

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # "GPU available: False", tips


def build_parser() -> argparse.ArgumentParser:
    """The arguments of `cofe demo` (nothing heavy imported: ``--help`` stays fast)."""
    from cofe_apps.helptext import HelpFormatter

    parser = argparse.ArgumentParser(prog="cofe demo", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", default="outputs/demo", help="output folder (MLflow store: OUT/mlflow.db)")
    parser.add_argument("--train-steps", type=int, default=DemoConfig.train_steps, help="cofe fit steps")
    parser.add_argument("--sample-steps", type=int, default=DemoConfig.sample_steps, help="sampler steps per video")
    parser.add_argument(
        "--clips-per-identity", type=int, default=DemoConfig.clips_per_identity, help="raw turning clips per person"
    )
    parser.add_argument("--no-real-clip", action="store_true", help="leave the real webcam clip out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs, training and sampling")
    return parser


def main(argv: list[str]) -> int:
    """`cofe demo [--out DIR] [--train-steps N] [--sample-steps N] [--seed S]`."""
    a = build_parser().parse_args(argv)
    _quiet()
    cfg = DemoConfig(
        train_steps=a.train_steps,
        sample_steps=a.sample_steps,
        clips_per_identity=a.clips_per_identity,
        real_clip=not a.no_real_clip,
        seed=a.seed,
    )
    run_demo(a.out, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
