"""Flow matching (rectified flow) for the DiT: noising, training target and loss, timestep sampling with Wan's shift.

Convention (Wan, SD3): ``x_sigma = (1 - sigma) * x0 + sigma * noise`` for ``sigma in [0, 1]``; the model predicts
the velocity ``v = noise - x0`` and sees ``timestep = sigma * 1000``. The shift
``sigma' = s * sigma / (1 + (s - 1) * sigma)`` (Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 23)
spends more steps at high noise; Wan samples with s = 5 (T2V, TI2V, 720p I2V) or 3 (480p I2V).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


def shift_sigmas(sigma: Tensor, shift: float) -> Tensor:
    """Apply the timestep shift ``s * sigma / (1 + (s - 1) * sigma)``; ``shift=1`` is the identity."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def add_noise(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """``(1 - sigma) x0 + sigma noise``, with ``sigma`` of shape ``(B,)`` broadcast over ``(B, ...)``."""
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """The rectified-flow regression target ``noise - x0``."""
    return noise - x0


def unshift_sigmas(sigma: Tensor | float, shift: float):
    """The inverse of ``shift_sigmas``: ``sigma / (s - (s - 1) * sigma)``."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return sigma / (shift - (shift - 1) * sigma)


@dataclass(frozen=True)
class FlowMatching:
    """Training-side rectified flow.

    Training sigmas are drawn as ``sigma = shift(u)`` with ``u ~ U(0, 1)`` (``uniform``, the default) or
    ``u = sigmoid(N(logit_mean, logit_std))`` (``logit_normal``, SD3's density). The default, uniform + shift 5, is
    the scheme of DiffSynth-Studio's Wan training (the fine-tuning code the Wan README points to):
    ``FlowMatchScheduler("Wan")`` builds ``shift(linspace(1, 0, 1001)[:-1])`` with shift 5 and ``FlowMatchSFTLoss``
    draws ``timestep_id = randint(0, 1000)`` uniformly from it (``diffsynth/diffusion/flow_match.py``,
    ``loss.py``); DiffSynth then also weights the loss with a bell curve over the timestep
    (``exp(-2 ((t - 500) / 1000)^2)`` shifted to zero at its minimum), which this class does not. Other evidence:
    musubi-tuner's Wan recipes use ``--timestep_sampling shift --discrete_flow_shift 3.0``, i.e. logit-normal(0, 1)
    + shift 3.

    The distribution each choice gives (``cdf`` and ``median`` compute these exactly):

        sampling       shift   median sigma   P(sigma < 0.3)
        uniform        1       0.50           30.0%
        uniform        3       0.75           12.5%
        uniform        5       0.83            7.9%   <- default (DiffSynth-Studio, Wan)
        logit_normal   1       0.50           19.8%
        logit_normal   3       0.75            2.6%   (musubi-tuner's Wan recipe)
        logit_normal   5       0.83            0.7%

    Low sigmas (little noise) are where fine detail such as facial identity is refined; logit-normal + shift
    almost never trains them.

    Attributes:
        shift: Wan shift applied to sampled sigmas.
        sampling: ``uniform`` or ``logit_normal``.
        logit_mean, logit_std: parameters of the logit-normal density.
        num_train_timesteps: the model sees ``sigma * num_train_timesteps``.
    """

    shift: float = 5.0
    sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, got {self.shift}")
        if self.sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"unknown sigma sampling {self.sampling!r}; choose 'uniform' or 'logit_normal'")
        if self.logit_std <= 0:
            raise ValueError(f"logit_std must be positive, got {self.logit_std}")

    def cdf(self, sigma: float) -> float:
        """``P(training sigma <= sigma)``, exactly."""
        if sigma <= 0:
            return 0.0
        if sigma >= 1:
            return 1.0
        u = float(unshift_sigmas(sigma, self.shift))
        if self.sampling == "uniform":
            return u
        z = (math.log(u / (1 - u)) - self.logit_mean) / self.logit_std
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    def median(self) -> float:
        """The median training sigma."""
        u = 0.5 if self.sampling == "uniform" else 1 / (1 + math.exp(-self.logit_mean))
        return float(shift_sigmas(torch.tensor(u, dtype=torch.float64), self.shift))

    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Draw ``(batch,)`` training sigmas, shifted."""
        if self.sampling == "uniform":
            u = torch.rand(batch, generator=generator, device=device)
        else:
            u = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(batch, generator=generator, device=device))
        return shift_sigmas(u, self.shift)

    def timesteps(self, sigma: Tensor) -> Tensor:
        return sigma * self.num_train_timesteps

    def prepare(self, x0: Tensor, sigma: Tensor, noise: Tensor | None = None, generator=None):
        """Noisy input, model timestep and target for a batch of clean latents ``x0 (B, C, F, H, W)``.

        Returns:
            ``(x_t, timestep (B,), target)``.
        """
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return add_noise(x0, noise, sigma), self.timesteps(sigma), velocity_target(x0, noise)

    @staticmethod
    def loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean squared error in fp32; ``mask`` (broadcastable to ``pred``, 1 = counts) excludes given frames.

        Raises:
            ValueError: on mismatched shapes or a non-finite prediction (names which).
        """
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        err = (pred.float() - target.float()) ** 2
        if mask is None:
            return err.mean()
        mask = mask.to(err.dtype).expand_as(err)
        denom = mask.sum()
        if denom == 0:
            raise ValueError("loss mask selects no element")
        return (err * mask).sum() / denom


def first_frame_mask(shape: tuple[int, ...], num_frames: int = 1, device=None) -> Tensor:
    """``(B, 1, F, H, W)`` mask that is 0 on the first ``num_frames`` latent frames (given) and 1 elsewhere."""
    b, _, f, h, w = shape
    mask = torch.ones(b, 1, f, h, w, device=device)
    mask[:, :, :num_frames] = 0
    return mask


def per_token_timesteps(timestep: Tensor, grid: tuple[int, int, int], given_frames: int = 1) -> Tensor:
    """Wan 2.2 TI2V timesteps: ``(B,) -> (B, L)`` with the tokens of the given first latent frame(s) at 0.

    Args:
        timestep: ``(B,)``.
        grid: token grid ``(F', H', W')`` (latent size divided by the patch).
        given_frames: how many leading token frames are clean.
    """
    f, h, w = grid
    t = timestep[:, None, None, None].expand(-1, f, h, w).clone()  # (B, F', H', W')
    t[:, :given_frames] = 0
    return t.flatten(1)  # (B, L)


def i2v_condition(video_latent: Tensor, num_frames: int | None = None, temporal_stride: int = 4) -> Tensor:
    """Wan 2.1 I2V channel conditioning: 4 mask channels + the VAE latent of the conditioning clip.

    Wan builds it in ``image2video.py`` (``WanI2V.generate``): the pixel clip is ``[first frame, zeros x (N - 1)]``
    (N pixel frames, ``N = (F - 1) * temporal_stride + 1``), VAE-encoded whole (not a latent of the first frame
    padded with zero latents: the VAE's encoding of zero frames is not zero); the pixel mask is 1 on frame 0 and 0
    after, its first entry is repeated ``temporal_stride`` times (the VAE folds the first frame alone into latent
    frame 0) and the ``F * temporal_stride`` values are reshaped into ``temporal_stride`` channels per latent frame.

    Args:
        video_latent: ``(B, C, F, H, W)`` VAE latent (normalised as the DiT sees latents) of the whole pixel clip.
        num_frames: latent frames ``F`` expected (optional check).
        temporal_stride: the VAE's temporal compression (4 for Wan 2.1).

    Returns:
        ``(B, temporal_stride + C, F, H, W)``: mask channels, then the latent.

    Raises:
        ValueError: on a 1-frame latent (the first frame encoded alone) or a frame count other than ``num_frames``.
    """
    if video_latent.ndim != 5:
        raise ValueError(f"video_latent must be (B, C, F, H, W), got shape {tuple(video_latent.shape)}")
    b, _, f, h, w = video_latent.shape
    if f == 1 and num_frames != 1:
        raise ValueError(
            f"i2v_condition got a 1-frame latent {tuple(video_latent.shape)}: Wan conditions on the VAE latent of "
            "the whole pixel clip [first frame, zero frames] (N pixel frames -> (N - 1) // 4 + 1 latent frames), "
            "not on the first frame encoded alone; encode that clip and pass its latent"
        )
    if num_frames is not None and f != num_frames:
        raise ValueError(f"video_latent has {f} latent frames; expected {num_frames}")
    pixel = torch.zeros(b, (f - 1) * temporal_stride + 1, h, w, device=video_latent.device, dtype=video_latent.dtype)
    pixel[:, 0] = 1  # (B, N, H, W): the first pixel frame is known
    mask = torch.cat([pixel[:, :1].repeat_interleave(temporal_stride, dim=1), pixel[:, 1:]], dim=1)  # (B, F*s, H, W)
    mask = mask.view(b, f, temporal_stride, h, w).transpose(1, 2)  # (B, s, F, H, W)
    return torch.cat([mask, video_latent], dim=1)  # (B, s + C, F, H, W)
