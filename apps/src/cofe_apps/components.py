"""The frozen components around the DiT: the VAE, the umT5 text encoder, the three face experts and (Wan 2.1 I2V)
the CLIP image encoder, described once by :class:`ComponentsSpec`.

Each is built either from a local path (real weights; nothing is downloaded) or, for tests and the CPU demo, as a
small randomly initialised model of the same architecture (``tiny=True``). The geometry of the latent space is
read from the VAE's own configuration (:func:`vae_geometry`), never assumed:
    video (B, 3, F, H, W) in [-1, 1] <-> latent (B, z, 1 + (F - 1) / t, H / s, W / s)
with ``t = 4`` for every Wan VAE and ``s = 8`` (Wan 2.1 VAE, 16 channels) or ``s = 16`` (Wan 2.2 VAE, 48 channels);
text is ``(B, T, text_dim)`` zero-padded to ``text_len`` (as Wan pads umT5 tokens).

``cofe precompute`` writes the spec, the latent geometry and every expert's output width into its ``config.json``
(:func:`describe_components`); training and sampling read them back from there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cofe_apps.specs import (
    EXPERT_KEYS,
    ComponentsSpec,
    ExpertsSpec,
    ImageSpec,
    LatentGeometry,
    TextSpec,
    VAESpec,
)

# ------------------------------------------------------------------------------------------------------- geometry


def check_video(video: Tensor, geometry: LatentGeometry, codec: str) -> None:
    """Raise unless ``video`` is ``(B, 3, F, H, W)`` with a size the VAE can encode."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"{codec}: video must be (B, 3, F, H, W), got {tuple(video.shape)}")
    geometry.check(*video.shape[2:])


# ----------------------------------------------------------------------------------------------------------- VAE


def build_vae(spec: VAESpec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The VAE a spec names: :class:`LinearCodec` for ``linear``, else :class:`WanVAE`."""
    return LinearCodec.load(spec.linear, device) if spec.linear else WanVAE(spec, device, dtype)


class LinearCodec:
    """A linear autoencoder with a Wan VAE's geometry: ``s x s`` pixels and 4 frames per latent pixel.

    ``(B, 3, 1 + 4k, H, W)`` <-> ``(B, z, 1 + k, H / s, W / s)`` with ``s = 8`` (Wan 2.1) or 16 (Wan 2.2). Every 4th
    frame (0, 4, 8, ...) is a key frame; each of its ``s x s x 3`` pixel blocks is projected onto the top ``z``
    principal components of such blocks in the training clips (PCA, the optimal linear code in squared error),
    each component divided by its standard deviation so latents have unit variance like Wan's normalised latents.
    Decoding projects back and interpolates the 3 frames between key frames linearly. On the demo's face clips,
    16 components of 8 x 8 blocks keep 99.8% of the block variance (RMSE 0.025 in [-1, 1]).
    """

    temporal_stride = 4

    def __init__(
        self, mean: Tensor, basis: Tensor, std: Tensor, device: str | torch.device = "cpu", spatial_stride: int = 8
    ):
        self.spatial_stride = int(spatial_stride)
        block = 3 * self.spatial_stride**2
        if mean.shape != (block,) or basis.ndim != 2 or basis.shape[0] != block or std.shape != (basis.shape[1],):
            raise ValueError(
                f"linear codec: expected mean ({block},), basis ({block}, z), std (z,); got {tuple(mean.shape)}, "
                f"{tuple(basis.shape)}, {tuple(std.shape)}"
            )
        self._device = torch.device(device)
        self.mean, self.basis, self.std = (x.float().to(self._device) for x in (mean, basis, std))
        self.z_dim = basis.shape[1]

    @property
    def geometry(self) -> LatentGeometry:
        return LatentGeometry(self.z_dim, self.temporal_stride, self.spatial_stride)

    @property
    def device(self) -> torch.device:
        return self._device

    @classmethod
    def _blocks(cls, video: Tensor, s: int) -> tuple[Tensor, tuple[int, ...]]:
        """Key frames of ``(B, 3, F, H, W)`` -> ``(B * K * h * w, 3 s s)`` pixel blocks, and ``(B, K, h, w)``."""
        check_video(video, LatentGeometry(0, cls.temporal_stride, s), "the linear codec")
        b, _, _, h, w = video.shape
        keys = video[:, :, :: cls.temporal_stride].float()  # (B, 3, K, H, W)
        k = keys.shape[2]
        x = keys.reshape(b, 3, k, h // s, s, w // s, s).permute(0, 2, 3, 5, 1, 4, 6)  # (B, K, h, w, 3, s, s)
        return x.reshape(-1, 3 * s * s), (b, k, h // s, w // s)

    @classmethod
    def fit(
        cls, videos: list[Tensor], z_dim: int = 16, device: str | torch.device = "cpu", spatial_stride: int = 8
    ) -> LinearCodec:
        """PCA of the key-frame pixel blocks of ``videos`` (each ``(3, F, H, W)`` in [-1, 1])."""
        if not videos:
            raise ValueError("no videos to fit the linear codec on")
        blocks = torch.cat([cls._blocks(v[None], spatial_stride)[0] for v in videos])  # (N, 3 s s)
        if blocks.shape[0] < z_dim:
            raise ValueError(f"{blocks.shape[0]} pixel blocks cannot fit {z_dim} components")
        if z_dim > blocks.shape[1]:
            raise ValueError(f"{z_dim} components exceed the {blocks.shape[1]} values of a pixel block")
        mean = blocks.mean(0)
        _, sing, vh = torch.linalg.svd(blocks - mean, full_matrices=False)
        basis = vh[:z_dim].T  # (3 s s, z): the principal directions
        std = sing[:z_dim] / (blocks.shape[0] - 1) ** 0.5  # each component's standard deviation
        return cls(mean, basis, std.clamp_min(1e-6), device, spatial_stride)

    def save(self, path: str | Path) -> Path:
        """Write the codec atomically (a rerun never finds a half-written file)."""
        import io

        from cofe_apps.io import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(
            buf,
            mean=self.mean.cpu().numpy(),
            basis=self.basis.cpu().numpy(),
            std=self.std.cpu().numpy(),
            spatial_stride=np.array(self.spatial_stride),
        )
        return atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> LinearCodec:
        try:
            with np.load(path, allow_pickle=False) as data:
                stride = int(data["spatial_stride"]) if "spatial_stride" in data else 8
                tensors = [torch.from_numpy(data[k]) for k in ("mean", "basis", "std")]
            return cls(*tensors, device=device, spatial_stride=stride)
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"cannot load the linear codec {path}: {exc}") from exc

    def encode(self, video: Tensor) -> Tensor:
        """``(B, 3, F, H, W)`` in [-1, 1] -> ``(B, z, 1 + (F - 1) / 4, H / s, W / s)``."""
        blocks, (b, k, h, w) = self._blocks(video.to(self.device), self.spatial_stride)
        z = (blocks - self.mean) @ self.basis / self.std  # (N, z)
        return z.reshape(b, k, h, w, self.z_dim).permute(0, 4, 1, 2, 3).contiguous()

    def decode(self, latent: Tensor) -> Tensor:
        """``(B, z, K, h, w)`` -> ``(B, 3, 1 + 4 (K - 1), s h, s w)`` in [-1, 1]."""
        b, c, k, h, w = latent.shape
        if c != self.z_dim:
            raise ValueError(f"latent has {c} channels; the linear codec has {self.z_dim}")
        s = self.spatial_stride
        z = latent.float().to(self.device).permute(0, 2, 3, 4, 1).reshape(-1, c)  # (N, z)
        blocks = (z * self.std) @ self.basis.T + self.mean  # (N, 3 s s)
        keys = blocks.reshape(b, k, h, w, 3, s, s).permute(0, 4, 1, 2, 5, 3, 6).reshape(b, 3, k, h * s, w * s)
        if k == 1:
            return keys.clamp(-1, 1)
        t = self.temporal_stride
        frac = torch.arange(1, t + 1, dtype=keys.dtype, device=keys.device) / t  # 1/4, 2/4, 3/4, 1
        a, e = keys[:, :, :-1, None], keys[:, :, 1:, None]  # (B, 3, K-1, 1, H, W)
        between = (a + (e - a) * frac.view(1, 1, 1, t, 1, 1)).reshape(b, 3, (k - 1) * t, h * s, w * s)
        return torch.cat([keys[:, :, :1], between], dim=2).clamp(-1, 1)


def _tiny_wan_vae(spec: VAESpec):
    """A small random ``AutoencoderKLWan`` of the spec's family (the real VAEs' layer types and strides)."""
    from diffusers import AutoencoderKLWan

    z = spec.z_dim
    common = dict(
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * z,
        latents_std=[1.0] * z,
        z_dim=z,
    )
    if spec.family == "wan2.2":
        # Wan 2.2's VAE: residual down/up blocks on 2x2-patchified pixels (12 channels), 16x spatial in all
        # (STACK.md: 17x64x64 video -> (48, 5, 4, 4) latents with z_dim=48).
        return AutoencoderKLWan(
            base_dim=16,
            decoder_base_dim=16,
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
            **common,
        )
    if spec.family != "wan2.1":
        raise ValueError(f"VAESpec.family must be 'wan2.1' or 'wan2.2', got {spec.family!r}")
    return AutoencoderKLWan(base_dim=8, **common)


class WanVAE:
    """Wan VAE through diffusers' ``AutoencoderKLWan``, with Wan's per-channel latent normalisation; its strides
    and channels come from the model's own config."""

    def __init__(self, spec: VAESpec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        from diffusers import AutoencoderKLWan

        if spec.path:
            if not Path(spec.path).exists():
                raise FileNotFoundError(f"no Wan VAE at {spec.path}")
            self.model = AutoencoderKLWan.from_pretrained(spec.path, torch_dtype=dtype)
        elif spec.tiny:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                self.model = _tiny_wan_vae(spec)
        else:
            raise ValueError("VAESpec needs a path (a diffusers AutoencoderKLWan folder) or tiny=True")
        # diffusers' ModelMixin.to(dtype=...) warns about fp32-kept modules even when, as for AutoencoderKLWan, it
        # keeps none: cast through nn.Module.to, and only when the dtype differs (from_pretrained read it in dtype).
        if next(self.model.parameters()).dtype != dtype:
            torch.nn.Module.to(self.model, dtype=dtype)
        self.model.to(device).eval().requires_grad_(False)
        cfg = self.model.config
        self.z_dim = cfg.z_dim
        self.geometry = LatentGeometry(
            cfg.z_dim, int(getattr(cfg, "scale_factor_temporal", 4)), int(getattr(cfg, "scale_factor_spatial", 8))
        )
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """``(B, 3, F, H, W)`` in [-1, 1] of a valid size (:meth:`LatentGeometry.check`) -> normalised latent."""
        check_video(video, self.geometry, "the Wan VAE")
        dtype = next(self.model.parameters()).dtype
        z = self.model.encode(video.to(self.device, dtype)).latent_dist.mode().float()  # (B, z, F', H', W')
        return (z - self.mean.to(z.device)) / self.std.to(z.device)

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        """Normalised latent -> ``(B, 3, F, H, W)`` in [-1, 1] (fp32)."""
        z = latent.float() * self.std.to(latent.device) + self.mean.to(latent.device)
        dtype = next(self.model.parameters()).dtype
        return self.model.decode(z.to(self.device, dtype)).sample.float().clamp(-1, 1)


# ----------------------------------------------------------------------------------------------------- text


class HashTokenizer:
    """Offline stand-in tokenizer for the tiny encoder: each lower-cased word maps to a stable id (md5)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, prompts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
        ids = torch.zeros(len(prompts), max_length, dtype=torch.long)
        mask = torch.zeros(len(prompts), max_length, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            words = prompt.lower().split()[: max_length - 1]
            for j, word in enumerate(words):
                ids[i, j] = 2 + int(hashlib.md5(word.encode()).hexdigest(), 16) % (self.vocab_size - 2)
            ids[i, len(words)] = 1  # end of sequence, as T5
            mask[i, : len(words) + 1] = 1
        return ids, mask


class TextEncoder:
    """umT5 encoder: prompts -> ``(B, text_len, dim)`` with the real tokens' states then zeros (Wan's padding)."""

    def __init__(self, spec: TextSpec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import UMT5Config, UMT5EncoderModel

        self.text_len = spec.text_len
        if spec.path:
            root = Path(spec.path)
            if not root.exists():
                raise FileNotFoundError(f"no text encoder at {root}")
            from transformers import AutoTokenizer

            enc_dir = root / "text_encoder" if (root / "text_encoder").exists() else root
            tok_dir = root / "tokenizer" if (root / "tokenizer").exists() else root
            # Straight into ``dtype``, tensor by tensor (low_cpu_mem_usage: the weights are never held twice).
            self.model = UMT5EncoderModel.from_pretrained(
                enc_dir, torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=True
            )
            hf_tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)

            def tokenize(prompts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
                out = hf_tok(
                    prompts,
                    padding="max_length",
                    max_length=max_length,
                    truncation=True,
                    add_special_tokens=True,
                    return_tensors="pt",
                )
                return out.input_ids, out.attention_mask

            self.tokenize = tokenize
        elif spec.tiny:
            cfg = UMT5Config(
                vocab_size=1024,
                d_model=spec.dim,
                d_kv=8,
                d_ff=min(2 * spec.dim, 256),
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                dropout_rate=0.0,
            )
            with torch.random.fork_rng():
                torch.manual_seed(0)
                self.model = UMT5EncoderModel(cfg)
            self.tokenize = HashTokenizer(cfg.vocab_size)
        else:
            raise ValueError("TextSpec needs a path (umT5 encoder + tokenizer folder) or tiny=True")
        self.model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.dim = self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[Tensor]:
        """Per prompt, the ``(n_tokens, dim)`` fp32 states of its real tokens (no padding)."""
        ids, mask = self.tokenize(list(prompts), self.text_len)
        states = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        lengths = mask.sum(1).tolist()
        return [states[i, : int(n)].float().cpu() for i, n in enumerate(lengths)]

    def encode_padded(self, prompts: list[str]) -> Tensor:
        """``(B, text_len, dim)``: real-token states followed by zeros."""
        return pad_text(self.encode(prompts), self.text_len)


def pad_text(states: list[Tensor | np.ndarray], text_len: int) -> Tensor:
    """Stack per-prompt token states, zero-padded (or cut) to ``text_len``: ``(B, text_len, dim)``."""
    dim = states[0].shape[-1]
    out = torch.zeros(len(states), text_len, dim)
    for i, s in enumerate(states):
        s = torch.as_tensor(s, dtype=torch.float32)[:text_len]
        out[i, : s.shape[0]] = s
    return out


# ------------------------------------------------------------------------------------- image encoder (Wan I2V)


# CLIP's pixel statistics, which Wan's `clip.py` normalises with for its xlm-roberta ViT-H/14.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPImageEncoder:
    """Wan 2.1 I2V's image conditioning: the first frame -> ``(B, 257, 1280)`` CLIP tokens.

    As Wan's ``CLIPModel.visual(..., use_31_block=True)`` and diffusers' ``WanImageToVideoPipeline``
    (``hidden_states[-2]``): the output of the penultimate transformer block of the ViT-H/14 vision tower, class
    token included, before the final norm. Input: the frame resized to 224 x 224 (bicubic), CLIP-normalised.
    """

    def __init__(self, spec: ImageSpec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self._open_clip = None
        if spec.path and Path(spec.path).is_file():
            self._open_clip = self._build_open_clip(spec.path)
            self.size = 224
            self.width = self._open_clip.transformer.width
            module = self._open_clip
        else:
            from transformers import CLIPVisionConfig, CLIPVisionModel

            if spec.path:
                if not Path(spec.path).exists():
                    raise FileNotFoundError(f"no CLIP image encoder at {spec.path}")
                self._hf = CLIPVisionModel.from_pretrained(
                    spec.path, torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=True
                )
            elif spec.tiny:
                size = 28 if spec.small_input else 224
                cfg = CLIPVisionConfig(
                    hidden_size=spec.width,
                    intermediate_size=min(4 * spec.width, 512),
                    num_hidden_layers=spec.layers,
                    num_attention_heads=max(1, spec.width // 80) if spec.width % 80 == 0 else 2,
                    image_size=size,
                    patch_size=14,
                )
                with torch.random.fork_rng():
                    torch.manual_seed(0)
                    self._hf = CLIPVisionModel(cfg)
            else:
                raise ValueError("ImageSpec needs a path (CLIP vision folder or open_clip file) or tiny=True")
            self.size = self._hf.config.image_size
            self.width = self._hf.config.hidden_size
            module = self._hf
        self.model = module.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.num_tokens = (self.size // 14) ** 2 + 1

    @staticmethod
    def _build_open_clip(path: str):
        import open_clip

        from cofe_encoders.weights import load_state_dict_file

        cfg = open_clip.get_model_config("xlm-roberta-large-ViT-H-14")
        visual = open_clip.model._build_vision_tower(
            cfg["embed_dim"], open_clip.model.CLIPVisionCfg(**cfg["vision_cfg"])
        )
        state = load_state_dict_file(path, "CLIP image encoder")
        if any(k.startswith("visual.") for k in state):
            state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
        try:
            visual.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{path} is not an open_clip xlm-roberta-large-ViT-H-14 checkpoint: {exc}") from exc
        return visual

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, 1 + (S/14)^2, width)`` fp32 tokens."""
        import torch.nn.functional as F

        dtype = next(self.model.parameters()).dtype
        x = F.interpolate(
            image.float().to(self.device), size=(self.size, self.size), mode="bicubic", align_corners=False
        )
        x = (x.mul(0.5).add(0.5) - torch.tensor(_CLIP_MEAN, device=x.device).view(1, 3, 1, 1)) / torch.tensor(
            _CLIP_STD, device=x.device
        ).view(1, 3, 1, 1)  # (B, 3, S, S)
        x = x.to(dtype)
        if self._open_clip is None:
            return self.model(pixel_values=x, output_hidden_states=True).hidden_states[-2].float()  # (B, I, C)
        v = self._open_clip
        x = v.conv1(x).flatten(2).transpose(1, 2)  # (B, N, C)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, C)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)  # (B, 1 + N, C)
        x = v.ln_pre(x)
        for block in v.transformer.resblocks[:-1]:  # the first 31 of 32 blocks (Wan's use_31_block)
            x = block(x)
        return x.float()  # (B, 257, C)


# ---------------------------------------------------------------------------------------------------- experts


def _shallow(depth: int | None) -> dict:
    """``build_expert`` options of a random tower kept at ``depth`` blocks (rehearsals), or none."""
    return {} if depth is None else {"depth": depth, "allow_random": True}


class FaceExperts:
    """Runs the three experts on a reference face; returns what CoFE's projectors read.

    Each expert gets the crop it was designed for: the identity expert (ArcFace / SFace) the 112 x 112 crop aligned
    to the ArcFace 5-point template (``ref_id.png`` of a curated sample), the only input its embedding is
    defined on; the semantic (CLIP) and detail (DINOv2) experts the zoomed-out, background-whitened head crop
    (``ref.png``), resized to their input: they were trained on whole images and read hair, face shape and texture,
    which the tight ArcFace crop cuts off, while the whitened background keeps the reference's backdrop from
    leaking into the video (as ConsisID and PhotoMaker do).
    """

    def __init__(self, spec: ExpertsSpec, device: str | torch.device = "cpu"):
        from cofe_encoders import build_expert

        self.spec = spec
        # Random-weight experts (tiny variants, rehearsals) are seeded: precompute, training and sampling must see
        # the same network.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.experts = {
                "identity": build_expert(
                    "identity", weights=spec.identity, variant=spec.identity_variant, device=device
                ),
                "semantic": build_expert(
                    "semantic",
                    weights=spec.semantic,
                    variant=spec.semantic_variant,
                    device=device,
                    **_shallow(spec.semantic_depth),
                ),
                "detail": build_expert(
                    "detail",
                    weights=spec.detail,
                    variant=spec.detail_variant,
                    device=device,
                    **_shallow(spec.detail_depth),
                ),
            }

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per expert: the shard key, which output CoFE reads, its width and token count, the variant."""
        out = {}
        for name, expert in self.experts.items():
            kind = self.spec.features.get(name, "tokens")
            out[name] = {
                "key": EXPERT_KEYS[name],
                "feature": kind,
                "width": int(expert.pooled_dim if kind == "pooled" else expert.token_dim),
                "tokens": 1 if kind == "pooled" else int(expert.num_tokens),
                "variant": getattr(self.spec, f"{name}_variant"),
                "weights": getattr(self.spec, name),
                "input": "arcface-112-aligned" if name == "identity" else "reference-head-crop",
            }
        return out

    def encode(self, identity_crops: list[np.ndarray], head_crops: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Aligned 112 x 112 identity crops and reference head crops (uint8 RGB) ->
        ``{"id": (B, C), "sem": (B, L, C), "det": (B, L, C)}`` float16."""
        for i, crop in enumerate(identity_crops):
            if crop.shape[:2] != (112, 112):
                raise ValueError(f"identity crop {i} is {crop.shape[1]}x{crop.shape[0]}: needs the aligned 112x112")
        out = {}
        for name, images in (("identity", identity_crops), ("semantic", head_crops), ("detail", head_crops)):
            res = self.experts[name].encode(images, **({"aligned": True} if name == "identity" else {}))
            kind = self.spec.features.get(name, "tokens")
            value = res.pooled if kind == "pooled" else res.tokens
            out[EXPERT_KEYS[name]] = value.float().cpu().numpy().astype(np.float16)
        return out


# -------------------------------------------------------------------------------------------------- the whole set


class Encoders:
    """The built components (VAE, text encoder, face experts, CLIP image encoder) on one device.

    Dtypes are chosen once, here, as Wan runs them: on CUDA the umT5 encoder and the CLIP image tower in bf16
    (Wan's ``t5_dtype`` / ``clip_dtype`` are half precision; the 5.7B umT5-XXL is 11 GB in bf16, 23 GB in fp32), the
    VAE and the face experts in fp32; on the CPU everything in fp32. ``half`` overrides the CUDA choice.
    """

    def __init__(self, spec: ComponentsSpec, device: str | torch.device = "cpu", half: torch.dtype | None = None):
        self.spec = spec
        cuda = torch.device(device).type == "cuda"
        half = half or (torch.bfloat16 if cuda else torch.float32)
        self.vae = build_vae(spec.vae, device)
        self.text = TextEncoder(spec.text, device, half)
        self.experts = FaceExperts(spec.experts, device)
        self.image = CLIPImageEncoder(spec.image, device, half) if spec.image else None

    @property
    def geometry(self) -> LatentGeometry:
        return self.vae.geometry

    def describe(self) -> dict[str, Any]:
        """What the components produce: latent geometry, text width, expert outputs, image tokens."""
        g = self.geometry
        return {
            "latent": {
                "channels": g.channels,
                "temporal_stride": g.temporal_stride,
                "spatial_stride": g.spatial_stride,
            },
            "text_dim": self.text.dim,
            "text_len": self.text.text_len,
            "expert_outputs": self.experts.describe(),
            "image_tokens": None
            if self.image is None
            else {"tokens": self.image.num_tokens, "width": self.image.width},
        }

    def i2v_latent(self, first_frame: Tensor, frames: int) -> Tensor:
        """Wan 2.1 I2V's conditioning video latent: the VAE encoding of ``[first frame, zeros x (frames - 1)]``
        (``first_frame (B, 3, H, W)`` in [-1, 1]) -> ``(B, C, F', H', W')``, as Wan's ``image2video.py`` builds it."""
        b, _, h, w = first_frame.shape
        clip = torch.zeros(b, 3, frames, h, w, dtype=first_frame.dtype, device=first_frame.device)
        clip[:, :, 0] = first_frame
        return self.vae.encode(clip)


# ------------------------------------------------------------------------------------------- reference crops


class ReferenceError(ValueError):
    """No usable face in a reference image."""


def reference_from_image(image: np.ndarray, analyzer=None, head_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Any photo with a face -> ``(identity crop, head crop)``: the largest face, aligned with its 5 points to the
    ArcFace template (112 x 112) and as the whitened, zoomed-out head crop curation writes as ``ref.png``.

    Raises:
        ReferenceError: when no face is found.
    """
    from cofe_encoders import norm_crop
    from cofe_encoders.face import build_face_analyzer, reference_crop

    analyzer = analyzer or build_face_analyzer("offline")
    face = analyzer.largest(image, embed=False)
    if face is None:
        raise ReferenceError(f"no face found in the reference image ({image.shape[1]}x{image.shape[0]})")
    return norm_crop(image, face.kps5), reference_crop(image, face, size=head_size)


def reference_crops(sample: dict, analyzer=None) -> tuple[np.ndarray, np.ndarray, str]:
    """A curated sample's reference -> ``(identity crop 112 x 112, head crop, how)``.

    ``how`` is ``"ref_id.png"`` when the sample carries curation's aligned ArcFace crop (every sample curated with
    cofe-curation >= 0.3), else ``"detected"``: the face is found again in ``ref.png`` and aligned (older shards;
    the whitened background then costs some identity similarity, so re-curating is better).
    """
    from cofe_apps.io import decode_png

    key = sample.get("__key__", "?")
    if "ref.png" not in sample:
        raise ValueError(f"sample {key!r} has no ref.png")
    head = decode_png(sample["ref.png"], f"{key}.ref.png")
    if "ref_id.png" in sample:
        ident = decode_png(sample["ref_id.png"], f"{key}.ref_id.png")
        if ident.shape[:2] != (112, 112):
            raise ValueError(f"sample {key!r}: ref_id.png is {ident.shape[1]}x{ident.shape[0]}, not the 112x112 crop")
        return ident, head, "ref_id.png"
    try:
        ident, _ = reference_from_image(head, analyzer)
    except ReferenceError as exc:
        raise ValueError(f"sample {key!r}: no ref_id.png and {exc}") from exc
    return ident, head, "detected"
