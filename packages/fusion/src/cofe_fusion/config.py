"""Typed configuration of the CoFE fusion module, with named presets.

Expert widths of the presets are those of the experts ``cofe_encoders`` wraps: ArcFace embeddings are 512-d
(insightface glintr100 / w600k_r50), CLIP ViT-H/14 tokens 1280-d (the penultimate layer IP-Adapter-Plus and
Wan 2.1 I2V use), DINOv2 ViT-L/14 tokens 1024-d. ``dim`` must equal the DiT's ``DiTConfig.face_dim`` and
``num_blocks`` its ``num_layers``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

ProjectorType = Literal["perceiver", "mlp"]
GateMode = Literal["block", "token"]
PROJECTOR_TYPES: tuple[str, ...] = ("perceiver", "mlp")
GATE_MODES: tuple[str, ...] = ("block", "token")


@dataclass(frozen=True)
class ExpertSpec:
    """One expert as the fusion module sees it.

    Attributes:
        name: key of the expert's features in ``CoFE.forward`` (e.g. ``"identity"``).
        width: channel width ``C_k`` of its tokens / pooled vector.
        projector: ``"perceiver"`` (learned queries cross-attend the expert tokens) or ``"mlp"`` (the pooled
            vector becomes ``M`` tokens); ``None`` takes ``CoFEConfig.projector``.
    """

    name: str
    width: int
    projector: ProjectorType | None = None


def _as_specs(experts: Any) -> tuple[ExpertSpec, ...]:
    """Accept ``{name: width}``, ``{name: (width, projector)}``, or a sequence of ``ExpertSpec`` / tuples / dicts."""
    if isinstance(experts, Mapping):
        items = [(k, *(v if isinstance(v, (tuple, list)) else (v,))) for k, v in experts.items()]
    elif isinstance(experts, Sequence) and not isinstance(experts, str):
        items = list(experts)
    else:
        raise TypeError(f"CoFEConfig.experts must be a mapping or a sequence, got {type(experts).__name__}")
    specs = []
    for item in items:
        if isinstance(item, ExpertSpec):
            specs.append(item)
        elif isinstance(item, Mapping):
            specs.append(ExpertSpec(**item))
        elif isinstance(item, (tuple, list)) and 2 <= len(item) <= 3:
            specs.append(ExpertSpec(*item))
        else:
            raise TypeError(f"CoFEConfig.experts: cannot read an expert from {item!r}")
    return tuple(specs)


@dataclass(frozen=True)
class CoFEConfig:
    """Architecture of the CoFE fusion module.

    Attributes:
        name: preset name (informational).
        experts: the experts in gate order; also accepts ``{name: width}`` and tuples (normalised to ``ExpertSpec``).
        num_blocks: DiT blocks that receive fused tokens (``DiTConfig.num_layers``).
        num_tokens: ``M``, fused tokens per block.
        dim: ``D``, fused token width (``DiTConfig.face_dim``).
        projector: default projector type for experts that do not name one.
        gate_mode: ``"block"``: one gate vector per block and sample, from the pooled projected features,
            logits ``(B, E)``; ``"token"``: one gate vector per block, sample and fused token, from that token's
            projected features, logits ``(B, M, E)``.
        gate_hidden: hidden width of each gate MLP.
        gate_context_dim: width of an optional extra gate input (e.g. the DiT's timestep embedding), or None.
        resampler_dim: inner width of the perceiver resamplers (IP-Adapter-Plus: 1280).
        resampler_depth: perceiver layers (attention + feed-forward).
        resampler_heads: attention heads of the resamplers.
        resampler_ff_mult: feed-forward expansion of the resamplers.
        mlp_hidden_mult: hidden width of the MLP projector as a multiple of the expert width (IP-Adapter-FaceID: 2).
        backend: ``expert_gate`` backend (``"auto"`` runs the Triton kernel on CUDA).
    """

    name: str = "custom"
    experts: tuple[ExpertSpec, ...] = field(
        default=(ExpertSpec("identity", 512, "mlp"), ExpertSpec("semantic", 1280), ExpertSpec("detail", 1024))
    )
    num_blocks: int = 30
    num_tokens: int = 16
    dim: int = 1536
    projector: ProjectorType = "perceiver"
    gate_mode: GateMode = "block"
    gate_hidden: int = 256
    gate_context_dim: int | None = None
    resampler_dim: int = 1024
    resampler_depth: int = 2
    resampler_heads: int = 16
    resampler_ff_mult: int = 4
    mlp_hidden_mult: int = 2
    backend: str = "auto"

    def __post_init__(self) -> None:
        specs = _as_specs(self.experts)
        object.__setattr__(self, "experts", specs)
        if not specs:
            raise ValueError("CoFEConfig.experts is empty; CoFE needs at least one expert")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"CoFEConfig.experts has duplicate names: {names}")
        for s in specs:
            if s.width < 1:
                raise ValueError(f"expert {s.name!r} has width {s.width}; widths must be positive")
            if s.projector is not None and s.projector not in PROJECTOR_TYPES:
                raise ValueError(f"expert {s.name!r}: projector must be one of {PROJECTOR_TYPES}, got {s.projector!r}")
        if self.projector not in PROJECTOR_TYPES:
            raise ValueError(f"CoFEConfig.projector must be one of {PROJECTOR_TYPES}, got {self.projector!r}")
        if self.gate_mode not in GATE_MODES:
            raise ValueError(f"CoFEConfig.gate_mode must be one of {GATE_MODES}, got {self.gate_mode!r}")
        for key in ("num_blocks", "num_tokens", "dim", "gate_hidden", "resampler_dim", "resampler_depth"):
            if getattr(self, key) < 1:
                raise ValueError(f"CoFEConfig.{key} must be >= 1, got {getattr(self, key)}")
        if self.resampler_dim % self.resampler_heads:
            raise ValueError(
                f"CoFEConfig.resampler_dim={self.resampler_dim} is not divisible by "
                f"resampler_heads={self.resampler_heads}"
            )

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def expert_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.experts)

    def projector_of(self, spec: ExpertSpec) -> ProjectorType:
        """The projector type an expert uses (its own, else the config default)."""
        return spec.projector or self.projector

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CoFEConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CoFEConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> CoFEConfig:
        """A preset by name (see ``PRESETS``), with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown CoFE preset {name!r}; presets: {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def replace(self, **overrides: Any) -> CoFEConfig:
        return replace(self, **overrides)


_EXPERTS = (ExpertSpec("identity", 512, "mlp"), ExpertSpec("semantic", 1280), ExpertSpec("detail", 1024))

PRESETS: dict[str, CoFEConfig] = {
    # Fused tokens as wide as the DiT (IP-Adapter projects to the cross-attention width); 16 tokens per block
    # as IP-Adapter-Plus's resampler (Ye et al. 2023, num_queries=16).
    "wan2.1-t2v-1.3b": CoFEConfig(name="wan2.1-t2v-1.3b", experts=_EXPERTS, num_blocks=30, dim=1536),
    "wan2.2-ti2v-5b": CoFEConfig(name="wan2.2-ti2v-5b", experts=_EXPERTS, num_blocks=30, dim=3072),
    "wan2.1-14b": CoFEConfig(name="wan2.1-14b", experts=_EXPERTS, num_blocks=40, dim=5120),
    # Matches DiTConfig.from_name("tiny", face_dim=8): 2 blocks; a few thousand parameters for tests and demos.
    "tiny": CoFEConfig(
        name="tiny",
        experts=(ExpertSpec("identity", 16, "mlp"), ExpertSpec("semantic", 24), ExpertSpec("detail", 20)),
        num_blocks=2,
        num_tokens=4,
        dim=8,
        gate_hidden=16,
        resampler_dim=16,
        resampler_depth=2,
        resampler_heads=2,
        resampler_ff_mult=2,
    ),
}
