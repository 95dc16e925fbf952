"""Presets carry Wan's sampling defaults; configs round-trip; checkpoint configs get their preset's defaults; Wan's
output-size rules."""

import json

import pytest

from cofe_dit import (
    PRESETS,
    WAN_I2V_NEGATIVE_PROMPT,
    WAN_NEGATIVE_PROMPT,
    DiTConfig,
    SamplingDefaults,
    best_output_size,
    output_size,
    preset_for,
)
from cofe_dit.checkpoint import config_from_diffusers, config_from_wan, infer_config

# wan_shared_cfg.sample_neg_prompt, verbatim from wan/configs/shared_config.py (Wan-Video/Wan2.1 and Wan2.2).
WAN_SHARED_NEG = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)


def test_negative_prompts_are_wans():
    assert WAN_NEGATIVE_PROMPT == WAN_SHARED_NEG
    assert WAN_I2V_NEGATIVE_PROMPT == "镜头晃动，" + WAN_SHARED_NEG
    assert WAN_NEGATIVE_PROMPT.count("，") == 27 and WAN_NEGATIVE_PROMPT.endswith("倒着走")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # (steps, shift, text_scale, solver, fps, num_frames, width, height, size_rule)
        ("wan2.1-t2v-1.3b", (50, 5.0, 5.0, "unipc", 16, 81, 832, 480, "fixed")),
        ("wan2.1-t2v-14b", (50, 5.0, 5.0, "unipc", 16, 81, 1280, 720, "fixed")),
        ("wan2.1-i2v-14b", (40, 3.0, 5.0, "unipc", 16, 81, 832, 480, "wan2.1")),
        ("wan2.1-i2v-14b-720p", (40, 5.0, 5.0, "unipc", 16, 81, 1280, 720, "wan2.1")),
        ("wan2.2-ti2v-5b", (50, 5.0, 5.0, "unipc", 24, 121, 1280, 704, "wan2.2")),
    ],
)
def test_presets_carry_wans_sampling_defaults(name, expected):
    s = DiTConfig.from_name(name).sampling
    got = (s.steps, s.shift, s.text_scale, s.solver, s.fps, s.num_frames, s.width, s.height, s.size_rule)
    assert got == expected
    assert s.negative_prompt == (WAN_I2V_NEGATIVE_PROMPT if name.startswith("wan2.1-i2v") else WAN_NEGATIVE_PROMPT)


def test_every_preset_has_sampling_defaults_and_valid_frame_counts():
    for name, cfg in PRESETS.items():
        assert isinstance(cfg.sampling, SamplingDefaults), name
        assert (cfg.sampling.num_frames - 1) % cfg.vae_stride[0] == 0, name  # 4n + 1 pixel frames
        divisor = cfg.vae_stride[1] * cfg.patch_size[1]
        assert cfg.sampling.width % divisor == 0 and cfg.sampling.height % divisor == 0, name


def test_sampling_round_trips_and_is_overridable():
    cfg = DiTConfig.from_name("wan2.2-ti2v-5b", face_dim=1024)
    data = json.loads(json.dumps(cfg.to_dict(), ensure_ascii=False))
    assert DiTConfig.from_dict(data) == cfg
    custom = cfg.replace(sampling=cfg.sampling.replace(steps=20, negative_prompt=""))
    assert DiTConfig.from_dict(custom.to_dict()).sampling.steps == 20
    with pytest.raises(ValueError, match=r"unknown sampling keys \['stepz'\]"):
        DiTConfig.from_dict({**data, "sampling": {"stepz": 3}})
    with pytest.raises(ValueError, match="unknown solver 'ddim'"):
        SamplingDefaults(solver="ddim")
    with pytest.raises(ValueError, match="sampling steps must be >= 1"):
        SamplingDefaults(steps=0)


def test_configs_without_sampling_get_their_presets():
    # Our config.json from before 0.2 (no `sampling`, no preset-specific name).
    old = DiTConfig.from_name("wan2.1-i2v-14b").to_dict()
    del old["sampling"]
    old["name"] = "mine"
    assert DiTConfig.from_dict(old).sampling == PRESETS["wan2.1-i2v-14b"].sampling
    # diffusers' WanTransformer3DModel config.json of Wan2.2-TI2V-5B: no VAE stride, no sampling.
    ti2v = {
        "num_attention_heads": 24,
        "attention_head_dim": 128,
        "in_channels": 48,
        "out_channels": 48,
        "ffn_dim": 14336,
        "num_layers": 30,
        "text_dim": 4096,
        "freq_dim": 256,
    }
    cfg = config_from_diffusers(ti2v)
    assert preset_for(cfg) == "wan2.2-ti2v-5b"
    assert cfg.vae_stride == (4, 16, 16) and cfg.sampling == PRESETS["wan2.2-ti2v-5b"].sampling
    # Wan's own config.json (WanModel) of T2V-1.3B.
    wan = {"_class_name": "WanModel", "model_type": "t2v", "dim": 1536, "ffn_dim": 8960, "freq_dim": 256}
    wan.update({"in_dim": 16, "out_dim": 16, "num_heads": 12, "num_layers": 30, "text_len": 512, "eps": 1e-6})
    assert config_from_wan(wan).sampling == PRESETS["wan2.1-t2v-1.3b"].sampling
    # An architecture no preset has keeps the generic defaults.
    assert preset_for(DiTConfig(dim=64, num_heads=4, num_layers=3)) is None
    assert DiTConfig.from_dict({"dim": 64, "num_heads": 4, "num_layers": 3}).sampling == SamplingDefaults()


def test_preset_for_ignores_the_face_branch_and_names():
    assert preset_for(DiTConfig.from_name("wan2.1-t2v-1.3b").replace(face_dim=1536, name="x")) == "wan2.1-t2v-1.3b"
    assert preset_for(DiTConfig.from_name("wan2.1-i2v-14b-720p")) == "wan2.1-i2v-14b"  # same architecture
    assert preset_for(DiTConfig.from_name("tiny-ti2v")) == "tiny-ti2v"


def test_shapes_of_a_ti2v_checkpoint_give_the_ti2v_preset():
    import torch

    from cofe_dit import DiT

    with torch.device("meta"):
        model = DiT(DiTConfig.from_name("wan2.2-ti2v-5b"))
    shapes = {k: torch.empty(v.shape, device="meta") for k, v in model.state_dict().items()}
    cfg = infer_config(shapes)
    assert (cfg.model_type, cfg.vae_stride, preset_for(cfg)) == ("ti2v", (4, 16, 16), "wan2.2-ti2v-5b")


def test_best_output_size_is_wan22s():
    # A 16:9 input at TI2V-5B's 704*1280 area with divisors patch 2 x VAE stride 16 = 32.
    assert best_output_size(1920, 1080, 32, 32, 704 * 1280) == (1248, 704)
    assert best_output_size(1280, 720, 32, 32, 704 * 1280) == (1248, 704)  # Wan never gives 1280x720 here
    assert best_output_size(1080, 1920, 32, 32, 704 * 1280) == (704, 1248)
    # A square: both candidates (928x960, 960x928) are off by the same factor; Wan's `<` picks height-first.
    assert best_output_size(1000, 1000, 32, 32, 704 * 1280) == (960, 928)
    for w, h in [(640, 480), (333, 777), (4000, 1000)]:
        ow, oh = best_output_size(w, h, 32, 32, 704 * 1280)
        assert ow % 32 == 0 and oh % 32 == 0 and ow * oh <= 704 * 1280
    with pytest.raises(ValueError, match="positive sizes"):
        best_output_size(0, 10, 32, 32, 1000)
    with pytest.raises(ValueError, match="too small"):
        best_output_size(100, 100, 32, 32, 500)


def test_output_size_follows_each_models_rule():
    t2v, i2v, ti2v = (DiTConfig.from_name(n) for n in ("wan2.1-t2v-1.3b", "wan2.1-i2v-14b", "wan2.2-ti2v-5b"))
    assert output_size(t2v) == (832, 480) and output_size(t2v, 1920, 1080) == (832, 480)
    assert output_size(ti2v) == (1280, 704) and output_size(ti2v, 1920, 1080) == (1248, 704)
    # Wan 2.1 image2video.py at 832*480 area: lat_h = round(sqrt(A * h / w) // 8 // 2 * 2), lat_w likewise.
    assert output_size(i2v, 1920, 1080) == (832, 464)
    assert output_size(i2v, 1080, 1920) == (464, 832)
    assert output_size(DiTConfig.from_name("wan2.1-i2v-14b-720p"), 1920, 1080) == (1280, 720)
    with pytest.raises(ValueError, match="give both"):
        output_size(i2v, 1920)
