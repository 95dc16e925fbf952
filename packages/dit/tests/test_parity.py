"""Parity with diffusers' WanTransformer3DModel (same weights, same outputs) and with the original Wan key layout."""

import json

import pytest
import torch
from safetensors.torch import save_file

from cofe_dit import DiT, DiTConfig, from_pretrained, load_into
from cofe_dit.checkpoint import read_state_dict

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402

TOL = 1e-4  # max abs difference allowed in fp32 (issue 2)

# Diffusers-side tiny configs and the matching cofe_dit configs.
T2V = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)
I2V = dict(T2V, in_channels=12, image_dim=24, added_kv_proj_dim=32)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Give every parameter (norm weights and zero-initialised ones included) distinct random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(centre + 0.2 * torch.randn(p.shape, generator=g))


def _diffusers_model(cfg: dict, tmp_path, seed=0, **save_kwargs):
    torch.manual_seed(seed)
    ref = WanTransformer3DModel(**cfg).eval()
    _randomise(ref, seed)
    ref.save_pretrained(tmp_path, **save_kwargs)
    return ref


def _inputs(b=2, c=4, f=3, h=6, w=8, text_len=7, text_dim=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, f, h, w, generator=g)
    t = torch.tensor([937.0, 12.5][:b])
    ctx = torch.randn(b, text_len, text_dim, generator=g)
    return x, t, ctx


def test_t2v_matches_diffusers(tmp_path):
    ref = _diffusers_model(T2V, tmp_path)
    model = from_pretrained(tmp_path).eval()  # config read from diffusers' config.json
    assert model.cfg.dim == 32 and model.cfg.num_layers == 2 and model.cfg.model_type == "t2v"
    x, t, ctx = _inputs()
    with torch.no_grad():
        expected = ref(x, t, ctx, return_dict=False)[0]
        got = model(x, t, ctx)
    assert (got - expected).abs().max().item() <= TOL


def test_i2v_matches_diffusers(tmp_path):
    ref = _diffusers_model(I2V, tmp_path, seed=3)
    model = from_pretrained(tmp_path).eval()
    assert model.cfg.model_type == "i2v" and model.cfg.image_dim == 24
    # diffusers slices the image tokens off as "everything before the last 512 text tokens".
    x, t, ctx = _inputs(text_len=512)
    g = torch.Generator().manual_seed(5)
    cond = torch.randn(2, 8, *x.shape[2:], generator=g)
    clip = torch.randn(2, 257, 24, generator=g)
    with torch.no_grad():
        expected = ref(torch.cat([x, cond], 1), t, ctx, encoder_hidden_states_image=clip, return_dict=False)[0]
        got = model(x, t, ctx, cond=cond, clip_tokens=clip)
    assert (got - expected).abs().max().item() <= TOL


def test_ti2v_per_token_timesteps_match_diffusers(tmp_path):
    ref = _diffusers_model(T2V, tmp_path, seed=4)
    model = from_pretrained(tmp_path).eval()
    x, _, ctx = _inputs()
    n_tok = 3 * 3 * 4
    t = torch.linspace(0, 999, n_tok).repeat(2, 1)  # (B, L): a different timestep for every token
    t[:, :12] = 0  # Wan 2.2 TI2V: the given first latent frame sits at t = 0
    with torch.no_grad():
        expected = ref(x, t, ctx, return_dict=False)[0]
        got = model(x, t, ctx)
    assert (got - expected).abs().max().item() <= TOL


def test_sharded_diffusers_checkpoint_loads(tmp_path):
    ref = _diffusers_model(T2V, tmp_path, seed=6, max_shard_size="20KB")
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    assert index.exists() and len(set(json.loads(index.read_text())["weight_map"].values())) > 1
    model = DiT(DiTConfig.from_name("tiny")).eval()
    report = load_into(model, index)
    assert report.ok and report.layout == "diffusers"
    x, t, ctx = _inputs()
    with torch.no_grad():
        assert (model(x, t, ctx) - ref(x, t, ctx, return_dict=False)[0]).abs().max().item() <= TOL


# Names of the original Wan checkpoints (Wan-Video/Wan2.1 `WanModel.state_dict()`), for block 0 and the rest.
WAN_KEYS_T2V = {
    "patch_embedding.weight",
    "patch_embedding.bias",
    "text_embedding.0.weight",
    "text_embedding.0.bias",
    "text_embedding.2.weight",
    "text_embedding.2.bias",
    "time_embedding.0.weight",
    "time_embedding.0.bias",
    "time_embedding.2.weight",
    "time_embedding.2.bias",
    "time_projection.1.weight",
    "time_projection.1.bias",
    "head.modulation",
    "head.head.weight",
    "head.head.bias",
    *(f"blocks.0.self_attn.{n}.{p}" for n in "qkvo" for p in ("weight", "bias")),
    "blocks.0.self_attn.norm_q.weight",
    "blocks.0.self_attn.norm_k.weight",
    *(f"blocks.0.cross_attn.{n}.{p}" for n in "qkvo" for p in ("weight", "bias")),
    "blocks.0.cross_attn.norm_q.weight",
    "blocks.0.cross_attn.norm_k.weight",
    "blocks.0.norm3.weight",
    "blocks.0.norm3.bias",
    "blocks.0.ffn.0.weight",
    "blocks.0.ffn.0.bias",
    "blocks.0.ffn.2.weight",
    "blocks.0.ffn.2.bias",
    "blocks.0.modulation",
}
WAN_KEYS_I2V_EXTRA = {
    "blocks.0.cross_attn.k_img.weight",
    "blocks.0.cross_attn.k_img.bias",
    "blocks.0.cross_attn.v_img.weight",
    "blocks.0.cross_attn.v_img.bias",
    "blocks.0.cross_attn.norm_k_img.weight",
    *(f"img_emb.proj.{i}.{p}" for i in (0, 1, 3, 4) for p in ("weight", "bias")),
}


@pytest.mark.parametrize(("preset", "extra"), [("tiny", set()), ("tiny-i2v", WAN_KEYS_I2V_EXTRA)])
def test_key_names_are_the_original_wan_layout(preset, extra):
    keys = {k for k in DiT(DiTConfig.from_name(preset)).state_dict() if not k.startswith("blocks.1.")}
    assert keys == WAN_KEYS_T2V | extra


def test_wan_layout_state_dict_matches_diffusers(tmp_path):
    """A Wan-layout file (written with Wan's names, not through our saver) loads and gives diffusers' output."""
    ref = _diffusers_model(T2V, tmp_path / "diffusers", seed=8)
    # Rename diffusers -> Wan by an explicit table written out here (independent of cofe_dit.checkpoint).
    table = {
        "condition_embedder.time_embedder.linear_1": "time_embedding.0",
        "condition_embedder.time_embedder.linear_2": "time_embedding.2",
        "condition_embedder.time_proj": "time_projection.1",
        "condition_embedder.text_embedder.linear_1": "text_embedding.0",
        "condition_embedder.text_embedder.linear_2": "text_embedding.2",
        "proj_out": "head.head",
        "scale_shift_table": "head.modulation",
        "attn1.to_q": "self_attn.q",
        "attn1.to_k": "self_attn.k",
        "attn1.to_v": "self_attn.v",
        "attn1.to_out.0": "self_attn.o",
        "attn1.norm_q": "self_attn.norm_q",
        "attn1.norm_k": "self_attn.norm_k",
        "attn2.to_q": "cross_attn.q",
        "attn2.to_k": "cross_attn.k",
        "attn2.to_v": "cross_attn.v",
        "attn2.to_out.0": "cross_attn.o",
        "attn2.norm_q": "cross_attn.norm_q",
        "attn2.norm_k": "cross_attn.norm_k",
        "norm2": "norm3",
        "ffn.net.0.proj": "ffn.0",
        "ffn.net.2": "ffn.2",
    }
    wan = {}
    for key, value in ref.state_dict().items():
        new = key
        if key.startswith("blocks."):
            _, idx, rest = key.split(".", 2)
            rest = "modulation" if rest == "scale_shift_table" else rest
            for a, b in table.items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a) :]
                    break
            new = f"blocks.{idx}.{rest}"
        else:
            for a, b in table.items():
                if key == a or key.startswith(a + "."):
                    new = b + key[len(a) :]
                    break
        wan[new] = value.contiguous()
    save_file(wan, str(tmp_path / "wan.safetensors"))
    model = DiT(DiTConfig.from_name("tiny")).eval()
    report = load_into(model, tmp_path / "wan.safetensors")
    assert report.ok and report.layout == "wan" and report.loaded == len(wan)
    x, t, ctx = _inputs()
    with torch.no_grad():
        assert (model(x, t, ctx) - ref(x, t, ctx, return_dict=False)[0]).abs().max().item() <= TOL
    # And what we save is that same Wan layout.
    from cofe_dit import save

    save(model, tmp_path / "ours")
    assert set(read_state_dict(tmp_path / "ours")) == set(wan)
