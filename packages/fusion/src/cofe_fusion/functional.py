"""Functional API of the fused expert gate, with backend dispatch.

``expert_gate(logits, experts)`` returns ``sum_e softmax(logits)_e * experts[..., e, :]``. Backends:

- ``"triton"``: the fused kernels of ``cofe_fusion.ops.expert_gate`` (CUDA tensors, or CPU tensors when
  ``TRITON_INTERPRET=1`` was set before triton was imported);
- ``"reference"``: eager PyTorch (``cofe_fusion.ops.reference``), any device;
- ``"compiled"``: ``torch.compile`` of the reference (slow first call);
- ``"auto"`` (default): the ``COFE_FUSION_BACKEND`` environment variable if set, else ``"triton"`` for CUDA
  tensors and ``"reference"`` otherwise.

``triton`` is imported only when the Triton backend is chosen, so ``import cofe_fusion`` never imports it.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import Tensor

from cofe_fusion.ops.common import check_expert_gate_inputs
from cofe_fusion.ops.reference import compiled_expert_gate_reference, expert_gate_reference

__all__ = ["BACKENDS", "ENV_BACKEND", "Backend", "expert_gate", "resolve_backend"]

Backend = Literal["auto", "triton", "reference", "compiled"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "reference", "compiled")
ENV_BACKEND = "COFE_FUSION_BACKEND"


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ``expert_gate`` uses for tensors on ``device``.

    Args:
        backend: one of ``BACKENDS``; ``"auto"`` consults ``COFE_FUSION_BACKEND`` and then the device.
        device: device of the inputs.

    Returns:
        ``"triton"``, ``"reference"`` or ``"compiled"``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"expert_gate: unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        env = os.environ.get(ENV_BACKEND, "auto")
        if env not in BACKENDS:
            raise ValueError(f"environment variable {ENV_BACKEND}={env!r} is not one of {BACKENDS}")
        backend = env
    if backend == "auto":
        backend = "triton" if device.type == "cuda" and _triton_importable() else "reference"
    return backend


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def expert_gate(logits: Tensor, experts: Tensor, *, backend: Backend = "auto", check_finite: bool = True) -> Tensor:
    """Softmax-gated sum of experts, fused on CUDA.

    Shape rule: ``logits (*G, E)``, ``experts (*G, *T, E, D)`` -> ``(*G, *T, D)``. ``logits.shape[:-1]`` must equal
    the leading dims of ``experts``; any further token dims ``*T`` share their logit vector (broadcast mode, e.g.
    per-sample gates ``(B, E)`` with tokens ``(B, M, E, D)``) without expanding it. Inputs may be non-contiguous.

    Args:
        logits: ``(*G, E)`` gate logits (the softmax is taken inside).
        experts: ``(*G, *T, E, D)`` expert tokens.
        backend: ``"auto"``, ``"triton"``, ``"reference"`` or ``"compiled"`` (see the module docstring).
        check_finite: reject NaN / Inf logits with a ``ValueError`` (costs one host sync on CUDA).

    Returns:
        ``(*G, *T, D)`` in ``experts.dtype``; accumulated in fp32 (fp64 for fp64 inputs).

    Raises:
        ValueError: shapes violating the rule (the message names both shapes), non-finite logits, unknown backend.
        TypeError: non-floating inputs.
        RuntimeError: ``backend="triton"`` on CPU tensors without ``TRITON_INTERPRET=1``.

    Example:
        >>> logits = torch.zeros(2, 3)  # uniform gates
        >>> experts = torch.randn(2, 4, 3, 8)
        >>> expert_gate(logits, experts).shape
        torch.Size([2, 4, 8])
    """
    chosen = resolve_backend(backend, experts.device if isinstance(experts, Tensor) else torch.device("cpu"))
    if chosen == "triton":
        from cofe_fusion.ops.expert_gate import expert_gate_triton  # imports triton on first use only

        return expert_gate_triton(logits, experts, check_finite)
    check_expert_gate_inputs(logits, experts, check_finite)
    if chosen == "compiled":
        return compiled_expert_gate_reference(logits, experts)
    return expert_gate_reference(logits, experts)
