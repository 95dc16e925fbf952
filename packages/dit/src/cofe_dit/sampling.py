"""Sampling for the flow-matching DiT: UniPC (Wan's default), Euler and DPM-Solver++(2M); classifier-free guidance
with separate text and face scales; Wan 2.2 TI2V first-frame conditioning. Deterministic given a seed.

Guidance (InstructPix2Pix's two-condition guidance, Brooks et al. 2023, eq. 3, applied to (text, face)):

    v = v(-, -) + s_text * (v(text, -) - v(-, -)) + s_face * (v(text, face) - v(text, -))

where ``-`` is the negative prompt for text and ``negative_face_tokens`` for the face (None: the face branch off;
a model trained with face dropout to zero tokens should be given zero tokens). Written as a weighted sum
``(1 - s_text) v(-,-) + (s_text - s_face) v(t,-) + s_face v(t,f)``, a pass is skipped exactly when its weight is
zero: ``s_text == 1`` drops v(-,-), ``s_face == 0`` drops v(t,f), ``s_face == s_text`` drops v(t,-); (1, 1) is one
pass. Without face tokens ``v(t,f) = v(t,-)`` and this is ordinary classifier-free guidance.

Inference levers (every default reproduces the plain sampler bit for bit):

- ``SamplerConfig.face_window = (start, end)``: the face tokens are given only on steps ``i`` (of ``n``) with
  ``start <= i / n < end``; elsewhere the face pass takes ``negative_face_tokens``, which makes it the text pass, so
  the two are merged into one evaluation with the summed weight.
- ``sample(..., face_branch_scale=s)``: ``DiT.forward(..., face_scale=s)`` on the pass that carries the face tokens.
- ``SamplerConfig.batch_guidance``: the guidance passes of a step run as one forward of batch ``passes * B``. A pass
  without face tokens for a block (None: the branch off) is given zero tokens *and* a per-sample branch scale of 0:
  zero tokens alone are not the branch off (the branch then still adds ``W_o b_v + b_o``, its bias path).
- ``SamplerConfig.cache_threshold > 0``: First-Block-Cache reuse of the blocks across steps (``cofe_dit.step_cache``).

Timesteps: the solvers integrate in exact (fp64) sigmas; the model is given ``int(sigma * 1000)``, as Wan's
``FlowUniPCMultistepScheduler.set_timesteps`` (``timesteps = sigmas * 1000`` cast to int64) and diffusers'
``UniPCMultistepScheduler`` (``.to(dtype=torch.int64)``) give it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from cofe_dit.config import SOLVERS, DiTConfig, SamplingDefaults, Solver
from cofe_dit.flow import per_token_timesteps, shift_sigmas
from cofe_dit.model import DiT
from cofe_dit.step_cache import StepCache

Schedule = Literal["wan", "diffusers"]


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample.

    Attributes:
        steps: solver steps (model evaluations per guidance pass).
        shift: Wan timestep shift (5.0 for T2V / TI2V / 720p I2V, 3.0 for 480p I2V in the Wan repos).
        solver: ``unipc`` (UniPC bh2, order 2, lower-order final step: Wan's default), ``euler`` (first order) or
            ``dpmpp_2m`` (DPM-Solver++ multistep, Lu et al. 2022).
        text_scale: classifier-free guidance scale of the text.
        face_scale: guidance scale of the face tokens (0 = no face, 1 = the face branch on without extra guidance).
        schedule: ``wan`` (Wan's ``shift(linspace(1 - 1/1000, 0, steps + 1))``) or ``diffusers`` (diffusers'
            flow UniPC: ``shift(linspace(1, 1/1000, steps + 1)[:-1])`` with the first sigma 1 - 1e-6, then 0).
        face_window: ``(start, end)``: the face tokens are given on solver steps ``i`` (0-based, of ``steps``) with
            ``start <= i / steps < end``; outside, the face pass takes ``negative_face_tokens`` (and is merged with
            the text pass: no extra evaluation). ``0 <= start <= end <= 1``; default ``(0, 1)``: every step.
        batch_guidance: run the guidance passes of a step as one forward on the concatenated batch (faster on a
            device with spare parallelism; equal to separate passes within fp32 rounding).
        cache_threshold: First-Block-Cache threshold (``cofe_dit.StepCache``): skip the blocks after the first
            when the first block's residual changed by less than this, relative L1. 0 (default): off.
    """

    steps: int = 50
    shift: float = 5.0
    solver: Solver = "unipc"
    text_scale: float = 5.0
    face_scale: float = 1.0
    schedule: Schedule = "wan"
    face_window: tuple[float, float] = (0.0, 1.0)
    batch_guidance: bool = False
    cache_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {SOLVERS}")
        if self.schedule not in ("wan", "diffusers"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose 'wan' or 'diffusers'")
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, got {self.shift}")
        window = tuple(self.face_window)
        if len(window) != 2 or not all(isinstance(v, (int, float)) for v in window):
            raise ValueError(f"face_window must be (start, end), two numbers; got {self.face_window!r}")
        start, end = float(window[0]), float(window[1])
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"face_window must satisfy 0 <= start <= end <= 1, got ({start}, {end})")
        object.__setattr__(self, "face_window", (start, end))  # a list from YAML becomes the tuple
        if not math.isfinite(self.cache_threshold) or self.cache_threshold < 0:
            raise ValueError(f"cache_threshold must be finite and >= 0 (0 = off), got {self.cache_threshold}")

    @classmethod
    def from_defaults(cls, defaults: SamplingDefaults | DiTConfig, **overrides: Any) -> SamplerConfig:
        """A config from a preset's ``SamplingDefaults`` (or a ``DiTConfig``, using its ``sampling``), with overrides.

        Example:
            >>> SamplerConfig.from_defaults(DiTConfig.from_name("wan2.1-i2v-14b"), steps=20).shift
            3.0
        """
        if isinstance(defaults, DiTConfig):
            defaults = defaults.sampling
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown SamplerConfig fields {unknown}; known: {sorted(known)}")
        base = dict(steps=defaults.steps, shift=defaults.shift, solver=defaults.solver, text_scale=defaults.text_scale)
        return cls(**{**base, **overrides})

    def sigmas(self) -> list[float]:
        """The ``steps + 1`` sigmas this config integrates over."""
        return sigma_schedule(self.steps, self.shift, schedule=self.schedule).tolist()


def sigma_schedule(steps: int, shift: float, *, schedule: Schedule = "wan", num_train_timesteps: int = 1000) -> Tensor:
    """``steps + 1`` decreasing sigmas ending at 0, fp64.

    ``wan``: ``shift(linspace(1 - 1/T, 0, steps + 1))``: Wan's ``FlowUniPCMultistepScheduler``. Its ``sigma_max``
    is the largest training sigma ``1 - 1/T`` (read back from fp32, so with fp32 rounding); ``set_timesteps`` takes
    ``linspace(sigma_max, 0, steps + 1)[:-1]``, shifts it and appends 0. ``diffusers``: diffusers'
    ``UniPCMultistepScheduler(use_flow_sigmas=True)``: ``shift(linspace(1, 1/T, steps + 1)[:-1])``, the first sigma
    lowered by 1e-6 off 1, then 0. The two differ by 1/T in unshifted sigma.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = num_train_timesteps
    # numpy's linspace, as both Wan and diffusers use: torch.linspace rounds differently in the last bit, which can
    # move int(sigma * 1000) across an integer.
    if schedule == "wan":
        # Wan reads sigma_max back from an fp32 tensor (`self.sigmas[0].item()`), hence the fp32 rounding of 1 - 1/T.
        sigma_max = float(np.float32(1.0 - 1.0 / t))
        return shift_sigmas(torch.from_numpy(np.linspace(sigma_max, 0.0, steps + 1)), shift)
    if schedule == "diffusers":
        s = shift_sigmas(torch.from_numpy(np.linspace(1.0, 1.0 / t, steps + 1)[:-1].copy()), shift)
        if abs(float(s[0]) - 1) < 1e-6:
            s[0] -= 1e-6  # as diffusers: keeps log(alpha) finite at the first step
        return torch.cat([s, torch.zeros(1, dtype=torch.float64)])
    raise ValueError(f"unknown schedule {schedule!r}; choose 'wan' or 'diffusers'")


def model_timestep(sigma: float, num_train_timesteps: int = 1000) -> float:
    """The timestep Wan gives the model at ``sigma``: ``int(sigma * T)`` (truncation, as the int64 cast)."""
    return float(int(sigma * num_train_timesteps))


class _Pass(NamedTuple):
    """One model evaluation of a guidance step: its name, weight in the sum and inputs."""

    key: str
    weight: float
    context: Tensor
    faces: Sequence[Tensor | None] | None
    scale: float | list[float]  # DiT.forward's face_scale


class GuidedVelocity:
    """Callable ``(x, sigma) -> guided velocity`` that wraps a DiT and its conditions (see the module docstring).

    Args:
        model: the DiT.
        context: ``(B, T, text_dim)`` embedded prompt.
        negative_context: embedded negative prompt (needed when ``text_scale != 1``).
        face_tokens: per-block face tokens, or None.
        cond, clip_tokens: Wan 2.1 I2V conditioning.
        text_scale, face_scale: guidance scales.
        first_frame: Wan 2.2 TI2V given leading latent frame(s) (their tokens see timestep 0).
        negative_face_tokens: the face-unconditional tokens (None: the face branch off).
        sigmas: the sampling schedule (``steps + 1`` values); tells which step a call belongs to. Needed by
            ``face_window`` (other than the default) and ``step_cache``.
        face_window: ``(start, end)``, see ``SamplerConfig.face_window``.
        face_branch_scale: ``DiT.forward``'s ``face_scale`` on the pass carrying ``face_tokens`` (one float, or one
            per block).
        batch_guidance: run the passes of a call as one forward on the concatenated batch.
        step_cache: a ``StepCache`` to reuse blocks across steps (one stream per pass).

    Attributes:
        evaluations: model forward passes made so far (a batched call counts once).
        weights: ``{"neg": w, "text": w, "full": w}``: the nonzero weights of v(-,-), v(text,-), v(text,face).
    """

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
        sigmas: Sequence[float] | None = None,
        face_window: tuple[float, float] = (0.0, 1.0),
        face_branch_scale: float | Sequence[float] = 1.0,
        batch_guidance: bool = False,
        step_cache: StepCache | None = None,
    ):
        s_t, s_f = float(text_scale), float(face_scale)
        if face_tokens is None:
            s_f = s_t  # no face condition: v(text, face) is v(text, -), so only the text terms remain
        weights = {"neg": 1.0 - s_t, "text": s_t - s_f, "full": s_f}
        self.weights = {k: w for k, w in weights.items() if w != 0.0}
        if "neg" in self.weights and negative_context is None:
            raise ValueError(f"text_scale={text_scale} needs negative_context (the embedded negative prompt)")
        self.model = model
        self.context, self.negative_context = context, negative_context
        self.face_tokens, self.cond, self.clip_tokens = face_tokens, cond, clip_tokens
        self.text_scale, self.face_scale = text_scale, face_scale
        self.first_frame = first_frame
        self.negative_face_tokens = negative_face_tokens
        self.evaluations = 0

        # Steps: the solvers call the velocity once per step at sigmas[i], so the sigma names the step.
        self._step_of = {float(s): i for i, s in enumerate(list(sigmas)[:-1])} if sigmas is not None else None
        self.num_steps = len(self._step_of) if self._step_of is not None else None
        start, end = (float(v) for v in face_window)
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"face_window must satisfy 0 <= start <= end <= 1, got ({start}, {end})")
        self.face_window = (start, end)
        if self.face_window != (0.0, 1.0) and sigmas is None:
            raise ValueError(f"face_window={self.face_window} needs sigmas (the schedule) to know the step")
        if step_cache is not None and sigmas is None:
            raise ValueError("step_cache needs sigmas (the schedule): it never reuses on the first or last step")
        self.step_cache = step_cache
        self.face_branch_scale = self._branch_scale(face_branch_scale)
        self.batch_guidance = bool(batch_guidance)
        self._batched_inputs: dict[tuple[str, ...], tuple] = {}
        if self.batch_guidance:
            self._check_batchable()

    def _branch_scale(self, scale: float | Sequence[float]) -> float | list[float]:
        if isinstance(scale, (int, float)):
            return float(scale)
        scales = [float(s) for s in scale]
        n = self.model.cfg.num_layers
        if len(scales) != n:
            raise ValueError(f"face_branch_scale needs one entry per block ({n}), got {len(scales)}")
        return 1.0 if all(s == 1.0 for s in scales) else scales

    def _check_batchable(self) -> None:
        """The passes concatenate along the batch: their contexts and per-block face tokens must agree in shape."""
        if "neg" in self.weights and self.negative_context.shape != self.context.shape:
            raise ValueError(
                f"batch_guidance concatenates the passes: context {tuple(self.context.shape)} and negative_context "
                f"{tuple(self.negative_context.shape)} must have the same shape (pad the prompts to one length)"
            )
        for i in range(self.model.cfg.num_layers):
            shapes = {
                tuple(tokens[i].shape)
                for tokens in (self.face_tokens, self.negative_face_tokens)
                if tokens is not None and tokens[i] is not None
            }
            if len(shapes) > 1:
                raise ValueError(
                    f"batch_guidance concatenates the passes: face_tokens[{i}] and negative_face_tokens[{i}] must have "
                    f"the same shape, got {sorted(shapes)}"
                )

    def _timestep(self, x: Tensor, sigma: float) -> Tensor:
        t = torch.full((x.shape[0],), model_timestep(sigma, self.model.cfg.num_train_timesteps), device=x.device)
        if self.first_frame is None:
            return t
        pt, ph, pw = self.model.cfg.patch_size
        grid = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)
        return per_token_timesteps(t, grid, given_frames=self.first_frame.shape[2] // pt)  # (B, L)

    def _step(self, sigma: float) -> int | None:
        if self._step_of is None:
            return None
        step = self._step_of.get(float(sigma))
        if step is None:
            raise ValueError(f"sigma {sigma} is not a step of the schedule this GuidedVelocity was given")
        return step

    def face_active(self, step: int | None) -> bool:
        """Whether the face tokens are given on ``step`` (``face_window``); always, when the step is unknown."""
        if step is None or self.face_window == (0.0, 1.0):
            return True
        start, end = self.face_window
        return start <= step / self.num_steps < end

    def passes(self, step: int | None = None) -> list[_Pass]:
        """The model evaluations of ``step``, conditional first (as Wan and diffusers); passes with equal inputs
        (the face pass outside ``face_window`` is the text pass) are merged into one with the summed weight."""
        if self.face_active(step):
            full = ("full", self.context, self.face_tokens, self.face_branch_scale)
        else:
            full = ("text", self.context, self.negative_face_tokens, 1.0)
        inputs = {
            "full": full,
            "text": ("text", self.context, self.negative_face_tokens, 1.0),
            "neg": ("neg", self.negative_context, self.negative_face_tokens, 1.0),
        }
        merged: dict[str, _Pass] = {}
        for term in ("full", "text", "neg"):
            if term in self.weights:
                key, context, faces, scale = inputs[term]
                w = self.weights[term]
                if key in merged:
                    merged[key] = merged[key]._replace(weight=merged[key].weight + w)
                else:
                    merged[key] = _Pass(key, w, context, faces, scale)
        return [p for p in merged.values() if p.weight != 0.0]

    def _run(self, x: Tensor, t: Tensor, p: _Pass) -> Tensor:
        self.evaluations += 1
        extra: dict[str, Any] = {}
        # Only non-default arguments are passed: the default call is the plain DiT forward, argument for argument.
        if p.scale != 1.0:
            extra["face_scale"] = p.scale
        if self.step_cache is not None:
            extra.update(step_cache=self.step_cache, cache_key=p.key)
        return self.model(
            x, t, p.context, cond=self.cond, clip_tokens=self.clip_tokens, face_tokens=p.faces, **extra
        ).float()

    def _batched(self, passes: list[_Pass], batch: int) -> tuple:
        """Concatenated per-pass inputs (built once per set of passes): context, cond, clip tokens, face tokens and
        the per-block face scales (a float when all samples agree, else ``(P * B,)``)."""
        keys = tuple(p.key for p in passes)
        if keys in self._batched_inputs:
            return self._batched_inputs[keys]
        n_pass = len(passes)
        context = torch.cat([p.context for p in passes])  # (P*B, T, text_dim)
        cond = torch.cat([self.cond] * n_pass) if self.cond is not None else None  # (P*B, C', F, H, W)
        clip = torch.cat([self.clip_tokens] * n_pass) if self.clip_tokens is not None else None  # (P*B, I, C)
        faces, scales = None, 1.0
        if any(p.faces is not None for p in passes):
            faces, scales = [], []
            for i in range(self.model.cfg.num_layers):
                column = [p.faces[i] if p.faces is not None else None for p in passes]
                given = [c for c in column if c is not None]
                if not given:
                    faces.append(None)
                    scales.append(1.0)
                    continue
                # None (branch off) -> zero tokens with branch scale 0: out + 0 * branch(0) = out.
                faces.append(torch.cat([c if c is not None else torch.zeros_like(given[0]) for c in column]))
                per_pass = [
                    (p.scale if isinstance(p.scale, float) else p.scale[i]) if c is not None else 0.0
                    for p, c in zip(passes, column, strict=True)
                ]
                if all(s == per_pass[0] for s in per_pass):
                    scales.append(per_pass[0])
                else:  # built on the device by fills: no host-to-device copy
                    device = given[0].device
                    scales.append(torch.cat([torch.full((batch,), s, device=device) for s in per_pass]))  # (P*B,)
        self._batched_inputs[keys] = (context, cond, clip, faces, scales)
        return self._batched_inputs[keys]

    def _run_batched(self, x: Tensor, t: Tensor, passes: list[_Pass]) -> Tensor:
        n_pass = len(passes)
        context, cond, clip, faces, scales = self._batched(passes, x.shape[0])
        extra: dict[str, Any] = {}
        if not (isinstance(scales, float) and scales == 1.0):
            extra["face_scale"] = scales
        if self.step_cache is not None:
            extra.update(step_cache=self.step_cache, cache_key="+".join(p.key for p in passes))
        self.evaluations += 1
        out = self.model(
            torch.cat([x] * n_pass),  # (P*B, C, F, H, W)
            torch.cat([t] * n_pass),  # (P*B,) | (P*B, L)
            context,
            cond=cond,
            clip_tokens=clip,
            face_tokens=faces,
            **extra,
        ).float()  # (P*B, C, F, H, W)
        v = None
        for p, chunk in zip(passes, out.chunk(n_pass), strict=True):
            term = p.weight * chunk
            v = term if v is None else v + term
        return v

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        t = self._timestep(x, sigma)
        step = self._step(sigma)
        if self.step_cache is not None:
            self.step_cache.start_step(step, self.num_steps)
        passes = self.passes(step)
        if self.batch_guidance and len(passes) > 1:
            return self._run_batched(x, t, passes)
        v = None
        for p in passes:
            term = p.weight * self._run(x, t, p)
            v = term if v is None else v + term
        return v


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
    sigmas: Sequence[float] | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
    face_branch_scale: float | Sequence[float] = 1.0,
    step_cache: StepCache | None = None,
) -> Tensor:
    """Generate a latent video.

    Args:
        model: the DiT (put it in ``eval()`` mode and on its device first).
        shape: ``(B, C, F, H, W)`` latent shape.
        context: ``(B, T, text_dim)`` embedded prompt.
        config: steps, shift, solver, schedule and guidance scales (default ``SamplerConfig()``; use
            ``SamplerConfig.from_defaults(model.cfg)`` for the preset's Wan defaults).
        seed: seeds a CPU generator for the initial noise (ignored when ``generator`` or ``noise`` is given).
        negative_context: embedded negative prompt, needed when ``text_scale != 1``.
        face_tokens: per-block face tokens (models with a face branch).
        cond, clip_tokens: Wan 2.1 I2V conditioning (``i2v_condition`` and CLIP image tokens).
        first_frame: ``(B, C, k, H, W)`` clean leading latent frame(s) (Wan 2.2 TI2V); kept fixed, timestep 0.
        negative_face_tokens: the face-unconditional tokens (default None: the face branch off).
        noise: explicit initial noise of ``shape``.
        sigmas: explicit decreasing noise levels (overrides the config's steps, shift and schedule).
        callback: ``callback(step, x)`` after every step.
        face_branch_scale: strength of the face branch, ``DiT.forward(..., face_scale=)`` on the pass that carries
            ``face_tokens``: one float, or one per block (1.0: unscaled).
        step_cache: the ``StepCache`` to use (e.g. to read its ``cached`` / ``computed`` counts afterwards; it is
            reset first). Default: one built from ``config.cache_threshold`` when that is > 0.

    Returns:
        ``(B, C, F, H, W)`` fp32 latent.
    """
    config = config or SamplerConfig()
    if step_cache is None and config.cache_threshold > 0:
        step_cache = StepCache(config.cache_threshold)
    elif step_cache is not None and config.cache_threshold not in (0.0, step_cache.threshold):
        raise ValueError(
            f"step_cache has threshold {step_cache.threshold} but config.cache_threshold is {config.cache_threshold}"
        )
    if step_cache is not None:
        step_cache.reset()
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
    sigmas = list(sigmas) if sigmas is not None else config.sigmas()
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
        sigmas=sigmas,
        face_window=config.face_window,
        face_branch_scale=face_branch_scale,
        batch_guidance=config.batch_guidance,
        step_cache=step_cache,
    )

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
    solver: str = "unipc",
    *,
    project: Callable[[Tensor], Tensor] | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Integrate the flow ODE ``dx/dsigma = v(x, sigma)`` from ``sigmas[0]`` down to ``sigmas[-1]``.

    Args:
        velocity: ``(x, sigma) -> v``; called once per step.
        x: the start (noise at ``sigmas[0]``).
        sigmas: strictly decreasing noise levels in ``[0, 1]`` (UniPC needs ``sigmas[0] < 1``).
        solver: ``unipc``, ``euler`` or ``dpmpp_2m``.
        project: applied to every new state (e.g. re-impose a given first frame); the solvers act elementwise, so
            projected entries do not influence the others.
        callback: ``callback(step, x)`` after every step.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    sigmas = [float(s) for s in sigmas]
    if len(sigmas) < 2:
        raise ValueError(f"need at least 2 sigmas (one step), got {len(sigmas)}")
    if any(b >= a for a, b in itertools.pairwise(sigmas)) or sigmas[-1] < 0 or sigmas[0] > 1:
        raise ValueError(f"sigmas must decrease strictly within [0, 1], got {sigmas[:3]} ... {sigmas[-2:]}")
    project = project or (lambda z: z)
    x = project(x)
    if solver == "unipc":
        return _UniPC(sigmas).run(velocity, x, project, callback)
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


class _UniPC:
    """UniPC multistep solver in data prediction, B(h) = e^h - 1 ("bh2"), order 2, first order on the first step
    (no history) and on the last (``lower_order_final``): Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector
    Framework for Fast Sampling of Diffusion Models", Algorithms 2-3 (UniP-p and UniC-p), with the flow-matching
    parameterisation alpha = 1 - sigma and x0 = x - sigma * v that Wan's ``FlowUniPCMultistepScheduler`` uses.

    With lambda = log(alpha / sigma) and h = lambda_t - lambda_s, the predictor from (x_s, m_s) is
        x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) m_s - alpha_t B(h) * 1/2 * D1,   D1 = (m_{s-1} - m_s) / r1,
    r1 = (lambda_{s-1} - lambda_s) / h (the D1 term only at order 2). After the model is evaluated at x_t (giving
    m_t), the corrector recomputes x_t with the new slope, at no extra evaluation:
        x_t^c = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) m_s - alpha_t B(h) (rho_1 D1 + rho_2 (m_t - m_s)),
    with rho = 1/2 at order 1 and, at order 2, rho solving [[1, 1], [r1, 1]] rho = [g_1, 2 g_2] / B(h) where
    g_1 = phi_1(-h) - 1, g_2 = g_1 / (-h) - 1/2 and phi_1(z) = (e^z - 1) / z. Model outputs are taken at the
    *predicted* x_t; the next predictor starts from the corrected x_t^c. Coefficients are computed in fp64.
    """

    def __init__(self, sigmas: list[float]):
        if sigmas[0] >= 1:
            raise ValueError(
                f"UniPC needs sigmas[0] < 1 (log-SNR is -inf at sigma = 1), got {sigmas[0]}; Wan's schedule starts "
                "at shift(1 - 1/1000) (sigma_schedule)"
            )
        self.sigmas = sigmas
        self.lam = [_lambda(s) for s in sigmas]
        n = len(sigmas) - 1
        # Predictor order per step: warm-up (1 on step 0), lower order on the final step, 2 elsewhere.
        self.orders = [min(2, n - i, i + 1) for i in range(n)]

    def _coeffs(self, i: int) -> tuple[float, float, float, float]:
        """For the step sigma_i -> sigma_{i+1}: (sigma_t / sigma_s, alpha_t, h, B(h) = expm1(-h))."""
        s, t = self.sigmas[i], self.sigmas[i + 1]
        h = self.lam[i + 1] - self.lam[i]
        return t / s, 1.0 - t, h, math.expm1(-h)

    def _predict(self, x: Tensor, m: Tensor, m_prev: Tensor | None, i: int) -> Tensor:
        ratio, alpha_t, h, bh = self._coeffs(i)
        out = ratio * x - (alpha_t * bh) * m  # h * phi_1 = expm1(-h) = B(h) for bh2
        if self.orders[i] == 2:
            r1 = (self.lam[i - 1] - self.lam[i]) / h
            out = out - (alpha_t * bh * 0.5 / r1) * (m_prev - m)
        return out

    def _correct(self, x_prev: Tensor, m_s: Tensor, m_t: Tensor, m_prev: Tensor | None, i: int) -> Tensor:
        """Correct x_{i+1} given the model output m_t there; x_prev, m_s are the step's start, order that of step i."""
        ratio, alpha_t, h, bh = self._coeffs(i)
        base = ratio * x_prev - (alpha_t * bh) * m_s
        if self.orders[i] == 1:
            return base - (alpha_t * bh * 0.5) * (m_t - m_s)
        r1 = (self.lam[i - 1] - self.lam[i]) / h
        hh = -h
        g1 = bh / hh - 1.0
        g2 = g1 / hh - 0.5
        b1, b2 = g1 / bh, 2.0 * g2 / bh
        rho1 = (b1 - b2) / (1.0 - r1)  # solves rho1 + rho2 = b1, r1 rho1 + rho2 = b2
        rho2 = b1 - rho1
        return base - (alpha_t * bh) * ((rho1 / r1) * (m_prev - m_s) + rho2 * (m_t - m_s))

    def run(self, velocity, x: Tensor, project, callback) -> Tensor:
        sigmas = self.sigmas
        m_hist: list[Tensor] = []  # data predictions m_0, m_1, ... (only the last three are kept)
        x_start = x  # start of the current step (corrected)
        for i in range(len(sigmas) - 1):
            m = x - sigmas[i] * velocity(x, sigmas[i])  # data prediction at the predicted (uncorrected) x_i
            if i > 0:  # UniC: correct x_i with its own slope, then step from the corrected state
                m_prev = m_hist[-2] if self.orders[i - 1] == 2 else None
                x = project(self._correct(x_start, m_hist[-1], m, m_prev, i - 1))
            m_hist = [*m_hist[-2:], m]
            x_start = x
            x = project(self._predict(x, m, m_hist[-2] if self.orders[i] == 2 else None, i))
            if callback is not None:
                callback(i, x)
        return x


def _dpmpp_2m_step(x: Tensor, x0: Tensor, prev_x0: Tensor | None, sigmas: list[float], i: int) -> Tensor:
    """One DPM-Solver++(2M) step from ``sigmas[i]`` to ``sigmas[i+1]`` (Lu et al. 2022, Algorithm 2).

    First order on the first step (no history; log-SNR may start at -inf) and on the last (to sigma 0, where the
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
