"""CoFE fusion, in one file: per-expert projectors, per-block gates, and the module that composes them.

For expert features ``f_k`` (identity, semantic, detail), projectors ``P_k`` shared by all blocks and a gate per
DiT block ``l``::

    g^l = softmax(W2^l gelu(W1^l h))          h: pooled projected features (block mode) or per fused token
    f^l = sum_k g^l_k P_k(f_k)                (B, M, D): the extra context tokens of block l

The weighted sum is ``cofe_fusion.expert_gate`` (one Triton kernel on CUDA, forward and backward). The output is
what ``cofe_dit.DiT.forward(..., face_tokens=...)`` takes when ``DiTConfig.face_dim == CoFEConfig.dim``.

Inference control: ``CoFE.forward(..., expert_weights=w)`` reweighs the experts of every block's gate,
``g'_k = g_k w_k / sum_j g_j w_j``, computed as ``softmax(logits + log w)`` (the same fused softmax; ``w_k = 0``
gives a ``-inf`` logit and removes expert k). ``debug_checks`` (or ``COFE_DEBUG_CHECKS=1``) checks the gate logits
for NaN / Inf, one host sync per block on CUDA; off by default.

Why gates act on the fused tokens and not on the video tokens: the fused tokens are the keys and values of the
DiT's decoupled cross-attention, computed once before the DiT runs and shared by every video query. A gate per
video token would need a different set of keys/values per query (a mixture of per-expert attention outputs),
which the face branch does not compute. The granular option is therefore per *fused token*: ``gate_mode="token"``
gives each of the M tokens its own mixture, decided from that token's content across experts, so a token can
carry mostly identity while another carries mostly detail; every video query then chooses among these tokens
through its own attention weights, which is where per-video-token selectivity comes from. An optional per-sample
``context`` (e.g. the DiT's timestep embedding) lets the mixture depend on the noise level as well.

Shape legend:
    B batch, L_k tokens of expert k, C_k width of expert k, M fused tokens, D fused width, E experts,
    Di resampler width, N heads, Dh = Di / N, H gate hidden width, Cx gate context width, NB blocks.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cofe_fusion.config import CoFEConfig, ExpertSpec
from cofe_fusion.functional import expert_gate

__all__ = [
    "DEBUG_CHECKS_ENV",
    "DIT_TRAINABLE_PATTERNS",
    "CoFE",
    "CoFEOutput",
    "ExpertFeatures",
    "ExpertGate",
    "ExpertProjector",
    "MLPTokenProjector",
    "PerceiverResampler",
    "freeze_dit_for_cofe",
]


# `COFE_DEBUG_CHECKS=1` switches on the finiteness checks of every CoFE (and cofe_dit DiT) in the process; read at
# each forward. (The same variable as cofe_dit's; fusion does not import cofe_dit.)
DEBUG_CHECKS_ENV = "COFE_DEBUG_CHECKS"


def _debug_checks_from_env() -> bool:
    return os.environ.get(DEBUG_CHECKS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class ExpertFeatures:
    """Output of one frozen expert, as ``cofe_encoders`` produces it (any object with these attributes works).

    Attributes:
        tokens: ``(B, L, C)`` token features, or None (e.g. ArcFace gives only an embedding).
        pooled: ``(B, C)`` pooled / global feature, or None.
    """

    tokens: Tensor | None = None
    pooled: Tensor | None = None


# --------------------------------------------------------------------------------------------------------------
# Projectors
# --------------------------------------------------------------------------------------------------------------


class FeedForward(nn.Module):
    """Pre-norm GELU MLP of the perceiver (Flamingo / IP-Adapter-Plus: no biases, x4 expansion)."""

    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mult, bias=False)
        self.fc2 = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))  # (B, M, Di)


class PerceiverAttention(nn.Module):
    """Latents cross-attend to ``[inputs; latents]`` (Flamingo, Alayrac et al. 2022, Sec. 2.1 and App. A.1.1:
    keys and values are the concatenation, so latents also attend to each other)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        n = self.num_heads
        x = self.norm_x(x)  # (B, L, Di)
        lat = self.norm_latents(latents)  # (B, M, Di)
        q = self.to_q(lat).unflatten(-1, (n, -1)).transpose(1, 2)  # (B, N, M, Dh)
        k, v = self.to_kv(torch.cat([x, lat], dim=1)).chunk(2, dim=-1)  # (B, L+M, Di) each
        k = k.unflatten(-1, (n, -1)).transpose(1, 2)  # (B, N, L+M, Dh)
        v = v.unflatten(-1, (n, -1)).transpose(1, 2)  # (B, N, L+M, Dh)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, N, M, Dh)
        return self.to_out(out.transpose(1, 2).flatten(2))  # (B, M, Di)


class PerceiverResampler(nn.Module):
    """``M`` learned queries resample a variable number of expert tokens into ``M`` tokens of width ``D``.

    The IP-Adapter-Plus resampler (Ye et al. 2023, "IP-Adapter", Sec. 3.2 / their ``Resampler``), itself
    Flamingo's perceiver resampler: ``proj_in``, ``depth`` x (latents += attn([x; latents]); latents += ff),
    ``proj_out``, LayerNorm.

    Args:
        in_dim: expert width ``C_k``.
        out_dim: fused width ``D``.
        num_tokens: ``M``.
        dim: inner width ``Di``.
        depth: layers.
        num_heads: attention heads.
        ff_mult: feed-forward expansion.
    """

    def __init__(self, in_dim: int, out_dim: int, num_tokens: int, dim: int, depth: int, num_heads: int, ff_mult: int):
        super().__init__()
        # N(0, 1/Di) queries as IP-Adapter-Plus, so their scale matches a LayerNormed token's.
        self.latents = nn.Parameter(torch.randn(1, num_tokens, dim) / dim**0.5)
        self.proj_in = nn.Linear(in_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, num_heads), FeedForward(dim, ff_mult)]) for _ in range(depth)
        )
        self.proj_out = nn.Linear(dim, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        """``(B, L, C_k) -> (B, M, D)``."""
        x = self.proj_in(tokens)  # (B, L, Di)
        lat = self.latents.expand(x.shape[0], -1, -1)  # (B, M, Di)
        for attn, ff in self.layers:
            lat = lat + attn(x, lat)  # (B, M, Di)
            lat = lat + ff(lat)  # (B, M, Di)
        return self.norm_out(self.proj_out(lat))  # (B, M, D)


class MLPTokenProjector(nn.Module):
    """A pooled vector becomes ``M`` tokens: Linear, GELU, Linear to ``M * D``, reshape, LayerNorm.

    IP-Adapter-FaceID's ``MLPProjModel`` (Ye et al. 2023, IP-Adapter-FaceID: a 512-d ArcFace embedding to 4 tokens
    through a 1024-wide hidden layer, i.e. twice the input width).

    Args:
        in_dim: expert width ``C_k``.
        out_dim: fused width ``D``.
        num_tokens: ``M``.
        hidden_mult: hidden width as a multiple of ``in_dim``.
    """

    def __init__(self, in_dim: int, out_dim: int, num_tokens: int, hidden_mult: int = 2):
        super().__init__()
        self.num_tokens = num_tokens
        self.fc1 = nn.Linear(in_dim, in_dim * hidden_mult)
        self.fc2 = nn.Linear(in_dim * hidden_mult, num_tokens * out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, pooled: Tensor) -> Tensor:
        """``(B, C_k) -> (B, M, D)``."""
        x = self.fc2(F.gelu(self.fc1(pooled)))  # (B, M*D)
        return self.norm(x.unflatten(-1, (self.num_tokens, -1)))  # (B, M, D)


class ExpertProjector(nn.Module):
    """``P_k``: maps one expert's features to ``(B, M, D)`` tokens; one per expert, shared by all blocks.

    Both variants end in a LayerNorm so that every expert contributes tokens of the same scale: otherwise the
    expert with the largest activations would dominate the mixture whatever the gates say.

    Args:
        spec: the expert (name, width, projector type).
        cfg: the fusion config (``M``, ``D`` and projector hyper-parameters).
    """

    def __init__(self, spec: ExpertSpec, cfg: CoFEConfig):
        super().__init__()
        self.spec = spec
        self.kind = cfg.projector_of(spec)
        if self.kind == "perceiver":
            self.net = PerceiverResampler(
                spec.width, cfg.dim, cfg.num_tokens, cfg.resampler_dim, cfg.resampler_depth, cfg.resampler_heads,
                cfg.resampler_ff_mult,
            )  # fmt: skip
        else:
            self.net = MLPTokenProjector(spec.width, cfg.dim, cfg.num_tokens, cfg.mlp_hidden_mult)

    def forward(self, features: Any) -> Tensor:
        """Project one expert's output.

        Args:
            features: an object with ``.tokens (B, L, C_k)`` and/or ``.pooled (B, C_k)`` (e.g. ``ExpertFeatures`` or
                ``cofe_encoders.ExpertOutput``), or a bare tensor (3-D: tokens, 2-D: pooled). The perceiver uses the
                tokens (the pooled vector as a single token when there are none); the MLP uses the pooled vector
                (the token mean when there is none). Only the input used must have width ``C_k``: experts whose
                pooled vector has another width than their tokens (CLIP's projected embedding) are fine.

        Returns:
            ``(B, M, D)``.
        """
        tokens, pooled = _read_features(features, self.spec)
        if self.kind == "perceiver":
            x = tokens if tokens is not None else pooled[:, None]  # (B, L, C_k)
        else:
            x = pooled if pooled is not None else tokens.mean(dim=1)  # (B, C_k)
        if x.shape[-1] != self.spec.width or x.shape[1] == 0:
            used = "pooled (B, C)" if x.ndim == 2 else "tokens (B, L>0, C)"
            raise ValueError(
                f"expert {self.spec.name!r}: its {self.kind} projector reads {used} with C={self.spec.width}, got "
                f"{tuple(x.shape)}"
            )
        return self.net(x)  # (B, M, D)


def _read_features(features: Any, spec: ExpertSpec) -> tuple[Tensor | None, Tensor | None]:
    """Read ``(tokens, pooled)`` from an expert output and check their ranks."""
    if isinstance(features, Tensor):
        tokens, pooled = (features, None) if features.ndim == 3 else (None, features)
    else:
        tokens, pooled = getattr(features, "tokens", None), getattr(features, "pooled", None)
    if tokens is None and pooled is None:
        raise ValueError(f"expert {spec.name!r}: features have neither .tokens (B, L, C) nor .pooled (B, C)")
    if tokens is not None and tokens.ndim != 3:
        raise ValueError(f"expert {spec.name!r}: tokens must be (B, L, C), got {tuple(tokens.shape)}")
    if pooled is not None and pooled.ndim != 2:
        raise ValueError(f"expert {spec.name!r}: pooled must be (B, C), got {tuple(pooled.shape)}")
    return tokens, pooled


# --------------------------------------------------------------------------------------------------------------
# Gate
# --------------------------------------------------------------------------------------------------------------


class ExpertGate(nn.Module):
    """Gate of one DiT block: ``logits = W2 gelu(W1 h)``; ``softmax(logits)`` weighs the experts.

    ``W2`` and its bias start at zero, so the softmax starts uniform and fusion starts as an equal average of the
    experts (a neutral start, as CoFE's zero-initialised injection keeps the pretrained DiT unchanged).

    Args:
        in_dim: gate input width.
        hidden: hidden width ``H``.
        num_experts: ``E``.
    """

    def __init__(self, in_dim: int, hidden: int, num_experts: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, num_experts)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.fc1.reset_parameters()
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor) -> Tensor:
        """``(..., in_dim) -> (..., E)`` logits; the softmax is fused into ``expert_gate``."""
        return self.fc2(F.gelu(self.fc1(h)))  # (..., E)

    def probs(self, h: Tensor) -> Tensor:
        """``(..., in_dim) -> (..., E)`` gate weights (fp32, sum to 1)."""
        return self.forward(h).float().softmax(dim=-1)  # (..., E)


# --------------------------------------------------------------------------------------------------------------
# CoFE
# --------------------------------------------------------------------------------------------------------------


class CoFEOutput(NamedTuple):
    """Result of ``CoFE.forward``.

    Attributes:
        tokens: ``num_blocks`` tensors ``(B, M, D)``: pass as ``DiT.forward(..., face_tokens=tokens)``.
        gates: fp32 gate weights, ``(NB, B, E)`` in block mode or ``(NB, B, M, E)`` in token mode (for logging
            and regularisers; they carry gradients).
        experts: ``(B, M, E, D)`` projected tokens of every expert, shared by all blocks.
    """

    tokens: list[Tensor]
    gates: Tensor
    experts: Tensor


class CoFE(nn.Module):
    """Fuses frozen-expert features into per-block context tokens for the DiT's decoupled cross-attention.

    Args:
        cfg: the fusion config.

    Example:
        >>> cfg = CoFEConfig.from_name("tiny")
        >>> cofe = CoFE(cfg)
        >>> feats = {
        ...     "identity": ExpertFeatures(pooled=torch.randn(2, 16)),
        ...     "semantic": ExpertFeatures(tokens=torch.randn(2, 5, 24)),
        ...     "detail": ExpertFeatures(tokens=torch.randn(2, 7, 20)),
        ... }
        >>> out = cofe(feats)
        >>> len(out.tokens), out.tokens[0].shape, out.gates.shape
        (2, torch.Size([2, 4, 8]), torch.Size([2, 2, 3]))
    """

    def __init__(self, cfg: CoFEConfig):
        super().__init__()
        self.cfg = cfg
        e, d = cfg.num_experts, cfg.dim
        self.projectors = nn.ModuleDict({s.name: ExpertProjector(s, cfg) for s in cfg.experts})
        gate_in = e * d + (cfg.gate_context_dim or 0)
        self.gates = nn.ModuleList(ExpertGate(gate_in, cfg.gate_hidden, e) for _ in range(cfg.num_blocks))
        # Check the gate logits for NaN / Inf: one host sync per block on CUDA, so only when debugging (or with
        # COFE_DEBUG_CHECKS=1). Shapes are always checked.
        self.debug_checks = False

    def project(self, features: Mapping[str, Any] | Sequence[Any]) -> Tensor:
        """Project every expert: ``(B, M, E, D)``, experts in config order.

        Args:
            features: ``{name: expert output}`` with exactly the config's expert names, or a sequence in config
                order; each output has ``.tokens (B, L, C_k)`` and/or ``.pooled (B, C_k)`` (or is a bare tensor).
        """
        names = self.cfg.expert_names
        if isinstance(features, Mapping):
            if set(features) != set(names):
                raise ValueError(f"CoFE expects features for experts {list(names)}, got {sorted(features)}")
            ordered = [features[n] for n in names]
        else:
            ordered = list(features)
            if len(ordered) != len(names):
                raise ValueError(f"CoFE expects {len(names)} expert outputs {list(names)}, got {len(ordered)}")
        projected = [self.projectors[n](f) for n, f in zip(names, ordered, strict=True)]  # E x (B, M, D)
        batches = {n: p.shape[0] for n, p in zip(names, projected, strict=True)}
        if len(set(batches.values())) != 1:
            raise ValueError(f"CoFE: expert outputs differ in batch size: {batches}")
        return torch.stack(projected, dim=2)  # (B, M, E, D)

    def gate_input(self, experts: Tensor, context: Tensor | None = None) -> Tensor:
        """The gate input ``h``: ``(B, E*D [+ Cx])`` in block mode, ``(B, M, E*D [+ Cx])`` in token mode."""
        cfg = self.cfg
        if cfg.gate_mode == "block":
            h = experts.mean(dim=1).flatten(1)  # (B, E*D): pooled concatenation of projected features
        else:
            h = experts.flatten(2)  # (B, M, E*D): each fused token's features across experts
        if cfg.gate_context_dim is not None:
            b = experts.shape[0]
            if context is None or tuple(context.shape) != (b, cfg.gate_context_dim):
                got = None if context is None else tuple(context.shape)
                expected = (b, cfg.gate_context_dim)
                raise ValueError(f"CoFE: gate_context_dim is set, so context must be {expected}, got {got}")
            if cfg.gate_mode == "token":
                context = context[:, None].expand(-1, h.shape[1], -1)  # (B, M, Cx)
            h = torch.cat([h, context.to(h.dtype)], dim=-1)  # (B, [M,] E*D + Cx)
        elif context is not None:
            raise ValueError("CoFE: context given but gate_context_dim is None in the config")
        return h

    def forward(
        self,
        features: Mapping[str, Any] | Sequence[Any],
        context: Tensor | None = None,
        *,
        expert_weights: Mapping[str, float] | Sequence[float] | None = None,
    ) -> CoFEOutput:
        """Fused tokens for every block.

        Args:
            features: expert outputs (see ``project``).
            context: ``(B, Cx)`` extra gate input when ``gate_context_dim`` is set (e.g. a timestep embedding).
            expert_weights: inference-time weights of the experts, applied to every block's learned gates and
                renormalised: ``g'_k = g_k w_k / sum_j g_j w_j`` (as ``softmax(logits + log w)``). A mapping
                ``{expert name: w}`` (experts not named keep 1) or one weight per expert in config order. ``w_k = 0``
                removes expert k; weights must be finite, >= 0 and not all zero. None (default): the learned gates.

        Returns:
            ``CoFEOutput(tokens=[NB x (B, M, D)], gates=(NB, B, [M,] E), experts=(B, M, E, D))``; with
            ``expert_weights`` the gates are the renormalised ones.

        Raises:
            ValueError: features or context of the wrong shape, bad ``expert_weights`` (unknown expert names,
                wrong length, negative, non-finite or all zero), non-finite logits (only with ``debug_checks``).
        """
        cfg = self.cfg
        weights = self._expert_weights(expert_weights)
        experts = self.project(features)  # (B, M, E, D)
        h = self.gate_input(experts, context)  # (B, [M,] E*D + Cx)
        # log w on the device without a blocking copy (a pageable non-blocking copy is staged at once: safe).
        log_w = torch.tensor(weights).log().to(h.device, non_blocking=True) if weights is not None else None  # (E,)
        debug = self.debug_checks or _debug_checks_from_env()
        tokens, gates = [], []
        for i, gate in enumerate(self.gates):
            logits = gate(h)  # (B, E) block mode | (B, M, E) token mode
            if debug and not bool(torch.isfinite(logits).all()):
                raise ValueError(f"CoFE: gate {i} logits of shape {tuple(logits.shape)} contain NaN or Inf values")
            if log_w is not None:
                logits = logits.float() + log_w  # (B, [M,] E) fp32: softmax(z + log w)_k = g_k w_k / sum_j g_j w_j
            # Block mode: one logit vector per sample serves its M tokens (the kernel's broadcast mode). The logits
            # were checked above (a zero weight's -inf is meant), so the op does not check them again.
            fused = expert_gate(logits, experts, backend=cfg.backend, check_finite=False)  # (B, M, D)
            tokens.append(fused)
            gates.append(logits.float().softmax(dim=-1))  # (B, [M,] E)
        return CoFEOutput(tokens, torch.stack(gates), experts)  # (NB, B, [M,] E)

    def _expert_weights(self, expert_weights: Mapping[str, float] | Sequence[float] | None) -> list[float] | None:
        """``expert_weights`` as one validated float per expert in config order (None stays None)."""
        if expert_weights is None:
            return None
        names = list(self.cfg.expert_names)
        if isinstance(expert_weights, Mapping):
            unknown = sorted(set(expert_weights) - set(names))
            if unknown:
                raise ValueError(f"CoFE: expert_weights names unknown experts {unknown}; the experts are {names}")
            weights = [float(expert_weights.get(n, 1.0)) for n in names]
        else:
            weights = [float(w) for w in expert_weights]
            if len(weights) != len(names):
                raise ValueError(f"CoFE: expert_weights needs one weight per expert {names}, got {len(weights)}")
        bad = {n: w for n, w in zip(names, weights, strict=True) if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"CoFE: expert_weights must be finite and >= 0, got {bad}")
        if not any(w > 0 for w in weights):
            raise ValueError(
                f"CoFE: expert_weights {dict(zip(names, weights, strict=True))} are all zero: no expert left"
            )
        return weights

    def trainable_parameters(self) -> list[nn.Parameter]:
        """All CoFE parameters (projectors and gates); the experts are frozen and live outside this module."""
        return [p for p in self.parameters() if p.requires_grad]


# Parameters of a cofe_dit DiT that CoFE trains: every cross-attention (text and face branches); the rest is frozen.
DIT_TRAINABLE_PATTERNS: tuple[str, ...] = ("blocks.*.cross_attn.*",)


def freeze_dit_for_cofe(dit: nn.Module, trainable: Iterable[str] = DIT_TRAINABLE_PATTERNS) -> list[nn.Parameter]:
    """Freeze a DiT except the parameters CoFE trains, and return those.

    Works on any module (no import of ``cofe_dit``): names are matched with ``fnmatch`` against
    ``named_parameters()``.

    Args:
        dit: the DiT.
        trainable: glob patterns of parameter names left trainable (default: ``blocks.*.cross_attn.*``).

    Returns:
        The parameters left trainable, in ``named_parameters()`` order.

    Raises:
        ValueError: if a pattern matches no parameter (a renamed module would otherwise silently freeze all).
    """
    patterns = tuple(trainable)
    names = [n for n, _ in dit.named_parameters()]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ValueError(f"freeze_dit_for_cofe: pattern {pat!r} matches no parameter of {type(dit).__name__}")
    kept = []
    for name, p in dit.named_parameters():
        keep = any(fnmatch.fnmatchcase(name, pat) for pat in patterns)
        p.requires_grad_(keep)
        if keep:
            kept.append(p)
    return kept
