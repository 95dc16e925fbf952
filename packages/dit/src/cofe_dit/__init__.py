"""A Wan 2.1 / 2.2 compatible video diffusion transformer with flow matching.

Example:
    >>> import torch
    >>> from cofe_dit import DiT, DiTConfig, SamplerConfig, sample
    >>> model = DiT(DiTConfig.from_name("tiny")).eval()
    >>> ctx = torch.randn(1, 8, model.cfg.text_dim)
    >>> latent = sample(model, (1, 4, 3, 8, 8), ctx, config=SamplerConfig(steps=2, text_scale=1.0), seed=0)
    >>> latent.shape
    torch.Size([1, 4, 3, 8, 8])
"""

from cofe_dit.checkpoint import CheckpointError, LoadReport, from_pretrained, load_into, read_state_dict, save
from cofe_dit.config import PRESETS, DiTConfig
from cofe_dit.flow import FlowMatching, add_noise, first_frame_mask, i2v_condition, per_token_timesteps, shift_sigmas
from cofe_dit.model import DiT, DiTBlock
from cofe_dit.sampling import GuidedVelocity, SamplerConfig, sample, sigma_schedule, solve

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CheckpointError",
    "DiT",
    "DiTBlock",
    "DiTConfig",
    "FlowMatching",
    "GuidedVelocity",
    "LoadReport",
    "SamplerConfig",
    "add_noise",
    "first_frame_mask",
    "from_pretrained",
    "i2v_condition",
    "load_into",
    "per_token_timesteps",
    "read_state_dict",
    "sample",
    "save",
    "shift_sigmas",
    "sigma_schedule",
    "solve",
]
