"""Sampling parity with diffusers' Wan pipelines on tiny random models converted with our key mapping.

Same noise (``latents=``), prompt states (``prompt_embeds=``, ``negative_prompt_embeds=``), sigmas (diffusers' flow
UniPC schedule, ``SamplerConfig(schedule="diffusers")``) and guidance give the same latent (``output_type="latent"``).
What differs: nothing in the algorithm. The residue (~1e-6 relative) is arithmetic: diffusers computes the UniPC
coefficients from fp32 sigmas, we from fp64, and the guidance is summed in another order. diffusers' default
schedule is not Wan's own (it starts 1/1000 higher in unshifted sigma), hence the explicit schedule here.
"""

import numpy as np
import pytest
import torch

from cofe_dit import SamplerConfig, from_pretrained, i2v_condition, sample

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5  # max relative difference of the final latent

BASE = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    text_dim=16,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)


def _transformer(tmp_path, seed=0, **cfg):
    torch.manual_seed(seed)
    ref = diffusers.WanTransformer3DModel(**{**BASE, **cfg}).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(centre + 0.2 * torch.randn(p.shape, generator=g))
    ref.save_pretrained(tmp_path)
    return ref, from_pretrained(tmp_path).eval()


def _scheduler(shift):
    return diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=2,
        solver_type="bh2",
        lower_order_final=True,
    )


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_t2v_sampling_matches_wan_pipeline(tmp_path):
    ref, model = _transformer(tmp_path, in_channels=4, out_channels=4)
    sched = _scheduler(3.0)
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=sched, transformer=ref)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 3, 4, 4, generator=g)
    pos, neg = torch.randn(1, 7, 16, generator=g), torch.randn(1, 7, 16, generator=g)
    seen = []
    ref.register_forward_pre_hook(lambda m, a, k: seen.append(k["timestep"].clone()), with_kwargs=True)
    expected = pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=8,
        guidance_scale=4.0,
        latents=latents.clone(),
        output_type="latent",
        return_dict=False,
    )[0]
    ours_t = []
    model.register_forward_pre_hook(lambda m, a: ours_t.append(a[1].clone()))
    config = SamplerConfig(steps=8, shift=3.0, text_scale=4.0, schedule="diffusers")
    got = sample(model, tuple(latents.shape), pos, negative_context=neg, noise=latents.clone(), config=config)
    assert _rel(got, expected) <= TOL
    # The model saw the same integer timesteps, conditional pass first.
    assert [float(t[0]) for t in ours_t] == [float(t[0]) for t in seen]


def test_i2v_sampling_matches_wan_image_to_video_pipeline(tmp_path):
    """Wan 2.1 I2V: the condition is our i2v_condition of the VAE latent of [image, zero frames], as diffusers'
    (and Wan's) pipeline builds it; CLIP tokens from the same (tiny, random) image encoder."""
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    ref, model = _transformer(tmp_path, seed=2, in_channels=12, out_channels=4, image_dim=24, added_kv_proj_dim=32)
    vae = diffusers.AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 0.5, 2.0, 1.0],
    ).eval()
    clip_cfg = transformers.CLIPVisionConfig(
        hidden_size=24, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    pipe = diffusers.WanImageToVideoPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=vae,
        scheduler=_scheduler(3.0),
        image_processor=transformers.CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32}),
        image_encoder=transformers.CLIPVisionModel(clip_cfg).eval(),
        transformer=ref,
    )
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8"))
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 4, 3, 4, 4, generator=g)
    # diffusers takes the image tokens as "everything before the last 512 text tokens".
    pos, neg = torch.randn(1, 512, 16, generator=g), torch.randn(1, 512, 16, generator=g)
    expected = pipe(
        image=image,
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=6,
        guidance_scale=4.0,
        latents=latents.clone(),
        output_type="latent",
        return_dict=False,
    )[0]
    with torch.no_grad():
        clip_tokens = pipe.encode_image(image, torch.device("cpu"))  # CLIP penultimate layer
        pixels = pipe.video_processor.preprocess(image, height=32, width=32)  # (1, 3, 32, 32) in [-1, 1]
        clip = torch.cat([pixels[:, :, None], torch.zeros(1, 3, 8, 32, 32)], dim=2)  # [image, 8 zero frames]
        z = vae.encode(clip).latent_dist.mode()  # (1, 4, 3, 4, 4)
        mean = torch.tensor(vae.config.latents_mean).view(1, 4, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, 4, 1, 1, 1)
        z = (z - mean) / std
        cond = i2v_condition(z, num_frames=3)
    # Zero latents are not the encoding of zero frames: padding the image's latent with zeros would be wrong.
    assert z[:, :, 1:].abs().max() > 0.1
    config = SamplerConfig(steps=6, shift=3.0, text_scale=4.0, schedule="diffusers")
    got = sample(
        model, tuple(latents.shape), pos, negative_context=neg, noise=latents.clone(), cond=cond,
        clip_tokens=clip_tokens, config=config,
    )  # fmt: skip
    assert _rel(got, expected) <= TOL


def test_ti2v_sampling_matches_wan22_image_to_video_pipeline(tmp_path):
    """Wan 2.2 TI2V (expand_timesteps): the image latent is the clean first frame, its tokens at timestep 0."""
    from PIL import Image

    ref, model = _transformer(tmp_path, seed=4, in_channels=48, out_channels=48)
    assert model.cfg.model_type == "ti2v" and model.cfg.vae_stride == (4, 16, 16)
    vae = diffusers.AutoencoderKLWan(
        base_dim=16,
        decoder_base_dim=16,
        z_dim=48,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        latents_mean=[0.0] * 48,
        latents_std=[1.0] * 48,
    ).eval()
    pipe = diffusers.WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=_scheduler(5.0), transformer=ref, expand_timesteps=True
    )
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype("uint8"))
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(1, 48, 3, 4, 4, generator=g)
    pos, neg = torch.randn(1, 7, 16, generator=g), torch.randn(1, 7, 16, generator=g)
    expected = pipe(
        image=image,
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=6,
        guidance_scale=4.0,
        latents=latents.clone(),
        output_type="latent",
        return_dict=False,
    )[0]
    with torch.no_grad():
        pixels = pipe.video_processor.preprocess(image, height=64, width=64)
        first = vae.encode(pixels[:, :, None]).latent_dist.mode()  # (1, 48, 1, 4, 4)
    config = SamplerConfig(steps=6, shift=5.0, text_scale=4.0, schedule="diffusers")
    got = sample(
        model, tuple(latents.shape), pos, negative_context=neg, noise=latents.clone(), first_frame=first, config=config
    )
    assert _rel(got, expected) <= TOL
