"""Typed configuration for the Wan-compatible DiT, with named presets.

Preset numbers are those of the released Wan 2.1 / 2.2 configs (``wan/configs/*.py`` in Wan-Video/Wan2.1 and
Wan2.2, and the ``config.json`` of the diffusers ``Wan-AI/*-Diffusers`` repositories).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

ModelType = Literal["t2v", "i2v", "ti2v"]


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of a Wan-family video DiT.

    Attributes:
        name: preset name (informational).
        model_type: ``t2v`` (text to video), ``i2v`` (Wan 2.1 I2V: mask + first-frame latent concatenated on
            channels, CLIP image tokens in a decoupled cross-attention branch) or ``ti2v`` (Wan 2.2: the first
            latent frame is given and its tokens see timestep 0).
        dim: hidden width.
        ffn_dim: feed-forward inner width.
        num_heads: attention heads (head width ``dim // num_heads``).
        num_layers: transformer blocks.
        in_dim: channels the patch embedding sees (for ``i2v``: latent + 4 mask + latent = 36).
        out_dim: channels predicted (the latent channels).
        text_dim: width of the text-encoder tokens (umT5-XXL: 4096).
        freq_dim: width of the sinusoidal timestep embedding.
        patch_size: (frames, height, width) patch of the latent video.
        eps: epsilon of every norm.
        qk_norm: RMS-normalise q and k (all released Wan models do).
        cross_attn_norm: affine LayerNorm before the text cross-attention (all released Wan models have it).
        image_dim: width of the CLIP image tokens for ``i2v`` (CLIP ViT-H/14 penultimate layer: 1280).
        face_dim: width of the optional per-block extra context tokens (face tokens). ``None`` builds no face
            branch, so the module's keys are exactly those of a released checkpoint.
        text_len: text tokens a released model was trained with (umT5, padded with zeros to 512).
        rope_max_len: positions tabulated per RoPE axis.
        rope_theta: RoPE base.
        num_train_timesteps: the model sees ``timestep = sigma * num_train_timesteps``.
        vae_stride: (time, height, width) compression of the matching VAE (for pixel <-> latent sizes).
    """

    name: str = "custom"
    model_type: ModelType = "t2v"
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    image_dim: int | None = None
    face_dim: int | None = None
    text_len: int = 512
    rope_max_len: int = 1024
    rope_theta: float = 10000.0
    num_train_timesteps: int = 1000
    vae_stride: tuple[int, int, int] = field(default=(4, 8, 8))

    def __post_init__(self) -> None:
        if self.model_type not in ("t2v", "i2v", "ti2v"):
            raise ValueError(f"model_type must be 't2v', 'i2v' or 'ti2v', got {self.model_type!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head width {self.head_dim} must be even and >= 6 for the 3D RoPE split")
        if self.model_type == "i2v" and self.image_dim is None:
            raise ValueError("model_type='i2v' needs image_dim (CLIP token width, 1280 for Wan 2.1 I2V)")
        if self.model_type == "i2v" and self.in_dim != 2 * self.out_dim + 4:
            raise ValueError(
                f"i2v concatenates latent ({self.out_dim}) + mask (4) + first-frame latent ({self.out_dim}): "
                f"in_dim must be {2 * self.out_dim + 4}, got {self.in_dim}"
            )
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size must have 3 entries (t, h, w), got {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Channels of each head given to the frame, height and width rotations (Wan: h = w = 2 * (d // 6))."""
        hw = 2 * (self.head_dim // 6)
        return self.head_dim - 2 * hw, hw, hw

    @property
    def latent_channels(self) -> int:
        return self.out_dim

    @property
    def cond_channels(self) -> int:
        """Channels of the conditioning concatenated to the latent (``i2v`` only)."""
        return self.in_dim - self.out_dim if self.model_type == "i2v" else 0

    def num_tokens(self, frames: int, height: int, width: int) -> int:
        """Tokens of a latent video of this size."""
        pt, ph, pw = self.patch_size
        return (frames // pt) * (height // ph) * (width // pw)

    def num_params(self) -> int:
        """Parameter count computed from the config (no model built)."""
        d, L = self.dim, self.num_layers
        lin = lambda i, o: i * o + o  # noqa: E731
        per_block = 4 * lin(d, d) + 2 * d  # self-attention q k v o + q/k norm
        per_block += 4 * lin(d, d) + 2 * d + (2 * d if self.cross_attn_norm else 0)  # cross-attention
        if self.model_type == "i2v":
            per_block += 2 * lin(d, d) + d
        if self.face_dim is not None:
            per_block += 2 * lin(self.face_dim, d) + lin(d, d) + d
        per_block += lin(d, self.ffn_dim) + lin(self.ffn_dim, d) + 6 * d
        n = L * per_block
        n += self.in_dim * d * math.prod(self.patch_size) + d
        n += lin(self.text_dim, d) + lin(d, d) + lin(self.freq_dim, d) + lin(d, d) + lin(d, 6 * d)
        n += lin(d, self.out_dim * math.prod(self.patch_size)) + 2 * d
        if self.model_type == "i2v":
            i = self.image_dim
            n += 2 * i + lin(i, i) + lin(i, d) + 2 * d
        return n

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DiTConfig keys {unknown}; known keys: {sorted(known)}")
        data = dict(data)
        for key in ("patch_size", "vae_stride"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> DiTConfig:
        """A preset by name (see ``PRESETS``), with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown DiT preset {name!r}; presets: {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def replace(self, **overrides: Any) -> DiTConfig:
        return replace(self, **overrides)


PRESETS: dict[str, DiTConfig] = {
    # Wan2.1-T2V-1.3B: wan/configs/wan_t2v_1_3B.py
    "wan2.1-t2v-1.3b": DiTConfig(
        name="wan2.1-t2v-1.3b", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16, out_dim=16
    ),
    # Wan2.1-T2V-14B: wan/configs/wan_t2v_14B.py
    "wan2.1-t2v-14b": DiTConfig(
        name="wan2.1-t2v-14b", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16, out_dim=16
    ),
    # Wan2.1-I2V-14B (480P and 720P share the architecture): wan/configs/wan_i2v_14B.py
    "wan2.1-i2v-14b": DiTConfig(
        name="wan2.1-i2v-14b",
        model_type="i2v",
        dim=5120,
        ffn_dim=13824,
        num_heads=40,
        num_layers=40,
        in_dim=36,
        out_dim=16,
        image_dim=1280,
    ),
    # Wan2.2-TI2V-5B: wan/configs/wan_ti2v_5B.py (VAE 4x16x16 with 48 latent channels)
    "wan2.2-ti2v-5b": DiTConfig(
        name="wan2.2-ti2v-5b",
        model_type="ti2v",
        dim=3072,
        ffn_dim=14336,
        num_heads=24,
        num_layers=30,
        in_dim=48,
        out_dim=48,
        vae_stride=(4, 16, 16),
    ),
}

# A few-thousand-parameter model for tests and the CPU demo; head width 16 keeps every RoPE axis non-empty.
_TINY = DiTConfig(
    name="tiny",
    dim=32,
    ffn_dim=64,
    num_heads=2,
    num_layers=2,
    in_dim=4,
    out_dim=4,
    text_dim=16,
    freq_dim=32,
    text_len=8,
)
PRESETS["tiny"] = _TINY
PRESETS["tiny-i2v"] = replace(_TINY, name="tiny-i2v", model_type="i2v", in_dim=12, image_dim=24)
PRESETS["tiny-ti2v"] = replace(_TINY, name="tiny-ti2v", model_type="ti2v")
