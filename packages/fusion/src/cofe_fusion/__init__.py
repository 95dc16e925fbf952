"""CoFE: per-expert projections, per-block gates and a fused Triton gating kernel.

Public API:
    expert_gate, FusedExpertMix, expert_gate_reference: the fused softmax-gated sum of experts (Triton on CUDA).
    CoFE, CoFEConfig, ExpertSpec, ExpertFeatures, CoFEOutput: the fusion module and its config.
    ExpertProjector, PerceiverResampler, MLPTokenProjector, ExpertGate: its parts.
    freeze_dit_for_cofe: freeze a DiT except its cross-attention layers.
"""

from cofe_fusion.config import PRESETS, CoFEConfig, ExpertSpec
from cofe_fusion.functional import BACKENDS, expert_gate, resolve_backend
from cofe_fusion.layers import FusedExpertMix
from cofe_fusion.model import (
    DEBUG_CHECKS_ENV,
    DIT_TRAINABLE_PATTERNS,
    CoFE,
    CoFEOutput,
    ExpertFeatures,
    ExpertGate,
    ExpertProjector,
    MLPTokenProjector,
    PerceiverResampler,
    freeze_dit_for_cofe,
)
from cofe_fusion.ops.reference import expert_gate_reference

__version__ = "0.2.0"

__all__ = [
    "BACKENDS",
    "DEBUG_CHECKS_ENV",
    "DIT_TRAINABLE_PATTERNS",
    "PRESETS",
    "CoFE",
    "CoFEConfig",
    "CoFEOutput",
    "ExpertFeatures",
    "ExpertGate",
    "ExpertProjector",
    "ExpertSpec",
    "FusedExpertMix",
    "MLPTokenProjector",
    "PerceiverResampler",
    "__version__",
    "expert_gate",
    "expert_gate_reference",
    "freeze_dit_for_cofe",
    "resolve_backend",
]
