"""Shape rule and input validation of ``expert_gate``, shared by the Triton op and the PyTorch reference.

Shape rule (one rule, two modes):

    logits  (*G, E)          G: the "gate" batch dims (any number, including none)
    experts (*G, *T, E, D)   T: extra token dims that share one logit vector (any number, including none)
    out     (*G, *T, D)

``logits.shape[:-1]`` must equal the leading ``logits.ndim - 1`` dims of ``experts``. With no ``T`` dims every
row has its own logits ("per-row" mode, e.g. per-token gates ``(B, M, E)`` with experts ``(B, M, E, D)``); with
``T`` dims one logit vector serves all of them without being expanded ("broadcast" mode, e.g. per-sample gates
``(B, E)`` with experts ``(B, M, E, D)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class GateShapes:
    """Sizes of one ``expert_gate`` call after applying the shape rule.

    Attributes:
        gate_batch: the ``*G`` dims (leading dims of ``logits``).
        token_batch: the ``*T`` dims (empty in per-row mode).
        num_gates: ``prod(*G)``, the number of logit vectors.
        tokens_per_gate: ``prod(*T)`` (1 in per-row mode).
        num_experts: ``E``.
        dim: ``D``.
    """

    gate_batch: tuple[int, ...]
    token_batch: tuple[int, ...]
    num_gates: int
    tokens_per_gate: int
    num_experts: int
    dim: int

    @property
    def broadcast(self) -> bool:
        """True when one logit vector serves several token dims (``*T`` non-empty)."""
        return len(self.token_batch) > 0

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (*self.gate_batch, *self.token_batch, self.dim)


def gate_shapes(logits: Tensor, experts: Tensor) -> GateShapes:
    """Apply the shape rule (see the module docstring) and raise a ``ValueError`` naming both shapes if it fails."""
    ls, xs = tuple(logits.shape), tuple(experts.shape)
    rule = "expected logits (*G, E) and experts (*G, *T, E, D)"
    if logits.ndim < 1:
        raise ValueError(f"expert_gate: logits must have at least 1 dim (E,); got shape {ls}; {rule}")
    if experts.ndim < logits.ndim + 1:
        raise ValueError(
            f"expert_gate: experts must have at least logits.ndim + 1 = {logits.ndim + 1} dims; got logits {ls} "
            f"and experts {xs}; {rule}"
        )
    e = ls[-1]
    if xs[-2] != e:
        raise ValueError(
            f"expert_gate: number of experts differs: logits {ls} has E={e} in its last dim but experts {xs} has "
            f"{xs[-2]} in dim -2; {rule}"
        )
    k = logits.ndim - 1
    if xs[:k] != ls[:-1]:
        raise ValueError(
            f"expert_gate: batch dims differ: logits {ls} has leading dims {ls[:-1]} but experts {xs} starts with "
            f"{xs[:k]}; {rule} (logits are not broadcast over G; expand them explicitly if that is meant)"
        )
    if e < 1:
        raise ValueError(f"expert_gate: needs at least one expert; got logits {ls} and experts {xs}")
    g, t = ls[:-1], xs[k:-2]
    return GateShapes(g, t, math.prod(g), math.prod(t), e, xs[-1])


def check_expert_gate_inputs(logits: Tensor, experts: Tensor, check_finite: bool = True) -> GateShapes:
    """Validate dtypes, devices, shapes and (optionally) finiteness of the logits.

    Args:
        logits: ``(*G, E)`` gate logits.
        experts: ``(*G, *T, E, D)`` expert tokens.
        check_finite: also reject NaN / Inf logits (one device sync on CUDA).

    Returns:
        The sizes of the call.

    Raises:
        TypeError: non-tensor or non-floating inputs.
        ValueError: shapes violating the rule, tensors on different devices, or non-finite logits.
    """
    for name, t in (("logits", logits), ("experts", experts)):
        if not isinstance(t, Tensor):
            raise TypeError(f"expert_gate: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"expert_gate: {name} must be float16, bfloat16, float32 or float64; got {t.dtype} "
                f"(shape {tuple(t.shape)})"
            )
    if logits.device != experts.device:
        raise ValueError(
            f"expert_gate: logits {tuple(logits.shape)} are on {logits.device} but experts {tuple(experts.shape)} "
            f"are on {experts.device}"
        )
    shapes = gate_shapes(logits, experts)
    # Softmax of a row holding NaN or +Inf is NaN everywhere; fail here with the shape rather than far downstream.
    if check_finite and logits.numel() and not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).any(-1).sum())
        raise ValueError(
            f"expert_gate: logits of shape {tuple(logits.shape)} contain NaN or Inf values in {bad} of "
            f"{shapes.num_gates} gate vectors"
        )
    return shapes
