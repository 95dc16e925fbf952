"""Sampling for the flow-matching DiT: Euler and DPM-Solver++(2M), classifier-free guidance with separate text and
face scales, Wan 2.2 TI2V first-frame conditioning. Deterministic given a seed.

Guidance (three predictions; passes whose scale makes them unnecessary are skipped):
    v = v(-, -) + s_text * (v(text, -) - v(-, -)) + s_face * (v(text, face) - v(text, -))
where ``-`` is the negative prompt for text and "no face tokens" (the face branch off) for the face; this is the
two-condition guidance of InstructPix2Pix (Brooks et al. 2023, eq. 3) applied to (text, face).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from cofe_dit.flow import per_token_timesteps, shift_sigmas
from cofe_dit.model import DiT


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample.

    Attributes:
        steps: model evaluations per guidance branch.
        shift: Wan timestep shift (5.0 for T2V, 3.0 for 480p I2V, 5.0 for TI2V in the Wan repos).
        solver: ``euler`` (first order) or ``dpmpp_2m`` (DPM-Solver++ multistep, second order; Lu et al. 2022).
        text_scale: classifier-free guidance scale for the text.
        face_scale: guidance scale for the face tokens (1 = use the face branch without extra guidance).
    """

    steps: int = 50
    shift: float = 5.0
    solver: Literal["euler", "dpmpp_2m"] = "dpmpp_2m"
    text_scale: float = 5.0
    face_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.solver not in ("euler", "dpmpp_2m"):
            raise ValueError(f"unknown solver {self.solver!r}; choose 'euler' or 'dpmpp_2m'")


def sigma_schedule(steps: int, shift: float) -> Tensor:
    """``steps + 1`` shifted sigmas from 1 down to 0 (uniform in unshifted sigma), fp64."""
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)


class GuidedVelocity:
    """Callable ``(x, sigma) -> guided velocity`` that wraps a DiT and its conditions."""

    def __init__(
        self,
        model: DiT,
        context: Tensor,
        *,
        negative_context: Tensor | None = None,
        face_tokens: Sequence[Tensor | None] | None = None,
        cond: Tensor | None = None,
        clip_tokens: Tensor | None = None,
        text_scale: float = 5.0,
        face_scale: float = 1.0,
        first_frame: Tensor | None = None,
        negative_face_tokens: Sequence[Tensor | None] | None = None,
    ):
        if text_scale != 1.0 and negative_context is None:
            raise ValueError(f"text_scale={text_scale} needs negative_context (the embedded negative prompt)")
        self.model = model
        self.context, self.negative_context = context, negative_context
        self.face_tokens, self.cond, self.clip_tokens = face_tokens, cond, clip_tokens
        self.text_scale, self.face_scale = text_scale, face_scale
        self.first_frame = first_frame
        # The face-unconditional input: the branch off (None) unless the model was trained dropping faces to
        # something else (e.g. zero tokens), which is then what guidance should contrast with.
        self.negative_face_tokens = negative_face_tokens
        self.evaluations = 0

    def _timestep(self, x: Tensor, sigma: float) -> Tensor:
        t = torch.full((x.shape[0],), sigma * self.model.cfg.num_train_timesteps, device=x.device)
        if self.first_frame is None:
            return t
        pt, ph, pw = self.model.cfg.patch_size
        grid = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)
        return per_token_timesteps(t, grid, given_frames=self.first_frame.shape[2] // pt)  # (B, L)

    def _run(self, x: Tensor, t: Tensor, context: Tensor, faces) -> Tensor:
        self.evaluations += 1
        return self.model(x, t, context, cond=self.cond, clip_tokens=self.clip_tokens, face_tokens=faces).float()

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        t = self._timestep(x, sigma)
        has_face = self.face_tokens is not None
        s_t, s_f = self.text_scale, self.face_scale
        v_full = self._run(x, t, self.context, self.face_tokens if has_face else None)
        if has_face and s_f != 1.0:
            v_text = self._run(x, t, self.context, self.negative_face_tokens)
            face_term = s_f * (v_full - v_text)
        else:
            v_text, face_term = v_full, None
        if s_t != 1.0:
            v_neg = self._run(x, t, self.negative_context, self.negative_face_tokens)
            v = v_neg + s_t * (v_text - v_neg)
        else:
            v = v_text
        # With face_scale == 1 the face enters through v_text, which is then the face-conditioned prediction.
        return v + face_term if face_term is not None else v


@torch.no_grad()
def sample(
    model: DiT,
    shape: tuple[int, ...],
    context: Tensor,
    *,
    config: SamplerConfig | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    negative_context: Tensor | None = None,
    face_tokens: Sequence[Tensor | None] | None = None,
    cond: Tensor | None = None,
    clip_tokens: Tensor | None = None,
    first_frame: Tensor | None = None,
    negative_face_tokens: Sequence[Tensor | None] | None = None,
    noise: Tensor | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Generate a latent video.

    Args:
        model: the DiT (put it in ``eval()`` mode and on its device first).
        shape: ``(B, C, F, H, W)`` latent shape.
        context: ``(B, T, text_dim)`` embedded prompt.
        config: steps, shift, solver and guidance scales.
        seed: seeds a CPU generator for the initial noise (ignored when ``generator`` or ``noise`` is given).
        negative_context: embedded negative prompt, needed when ``text_scale != 1``.
        face_tokens: per-block face tokens (models with a face branch).
        cond, clip_tokens: Wan 2.1 I2V conditioning.
        first_frame: ``(B, C, k, H, W)`` clean leading latent frame(s) (Wan 2.2 TI2V); kept fixed, timestep 0.
        negative_face_tokens: the face-unconditional tokens (default None: the face branch off).
        noise: explicit initial noise of ``shape``.
        callback: ``callback(step, x)`` after every step.

    Returns:
        ``(B, C, F, H, W)`` fp32 latent.
    """
    config = config or SamplerConfig()
    device = context.device
    if noise is None:
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)  # drawn on CPU: identical everywhere
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise shape {tuple(noise.shape)} != requested shape {tuple(shape)}")
    x = noise.to(device=device, dtype=torch.float32)
    if first_frame is not None:
        k = first_frame.shape[2]
        if first_frame.shape[:2] != x.shape[:2] or first_frame.shape[3:] != x.shape[3:] or k >= x.shape[2]:
            raise ValueError(f"first_frame {tuple(first_frame.shape)} does not fit latent shape {tuple(shape)}")
        first_frame = first_frame.to(x)
    velocity = GuidedVelocity(
        model,
        context,
        negative_context=negative_context,
        face_tokens=face_tokens,
        cond=cond,
        clip_tokens=clip_tokens,
        text_scale=config.text_scale,
        face_scale=config.face_scale,
        first_frame=first_frame,
        negative_face_tokens=negative_face_tokens,
    )
    sigmas = sigma_schedule(config.steps, config.shift).tolist()

    def clamp(z: Tensor) -> Tensor:
        if first_frame is None:
            return z
        z = z.clone()
        z[:, :, : first_frame.shape[2]] = first_frame
        return z

    return solve(velocity, x, sigmas, config.solver, project=clamp, callback=callback)


def solve(
    velocity: Callable[[Tensor, float], Tensor],
    x: Tensor,
    sigmas: Sequence[float],
    solver: str = "dpmpp_2m",
    *,
    project: Callable[[Tensor], Tensor] | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Integrate the flow ODE ``dx/dsigma = v(x, sigma)`` from ``sigmas[0]`` down to ``sigmas[-1]``.

    Args:
        velocity: ``(x, sigma) -> v``.
        x: the start (noise at ``sigmas[0] = 1``).
        sigmas: decreasing noise levels.
        solver: ``euler`` or ``dpmpp_2m``.
        project: applied after every step (e.g. re-impose a given first frame).
        callback: ``callback(step, x)`` after every step.
    """
    if solver not in ("euler", "dpmpp_2m"):
        raise ValueError(f"unknown solver {solver!r}; choose 'euler' or 'dpmpp_2m'")
    project = project or (lambda z: z)
    x = project(x)
    prev_x0: Tensor | None = None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        v = velocity(x, s)
        if solver == "euler":
            x = x + (s_next - s) * v
        else:
            x0 = x - s * v  # data prediction
            x, prev_x0 = _dpmpp_2m_step(x, x0, prev_x0, sigmas, i), x0
        x = project(x)
        if callback is not None:
            callback(i, x)
    return x


def _lambda(sigma: float) -> float:
    """Half log-SNR ``log(alpha / sigma)`` with ``alpha = 1 - sigma`` (rectified flow)."""
    if sigma <= 0:
        return math.inf
    if sigma >= 1:
        return -math.inf
    return math.log((1 - sigma) / sigma)


def _dpmpp_2m_step(x: Tensor, x0: Tensor, prev_x0: Tensor | None, sigmas: list[float], i: int) -> Tensor:
    """One DPM-Solver++(2M) step from ``sigmas[i]`` to ``sigmas[i+1]`` (Lu et al. 2022, Algorithm 2).

    First order on the first step (no history; log-SNR starts at -inf) and on the last (to sigma 0, where the
    update is the data prediction itself), second order in between.
    """
    s, s_next = sigmas[i], sigmas[i + 1]
    if s_next <= 0:
        return x0
    alpha_next = 1 - s_next
    lam, lam_next = _lambda(s), _lambda(s_next)
    h = lam_next - lam
    if math.isinf(h):
        # From sigma = 1 (pure noise): alpha = 0, so the update is alpha_next * x0 + sigma_next * noise direction.
        return s_next / s * x + alpha_next * x0
    phi = -math.expm1(-h)  # 1 - e^{-h}
    d = x0
    if prev_x0 is not None and i >= 1:
        h_prev = lam - _lambda(sigmas[i - 1])
        if math.isfinite(h_prev) and h_prev > 0:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
    return (s_next / s) * x + alpha_next * phi * d
