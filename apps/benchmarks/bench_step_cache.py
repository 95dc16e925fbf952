"""The step cache through `CoFEPipeline`: speed-up of whole videos and their drift from the uncached video, as pixel
PSNR and as identity similarity (the reference-vs-frame FaceSim of the cached video against the uncached one's,
and the frame-vs-frame similarity of the faces in the two videos), measured in one run.

    python apps/benchmarks/bench_step_cache.py --checkpoint cofe.safetensors --reference face.png \\
        [--first-frame frame.png] [--thresholds 0.05,0.1,0.2] [--steps 50]

Without ``--checkpoint`` it builds the tiny model of the apps tests (random weights, its face branch moved off zero)
and the bundled photograph: the speed-up and PSNR are real measurements of the cache, but a random model draws no
face, so the identity columns say so; give a trained export for them. Identity is scored by the offline face
analyser and its SFace recogniser (cosine of L2-normalised embeddings of the largest face per frame).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from provenance import git_revision


def tiny_export(tmp: Path) -> Path:
    """The apps tests' tiny TI2V model (face branch, gates and head moved off their zero init), exported."""
    from cofe_apps.export import export
    from cofe_apps.module import CoFEModule
    from cofe_apps.precompute import PrecomputeConfig, precompute
    from cofe_apps.specs import ExpertsSpec, TextSpec, VAESpec
    from cofe_apps.synthetic import make_curated_shards, move_off_zero_init

    curated = make_curated_shards(tmp / "curated")
    cfg = PrecomputeConfig(frames=9, height=64, width=64, vae=VAESpec(tiny=True), text=TextSpec(tiny=True, dim=16),
                           experts=ExpertsSpec())  # fmt: skip
    precompute(curated, tmp / "train", cfg, log=lambda *_: None)
    module = CoFEModule(dit="tiny-ti2v", dit_overrides={"text_dim": 16}, cofe="tiny",
                        components=str(tmp / "train" / "config.json"), freeze="full")  # fmt: skip
    module.configure_model()
    move_off_zero_init(module.net)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "cofe": module.cofe_meta()}
    torch.save(ckpt, tmp / "last.ckpt")
    return export(tmp / "last.ckpt", tmp / "tiny.safetensors")


def face_embeddings(video: np.ndarray, analyzer) -> list[np.ndarray | None]:
    """Per frame, the L2-normalised SFace embedding of the largest face (None without one)."""
    out = []
    for frame in video:
        face = analyzer.largest(np.ascontiguousarray(frame), embed=True)
        out.append(None if face is None or face.embedding is None else face.embedding / np.linalg.norm(face.embedding))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a cofe export or checkpoint (default: the tiny random test model)")
    p.add_argument("--reference", help="reference photo (default: the bundled photograph)")
    p.add_argument("--first-frame", help="first frame (TI2V / I2V)")
    p.add_argument("--prompt", default="a woman turns her head slowly to the left")
    p.add_argument("--thresholds", default="0.1,0.25,0.4")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: 20 tiny, else the preset's)")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--offload", default="none", choices=["none", "model", "blocks"])
    a = p.parse_args()

    from cofe_apps.components import reference_from_image
    from cofe_apps.io import load_image
    from cofe_apps.pipeline import CoFEPipeline
    from cofe_apps.synthetic import hopper
    from cofe_encoders.face import build_face_analyzer

    with tempfile.TemporaryDirectory() as tmp:
        tiny = a.checkpoint is None
        ckpt = tiny_export(Path(tmp)) if tiny else Path(a.checkpoint)
        pipe = CoFEPipeline.from_pretrained(ckpt, device=a.device, offload=a.offload)
        ref = load_image(a.reference) if a.reference else hopper()
        first = load_image(a.first_frame) if a.first_frame else (ref if tiny else None)
        size = {"frames": 9, "height": 64, "width": 64} if tiny else {}
        size.update({k: v for k, v in (("frames", a.frames), ("height", a.height), ("width", a.width)) if v})
        steps = a.steps or (20 if tiny else None)
        crops = reference_from_image(ref)

        def run(threshold: float) -> tuple[np.ndarray, float]:
            start = time.perf_counter()
            video = pipe(ref, a.prompt, first, crops=crops, seed=0, steps=steps, cache_threshold=threshold, **size)
            return video, time.perf_counter() - start

        run(0.0)  # warm-up: allocator, kernels, the RoPE tables
        base, t_base = run(0.0)
        analyzer = build_face_analyzer("offline")
        ref_face = analyzer.largest(ref, embed=True)
        ref_emb = ref_face.embedding / np.linalg.norm(ref_face.embedding)
        base_emb = face_embeddings(base, analyzer)

        def facesim(embs: list) -> float | None:
            vals = [max(0.0, float(e @ ref_emb)) for e in embs if e is not None]
            return float(np.mean(vals)) if vals else None

        cfg = pipe.cfg
        print(f"git {git_revision()} | device {pipe.device} | torch {torch.__version__} | preset {cfg.name} "
              f"(dim {cfg.dim}, {cfg.num_layers} blocks) | {base.shape[0]} frames at {base.shape[2]}x{base.shape[1]} | "
              f"{steps or cfg.sampling.steps} steps | offload {a.offload}")  # fmt: skip
        fs = facesim(base_emb)
        print(f"uncached: {t_base:.2f} s/video, faces in {sum(e is not None for e in base_emb)}/{len(base)} frames, "
              f"FaceSim to the reference {'n/a' if fs is None else f'{fs:.4f}'}")  # fmt: skip
        print("| threshold | s/video | speed-up | pixel PSNR vs uncached | FaceSim (uncached -> cached) | "
              "face-to-face cos | frames with a face |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for th in (float(t) for t in a.thresholds.split(",")):
            video, t = run(th)
            emb = face_embeddings(video, analyzer)
            pairs = [float(x @ y) for x, y in zip(base_emb, emb, strict=True) if x is not None and y is not None]
            fc = facesim(emb)
            sim = "n/a" if fs is None or fc is None else f"{fs:.4f} -> {fc:.4f}"
            cos = f"{np.mean(pairs):.4f}" if pairs else "n/a (no face in both)"
            print(f"| {th} | {t:.2f} | {t_base / t:.2f}x | {psnr(base, video):.1f} dB | {sim} | {cos} | "
                  f"{sum(e is not None for e in emb)}/{len(video)} |")  # fmt: skip
        if tiny:
            print("(the tiny model has random weights: it draws no face, so identity is n/a; pass --checkpoint)")


if __name__ == "__main__":
    main()
