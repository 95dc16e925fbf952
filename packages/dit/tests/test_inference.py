"""Inference levers of the DiT: no host sync, the fused q/k/v cache, attention backends, regional compilation and
the face-branch scale. Every default is checked to be bit-identical to the plain formulation."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from cofe_dit import ATTENTION_BACKENDS, DiT, DiTConfig, set_attention_backend
from cofe_dit.model import _kernel_attention


def _model(face_dim=12, seed=0, **kw) -> DiT:
    """A tiny DiT whose every weight matters (Wan zero-initialises the head and the face output)."""
    torch.manual_seed(seed)
    model = DiT(DiTConfig.from_name("tiny", face_dim=face_dim, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def _inputs(cfg: DiTConfig, b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.out_dim, 3, 4, 4, generator=g)
    t = torch.tensor([300.0, 700.0][:b])
    ctx = torch.randn(b, 5, cfg.text_dim, generator=g)
    faces = [torch.randn(b, 3, cfg.face_dim, generator=g) for _ in range(cfg.num_layers)] if cfg.face_dim else None
    return x, t, ctx, faces


# ---------------------------------------------------------------------------------------------------- host syncs


def test_default_forward_makes_no_host_sync(monkeypatch):
    """Every tensor -> Python conversion is a device sync on CUDA; the default forward makes none."""
    model = _model().eval()
    x, t, ctx, faces = _inputs(model.cfg)

    def sync(*args, **kwargs):
        raise AssertionError("host sync in the forward")

    for name in ("__bool__", "item", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    with torch.no_grad():
        model(x, t, ctx, face_tokens=faces, face_scale=[0.5, 1.0])
    model.debug_checks = True
    with pytest.raises(AssertionError, match="host sync"):
        model(x, t, ctx, face_tokens=faces)


# ---------------------------------------------------------------------------------------------------- fused q/k/v


def _plain_qkv(attn, x):
    """The previous formulation: concatenate the three weights on every call."""
    w = torch.cat([attn.q.weight, attn.k.weight, attn.v.weight])  # (3D, D)
    b = torch.cat([attn.q.bias, attn.k.bias, attn.v.bias])  # (3D,)
    return F.linear(x, w, b)


def test_fused_qkv_cache_is_exact_and_follows_weight_updates():
    model = _model().eval()
    model.cache_qkv = True
    attn = model.blocks[0].self_attn
    x = torch.randn(2, 7, model.cfg.dim)
    with torch.no_grad():
        w, b = attn.fused_qkv()
        assert torch.equal(F.linear(x, w, b), _plain_qkv(attn, x))
        assert attn.fused_qkv()[0] is w  # cached: no new concatenation
        attn.k.weight.add_(1.0)  # in-place update: bumps the version counter
        w2, b2 = attn.fused_qkv()
        assert w2 is not w and torch.equal(F.linear(x, w2, b2), _plain_qkv(attn, x))
        attn.v.bias.copy_(torch.randn_like(attn.v.bias))  # as load_state_dict / load_into write
        assert torch.equal(F.linear(x, *attn.fused_qkv()), _plain_qkv(attn, x))
        attn.q.weight = torch.nn.Parameter(torch.randn_like(attn.q.weight))  # a new tensor object
        assert torch.equal(F.linear(x, *attn.fused_qkv()), _plain_qkv(attn, x))
        # A write the version counter cannot see is what clear_caches is for.
        attn.o.weight.data.zero_()
        attn.q.weight.data.mul_(2.0)
        model.clear_caches()
        assert torch.equal(F.linear(x, *attn.fused_qkv()), _plain_qkv(attn, x))


def test_fused_qkv_cache_only_in_inference():
    model = _model()
    attn = model.blocks[0].self_attn
    x, t, ctx, faces = _inputs(model.cfg)
    model(x, t, ctx).sum().backward()  # training mode, autograd: concatenated per call, gradients reach q, k, v
    assert attn._qkv_cache is None and attn.q.weight.grad is not None and attn.v.bias.grad is not None
    model.eval()
    model.cache_qkv = True
    with torch.no_grad():
        cached = model(x, t, ctx, face_tokens=faces)
    assert attn._qkv_cache is not None
    model.cache_qkv = False  # the default: three GEMMs, no copy of the weights
    with torch.no_grad():
        plain = model(x, t, ctx, face_tokens=faces)
    assert attn._qkv_cache is None
    torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-6)
    model.cache_qkv = True
    with torch.no_grad():
        model(x, t, ctx)
    model.train()  # and `.to()`: the cache never survives them
    assert attn._qkv_cache is None
    with torch.no_grad():
        model.eval()(x, t, ctx)
    model.double()
    assert attn._qkv_cache is None


# ---------------------------------------------------------------------------------------------------- attention


def test_attention_backend_default_and_errors(monkeypatch):
    model = _model().eval()
    x, t, ctx, faces = _inputs(model.cfg)
    assert model.attention_backend == "sdpa" and ATTENTION_BACKENDS == ("sdpa", "flash", "sage")
    with torch.no_grad():
        before = model(x, t, ctx, face_tokens=faces)
        assert torch.equal(set_attention_backend(model, "sdpa")(x, t, ctx, face_tokens=faces), before)
    with pytest.raises(ValueError, match="unknown attention backend 'xformers'"):
        set_attention_backend(model, "xformers")
    for name, pip in (("flash", "flash-attn"), ("sage", "sageattention")):
        monkeypatch.setitem(sys.modules, pip.replace("-", "_"), None)  # not importable, installed here or not
        with pytest.raises(ValueError, match=rf"attention backend '{name}' needs the '{pip}' package"):
            set_attention_backend(model, name)
    assert model.attention_backend == "sdpa"
    with pytest.raises(ValueError, match="holds no cofe_dit attention layer"):
        set_attention_backend(torch.nn.Linear(2, 2), "sdpa")


def _fake_kernels(monkeypatch):
    """flash-attn's and SageAttention's documented calls, implemented by sdpa, recording their arguments."""
    calls = []

    def flash_attn_func(q, k, v):
        calls.append(("flash", q.shape, k.shape))
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False):
        calls.append(("sage", tensor_layout, is_causal))
        assert tensor_layout == "NHD"
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_func=flash_attn_func))
    monkeypatch.setitem(sys.modules, "sageattention", types.SimpleNamespace(sageattn=sageattn))
    return calls


def test_flash_and_sage_calls_take_tokens_first_and_need_cuda_half(monkeypatch):
    calls = _fake_kernels(monkeypatch)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 8, generator=g) for n in (5, 7, 7))  # (B, L, N, Dh), Lq != Lk
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    expected = expected.transpose(1, 2).flatten(2)  # (B, Lq, D)
    for name in ("flash", "sage"):
        torch.testing.assert_close(_kernel_attention(q, k, v, name), expected)
    assert calls[0] == ("flash", (2, 5, 3, 8), (2, 7, 3, 8)) and calls[1] == ("sage", "NHD", False)
    model = set_attention_backend(_model().eval(), "flash")  # importable now
    assert {m.attention_backend for m in model.modules() if hasattr(m, "attention_backend")} == {"flash"}
    x, t, ctx, faces = _inputs(model.cfg)
    with pytest.raises(ValueError, match=r"'flash' runs on CUDA in float16 / bfloat16 only; got q of dtype torch."):
        model(x, t, ctx, face_tokens=faces)


@pytest.mark.slow
def test_compile_blocks_matches_eager():
    model = _model().eval()
    x, t, ctx, faces = _inputs(model.cfg)
    with torch.no_grad():
        eager = model(x, t, ctx, face_tokens=faces)
        model.compile_blocks(dynamic=False)
        assert all(b._compiled_call_impl is not None for b in model.blocks)
        compiled = model(x, t, ctx, face_tokens=faces)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- face scale


def test_face_scale_default_is_exact_and_zero_is_no_tokens():
    model = _model().eval()
    x, t, ctx, faces = _inputs(model.cfg)
    with torch.no_grad():
        plain = model(x, t, ctx, face_tokens=faces)
        assert torch.equal(model(x, t, ctx, face_tokens=faces, face_scale=1.0), plain)
        assert torch.equal(model(x, t, ctx, face_tokens=faces, face_scale=[1.0, 1]), plain)
        off = model(x, t, ctx, face_tokens=[faces[0], None])
        assert torch.equal(model(x, t, ctx, face_tokens=faces, face_scale=[1.0, 0.0]), off)
        assert torch.equal(model(x, t, ctx, face_tokens=faces, face_scale=0), model(x, t, ctx))
        # A (B,) tensor scales per sample: sample 0 at 0 (branch off), sample 1 at 1.
        mixed = model(x, t, ctx, face_tokens=faces, face_scale=torch.tensor([0.0, 1.0]))
        torch.testing.assert_close(mixed[0], model(x, t, ctx)[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(mixed[1], plain[1], atol=1e-6, rtol=0)
        assert (model(x, t, ctx, face_tokens=faces, face_scale=2.0) - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"face_scale needs one entry per block \(2\), got 3"):
        model(x, t, ctx, face_tokens=faces, face_scale=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"face_scale\[0\] as a tensor is per sample, \(2,\); got \(3,\)"):
        model(x, t, ctx, face_tokens=faces, face_scale=torch.ones(3))


def test_face_scale_multiplies_the_branch_output():
    """At the cross-attention: out(s) = out(no face) + s * branch."""
    model = _model().eval()
    attn = model.blocks[0].cross_attn
    g = torch.Generator().manual_seed(2)
    h, ctx, face = torch.randn(2, 6, 32, generator=g), torch.randn(2, 5, 32, generator=g), torch.randn(2, 3, 12)
    with torch.no_grad():
        base, one = attn(h, ctx, None, None), attn(h, ctx, None, face)
        torch.testing.assert_close(attn(h, ctx, None, face, 2.5), base + 2.5 * (one - base), atol=1e-5, rtol=1e-5)
