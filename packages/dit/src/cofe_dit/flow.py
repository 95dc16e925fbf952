"""Flow matching (rectified flow) for the DiT: noising, training target and loss, timestep sampling with Wan's shift.

Convention (Wan, SD3): ``x_sigma = (1 - sigma) * x0 + sigma * noise`` for ``sigma in [0, 1]``; the model predicts
the velocity ``v = noise - x0`` and sees ``timestep = sigma * 1000``. The shift
``sigma' = s * sigma / (1 + (s - 1) * sigma)`` (Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 23)
spends more steps at high noise; Wan samples with s = 5 (T2V) or 3 (480p I2V).
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class FlowMatching:
    """Training-side rectified flow.

    Attributes:
        shift: Wan shift applied to sampled sigmas.
        sampling: ``uniform`` sigma ~ U(0, 1), or ``logit_normal`` sigma = sigmoid(N(mean, std)) (SD3).
        logit_mean, logit_std: parameters of the logit-normal density.
        num_train_timesteps: the model sees ``sigma * num_train_timesteps``.
    """

    shift: float = 5.0
    sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    num_train_timesteps: int = 1000

    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Draw ``(batch,)`` training sigmas, shifted."""
        if self.sampling == "uniform":
            u = torch.rand(batch, generator=generator, device=device)
        elif self.sampling == "logit_normal":
            u = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(batch, generator=generator, device=device))
        else:
            raise ValueError(f"unknown sigma sampling {self.sampling!r}")
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


def i2v_condition(video_latent: Tensor, num_frames: int, temporal_stride: int = 4) -> Tensor:
    """Wan 2.1 I2V channel conditioning: 4 mask channels + the latent of the conditioning video.

    Wan's mask marks the first *pixel* frame as known; the VAE folds ``temporal_stride`` pixel frames into each
    latent frame after the first, so the mask is stored as ``temporal_stride`` channels per latent frame.

    Args:
        video_latent: ``(B, C, F, H, W)``: as in Wan, the VAE encoding of the first frame followed by zero frames;
            or ``(B, C, 1, H, W)``, which is padded with zero latent frames.
        num_frames: latent frames ``F``.

    Returns:
        ``(B, temporal_stride + C, F, H, W)``.
    """
    first_latent = video_latent
    b, c, given, h, w = first_latent.shape
    if given not in (1, num_frames):
        raise ValueError(f"video_latent has {given} frames; expected 1 or {num_frames}")
    mask = torch.zeros(b, temporal_stride, num_frames, h, w, device=first_latent.device, dtype=first_latent.dtype)
    mask[:, :, 0] = 1
    video = torch.zeros(b, c, num_frames, h, w, device=first_latent.device, dtype=first_latent.dtype)
    video[:, :, :given] = first_latent
    return torch.cat([mask, video], dim=1)
