"""Pure-PyTorch reference of ``expert_gate``: the CPU path, and the ground truth for tests and benchmarks.

``out[..., d] = sum_e softmax(logits)[..., e] * experts[..., e, d]``, computed in fp32 (fp64 for fp64 inputs)
and returned in ``experts.dtype``. Gradients come from autograd. See ``cofe_fusion.ops.common`` for the shape rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cofe_fusion.ops.common import gate_shapes

__all__ = ["compiled_expert_gate_reference", "expert_gate_reference"]


def _acc_dtype(logits: Tensor, experts: Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (logits.dtype, experts.dtype) else torch.float32


def expert_gate_reference(logits: Tensor, experts: Tensor) -> Tensor:
    """Softmax-weighted sum of experts, eager PyTorch.

    Args:
        logits: ``(*G, E)`` gate logits.
        experts: ``(*G, *T, E, D)`` expert tokens.

    Returns:
        ``(*G, *T, D)`` in ``experts.dtype``.
    """
    shapes = gate_shapes(logits, experts)
    acc = _acc_dtype(logits, experts)
    p = torch.softmax(logits.to(acc), dim=-1)  # (*G, E)
    # Broadcast mode: give p one singleton per token dim so matmul broadcasts it over *T without copying.
    p = p.reshape(*shapes.gate_batch, *(1 for _ in shapes.token_batch), 1, shapes.num_experts)  # (*G, *1, 1, E)
    out = torch.matmul(p, experts.to(acc))  # (*G, *T, 1, D)
    return out.squeeze(-2).to(experts.dtype)  # (*G, *T, D)


_COMPILED = None


def compiled_expert_gate_reference(logits: Tensor, experts: Tensor) -> Tensor:
    """``torch.compile`` of :func:`expert_gate_reference` (built on first use; several seconds cold on CPU)."""
    global _COMPILED
    if _COMPILED is None:
        # dynamic=True: one graph per (rank, dtype, requires_grad, size-1 dims) pattern instead of one per shape.
        # No fullgraph=True: past dynamo's recompile limit (8 per function) it then falls back to eager instead of
        # raising.
        _COMPILED = torch.compile(expert_gate_reference, dynamic=True)
    return _COMPILED(logits, experts)
