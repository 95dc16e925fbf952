"""Step cache: skip most of the DiT on solver steps where its first block says little has changed.

First Block Cache (ParaAttention, chengzeyi/ParaAttention ``first_block_cache``; diffusers
``hooks.first_block_cache``), the input-side signal of TeaCache (Liu et al. 2024, "Timestep Embedding Tells:
It's Time to Cache for Video Diffusion Model"): consecutive steps of a diffusion sampler change the DiT's
activations slowly, and the change of the *first* block's output predicts that of the whole stack. At every step,
for each stream of calls (one per guidance pass), block 0 runs and its residual ``r = block0(h) - h`` is compared
with the residual ``r*`` of the last step on which every block ran:

    change = mean |r - r*| / mean |r*|

If ``change < threshold`` the other blocks are skipped and their residual of that step, ``R* = h_out - block0(h)``,
is added to the current first-block output (``h_out ~ block0(h) + R*``); otherwise all blocks run and ``r*``, ``R*``
are stored. As in ParaAttention and diffusers, ``r*`` is only updated on computed steps, so the change accumulates
over consecutive skipped steps and a run of reuses ends by itself (TeaCache's accumulated relative L1 does the same).
No reuse on the first ``warmup_steps`` steps (no reference yet, and the early high-noise steps set the layout) nor
on the last step (it writes the final latent).

Cost: one host sync per guidance pass per step (the comparison decides Python control flow), and two stored
``(B, L, D)`` fp32 tensors per pass.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

from torch import Tensor

__all__ = ["StepCache"]


class StepCache:
    """First-Block-Cache state across the steps of one sampling run (see the module docstring).

    Args:
        threshold: reuse when the first block's relative L1 residual change is below this (0 never reuses).
            ParaAttention suggests 0.05-0.1 for image models; check the drift for your model and steps.
        warmup_steps: leading steps that always run every block (at least 1: step 0 has no reference).

    Attributes:
        cached: model calls on which the blocks after the first were skipped.
        computed: model calls on which every block ran.
        changes: ``(step, key, change)`` of every comparison made (for inspecting a threshold).

    Example:
        >>> cache = StepCache(0.05)
        >>> # sample(model, shape, ctx, config=SamplerConfig(cache_threshold=0.05), step_cache=cache)
        >>> cache.cached, cache.computed
        (0, 0)
    """

    def __init__(self, threshold: float, *, warmup_steps: int = 1):
        threshold = float(threshold)
        if not math.isfinite(threshold) or threshold < 0:
            raise ValueError(f"StepCache threshold must be finite and >= 0, got {threshold}")
        if warmup_steps < 1:
            raise ValueError(f"StepCache warmup_steps must be >= 1 (step 0 has no reference), got {warmup_steps}")
        self.threshold = threshold
        self.warmup_steps = int(warmup_steps)
        self.reset()

    def reset(self) -> None:
        """Forget every stored residual and zero the counts (``sample`` calls this at its start)."""
        self._store: dict[Hashable, tuple[Tensor, Tensor]] = {}  # key -> (first-block residual, rest residual)
        self._step: int | None = None
        self._reuse_allowed = False
        self.cached = 0
        self.computed = 0
        self.changes: list[tuple[int, Hashable, float]] = []

    def start_step(self, step: int, num_steps: int) -> None:
        """Set the solver step (0-based, of ``num_steps``) the next calls belong to."""
        if not 0 <= step < num_steps:
            raise ValueError(f"StepCache: step {step} is outside 0..{num_steps - 1}")
        self._step = step
        self._reuse_allowed = self.threshold > 0 and self.warmup_steps <= step < num_steps - 1

    def reuse(self, key: Hashable, first_residual: Tensor) -> Tensor | None:
        """The stored residual of the blocks after the first, if this call of ``key`` may reuse it, else None.

        Args:
            key: the stream of calls (e.g. the guidance pass).
            first_residual: ``(B, L, D)`` this call's ``block0(h) - h``.
        """
        if self._step is None:
            raise RuntimeError("StepCache: call start_step(step, num_steps) before the model")
        stored = self._store.get(key)
        if not self._reuse_allowed or stored is None or stored[0].shape != first_residual.shape:
            return None
        ref, rest = stored
        # Relative L1 of the change (ParaAttention's `are_two_tensors_similar`, diffusers' FBC head hook).
        change = float((first_residual.float() - ref).abs().mean() / ref.abs().mean())  # one host sync
        self.changes.append((self._step, key, change))
        if change < self.threshold:  # NaN (an all-zero reference) compares False: computed
            self.cached += 1
            return rest
        return None

    def store(self, key: Hashable, first_residual: Tensor, rest_residual: Tensor) -> None:
        """Record a fully computed call of ``key``: its first-block residual and the other blocks' residual."""
        self._store[key] = (first_residual.detach().float(), rest_residual.detach())
        self.computed += 1

    def __repr__(self) -> str:
        return (
            f"StepCache(threshold={self.threshold}, warmup_steps={self.warmup_steps}, cached={self.cached}, "
            f"computed={self.computed})"
        )
