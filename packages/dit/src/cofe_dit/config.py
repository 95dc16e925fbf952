"""Typed configuration for the Wan-compatible DiT, with named presets and Wan's sampling defaults.

Preset numbers are those of the released Wan 2.1 / 2.2 configs (``wan/configs/*.py`` in Wan-Video/Wan2.1 and
Wan2.2, and the ``config.json`` of the diffusers ``Wan-AI/*-Diffusers`` repositories). Every preset also carries the
sampling defaults Wan's own ``generate.py`` uses for that model (``SamplingDefaults``), each with its source.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

ModelType = Literal["t2v", "i2v", "ti2v"]
Solver = Literal["unipc", "euler", "dpmpp_2m"]
SizeRule = Literal["fixed", "wan2.1", "wan2.2"]
SOLVERS = ("unipc", "euler", "dpmpp_2m")

# Wan's default negative prompt, verbatim: `wan_shared_cfg.sample_neg_prompt` in wan/configs/shared_config.py of
# Wan-Video/Wan2.1 and (identical) Wan-Video/Wan2.2. Wan encodes it with umT5 whenever no negative prompt is given
# (`if n_prompt == "": n_prompt = self.sample_neg_prompt` in text2video.py / image2video.py / textimage2video.py).
# In English: "vivid colours, overexposed, static, blurry details, subtitles, style, artwork, painting, picture,
# still, overall grey, worst quality, low quality, JPEG artefacts, ugly, mutilated, extra fingers, badly drawn hands,
# badly drawn face, deformed, disfigured, malformed limbs, fused fingers, motionless frame, cluttered background,
# three legs, many people in the background, walking backwards".
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
# Wan2.1 I2V-14B prefixes "camera shake," (wan/configs/wan_i2v_14B.py:
# `i2v_14B.sample_neg_prompt = "镜头晃动，" + i2v_14B.sample_neg_prompt`).
WAN_I2V_NEGATIVE_PROMPT = "镜头晃动，" + WAN_NEGATIVE_PROMPT


@dataclass(frozen=True)
class SamplingDefaults:
    """How the original Wan code samples a model when the user passes no options (carried by each preset).

    Attributes:
        steps: solver steps (model evaluations per guidance branch).
        shift: timestep shift of the sampling schedule.
        text_scale: classifier-free guidance scale of the text (Wan's ``sample_guide_scale``).
        solver: ``unipc`` (Wan's default), ``euler`` or ``dpmpp_2m``.
        fps: frame rate of the written video.
        num_frames: pixel frames (4n + 1 for Wan's 4x temporal VAE).
        width, height: output size in pixels for text-to-video; with a conditioning image (``size_rule`` not
            ``fixed``) their product is the pixel area and the image's aspect ratio picks the shape.
        size_rule: how an input image's aspect ratio sets the output size: ``fixed`` (always width x height),
            ``wan2.1`` (Wan 2.1 ``image2video.py``) or ``wan2.2`` (Wan 2.2 ``best_output_size``); see ``output_size``.
        negative_prompt: the text Wan encodes as the unconditional prompt when the user gives none.
    """

    steps: int = 50
    shift: float = 5.0
    text_scale: float = 5.0
    solver: Solver = "unipc"
    fps: int = 16
    num_frames: int = 81
    width: int = 832
    height: int = 480
    size_rule: SizeRule = "fixed"
    negative_prompt: str = WAN_NEGATIVE_PROMPT

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"sampling steps must be >= 1, got {self.steps}")
        if self.shift <= 0:
            raise ValueError(f"sampling shift must be positive, got {self.shift}")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {SOLVERS}")
        if self.size_rule not in ("fixed", "wan2.1", "wan2.2"):
            raise ValueError(f"unknown size_rule {self.size_rule!r}; choose 'fixed', 'wan2.1' or 'wan2.2'")
        for key in ("fps", "num_frames", "width", "height"):
            if getattr(self, key) < 1:
                raise ValueError(f"sampling {key} must be >= 1, got {getattr(self, key)}")

    def replace(self, **overrides: Any) -> SamplingDefaults:
        return replace(self, **overrides)


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
        sampling: Wan's sampling defaults for this model (steps, shift, guidance, solver, fps, frames, size,
            negative prompt); overridable per call through ``SamplerConfig.from_defaults``.
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
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)

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
        if not isinstance(self.sampling, SamplingDefaults):
            raise TypeError(f"sampling must be a SamplingDefaults, got {type(self.sampling).__name__}")

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
        """The inverse of ``to_dict``. A dict without ``sampling`` (a ``config.json`` written before 0.2, or Wan's
        own) gets the sampling defaults, and ``vae_stride`` if absent, of the preset with the same architecture."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DiTConfig keys {unknown}; known keys: {sorted(known)}")
        data = dict(data)
        for key in ("patch_size", "vae_stride"):
            if key in data:
                data[key] = tuple(data[key])
        if isinstance(data.get("sampling"), dict):
            s_known = {f.name for f in fields(SamplingDefaults)}
            s_unknown = sorted(set(data["sampling"]) - s_known)
            if s_unknown:
                raise ValueError(f"unknown sampling keys {s_unknown}; known keys: {sorted(s_known)}")
            data["sampling"] = SamplingDefaults(**data["sampling"])
        cfg = cls(**data)
        return cfg if "sampling" in data else with_preset_defaults(cfg, keep_vae_stride="vae_stride" in data)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> DiTConfig:
        """A preset by name (see ``PRESETS``), with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown DiT preset {name!r}; presets: {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def replace(self, **overrides: Any) -> DiTConfig:
        return replace(self, **overrides)


# ---------------------------------------------------------------------------------------------------------------
# Presets. Sampling defaults are what Wan's own entry points use when the user passes nothing:
#   Wan2.1 generate.py (`_validate_args`, `_parse_args`): sample_steps = 40 if "i2v" in task else 50; sample_shift =
#     5.0, or 3.0 for i2v at 832*480 / 480*832; frame_num = 81; --sample_guide_scale 5.0; --sample_solver 'unipc';
#     --size default '1280*720'; SUPPORTED_SIZES['t2v-1.3B'] = ('480*832', '832*480').
#   Wan2.1 wan/configs/shared_config.py: sample_fps = 16, sample_neg_prompt (WAN_NEGATIVE_PROMPT).
#   Wan2.2 wan/configs/wan_ti2v_5B.py: sample_fps = 24, sample_shift = 5.0, sample_steps = 50,
#     sample_guide_scale = 5.0, frame_num = 121; textimage2video.py: size=(1280, 704), max_area=704 * 1280,
#     sample_solver='unipc', best_output_size for the image-conditioned size.
# ---------------------------------------------------------------------------------------------------------------

# Wan2.1-T2V-1.3B: 480p only (SUPPORTED_SIZES). The Wan2.1 README suggests `--sample_guide_scale 6` and
# `--sample_shift` 8-12 for this model; generate.py's defaults (guide 5, shift 5) are what we carry.
_WAN21_T2V_1_3B_SAMPLING = SamplingDefaults(steps=50, shift=5.0, text_scale=5.0, fps=16, num_frames=81)
# Wan2.1-T2V-14B: 480p and 720p; generate.py's default size is 1280*720.
_WAN21_T2V_14B_SAMPLING = _WAN21_T2V_1_3B_SAMPLING.replace(width=1280, height=720)
# Wan2.1-I2V-14B-480P: 40 steps, shift 3.0 at 832*480; the output keeps the image's aspect ratio at that area.
_WAN21_I2V_480P_SAMPLING = SamplingDefaults(
    steps=40, shift=3.0, text_scale=5.0, size_rule="wan2.1", negative_prompt=WAN_I2V_NEGATIVE_PROMPT
)
# Wan2.1-I2V-14B-720P (same architecture): shift stays 5.0 away from 480p, area 1280*720.
_WAN21_I2V_720P_SAMPLING = _WAN21_I2V_480P_SAMPLING.replace(shift=5.0, width=1280, height=720)
# Wan2.2-TI2V-5B: 121 frames at 24 fps, 1280*704 (text only) or best_output_size at 704*1280 area (with image).
_WAN22_TI2V_5B_SAMPLING = SamplingDefaults(
    steps=50, shift=5.0, text_scale=5.0, fps=24, num_frames=121, width=1280, height=704, size_rule="wan2.2"
)

PRESETS: dict[str, DiTConfig] = {
    # Wan2.1-T2V-1.3B: wan/configs/wan_t2v_1_3B.py
    "wan2.1-t2v-1.3b": DiTConfig(
        name="wan2.1-t2v-1.3b",
        dim=1536,
        ffn_dim=8960,
        num_heads=12,
        num_layers=30,
        in_dim=16,
        out_dim=16,
        sampling=_WAN21_T2V_1_3B_SAMPLING,
    ),
    # Wan2.1-T2V-14B: wan/configs/wan_t2v_14B.py
    "wan2.1-t2v-14b": DiTConfig(
        name="wan2.1-t2v-14b",
        dim=5120,
        ffn_dim=13824,
        num_heads=40,
        num_layers=40,
        in_dim=16,
        out_dim=16,
        sampling=_WAN21_T2V_14B_SAMPLING,
    ),
    # Wan2.1-I2V-14B-480P: wan/configs/wan_i2v_14B.py
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
        sampling=_WAN21_I2V_480P_SAMPLING,
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
        sampling=_WAN22_TI2V_5B_SAMPLING,
    ),
}
# Wan2.1-I2V-14B-720P: the same architecture (and weights layout) with 720p sampling defaults. `preset_for` maps a
# checkpoint of this architecture to the 480P preset above, which comes first.
PRESETS["wan2.1-i2v-14b-720p"] = replace(
    PRESETS["wan2.1-i2v-14b"], name="wan2.1-i2v-14b-720p", sampling=_WAN21_I2V_720P_SAMPLING
)

# A few-thousand-parameter model for tests and the CPU demo; head width 16 keeps every RoPE axis non-empty. Its
# sampling defaults are Wan's with CPU-sized steps, frames and pixels (9 frames of 64x64 -> a 3x8x8 latent).
_TINY_SAMPLING = SamplingDefaults(steps=10, num_frames=9, width=64, height=64)
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
    sampling=_TINY_SAMPLING,
)
PRESETS["tiny"] = _TINY
PRESETS["tiny-i2v"] = replace(
    _TINY,
    name="tiny-i2v",
    model_type="i2v",
    in_dim=12,
    image_dim=24,
    sampling=_TINY_SAMPLING.replace(shift=3.0, size_rule="wan2.1", negative_prompt=WAN_I2V_NEGATIVE_PROMPT),
)
PRESETS["tiny-ti2v"] = replace(
    _TINY, name="tiny-ti2v", model_type="ti2v", sampling=_TINY_SAMPLING.replace(fps=24, size_rule="wan2.2")
)

# Fields that decide whether two configs are the same architecture (weights interchangeable). The face branch is
# ours (added on top of a released model), and names, sampling defaults and table sizes do not change the weights.
_ARCH_FIELDS = (
    "model_type",
    "dim",
    "ffn_dim",
    "num_heads",
    "num_layers",
    "in_dim",
    "out_dim",
    "text_dim",
    "freq_dim",
    "patch_size",
    "qk_norm",
    "cross_attn_norm",
    "image_dim",
)


def preset_for(cfg: DiTConfig) -> str | None:
    """The name of the first preset with ``cfg``'s architecture (``face_dim`` aside), or None.

    Used to give a config read from a checkpoint (ours, Wan's or diffusers' ``config.json``, or tensor shapes) the
    sampling defaults and VAE stride of the model it is. The 480P and 720P Wan2.1-I2V-14B share one architecture:
    this returns ``wan2.1-i2v-14b`` (480P) for both.
    """
    for name, preset in PRESETS.items():
        if all(getattr(preset, f) == getattr(cfg, f) for f in _ARCH_FIELDS):
            return name
    return None


def with_preset_defaults(cfg: DiTConfig, *, keep_vae_stride: bool = False) -> DiTConfig:
    """``cfg`` with the sampling defaults (and, unless ``keep_vae_stride``, the VAE stride) of its preset."""
    name = preset_for(cfg)
    if name is None:
        return cfg
    preset = PRESETS[name]
    updates: dict[str, Any] = {"sampling": preset.sampling}
    if not keep_vae_stride:
        updates["vae_stride"] = preset.vae_stride
    return replace(cfg, **updates)


# ---------------------------------------------------------------------------------------------------------------
# Output sizes
# ---------------------------------------------------------------------------------------------------------------


def best_output_size(width: int, height: int, divisor_w: int, divisor_h: int, area: int) -> tuple[int, int]:
    """Wan 2.2's output size for an input image: the ``(width, height)`` of at most ``area`` pixels, multiples of
    the divisors, whose aspect ratio is closest to the input's (Wan-Video/Wan2.2 ``wan/utils/utils.py``
    ``best_output_size``, used by ``textimage2video.py`` with divisors ``patch_size * vae_stride``).

    Two candidates are tried, rounding the width down first or the height down first, and the one whose ratio
    differs less (as a factor) from the input's wins; the height-first candidate wins ties, as in Wan.

    Example:
        >>> best_output_size(1920, 1080, 32, 32, 704 * 1280)
        (1248, 704)
    """
    if min(width, height, divisor_w, divisor_h, area) <= 0:
        raise ValueError(f"best_output_size needs positive sizes, got {(width, height, divisor_w, divisor_h, area)}")
    ratio = width / height
    ow = (area * ratio) ** 0.5
    oh = area / ow
    w1 = int(ow // divisor_w * divisor_w)  # width rounded down first
    h1 = int(area / w1 // divisor_h * divisor_h) if w1 else 0
    h2 = int(oh // divisor_h * divisor_h)  # height rounded down first
    w2 = int(area / h2 // divisor_w * divisor_w) if h2 else 0
    if min(w1, h1, w2, h2) <= 0:
        raise ValueError(
            f"area {area} is too small for multiples of ({divisor_w}, {divisor_h}) at aspect ratio {ratio:.3f}"
        )
    r1, r2 = w1 / h1, w2 / h2
    if max(ratio / r1, r1 / ratio) < max(ratio / r2, r2 / ratio):
        return w1, h1
    return w2, h2


def output_size(cfg: DiTConfig, image_width: int | None = None, image_height: int | None = None) -> tuple[int, int]:
    """Pixel ``(width, height)`` that Wan generates for this model, given the conditioning image's size if any.

    Without an image, or with ``size_rule == "fixed"``: the preset's ``width x height``. With an image:
    ``wan2.1`` follows Wan 2.1 ``image2video.py`` (latent height ``round(sqrt(area * h / w) // stride_h // patch_h *
    patch_h)``, width likewise with ``w / h``), ``wan2.2`` is ``best_output_size`` with divisors
    ``vae_stride * patch_size``; ``area = width * height`` of the defaults.
    """
    s = cfg.sampling
    if (image_width is None) != (image_height is None):
        raise ValueError("give both image_width and image_height, or neither")
    if image_width is None or s.size_rule == "fixed":
        return s.width, s.height
    if image_width <= 0 or image_height <= 0:
        raise ValueError(f"image size must be positive, got {image_width}x{image_height}")
    area = s.width * s.height
    _, sh, sw = cfg.vae_stride
    _, ph, pw = cfg.patch_size
    if s.size_rule == "wan2.2":
        return best_output_size(image_width, image_height, sw * pw, sh * ph, area)
    aspect = image_height / image_width
    lat_h = round(math.sqrt(area * aspect) // sh // ph * ph)
    lat_w = round(math.sqrt(area / aspect) // sw // pw * pw)
    if lat_h <= 0 or lat_w <= 0:
        raise ValueError(f"image {image_width}x{image_height} gives an empty output at area {area}")
    return lat_w * sw, lat_h * sh
