"""``nn.Module`` wrapper of the fused expert-gate op.

Named ``FusedExpertMix`` (not ``ExpertGate``): in CoFE, ``ExpertGate`` is the per-block gate network that
*produces* the logits (``cofe_fusion.model.ExpertGate``); this module *consumes* them.
"""

from __future__ import annotations

from torch import Tensor, nn

from cofe_fusion.functional import BACKENDS, Backend, expert_gate


class FusedExpertMix(nn.Module):
    """Parameter-free module computing ``sum_e softmax(logits)_e * experts[..., e, :]``.

    Args:
        backend: ``"auto"``, ``"triton"``, ``"reference"`` or ``"compiled"`` (see ``cofe_fusion.expert_gate``).
        check_finite: reject NaN / Inf logits (one host sync per call on CUDA).

    Example:
        >>> mix = FusedExpertMix()
        >>> mix(torch.zeros(2, 3), torch.randn(2, 4, 3, 8)).shape  # (B, E), (B, M, E, D) -> (B, M, D)
        torch.Size([2, 4, 8])
    """

    def __init__(self, backend: Backend = "auto", check_finite: bool = True):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"FusedExpertMix: unknown backend {backend!r}; choose one of {BACKENDS}")
        self.backend = backend
        self.check_finite = check_finite

    def forward(self, logits: Tensor, experts: Tensor) -> Tensor:
        """``logits (*G, E)``, ``experts (*G, *T, E, D)`` -> ``(*G, *T, D)``."""
        return expert_gate(logits, experts, backend=self.backend, check_finite=self.check_finite)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, check_finite={self.check_finite}"
