"""A Wan 2.1 / 2.2 compatible video diffusion transformer, in one file.

Architecture (Wan-Video/Wan2.1 ``wan/modules/model.py``; Wan2.2 adds per-token timesteps for TI2V):
patch embedding (1, 2, 2) of a latent video, 3D rotary position embedding split over frames/height/width,
sinusoidal timestep embedding driving AdaLN modulation (shift, scale, gate) in every block, self-attention with
RMS-normalised q and k, text cross-attention (plus a decoupled CLIP-image branch for Wan 2.1 I2V), a GELU(tanh)
FFN, and a modulated output head followed by unpatchify.

Module and parameter names follow the original Wan checkpoints, so their state dicts load without renaming;
``cofe_dit.checkpoint`` maps the diffusers ``WanTransformer3DModel`` names onto these.

On top of Wan, every block can take extra context tokens (for CoFE: fused face tokens) through a decoupled
cross-attention branch whose output projection starts at zero, so a pretrained model is unchanged until trained.

Numerics: the residual stream, norms, AdaLN modulation, RoPE and the timestep embedding are computed in fp32;
under ``torch.autocast`` the linear layers and attention run in bf16/fp16. These tensors also *stay* fp32 when the
model is cast with ``model.to(torch.bfloat16)`` / ``.half()`` / ``.bfloat16()`` (the "fp32 islands", see
``is_fp32_parameter``):

    time_embedding.*            the timestep MLP (sinusoid -> D -> D)
    time_projection.*           its AdaLN projection (D -> 6D)
    blocks.N.modulation         every block's AdaLN table (1, 6, D)
    head.modulation             the output head's table (1, 2, D)
    *.norm*.weight / .bias      every norm's affine parameters (q/k RMS norms, the cross-attention LayerNorm)
    img_emb.proj.0 / .4         the LayerNorms of the I2V image projection
    RoPE tables                 not parameters: built in fp32 per device

This is the set diffusers keeps in fp32 for Wan (``WanTransformer3DModel._keep_in_fp32_modules``: rope,
time_embedder, scale_shift_table, norm1, norm2, norm3) plus the AdaLN projection and the q/k norm weights, which
Wan computes in fp32 (``WanModel.forward`` runs ``time_embedding`` and ``time_projection`` under an fp32 autocast
and asserts fp32 modulation). Everything else (the linears, patch embedding, attention) takes the cast dtype.

Construction is lazy: modules are built on the ``meta`` device and then materialised on the ambient default
device with Wan's initialisation, so ``with torch.device("meta"): DiT(cfg)`` builds even a 14B model instantly
and allocates nothing; ``materialize`` (or ``to_empty`` + ``reset_parameters``) initialises it later.

Inference: the forward makes no host sync unless ``debug_checks`` (or ``COFE_DEBUG_CHECKS=1``) adds the NaN / Inf
input checks; eval-mode forwards never concatenate the q/k/v weights (``SelfAttention``); the attention
kernel is chosen with ``set_attention_backend`` and the blocks compiled with ``DiT.compile_blocks``;
``face_scale`` weighs the face branch per block; ``step_cache`` skips the blocks after the first on steps where the
first block barely changed (``cofe_dit.step_cache``).

Shape legend:
    B batch, C latent channels, F/H/W latent frames/height/width, L = F'H'W' video tokens after patching,
    D model width, N heads, Dh = D / N head width, T text tokens, I CLIP-image tokens, M face tokens.
"""

from __future__ import annotations

import importlib
import math
import os
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cofe_dit.config import DiTConfig

if TYPE_CHECKING:
    from cofe_dit.step_cache import StepCache

# Parameters that stay fp32 whatever dtype the model is cast to (see the module docstring).
_FP32_PARAMETER = re.compile(
    r"^(time_embedding|time_projection)\.|(^|\.)modulation$|(^|\.)norm[^.]*\.(weight|bias)$|^img_emb\.proj\.[04]\."
)


def is_fp32_parameter(name: str) -> bool:
    """Whether the parameter ``name`` (a Wan-layout key) is one of the DiT's fp32 islands."""
    return _FP32_PARAMETER.search(name) is not None


# `COFE_DEBUG_CHECKS=1` switches on the finiteness checks of every DiT (and CoFE) in the process, whatever their
# `debug_checks` attribute says; read at each forward, so it also works when set after the model was built.
DEBUG_CHECKS_ENV = "COFE_DEBUG_CHECKS"


def debug_checks_from_env() -> bool:
    """Whether ``COFE_DEBUG_CHECKS`` is set to ``1`` (or ``true`` / ``yes`` / ``on``)."""
    return os.environ.get(DEBUG_CHECKS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------------------------------------------
# Embeddings and norms
# --------------------------------------------------------------------------------------------------------------


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Wan's timestep embedding: ``[cos(t w), sin(t w)]`` with ``w_i = 10000^(-i / (dim/2))``, in fp32.

    Args:
        t: timesteps of any shape, in ``[0, num_train_timesteps]``.
        dim: embedding width (even).

    Returns:
        ``(*t.shape, dim)`` fp32.
    """
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float64) / half
    freqs = torch.pow(10000.0, -exponent)  # (dim/2,)
    angles = t.to(torch.float64)[..., None] * freqs  # (*, dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()  # (*, dim)


def rope_tables(head_dim: int, split: tuple[int, int, int], max_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """Per-axis RoPE angle tables (computed in fp64, stored fp32).

    Each axis ``a`` with ``c_a`` channels rotates ``c_a / 2`` pairs at frequencies ``theta^(-2i / c_a)``.

    Returns:
        ``(cos, sin)``, each ``(max_len, Dh / 2)``; columns ``[0, c_t/2)`` belong to frames, then height, then width.
    """
    if sum(split) != head_dim:
        raise ValueError(f"RoPE split {split} does not sum to the head width {head_dim}")
    pos = torch.arange(max_len, dtype=torch.float64)
    angles = []
    for channels in split:
        inv = 1.0 / theta ** (torch.arange(0, channels, 2, dtype=torch.float64) / channels)  # (c/2,)
        angles.append(torch.outer(pos, inv))  # (max_len, c/2)
    angle = torch.cat(angles, dim=1)  # (max_len, Dh/2)
    return torch.cos(angle).float(), torch.sin(angle).float()


def rope_grid(cos: Tensor, sin: Tensor, split: tuple[int, int, int], grid: tuple[int, int, int]) -> tuple[Tensor, ...]:
    """Angles for every token of a (frames, height, width) grid, in token order (frame-major).

    Returns:
        ``(cos, sin)``, each ``(L, Dh / 2)`` fp32.
    """
    f, h, w = grid
    if max(grid) > cos.shape[0]:
        raise ValueError(f"latent grid {grid} exceeds the RoPE table length {cos.shape[0]} (rope_max_len)")
    ct, ch, cw = (c // 2 for c in split)
    out = []
    for table in (cos, sin):
        tf, th, tw = table.split([ct, ch, cw], dim=1)
        table = torch.cat(
            [
                tf[:f, None, None, :].expand(f, h, w, ct),  # (F', H', W', ct)
                th[None, :h, None, :].expand(f, h, w, ch),  # (F', H', W', ch)
                tw[None, None, :w, :].expand(f, h, w, cw),  # (F', H', W', cw)
            ],
            dim=-1,
        )  # (F', H', W', Dh/2)
        out.append(table.reshape(f * h * w, -1))  # (L, Dh/2)
    return tuple(out)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent channel pairs ``(x[2i], x[2i+1])`` of every head (Wan's complex-number convention), in fp32.

    Args:
        x: ``(B, L, N, Dh)``.
        cos, sin: ``(L, Dh / 2)``.
    """
    # As one complex product: half the time of the real-pair formulation, forward and backward, on CPU.
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, L, N, Dh/2) complex
    rot = torch.complex(cos.float(), sin.float())[:, None, :]  # (L, 1, Dh/2)
    return torch.view_as_real(xc * rot).flatten(-2).type_as(x)  # (B, L, N, Dh)


class RMSNorm(nn.Module):
    """RMS norm over the last dimension, computed in fp32 and returned in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).type_as(x)


class LayerNorm(nn.Module):
    """LayerNorm computed in fp32 and returned in fp32 (callers modulate in fp32 and cast once)."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = False):
        super().__init__()
        self.eps = eps
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), (self.dim,), w, b, self.eps)


# Attention kernels: "sdpa" is PyTorch's (flash / memory-efficient kernels on CUDA, any dtype and device); "flash" is
# the flash-attn package's `flash_attn_func` (FlashAttention-2, Dao 2023), "sage" SageAttention's `sageattn` (INT8
# QK^T, Zhang et al. 2024): both CUDA-only, fp16 / bf16 only, and both take tokens-first (B, L, N, Dh) tensors.
ATTENTION_BACKENDS: tuple[str, ...] = ("sdpa", "flash", "sage")
# backend -> (module imported, pip package that provides it)
_ATTENTION_PACKAGES = {"flash": ("flash_attn", "flash-attn"), "sage": ("sageattention", "sageattention")}


def _attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "sdpa") -> Tensor:
    """Multi-head attention with tokens-first layout: ``(B, Lq, N, Dh), (B, Lk, N, Dh) -> (B, Lq, N * Dh)``.

    ``backend`` is one of ``ATTENTION_BACKENDS`` (see ``set_attention_backend``); ``sdpa`` is
    ``scaled_dot_product_attention``, which picks flash / memory-efficient kernels on CUDA.
    """
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, N, Lq, Dh)
        return out.transpose(1, 2).flatten(2)  # (B, Lq, D)
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(
            f"attention backend {backend!r} runs on CUDA in float16 / bfloat16 only; got q of dtype {q.dtype} on "
            f"{q.device} (run the model in bf16, e.g. model.to(torch.bfloat16) or torch.autocast, on a CUDA device, "
            f"or choose set_attention_backend(model, 'sdpa'))"
        )
    return _kernel_attention(q, k, v, backend)  # (B, Lq, D)


def _kernel_attention(q: Tensor, k: Tensor, v: Tensor, backend: str) -> Tensor:
    """The flash-attn / SageAttention call (requirements checked by the caller): ``(B, Lq, N, Dh) -> (B, Lq, D)``."""
    if backend == "flash":
        from flash_attn import flash_attn_func

        out = flash_attn_func(q, k, v)  # (B, Lq, N, Dh): tokens-first in and out; scale 1/sqrt(Dh) by default
    elif backend == "sage":
        from sageattention import sageattn

        out = sageattn(q, k, v, tensor_layout="NHD", is_causal=False)  # (B, Lq, N, Dh): "NHD" is tokens-first
    else:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {ATTENTION_BACKENDS}")
    return out.flatten(2)  # (B, Lq, D)


def check_attention_backend(name: str) -> None:
    """Raise a ``ValueError`` unless ``name`` is a known attention backend whose package is importable.

    Raises:
        ValueError: an unknown name, or ``flash`` / ``sage`` without the ``flash-attn`` / ``sageattention`` package
            (the message names the pip package).
    """
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {ATTENTION_BACKENDS}")
    if name in _ATTENTION_PACKAGES:
        module, pip = _ATTENTION_PACKAGES[name]
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(
                f"attention backend {name!r} needs the {pip!r} package (`pip install {pip}`), which could not be "
                f"imported: {err}"
            ) from err


def set_attention_backend(model: nn.Module, name: str) -> nn.Module:
    """Choose the attention kernel of every attention layer of ``model`` (a ``DiT`` or any module holding its blocks).

    Args:
        model: the module whose self-, text-, image- and face-attention layers switch.
        name: ``sdpa`` (default: ``F.scaled_dot_product_attention``, any device and dtype), ``flash`` (the
            ``flash-attn`` package's ``flash_attn_func``) or ``sage`` (the ``sageattention`` package's ``sageattn``).
            ``flash`` and ``sage`` run on CUDA in fp16 / bf16 only (a bf16 model or ``torch.autocast``); a forward
            that breaks this raises a ``ValueError`` naming the dtype and device it got.

    Returns:
        ``model``.

    Raises:
        ValueError: an unknown name, a backend whose package is not installed (the message names the pip package),
            or a model without attention layers.
    """
    check_attention_backend(name)
    layers = [m for m in model.modules() if isinstance(m, (SelfAttention, CrossAttention, ExtraContextBranch))]
    if not layers:
        raise ValueError(f"set_attention_backend: {type(model).__name__} holds no cofe_dit attention layer")
    for layer in layers:
        layer.attention_backend = name
    return model


# --------------------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Self-attention over all video tokens with RMS-normalised q, k (over the full width) and 3D RoPE.

    The parameters stay separate, as in Wan's checkpoints. Under autograd q, k and v run as one GEMM on their
    concatenated weights (as in 0.2); in inference (eval mode, no gradient needed) as three GEMMs on the shared input,
    with no weight copy (``_separate_qkv``), or, with ``cache_qkv = True``, as one GEMM on a cached concatenation
    (``fused_qkv``: 0.2's arithmetic exactly). On CPU the two are bit-identical (oneDNN / MKL compute each output
    column independently of the GEMM's width); cuBLAS may pick another kernel for width D than for 3D, so on CUDA the
    three-GEMM default can differ from 0.2 in the last bits.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.attention_backend = "sdpa"
        # Off by default: inference runs three GEMMs instead (see `_separate_qkv`); on, it keeps the concatenation.
        self.cache_qkv = False
        # (key, weight (3D, D), bias (3D,)); a plain attribute, so it is in no state dict and no `.to()`.
        self._qkv_cache: tuple[tuple, Tensor, Tensor] | None = None

    def _qkv_params(self) -> tuple[Tensor, ...]:
        return self.q.weight, self.k.weight, self.v.weight, self.q.bias, self.k.bias, self.v.bias

    def fused_qkv(self) -> tuple[Tensor, Tensor]:
        """The ``(3D, D)`` weight and ``(3D,)`` bias of the fused q/k/v projection.

        Concatenated on every call under autograd (gradients reach the three parameters), in training mode, under
        ``torch.compile`` and with ``cache_qkv = False``. Otherwise (eval mode, no parameter needing a gradient)
        the concatenation is cached and rebuilt when any of the six tensors changes: another tensor object, data
        pointer, dtype or device, or an in-place update (its ``_version``); ``.to()`` / ``.train()`` drop it.
        Writes that bypass the version counter (``param.data.copy_(...)``, FSDP2's all-gather) are not seen: call
        ``DiT.clear_caches()`` after them. The cache costs one extra copy of the q/k/v weights (3 D^2 per block).
        """
        params = self._qkv_params()
        if torch.compiler.is_compiling():
            return torch.cat(params[:3]), torch.cat(params[3:])  # no Python-side state inside a traced graph
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        # Inference tensors carry no version counter, so a change could not be detected.
        if not self.cache_qkv or self.training or needs_grad or any(p.is_inference() for p in params):
            self._qkv_cache = None
            return torch.cat(params[:3]), torch.cat(params[3:])  # (3D, D), (3D,)
        key = (
            torch.is_inference_mode_enabled(),
            *((id(p), p.data_ptr(), p._version, p.dtype, p.device) for p in params),
        )
        if self._qkv_cache is None or self._qkv_cache[0] != key:
            self._qkv_cache = None  # free the stale copy before building the new one
            self._qkv_cache = (key, torch.cat(params[:3]), torch.cat(params[3:]))
        return self._qkv_cache[1], self._qkv_cache[2]

    def clear_cache(self) -> None:
        """Drop the cached fused q/k/v weight (rebuilt on the next inference forward)."""
        self._qkv_cache = None

    def train(self, mode: bool = True) -> SelfAttention:
        self._qkv_cache = None
        return super().train(mode)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True):
        # A cast or move may give a parameter new memory at an old address; never trust the key across it.
        self._qkv_cache = None
        return super()._apply(fn, recurse)

    def _separate_qkv(self) -> bool:
        """Inference without the cache, or with quantised (tensor-subclass) weights that ``torch.cat`` cannot join:
        three GEMMs on the shared input and no weight copy (at video lengths, L = 32760 tokens for the 14B at
        480p, each GEMM is large enough that fusing them gains nothing measurable, while a concatenated copy costs
        3 D^2 per block of memory: 6.3 GB for the 14B in bf16, all of it resident even when blocks are streamed)."""
        if any(type(p) not in (Tensor, nn.Parameter) for p in (self.q.weight, self.k.weight, self.v.weight)):
            return True
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self._qkv_params())
        return not (self.training or grad or self.cache_qkv)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        n = self.num_heads
        if self._separate_qkv():
            q, k, v = self.q(x), self.k(x), self.v(x)  # 3 x (B, L, D)
        else:
            weight, bias = self.fused_qkv()  # (3D, D), (3D,)
            q, k, v = F.linear(x, weight, bias).chunk(3, dim=-1)  # 3 x (B, L, D)
        q = self.norm_q(q).unflatten(-1, (n, -1))  # (B, L, N, Dh)
        k = self.norm_k(k).unflatten(-1, (n, -1))  # (B, L, N, Dh)
        v = v.unflatten(-1, (n, -1))  # (B, L, N, Dh)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # (B, L, N, Dh)
        return self.o(_attention(q, k, v, self.attention_backend))  # (B, L, D)


class ExtraContextBranch(nn.Module):
    """Decoupled cross-attention onto extra per-block tokens (face tokens), sharing the text branch's queries.

    Its output projection is zero-initialised (IP-Adapter's decoupled cross-attention, Ye et al. 2023), so the
    block's output is exactly that of the pretrained model until the branch is trained.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.k = nn.Linear(context_dim, dim)
        self.v = nn.Linear(context_dim, dim)
        self.norm_k = RMSNorm(dim, eps)
        self.o = nn.Linear(dim, dim)
        nn.init.zeros_(self.o.weight)
        nn.init.zeros_(self.o.bias)
        self.attention_backend = "sdpa"

    def forward(self, q: Tensor, tokens: Tensor) -> Tensor:
        n = self.num_heads
        k = self.norm_k(self.k(tokens)).unflatten(-1, (n, -1))  # (B, M, N, Dh)
        v = self.v(tokens).unflatten(-1, (n, -1))  # (B, M, N, Dh)
        return self.o(_attention(q, k, v, self.attention_backend))  # (B, L, D)


class CrossAttention(nn.Module):
    """Text cross-attention; with ``image_dim`` also the Wan 2.1 I2V CLIP-image branch (its k/v summed before
    the shared output projection); with ``face_dim`` also the zero-initialised extra-context branch."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_norm: bool = True,
        eps: float = 1e-6,
        image_dim: int | None = None,
        face_dim: int | None = None,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        if image_dim is not None:
            # Wan 2.1 I2V: image tokens are embedded to width D by `img_emb` before reaching the blocks.
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.has_image = image_dim is not None
        self.face = ExtraContextBranch(dim, face_dim, num_heads, eps) if face_dim is not None else None
        self.attention_backend = "sdpa"

    def forward(
        self, x: Tensor, context: Tensor, image: Tensor | None, face: Tensor | None, face_scale: float | Tensor = 1.0
    ) -> Tensor:
        """``face_scale`` multiplies the face branch's output: a float, or a ``(B, 1, 1)`` tensor (per sample)."""
        n = self.num_heads
        q = self.norm_q(self.q(x)).unflatten(-1, (n, -1))  # (B, L, N, Dh)
        k = self.norm_k(self.k(context)).unflatten(-1, (n, -1))  # (B, T, N, Dh)
        v = self.v(context).unflatten(-1, (n, -1))  # (B, T, N, Dh)
        out = _attention(q, k, v, self.attention_backend)  # (B, L, D)
        if self.has_image:
            k_img = self.norm_k_img(self.k_img(image)).unflatten(-1, (n, -1))  # (B, I, N, Dh)
            v_img = self.v_img(image).unflatten(-1, (n, -1))  # (B, I, N, Dh)
            out = out + _attention(q, k_img, v_img, self.attention_backend)  # (B, L, D)
        out = self.o(out)  # (B, L, D)
        if face is not None:
            face_out = self.face(q, face)  # (B, L, D)
            if isinstance(face_scale, Tensor):
                out = out + face_scale.to(face_out.dtype) * face_out  # (B, L, D)
            elif face_scale == 1.0:
                out = out + face_out  # (B, L, D): no multiply, bit-identical to an unscaled branch
            else:
                out = out + face_scale * face_out  # (B, L, D)
        return out


# --------------------------------------------------------------------------------------------------------------
# Blocks and head
# --------------------------------------------------------------------------------------------------------------


def _init_table(table: Tensor) -> None:
    """AdaLN table ~ N(0, 1/D) (Wan: ``randn(1, k, dim) / dim**0.5``). Skipped on meta: the first Python-level meta
    kernel (normal_, div) imports torch._dynamo, seconds of start-up; a meta model is initialised when materialised."""
    if not table.is_meta:
        with torch.no_grad():
            nn.init.normal_(table, std=1.0 / table.shape[-1] ** 0.5)


class DiTBlock(nn.Module):
    """One Wan block: modulated self-attention, (normed) cross-attention, modulated FFN. The FSDP wrap unit."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = LayerNorm(d, cfg.eps)
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = LayerNorm(d, cfg.eps, affine=True) if cfg.cross_attn_norm else None
        self.cross_attn = CrossAttention(d, cfg.num_heads, cfg.qk_norm, cfg.eps, cfg.image_dim, cfg.face_dim)
        self.norm2 = LayerNorm(d, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        # AdaLN table added to the projected timestep: shift, scale, gate (attention), shift, scale, gate (FFN).
        self.modulation = nn.Parameter(torch.empty(1, 6, d))
        _init_table(self.modulation)

    def forward(
        self,
        x: Tensor,
        e: Tensor,
        context: Tensor,
        rope: tuple[Tensor, Tensor],
        image: Tensor | None = None,
        face: Tensor | None = None,
        face_scale: float | Tensor = 1.0,
    ) -> Tensor:
        """Run the block.

        Args:
            x: ``(B, L, D)`` fp32 residual stream.
            e: ``(B, 1 or L, 6, D)`` fp32 projected timestep (per token for Wan 2.2 TI2V).
            context: ``(B, T, D)`` embedded text.
            rope: ``(cos, sin)``, each ``(L, Dh / 2)``.
            image: ``(B, I, D)`` embedded CLIP image tokens (I2V), or None.
            face: ``(B, M, face_dim)`` extra context tokens for this block, or None.
            face_scale: multiplies the face branch's output (a float, or ``(B, 1, 1)`` per sample).
        """
        # Compute dtype of the linears: fp32 under autocast (autocast casts), or the dtype of a bf16 model.
        dt = self.ffn[0].weight.dtype
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float()[None] + e).unbind(2)  # (B, 1|L, D)
        h = self.norm1(x) * (1 + scale1) + shift1  # (B, L, D) fp32
        x = x + self.self_attn(h.to(dt), rope).float() * gate1  # (B, L, D)
        h = self.norm3(x) if self.norm3 is not None else x  # (B, L, D)
        face = face.to(dt) if face is not None else None
        x = x + self.cross_attn(h.to(dt), context.to(dt), image, face, face_scale).float()  # (B, L, D)
        h = self.norm2(x) * (1 + scale2) + shift2  # (B, L, D)
        x = x + self.ffn(h.to(dt)).float() * gate2  # (B, L, D)
        return x


class Head(nn.Module):
    """Modulated output norm and projection to ``out_dim * prod(patch)`` values per token."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.dim
        self.norm = LayerNorm(d, cfg.eps)
        self.head = nn.Linear(d, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.empty(1, 2, d))
        _init_table(self.modulation)

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        shift, scale = (self.modulation.float()[None] + t_emb[:, :, None]).unbind(2)  # (B, 1|L, D)
        h = self.norm(x) * (1 + scale) + shift  # (B, L, D) fp32
        return self.head(h.to(self.head.weight.dtype))  # (B, L, C*pt*ph*pw)


class ImageEmbedding(nn.Module):
    """Wan 2.1 I2V projection of CLIP ViT-H/14 tokens: LayerNorm, Linear, GELU, Linear, LayerNorm."""

    def __init__(self, image_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(image_dim),
            nn.Linear(image_dim, image_dim),
            nn.GELU(),
            nn.Linear(image_dim, dim),
            nn.LayerNorm(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        ln0, lin1, act, lin3, ln4 = self.proj
        x = F.layer_norm(x.float(), ln0.normalized_shape, ln0.weight.float(), ln0.bias.float(), ln0.eps)  # (B, I, Ci)
        x = lin3(act(lin1(x.to(lin1.weight.dtype))))  # (B, I, D)
        return F.layer_norm(x.float(), ln4.normalized_shape, ln4.weight.float(), ln4.bias.float(), ln4.eps)


# --------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------


class DiT(nn.Module):
    """Wan-family video DiT predicting the flow-matching velocity of a latent video.

    Example:
        >>> cfg = DiTConfig.from_name("tiny")
        >>> model = DiT(cfg)
        >>> x = torch.randn(1, cfg.in_dim, 3, 8, 8)
        >>> v = model(x, torch.tensor([500.0]), torch.randn(1, 8, cfg.text_dim))
        >>> v.shape
        torch.Size([1, 4, 3, 8, 8])
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        target = torch.get_default_device()
        # Build on meta (no memory, no random init), then materialise once with Wan's initialisation: one pass of
        # initialisation, and under an ambient `torch.device("meta")` nothing is allocated at all.
        with torch.device("meta"):
            self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
            self.text_embedding = nn.Sequential(
                nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d)
            )
            self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
            self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
            self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
            self.head = Head(cfg)
            self.img_emb = ImageEmbedding(cfg.image_dim, d) if cfg.model_type == "i2v" else None
        # The islands are fp32 even when the default dtype is not (e.g. Lightning's "bf16-true" init context).
        for name, module, pname, param in self._named_tensors():
            if is_fp32_parameter(name) and param.dtype != torch.float32:
                module._parameters[pname] = nn.Parameter(param.float(), requires_grad=param.requires_grad)
        # RoPE tables stay fp32 whatever the model dtype: kept out of the buffers that `.to(dtype)` casts.
        self._rope_cache: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self.gradient_checkpointing = False
        # Shape checks of every input (cheap, no host sync); `debug_checks` (or COFE_DEBUG_CHECKS=1) adds the
        # finiteness checks, which cost one host sync per input tensor on CUDA.
        self.check_inputs = True
        self.debug_checks = False
        if target.type != "meta":
            self.to_empty(device=target)
            self.reset_parameters()

    # FSDP / activation-checkpointing unit: wrap each block (e.g. ModuleWrapPolicy({DiTBlock})).
    block_class = DiTBlock

    def _named_tensors(self):
        """``(full name, owning module, local name, parameter)`` for every parameter."""
        for mname, module in self.named_modules():
            for pname, param in module.named_parameters(recurse=False):
                yield (f"{mname}.{pname}" if mname else pname), module, pname, param

    def fp32_parameter_names(self) -> list[str]:
        """Names of the parameters kept in fp32 under any cast (see the module docstring)."""
        return [name for name, *_ in self._named_tensors() if is_fp32_parameter(name)]

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True):
        # `.to(dtype)`, `.half()`, `.bfloat16()` all reach here: keep the fp32 islands fp32 (moving them to the new
        # device only); upcasts (e.g. `.double()`) and dtype-preserving ops (`to_empty`, device moves) pass through.
        keep = {id(p) for name, _, _, p in self._named_tensors() if is_fp32_parameter(name)}

        def guarded(t: Tensor) -> Tensor:
            out = fn(t)
            if id(t) in keep and t.dtype == torch.float32 and out.dtype in (torch.float16, torch.bfloat16):
                return t.detach().to(device=out.device)
            return out

        return super()._apply(guarded, recurse)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Wan's initialisation of every parameter (``WanModel.init_weights``): Xavier-uniform linears and patch
        embedding (over its flattened kernel), zero biases, N(0, 0.02) text/time embeddings, zero output head,
        unit norms, AdaLN tables ~ N(0, 1/D), and the face branch's output projection at zero.

        Every tensor is written, so this also initialises a model materialised with ``to_empty``.
        """
        self.init_parameters()

    @torch.no_grad()
    def init_parameters(self, names: Iterable[str] | None = None) -> None:
        """Initialise the parameters named in ``names`` (all when None) as ``reset_parameters`` does.

        Raises:
            KeyError: for a name that is not a parameter of the model.
        """
        wanted = None if names is None else set(names)
        seen = set()
        for name, module, pname, param in self._named_tensors():
            if wanted is not None and name not in wanted:
                continue
            seen.add(name)
            self._init_tensor(name, module, pname, param)
        if wanted is not None and wanted - seen:
            raise KeyError(f"not parameters of this DiT: {sorted(wanted - seen)[:5]}")

    def _init_tensor(self, name: str, module: nn.Module, pname: str, p: Tensor) -> None:
        mname = name[: -len(pname) - 1] if name != pname else ""
        if pname == "modulation":
            nn.init.normal_(p, std=1.0 / self.cfg.dim**0.5)
        elif pname == "bias" and isinstance(module, (nn.Linear, nn.Conv3d, LayerNorm, nn.LayerNorm)):
            nn.init.zeros_(p)
        elif isinstance(module, nn.Linear):
            if mname == "head.head" or mname.endswith("cross_attn.face.o"):
                nn.init.zeros_(p)  # zero head (Wan); zero face output (the branch starts as a no-op)
            elif mname.startswith(("text_embedding.", "time_embedding.")):
                nn.init.normal_(p, std=0.02)
            else:
                nn.init.xavier_uniform_(p)
        elif isinstance(module, nn.Conv3d):
            # Wan: xavier_uniform_(weight.flatten(1)), i.e. fan_in = C_in * kernel, fan_out = D; written as one
            # uniform_ on the 5-D tensor (same values, and no view, so it also works on sharded tensors).
            fan_in, fan_out = math.prod(p.shape[1:]), p.shape[0]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            nn.init.uniform_(p, -bound, bound)
        elif isinstance(module, (RMSNorm, LayerNorm, nn.LayerNorm)):
            nn.init.ones_(p)
        else:
            raise RuntimeError(f"no initialisation rule for parameter {name!r} ({type(module).__name__})")

    def rope_tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """fp32 ``(cos, sin)`` tables, each ``(rope_max_len, Dh / 2)``, built once per device."""
        if device not in self._rope_cache:
            cfg = self.cfg
            cos, sin = rope_tables(cfg.head_dim, cfg.rope_split, cfg.rope_max_len, cfg.rope_theta)
            self._rope_cache[device] = (cos.to(device), sin.to(device))
        return self._rope_cache[device]

    def enable_gradient_checkpointing(self, enabled: bool = True) -> DiT:
        """Recompute each block's activations in the backward pass (trades ~30% compute for memory)."""
        self.gradient_checkpointing = enabled
        return self

    def face_parameters(self) -> list[nn.Parameter]:
        """Parameters of the extra-context (face) branches."""
        return [p for b in self.blocks if b.cross_attn.face is not None for p in b.cross_attn.face.parameters()]

    # ---------------------------------------------------------------------------------------------- inference

    @property
    def attention_backend(self) -> str:
        """The attention kernel of the blocks: ``sdpa`` (default), ``flash`` or ``sage`` (see
        ``set_attention_backend``); assigning to it calls ``set_attention_backend(self, name)``."""
        return self.blocks[0].self_attn.attention_backend if len(self.blocks) else "sdpa"

    @attention_backend.setter
    def attention_backend(self, name: str) -> None:
        set_attention_backend(self, name)

    @property
    def cache_qkv(self) -> bool:
        """Whether inference forwards run one GEMM on a cached concatenation of the q/k/v weights
        (``SelfAttention.fused_qkv``; default False: three GEMMs, no weight copy). Training always concatenates."""
        return all(b.self_attn.cache_qkv for b in self.blocks)

    @cache_qkv.setter
    def cache_qkv(self, enabled: bool) -> None:
        for block in self.blocks:
            block.self_attn.cache_qkv = bool(enabled)
        self.clear_caches()

    def clear_caches(self) -> None:
        """Drop the cached fused q/k/v weights (needed only after writes the version counter does not see, such as
        ``param.data.copy_(...)``; in-place updates, ``.to()`` and ``.train()`` invalidate them by themselves)."""
        for block in self.blocks:
            block.self_attn.clear_cache()

    def compile_blocks(self, **compile_kwargs) -> DiT:
        """Regional compilation: ``torch.compile`` each ``DiTBlock`` in place (``block.compile(**compile_kwargs)``).

        The blocks share one code object, so one compiled graph serves all of them (diffusers'
        ``compile_repeated_blocks``): compile time is that of one block, not of the whole model, and the embedding,
        head and the Python around the blocks (face scales, the step cache) stay eager.

        Args:
            **compile_kwargs: passed to ``torch.compile`` (e.g. ``mode="max-autotune-no-cudagraphs"``,
                ``dynamic=False``, ``fullgraph=True``).

        Returns:
            ``self``.
        """
        for block in self.blocks:
            block.compile(**compile_kwargs)
        return self

    # ----------------------------------------------------------------------------------------------------------

    def patchify(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        """``(B, C_in, F, H, W) -> (B, L, D)`` tokens and the token grid ``(F', H', W')``."""
        x = self.patch_embedding(x)  # (B, D, F', H', W')
        grid = tuple(x.shape[2:])
        # Contiguous: a transposed view would carry its strided layout through every elementwise op of the
        # residual stream (measured ~7% of a CPU training step).
        return x.flatten(2).transpose(1, 2).contiguous(), grid  # (B, L, D)

    def unpatchify(self, x: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """``(B, L, C * pt * ph * pw) -> (B, C, F, H, W)``."""
        f, h, w = grid
        pt, ph, pw = self.cfg.patch_size
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, -1)  # (B, F', H', W', pt, ph, pw, C)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, F', pt, H', ph, W', pw)
        return x.reshape(x.shape[0], x.shape[1], f * pt, h * ph, w * pw)  # (B, C, F, H, W)

    def embed_time(self, timestep: Tensor, num_tokens: int) -> tuple[Tensor, Tensor]:
        """Sinusoid -> MLP (fp32, outside autocast) -> AdaLN projection.

        Returns:
            ``t_emb (B, 1|L, D)`` for the head and ``e (B, 1|L, 6, D)`` for the blocks.
        """
        t = timestep if timestep.ndim == 2 else timestep[:, None]  # (B, 1|L)
        with torch.autocast(device_type=t.device.type, enabled=False):
            t_emb = self.time_embedding(sinusoidal_embedding(t, self.cfg.freq_dim).to(self.time_embedding[0].weight))
            e = self.time_projection(t_emb).unflatten(-1, (6, self.cfg.dim))  # (B, 1|L, 6, D)
        return t_emb.float(), e.float()

    def forward(
        self,
        x: Tensor,
        timestep: Tensor,
        context: Tensor,
        *,
        cond: Tensor | None = None,
        clip_tokens: Tensor | None = None,
        face_tokens: Sequence[Tensor | None] | None = None,
        face_scale: float | Tensor | Sequence[float | Tensor] = 1.0,
        step_cache: StepCache | None = None,
        cache_key: Hashable = None,
    ) -> Tensor:
        """Predict the flow-matching velocity.

        Args:
            x: ``(B, C, F, H, W)`` noisy latent video, ``C = out_dim``.
            timestep: ``(B,)`` or, for per-token timesteps (Wan 2.2 TI2V), ``(B, L)``; ``sigma * 1000``.
            context: ``(B, T, text_dim)`` text-encoder tokens (Wan pads umT5 tokens with zeros to 512).
            cond: ``(B, in_dim - out_dim, F, H, W)`` for ``i2v``: 4 mask channels + first-frame latent video.
            clip_tokens: ``(B, I, image_dim)`` CLIP image tokens for ``i2v``.
            face_tokens: one entry per block, each ``(B, M, face_dim)`` or None; needs ``face_dim`` in the config.
            face_scale: multiplies each block's face-branch output: one float for all blocks, or one per block (a
                sequence of ``num_layers``); an entry may also be a ``(B,)`` tensor, one scale per sample. 1.0 (the
                default) adds the branch unscaled; 0.0 for a block is that block's face tokens being None.
            step_cache: reuse the blocks after the first across solver steps (``cofe_dit.StepCache``; sampling with
                ``SamplerConfig.cache_threshold > 0`` passes one). None (default): every block runs.
            cache_key: which stream of calls this is for ``step_cache`` (one per guidance pass).

        Returns:
            ``(B, out_dim, F, H, W)`` velocity, in the dtype of ``x`` (fp32 under autocast).

        Raises:
            ValueError: inputs of the wrong shape (with ``check_inputs``, default on), non-finite inputs (only with
                ``debug_checks`` or ``COFE_DEBUG_CHECKS=1``), a ``face_scale`` of the wrong length.
        """
        if self.check_inputs:
            self._check_inputs(x, timestep, context, cond, clip_tokens, face_tokens)
        scales = self._face_scales(face_scale, x.shape[0])  # NB x (float | (B, 1, 1))
        if cond is not None:
            x = torch.cat([x, cond.to(x.dtype)], dim=1)  # (B, C_in, F, H, W)
        tokens, grid = self.patchify(x.to(self.patch_embedding.weight.dtype))  # (B, L, D)
        tokens = tokens.float()  # fp32 residual stream (Wan keeps it fp32 via its fp32 modulation)
        rope = rope_grid(*self.rope_tables(tokens.device), self.cfg.rope_split, grid)  # 2 x (L, Dh/2)
        t_emb, e = self.embed_time(timestep, tokens.shape[1])  # (B, 1|L, D), (B, 1|L, 6, D)
        ctx = self.text_embedding(context.to(self.text_embedding[0].weight.dtype))  # (B, T, D)
        image = self.img_emb(clip_tokens) if self.img_emb is not None else None  # (B, I, D)
        if image is not None:
            image = image.to(self.text_embedding[0].weight.dtype)
        faces = list(face_tokens) if face_tokens is not None else [None] * len(self.blocks)
        # Scale 0 switches a block's branch off: exactly the block without face tokens, and no branch compute.
        faces = [None if isinstance(s, float) and s == 0.0 else f for f, s in zip(faces, scales, strict=True)]
        if step_cache is None:
            for block, face, scale in zip(self.blocks, faces, scales, strict=True):
                if self.gradient_checkpointing and torch.is_grad_enabled():
                    tokens = checkpoint(block, tokens, e, ctx, rope, image, face, scale, use_reentrant=False)
                else:
                    tokens = block(tokens, e, ctx, rope, image, face, scale)  # (B, L, D)
        else:
            tokens = self._cached_blocks(tokens, e, ctx, rope, image, faces, scales, step_cache, cache_key)
        out = self.head(tokens, t_emb)  # (B, L, C*pt*ph*pw)
        return self.unpatchify(out.float(), grid).to(x.dtype)  # (B, C, F, H, W)

    def _cached_blocks(self, tokens, e, ctx, rope, image, faces, scales, cache: StepCache, key) -> Tensor:
        """The blocks with First-Block-Cache reuse (see ``cofe_dit.step_cache``): block 0 always runs; when its
        residual barely changed since the last fully computed step of ``key``, the other blocks' residual of that
        step is reused instead of running them."""
        first = self.blocks[0](tokens, e, ctx, rope, image, faces[0], scales[0])  # (B, L, D)
        first_residual = first - tokens  # (B, L, D)
        rest = cache.reuse(key, first_residual)  # (B, L, D) or None
        if rest is not None:
            return first + rest  # (B, L, D)
        tokens = first
        for block, face, scale in zip(self.blocks[1:], faces[1:], scales[1:], strict=True):
            tokens = block(tokens, e, ctx, rope, image, face, scale)  # (B, L, D)
        cache.store(key, first_residual, tokens - first)
        return tokens

    def _face_scales(self, face_scale, batch: int) -> list[float | Tensor]:
        """``face_scale`` as one entry per block: a float, or a ``(B, 1, 1)`` tensor."""
        n = len(self.blocks)
        if isinstance(face_scale, (int, float, Tensor)):
            entries = [face_scale] * n
        else:
            entries = list(face_scale)
            if len(entries) != n:
                raise ValueError(f"face_scale needs one entry per block ({n}), got {len(entries)}")
        out: list[float | Tensor] = []
        for i, s in enumerate(entries):
            if isinstance(s, Tensor):
                if tuple(s.shape) != (batch,):
                    raise ValueError(f"face_scale[{i}] as a tensor is per sample, ({batch},); got {tuple(s.shape)}")
                out.append(s.reshape(batch, 1, 1))  # (B, 1, 1)
            else:
                s = float(s)
                if not math.isfinite(s):
                    raise ValueError(f"face_scale[{i}] must be finite, got {s}")
                out.append(s)
        return out

    def _check_inputs(self, x, timestep, context, cond, clip_tokens, face_tokens) -> None:
        cfg = self.cfg
        if x.ndim != 5:
            raise ValueError(f"x must be (B, C, F, H, W), got shape {tuple(x.shape)}")
        b, c, f, h, w = x.shape
        if c != cfg.out_dim:
            raise ValueError(
                f"x has {c} channels; the {cfg.name!r} model expects {cfg.out_dim} latent channels"
                + (f" (plus {cfg.cond_channels} in `cond`)" if cfg.model_type == "i2v" else "")
            )
        for size, p, axis in zip((f, h, w), cfg.patch_size, ("frame count", "height", "width"), strict=True):
            if size % p:
                raise ValueError(
                    f"latent {axis} {size} is not divisible by the patch size {p} (x shape {tuple(x.shape)})"
                )
        if cfg.model_type == "i2v":
            expected = (b, cfg.cond_channels, f, h, w)
            if cond is None or tuple(cond.shape) != expected:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"i2v needs cond (mask + first-frame latent) of shape {expected}, got {got}")
            if clip_tokens is None or clip_tokens.ndim != 3 or clip_tokens.shape[-1] != cfg.image_dim:
                got = None if clip_tokens is None else tuple(clip_tokens.shape)
                raise ValueError(f"i2v needs clip_tokens of shape (B, I, {cfg.image_dim}), got {got}")
        elif cond is not None or clip_tokens is not None:
            raise ValueError(f"cond / clip_tokens are for i2v models; this one is {cfg.model_type!r}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[-1] != cfg.text_dim:
            raise ValueError(f"context must be ({b}, T, {cfg.text_dim}), got {tuple(context.shape)}")
        n_tok = cfg.num_tokens(f, h, w)
        if timestep.shape not in ((b,), (b, n_tok)):
            raise ValueError(f"timestep must have shape ({b},) or ({b}, {n_tok}), got {tuple(timestep.shape)}")
        if face_tokens is not None:
            if cfg.face_dim is None:
                raise ValueError("face_tokens given but this model has no face branch (set DiTConfig.face_dim)")
            if len(face_tokens) != cfg.num_layers:
                raise ValueError(f"face_tokens needs one entry per block ({cfg.num_layers}), got {len(face_tokens)}")
            for i, ft in enumerate(face_tokens):
                if ft is not None and (ft.ndim != 3 or ft.shape[0] != b or ft.shape[-1] != cfg.face_dim):
                    raise ValueError(f"face_tokens[{i}] must be ({b}, M, {cfg.face_dim}), got {tuple(ft.shape)}")
        if not (self.debug_checks or debug_checks_from_env()):
            return  # `bool(isfinite(t).all())` waits for the device: one host sync per tensor, debug only
        named = {"x": x, "timestep": timestep, "context": context, "cond": cond, "clip_tokens": clip_tokens}
        for i, ft in enumerate(face_tokens or []):
            named[f"face_tokens[{i}]"] = ft
        for name, t in named.items():
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or Inf values (shape {tuple(t.shape)})")


def materialize(model: DiT, device: torch.device | str = "cpu", *, dtype: torch.dtype | None = None) -> DiT:
    """Allocate a model built on the ``meta`` device and give it Wan's initialisation, in place.

    Args:
        model: a DiT whose parameters are (all or partly) on ``meta``; materialised ones are re-initialised too.
        device: where the parameters go.
        dtype: cast the parameters first (the fp32 islands stay fp32); None keeps their dtypes.

    Returns:
        The same model, materialised (use ``torch.manual_seed`` before for reproducible weights).
    """
    if dtype is not None:
        model.to(dtype=dtype)  # on meta: free
    model.to_empty(device=device)
    model.reset_parameters()
    return model
