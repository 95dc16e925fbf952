"""Unit tests of the DiT building blocks and the model's contracts."""

import math
import time

import pytest
import torch

from cofe_dit import DiT, DiTConfig, is_fp32_parameter, materialize
from cofe_dit.model import apply_rope, rope_grid, rope_tables, sinusoidal_embedding


def _inputs(cfg: DiTConfig, b=2, f=3, h=4, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.out_dim, f, h, w, generator=g)
    t = torch.rand(b, generator=g) * 1000
    ctx = torch.randn(b, 5, cfg.text_dim, generator=g)
    return x, t, ctx


def _nonzero_head(model: DiT, seed=0) -> DiT:
    """Wan zero-initialises the head; give it weights so outputs depend on everything."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.head.head.weight.copy_(torch.randn(model.head.head.weight.shape, generator=g) * 0.1)
    return model


# ---------------------------------------------------------------------------------------------------- RoPE


def test_rope_split_matches_wan():
    # Wan: h = w = 2 * (d // 6), t = d - 2h. For the real head width 128: 44 / 42 / 42.
    assert DiTConfig.from_name("wan2.1-t2v-1.3b").rope_split == (44, 42, 42)
    assert DiTConfig.from_name("tiny").rope_split == (8, 4, 4)  # head width 16


def test_rope_matches_complex_multiplication():
    """Wan applies RoPE as x_complex * exp(i * angle); ours uses real pairs. They must agree."""
    d, split = 16, (6, 4, 6)
    cos, sin = rope_tables(d, split, 32, 10000.0)
    grid = (2, 3, 4)
    c, s = rope_grid(cos, sin, split, grid)
    x = torch.randn(1, 24, 2, d, dtype=torch.float64).float()
    ours = apply_rope(x, c, s)
    xc = torch.view_as_complex(x.double().reshape(1, 24, 2, d // 2, 2))
    angle = torch.atan2(s.double(), c.double())[None, :, None, :]
    ref = torch.view_as_real(xc * torch.exp(1j * angle)).reshape(1, 24, 2, d)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    d, split = 18, (6, 6, 6)
    cos, sin = rope_tables(d, split, 64, 10000.0)
    c, s = rope_grid(cos, sin, split, (8, 8, 8))  # token index = f * 64 + h * 8 + w
    q, k = torch.randn(d), torch.randn(d)

    def score(pos_q, pos_k):
        iq = pos_q[0] * 64 + pos_q[1] * 8 + pos_q[2]
        ik = pos_k[0] * 64 + pos_k[1] * 8 + pos_k[2]
        rq = apply_rope(q[None, None, None], c[iq : iq + 1], s[iq : iq + 1])
        rk = apply_rope(k[None, None, None], c[ik : ik + 1], s[ik : ik + 1])
        return (rq * rk).sum().item()

    assert score((1, 2, 3), (0, 1, 1)) == pytest.approx(score((5, 6, 7), (4, 5, 5)), abs=1e-4)
    assert score((0, 0, 0), (0, 0, 0)) == pytest.approx((q * k).sum().item(), abs=1e-4)  # position 0: no rotation
    assert score((1, 2, 3), (0, 1, 1)) != pytest.approx(score((1, 2, 3), (0, 1, 2)), abs=1e-3)


def test_rope_rejects_grid_beyond_table():
    cos, sin = rope_tables(16, (6, 4, 6), 8, 10000.0)
    with pytest.raises(ValueError, match="exceeds the RoPE table"):
        rope_grid(cos, sin, (6, 4, 6), (9, 1, 1))


def test_sinusoidal_embedding_formula():
    t = torch.tensor([0.0, 250.0])
    emb = sinusoidal_embedding(t, 8)
    assert emb.dtype == torch.float32 and emb.shape == (2, 8)
    w = [10000 ** (-i / 4) for i in range(4)]
    expected = [math.cos(250 * wi) for wi in w] + [math.sin(250 * wi) for wi in w]
    torch.testing.assert_close(emb[1], torch.tensor(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))


# ---------------------------------------------------------------------------------------------------- modulation


def test_modulation_shift_scale_gate():
    """With the block's table forcing gate = 0 for both branches, the block reduces to x + cross-attention; and
    the shift/scale apply as norm(x) * (1 + scale) + shift."""
    cfg = DiTConfig.from_name("tiny")
    block = DiT(cfg).blocks[0]
    b, n, d = 2, 12, cfg.dim
    x = torch.randn(b, n, d)
    e = torch.zeros(b, 1, 6, d)
    ctx = torch.randn(b, 5, d)
    rope = rope_grid(*rope_tables(cfg.head_dim, cfg.rope_split, 16, 1e4), cfg.rope_split, (1, 3, 4))
    with torch.no_grad():
        # gates are (table + timestep projection): -1 + 1 = 0 for the attention branch, 0 + 0 for the FFN branch.
        block.modulation.zero_()
        block.modulation[0, 2] = -1.0
        e[:, :, 2] = 1.0
        out = block(x, e, ctx, rope)
        expected = x + block.cross_attn(block.norm3(x), ctx, None, None)
    torch.testing.assert_close(out, expected)

    # shift / scale: the FFN input is norm2(x) * (1 + scale2) + shift2.
    seen = {}
    block.ffn.register_forward_hook(lambda m, i, o: seen.update(inp=i[0]))
    e2 = torch.randn(b, 1, 6, d)
    with torch.no_grad():
        block.modulation.zero_()
        block(x, e2, ctx, rope)
        mid = x + block.self_attn(block.norm1(x) * (1 + e2[:, :, 1]) + e2[:, :, 0], rope) * e2[:, :, 2]
        mid = mid + block.cross_attn(block.norm3(mid), ctx, None, None)
        expected_in = block.norm2(mid) * (1 + e2[:, :, 4]) + e2[:, :, 3]
    torch.testing.assert_close(seen["inp"], expected_in, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- patches


def test_patchify_unpatchify_round_trip():
    """With an identity patch embedding (D = C * 4, weight = one-hot), tokens are the raw patches; the head layout
    (pt, ph, pw, C per token) then restores the exact video."""
    cfg = DiTConfig.from_name("tiny", dim=16, num_heads=1, ffn_dim=16)
    model = DiT(cfg)
    c, (_, ph, pw) = cfg.in_dim, cfg.patch_size
    with torch.no_grad():
        model.patch_embedding.weight.zero_()
        model.patch_embedding.bias.zero_()
        # token channel j = ((kt * ph + kh) * pw + kw) * C + c  (the order unpatchify reads)
        for ch in range(c):
            for kh in range(ph):
                for kw in range(pw):
                    j = (kh * pw + kw) * c + ch
                    model.patch_embedding.weight[j, ch, 0, kh, kw] = 1.0
    x = torch.randn(2, c, 3, 6, 8)
    tokens, grid = model.patchify(x)
    assert tokens.shape == (2, 3 * 3 * 4, 16) and grid == (3, 3, 4)
    torch.testing.assert_close(model.unpatchify(tokens, grid), x)


def test_forward_shapes_all_types():
    for name in ("tiny", "tiny-ti2v"):
        cfg = DiTConfig.from_name(name)
        x, t, ctx = _inputs(cfg)
        assert DiT(cfg)(x, t, ctx).shape == x.shape
    cfg = DiTConfig.from_name("tiny-i2v")
    x, t, ctx = _inputs(cfg)
    out = DiT(cfg)(x, t, ctx, cond=torch.randn(2, 8, *x.shape[2:]), clip_tokens=torch.randn(2, 7, 24))
    assert out.shape == x.shape


# ---------------------------------------------------------------------------------------------------- face branch


def test_face_branch_is_zero_initialised_and_trainable():
    cfg = DiTConfig.from_name("tiny", face_dim=24)
    model = _nonzero_head(DiT(cfg)).eval()
    x, t, ctx = _inputs(cfg)
    faces = [torch.randn(2, 4, 24) for _ in range(cfg.num_layers)]
    with torch.no_grad():
        plain = model(x, t, ctx)
        with_face = model(x, t, ctx, face_tokens=faces)
    assert torch.equal(plain, with_face)
    loss = model(x, t, ctx, face_tokens=faces).square().mean()
    loss.backward()
    assert model.blocks[0].cross_attn.face.o.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for p in model.face_parameters():
            p.add_(0.1 * torch.randn_like(p))
        assert not torch.allclose(model(x, t, ctx, face_tokens=faces), plain)
        # A block given None keeps its face branch off.
        assert torch.equal(model(x, t, ctx, face_tokens=[None] * cfg.num_layers), plain)


def test_no_face_branch_keys_without_face_dim():
    assert not [k for k in DiT(DiTConfig.from_name("tiny")).state_dict() if ".face." in k]


# ---------------------------------------------------------------------------------------------------- numerics


def test_gradient_checkpointing_gives_same_gradients():
    cfg = DiTConfig.from_name("tiny")
    torch.manual_seed(0)
    a = _nonzero_head(DiT(cfg))
    b = _nonzero_head(DiT(cfg))
    b.load_state_dict(a.state_dict())
    b.enable_gradient_checkpointing()
    x, t, ctx = _inputs(cfg)
    a(x, t, ctx).square().mean().backward()
    b(x, t, ctx).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


def test_bf16_autocast_keeps_fp32_numerics_and_is_close():
    cfg = DiTConfig.from_name("tiny")
    model = _nonzero_head(DiT(cfg)).eval()
    x, t, ctx = _inputs(cfg)
    seen = {}
    model.blocks[0].norm1.register_forward_hook(lambda m, i, o: seen.update(norm=o.dtype))
    model.blocks[0].cross_attn.q.register_forward_hook(lambda m, i, o: seen.update(linear=o.dtype))
    with torch.no_grad():
        ref = model(x, t, ctx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, ctx)
    assert seen == {"norm": torch.float32, "linear": torch.bfloat16}
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3


def test_pure_bf16_model_runs_with_fp32_rope():
    cfg = DiTConfig.from_name("tiny")
    model = _nonzero_head(DiT(cfg))
    x, t, ctx = _inputs(cfg)
    with torch.no_grad():
        ref = model(x, t, ctx)
        model = model.to(torch.bfloat16).eval()
        out = model(x.bfloat16(), t, ctx.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert all(table.dtype == torch.float32 for table in model.rope_tables(x.device))
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


ISLANDS_T2V = {
    "time_embedding.0.weight",
    "time_embedding.0.bias",
    "time_embedding.2.weight",
    "time_embedding.2.bias",
    "time_projection.1.weight",
    "time_projection.1.bias",
    "head.modulation",
}


def test_fp32_islands_are_the_documented_set():
    model = DiT(DiTConfig.from_name("tiny-i2v", face_dim=24))
    names = set(model.fp32_parameter_names())
    block0 = {n for n in names if n.startswith("blocks.0.")}
    assert block0 == {
        "blocks.0.modulation",
        "blocks.0.norm3.weight",
        "blocks.0.norm3.bias",
        "blocks.0.self_attn.norm_q.weight",
        "blocks.0.self_attn.norm_k.weight",
        "blocks.0.cross_attn.norm_q.weight",
        "blocks.0.cross_attn.norm_k.weight",
        "blocks.0.cross_attn.norm_k_img.weight",
        "blocks.0.cross_attn.face.norm_k.weight",
    }
    rest = {n for n in names if not n.startswith("blocks.")}
    assert rest == ISLANDS_T2V | {f"img_emb.proj.{i}.{p}" for i in (0, 4) for p in ("weight", "bias")}
    assert not is_fp32_parameter("blocks.0.ffn.0.weight") and not is_fp32_parameter("patch_embedding.weight")


def test_bf16_cast_keeps_the_islands_fp32_and_their_path_exact():
    cfg = DiTConfig.from_name("tiny")
    torch.manual_seed(0)
    ref = _nonzero_head(DiT(cfg)).eval()
    with torch.no_grad():
        for p in ref.parameters():  # every weight matters (modulation and norms included)
            p.add_(0.05 * torch.randn_like(p))
    cast, naive = DiT(cfg).eval(), DiT(cfg).eval()
    cast.load_state_dict(ref.state_dict())
    naive.load_state_dict(ref.state_dict())
    cast.to(torch.bfloat16)
    for p in naive.parameters():
        p.data = p.data.bfloat16()  # what a cast without islands does
    for name, p in cast.named_parameters():
        assert p.dtype == (torch.float32 if is_fp32_parameter(name) else torch.bfloat16), name
    assert cast.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    # .half() and .bfloat16() too; an upcast is allowed.
    assert DiT(cfg).half().time_projection[1].weight.dtype == torch.float32
    assert DiT(cfg).double().time_projection[1].weight.dtype == torch.float64
    # The AdaLN path every block sees (timestep MLP, projection, + table) is the fp32 model's exactly; a naive
    # cast is ~4e-3 off there. (At the output, the bf16 rounding of the linears' activations, ~0.4% with random
    # weights, is shared by both casts and hides the difference.)
    x, t, ctx = _inputs(cfg)
    t = torch.tensor([999.0, 37.0])
    with torch.no_grad():
        errs = {}
        for key, m in (("cast", cast), ("naive", naive)):
            _, e = m.embed_time(t, 1)
            _, e_ref = ref.embed_time(t, 1)
            table = m.blocks[0].modulation.float()[None] + e
            table_ref = ref.blocks[0].modulation[None] + e_ref
            errs[key] = ((table - table_ref).abs().max() / table_ref.abs().max()).item()
        out, expected = cast(x, t, ctx).float(), ref(x, t, ctx)
    assert errs["cast"] == 0.0 and errs["naive"] > 1e-3, errs
    assert (out - expected).abs().max() < 0.02 * expected.abs().max()


def test_islands_stay_fp32_under_a_bf16_default_dtype():
    """Lightning's "bf16-true" builds modules with torch.set_default_dtype(torch.bfloat16)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = DiT(DiTConfig.from_name("tiny"))
    finally:
        torch.set_default_dtype(old)
    assert model.time_embedding[0].weight.dtype == torch.float32 and model.blocks[1].modulation.dtype == torch.float32
    assert model.blocks[0].ffn[0].weight.dtype == torch.bfloat16


def test_a_14b_preset_builds_on_meta_in_seconds():
    cfg = DiTConfig.from_name("wan2.1-i2v-14b", face_dim=5120)
    start = time.perf_counter()
    with torch.device("meta"):
        model = DiT(cfg)
    elapsed = time.perf_counter() - start
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()  # 17.7e9 parameters, none allocated
    assert elapsed < 30, f"building the 14B model on meta took {elapsed:.1f} s"


def test_materialize_gives_the_same_weights_as_a_plain_build():
    cfg = DiTConfig.from_name("tiny-i2v", face_dim=24)
    torch.manual_seed(5)
    plain = DiT(cfg)
    with torch.device("meta"):
        lazy = DiT(cfg)
    torch.manual_seed(5)
    materialize(lazy)
    ref = plain.state_dict()
    for k, v in lazy.state_dict().items():
        assert torch.equal(v, ref[k]), k
    # Every tensor is written by reset_parameters: garbage from to_empty never survives.
    filled = DiT(cfg)
    with torch.no_grad():
        for p in filled.parameters():
            p.fill_(float("nan"))
    torch.manual_seed(5)
    filled.reset_parameters()
    assert all(torch.equal(v, ref[k]) for k, v in filled.state_dict().items())
    # The initialisation is Wan's: zero head and face output, unit norms, N(0, 1/D) tables.
    assert torch.all(plain.head.head.weight == 0) and torch.all(plain.blocks[0].cross_attn.face.o.weight == 0)
    assert torch.all(plain.blocks[0].norm3.weight == 1) and torch.all(plain.blocks[0].norm3.bias == 0)
    big = DiT(DiTConfig.from_name("tiny", dim=256, num_heads=16, num_layers=1))
    assert big.blocks[0].modulation.std().item() == pytest.approx(1 / 16, rel=0.1)
    bf16 = materialize(_meta(cfg), dtype=torch.bfloat16)
    assert bf16.blocks[0].ffn[0].weight.dtype == torch.bfloat16 and bf16.blocks[0].modulation.dtype == torch.float32
    with pytest.raises(KeyError, match="not parameters of this DiT"):
        plain.init_parameters(["blocks.0.bogus"])


def _meta(cfg):
    with torch.device("meta"):
        return DiT(cfg)


def test_fsdp2_wraps_every_block(tmp_path):
    """FSDP-wrappable per block: shard each DiTBlock, then the root, in a 1-process gloo group; train one step."""
    import torch.distributed as dist

    fully_shard = pytest.importorskip("torch.distributed.fsdp").fully_shard
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        cfg = DiTConfig.from_name("tiny", face_dim=24)
        model = _nonzero_head(DiT(cfg))
        for block in model.blocks:
            assert isinstance(block, DiT.block_class)
            fully_shard(block)
        fully_shard(model)
        x, t, ctx = _inputs(cfg)
        faces = [torch.randn(2, 3, 24)] * cfg.num_layers
        loss = model(x, t, ctx, face_tokens=faces).square().mean()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda x, t, c: (x[:, :3], t, c), r"x has 3 channels; the 'tiny' model expects 4"),
        (lambda x, t, c: (x[:, :, :, :3], t, c), r"latent height 3 is not divisible by the patch size 2"),
        (lambda x, t, c: (x[..., :5], t, c), r"latent width 5 is not divisible by the patch size 2"),
        (lambda x, t, c: (x[0], t, c), r"x must be \(B, C, F, H, W\)"),
        (lambda x, t, c: (x, t, c[..., :5]), r"context must be \(2, T, 16\)"),
        (lambda x, t, c: (x, t[:1], c), r"timestep must have shape \(2,\) or \(2, 18\)"),
    ],
)
def test_bad_input_errors_name_what_was_expected(mutate, message):
    cfg = DiTConfig.from_name("tiny")
    model = DiT(cfg)
    x, t, ctx = _inputs(cfg, f=3, h=4, w=6)
    with pytest.raises(ValueError, match=message):
        model(*mutate(x, t, ctx))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda x, t, c: (x.index_fill(2, torch.tensor([1]), float("nan")), t, c), r"x contains NaN"),
        (lambda x, t, c: (x, t, c.index_fill(1, torch.tensor([0]), float("inf"))), r"context contains NaN or Inf"),
    ],
)
def test_finiteness_checks_are_debug_only(mutate, message, monkeypatch):
    """`bool(isfinite(t).all())` is a host sync on CUDA: off by default, on with `debug_checks` or the env var."""
    monkeypatch.delenv("COFE_DEBUG_CHECKS", raising=False)
    cfg = DiTConfig.from_name("tiny")
    model = DiT(cfg)
    assert model.debug_checks is False
    x, t, ctx = _inputs(cfg, f=3, h=4, w=6)
    bad = mutate(x, t, ctx)
    model(*bad)  # default: no finiteness check (the NaN propagates)
    model.debug_checks = True
    with pytest.raises(ValueError, match=message):
        model(*bad)
    model.debug_checks = False
    monkeypatch.setenv("COFE_DEBUG_CHECKS", "1")
    with pytest.raises(ValueError, match=message):
        model(*bad)


def test_frame_count_not_divisible_by_temporal_patch():
    cfg = DiTConfig.from_name("tiny", patch_size=(2, 2, 2))
    x, t, ctx = _inputs(cfg, f=3)
    with pytest.raises(ValueError, match=r"latent frame count 3 is not divisible by the patch size 2"):
        DiT(cfg)(x, t, ctx)


def test_i2v_and_face_input_errors():
    cfg = DiTConfig.from_name("tiny-i2v")
    x, t, ctx = _inputs(cfg)
    with pytest.raises(ValueError, match=r"i2v needs cond .* of shape \(2, 8, 3, 4, 6\), got None"):
        DiT(cfg)(x, t, ctx)
    cfg = DiTConfig.from_name("tiny", face_dim=24)
    x, t, ctx = _inputs(cfg)
    with pytest.raises(ValueError, match=r"face_tokens needs one entry per block \(2\), got 1"):
        DiT(cfg)(x, t, ctx, face_tokens=[torch.randn(2, 3, 24)])
    with pytest.raises(ValueError, match=r"face_tokens\[1\] must be \(2, M, 24\), got \(2, 3, 7\)"):
        DiT(cfg)(x, t, ctx, face_tokens=[None, torch.randn(2, 3, 7)])
    with pytest.raises(ValueError, match="no face branch"):
        DiT(DiTConfig.from_name("tiny"))(x, t, ctx, face_tokens=[None, None])


def test_config_validation():
    with pytest.raises(ValueError, match="unknown DiT preset 'wan3'"):
        DiTConfig.from_name("wan3")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        DiTConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="in_dim must be 36"):
        DiTConfig(model_type="i2v", image_dim=1280, in_dim=16)
    with pytest.raises(ValueError, match=r"unknown DiTConfig keys \['bogus'\]"):
        DiTConfig.from_dict({"bogus": 1})


def test_presets_have_the_released_sizes():
    # Parameter counts of the released checkpoints: 1.3B (1.42e9 with embeddings), 14B, I2V 14B (16.4e9), 5B.
    expected = {
        "wan2.1-t2v-1.3b": 1.419e9,
        "wan2.1-t2v-14b": 14.29e9,
        "wan2.1-i2v-14b": 16.39e9,
        "wan2.2-ti2v-5b": 5.0e9,
    }
    for name, count in expected.items():
        assert DiTConfig.from_name(name).num_params() == pytest.approx(count, rel=2e-3)
    tiny = DiTConfig.from_name("tiny", face_dim=24)
    assert tiny.num_params() == sum(p.numel() for p in DiT(tiny).parameters())
    i2v = DiTConfig.from_name("tiny-i2v")
    assert i2v.num_params() == sum(p.numel() for p in DiT(i2v).parameters())
