"""A Wan 2.1 / 2.2 compatible video diffusion transformer with flow matching.

Example:
    >>> import torch
    >>> from cofe_dit import DiT, DiTConfig, SamplerConfig, sample
    >>> model = DiT(DiTConfig.from_name("tiny")).eval()
    >>> ctx = torch.randn(1, 8, model.cfg.text_dim)
    >>> config = SamplerConfig.from_defaults(model.cfg, steps=2, text_scale=1.0)
    >>> latent = sample(model, (1, 4, 3, 8, 8), ctx, config=config, seed=0)
    >>> latent.shape
    torch.Size([1, 4, 3, 8, 8])
"""

from cofe_dit.checkpoint import (
    CheckpointError,
    LoadReport,
    from_pretrained,
    load_into,
    read_state_dict,
    resolve_config,
    save,
)
from cofe_dit.config import (
    PRESETS,
    WAN_I2V_NEGATIVE_PROMPT,
    WAN_NEGATIVE_PROMPT,
    DiTConfig,
    SamplingDefaults,
    best_output_size,
    output_size,
    preset_for,
)
from cofe_dit.flow import FlowMatching, add_noise, first_frame_mask, i2v_condition, per_token_timesteps, shift_sigmas
from cofe_dit.model import (
    ATTENTION_BACKENDS,
    DEBUG_CHECKS_ENV,
    DiT,
    DiTBlock,
    is_fp32_parameter,
    materialize,
    set_attention_backend,
)
from cofe_dit.sampling import GuidedVelocity, SamplerConfig, model_timestep, sample, sigma_schedule, solve
from cofe_dit.step_cache import StepCache

__version__ = "0.3.0"

__all__ = [
    "ATTENTION_BACKENDS",
    "DEBUG_CHECKS_ENV",
    "PRESETS",
    "WAN_I2V_NEGATIVE_PROMPT",
    "WAN_NEGATIVE_PROMPT",
    "CheckpointError",
    "DiT",
    "DiTBlock",
    "DiTConfig",
    "FlowMatching",
    "GuidedVelocity",
    "LoadReport",
    "SamplerConfig",
    "SamplingDefaults",
    "StepCache",
    "add_noise",
    "best_output_size",
    "first_frame_mask",
    "from_pretrained",
    "i2v_condition",
    "is_fp32_parameter",
    "load_into",
    "materialize",
    "model_timestep",
    "output_size",
    "per_token_timesteps",
    "preset_for",
    "read_state_dict",
    "resolve_config",
    "sample",
    "save",
    "set_attention_backend",
    "shift_sigmas",
    "sigma_schedule",
    "solve",
]
