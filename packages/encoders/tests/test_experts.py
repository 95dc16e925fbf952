import numpy as np
import pytest
import torch

from cofe_encoders import CLIPVisionExpert, DINOv2Expert, ExpertOutput, build_expert


@pytest.fixture(scope="module")
def clip_tiny():
    torch.manual_seed(0)
    return build_expert("semantic", variant="tiny")


@pytest.fixture(scope="module")
def dino_tiny():
    torch.manual_seed(0)
    return build_expert("detail", variant="tiny-reg", image_size=56)


def test_semantic_shapes_and_layer(clip_tiny):
    images = [np.zeros((60, 80, 3), np.uint8), np.full((56, 56, 3), 128, np.uint8)]
    out = clip_tiny.encode(images)
    assert isinstance(out, ExpertOutput)
    assert out.tokens.shape == (2, clip_tiny.num_tokens, clip_tiny.token_dim) == (2, 16, 64)
    assert out.pooled.shape == (2, 32)
    # tokens = penultimate block output, patch tokens only
    x = clip_tiny.preprocess(images)
    v = clip_tiny.visual
    with torch.no_grad():
        h = v._embeds(x)
        for blk in v.transformer.resblocks[:-1]:
            h = blk(h)
        torch.testing.assert_close(out.tokens, h[:, 1:])
        torch.testing.assert_close(out.pooled, v(x))


def test_detail_shapes(dino_tiny):
    out = dino_tiny.encode(torch.rand(3, 3, 70, 56))
    assert out.tokens.shape == (3, 16, 48) and out.pooled.shape == (3, 48)
    feats = dino_tiny.model.forward_features(dino_tiny.preprocess(torch.rand(1, 3, 56, 56)))
    assert feats.shape[1] == 1 + 4 + 16  # class + 4 registers + patches: registers are dropped from tokens


@pytest.mark.parametrize("make", ["clip", "dino"])
def test_frozen_and_stays_eval(make, clip_tiny, dino_tiny):
    expert = clip_tiny if make == "clip" else dino_tiny
    assert not any(p.requires_grad for p in expert.parameters())
    parent = torch.nn.Sequential(expert)
    parent.train()
    assert not expert.training and not any(m.training for m in expert.modules())
    out = expert.encode(torch.rand(1, 3, 56, 56))
    assert not out.tokens.requires_grad
    # outputs are normal tensors: they can feed a trainable layer
    layer = torch.nn.Linear(out.tokens.shape[-1], 2)
    layer(out.tokens).sum().backward()


def test_dtype_and_batch_consistency(dino_tiny):
    images = torch.rand(2, 3, 56, 56)
    full = dino_tiny.encode(images)
    single = dino_tiny.encode(images[1:])
    torch.testing.assert_close(full.pooled[1:], single.pooled, atol=1e-5, rtol=1e-5)
    as64 = DINOv2Expert("tiny-reg", image_size=56)
    as64.load_state_dict(dino_tiny.state_dict())
    as64 = as64.to(torch.float64)
    out64 = as64.encode(images)
    assert out64.pooled.dtype == torch.float64
    torch.testing.assert_close(out64.pooled.float(), full.pooled, atol=1e-4, rtol=1e-4)


def test_weights_round_trip_from_local_files(tmp_path, clip_tiny, dino_tiny):
    from safetensors.torch import save_file

    images = torch.rand(2, 3, 56, 56)
    # CLIP: a whole-model open_clip state dict with `visual.` keys, as a torch pickle
    clip_file = tmp_path / "clip.pt"
    state = {f"visual.{k}": v for k, v in clip_tiny.visual.state_dict().items()}
    torch.save(state | {"logit_scale": torch.ones(())}, clip_file)
    loaded = build_expert("semantic", variant="tiny", weights=clip_file)
    torch.testing.assert_close(loaded.encode(images).pooled, clip_tiny.encode(images).pooled)
    # DINOv2: a timm state dict as safetensors, through pretrained_cfg_overlay=dict(file=...)
    dino_file = tmp_path / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in dino_tiny.model.state_dict().items()}, str(dino_file))
    loaded = build_expert("detail", variant="tiny-reg", weights=dino_file, image_size=56)
    torch.testing.assert_close(loaded.encode(images).tokens, dino_tiny.encode(images).tokens)


def test_weight_errors(tmp_path, clip_tiny):
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        build_expert("semantic", variant="tiny", weights=tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        build_expert("detail", variant="tiny", weights=tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.pt"):
        build_expert("semantic", variant="tiny", weights=junk)
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match=r"wrong.pt.*'tiny'"):
        build_expert("semantic", variant="tiny", weights=wrong)
    with pytest.raises(ValueError, match="needs weights=PATH"):
        build_expert("semantic")
    with pytest.raises(ValueError, match="needs weights=PATH"):
        build_expert("detail")
    with pytest.raises(ValueError, match="unknown CLIP variant 'ViT-Q-99'"):
        CLIPVisionExpert("ViT-Q-99")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        DINOv2Expert("tiny", image_size=50)
    with pytest.raises(ValueError, match="unknown expert kind"):
        build_expert("audio")


def test_describe(clip_tiny, dino_tiny):
    assert clip_tiny.describe() == {
        "kind": "semantic",
        "variant": "tiny",
        "weights": None,
        "token_dim": 64,
        "num_tokens": 16,
        "pooled_dim": 32,
        "image_size": 56,
        "input": "head-crop-56",
        "layer": 1,
    }
    d = dino_tiny.describe()
    assert (d["kind"], d["token_dim"], d["num_tokens"], d["input"]) == ("detail", 48, 16, "head-crop-56")


def test_default_semantic_width_matches_fusion_presets():
    """The default semantic expert is ViT-H/14 (1280-d tokens), the width cofe_fusion's presets expect."""
    from cofe_encoders.registry import DEFAULT_VARIANTS
    from cofe_encoders.semantic import _vision_cfg

    assert DEFAULT_VARIANTS["semantic"] == "ViT-H-14"
    embed_dim, vision, quick_gelu = _vision_cfg("ViT-H-14")
    assert (vision["width"], embed_dim, quick_gelu) == (1280, 1024, False)
    assert (vision["image_size"] // vision["patch_size"]) ** 2 == 256
    fusion_config = pytest.importorskip("cofe_fusion.config")  # a test-time cross-check only
    widths = {e.name: e.width for e in fusion_config.CoFEConfig().experts}
    assert widths["semantic"] == vision["width"] and widths["detail"] == 1024


@pytest.mark.slow
def test_real_architectures_build_offline():
    """The real ViT-H/14 CLIP tower and DINOv2-L build from names alone (no download, random weights)."""
    clip = build_expert("semantic", allow_random=True)
    assert (clip.num_tokens, clip.token_dim, clip.pooled_dim) == (256, 1280, 1024)
    assert clip.describe()["input"] == "head-crop-224"
    dino = build_expert("detail", variant="vit_large_patch14_reg4_dinov2.lvd142m", allow_random=True)
    assert (dino.num_tokens, dino.token_dim, dino.num_prefix) == (256, 1024, 5)
