"""CoFE module: shapes per block, gates, gradients, config and input errors (tiny CPU shapes)."""

import pytest
import torch

from cofe_fusion import (
    CoFE,
    CoFEConfig,
    ExpertFeatures,
    ExpertGate,
    ExpertProjector,
    ExpertSpec,
    MLPTokenProjector,
    PerceiverResampler,
    expert_gate,
)

B = 2


def tiny_features(cfg: CoFEConfig, seed: int = 0, batch: int = B) -> dict[str, ExpertFeatures]:
    """Random stand-ins for the three experts: identity gives only a pooled vector, the others tokens + pooled."""
    gen = torch.Generator().manual_seed(seed)
    feats = {}
    for i, spec in enumerate(cfg.experts):
        tokens = None if spec.projector == "mlp" else torch.randn(batch, 5 + 2 * i, spec.width, generator=gen)
        feats[spec.name] = ExpertFeatures(tokens=tokens, pooled=torch.randn(batch, spec.width, generator=gen))
    return feats


@pytest.mark.parametrize("gate_mode", ["block", "token"])
def test_shapes_per_block_and_uniform_start(gate_mode):
    torch.manual_seed(0)
    cfg = CoFEConfig.from_name("tiny", gate_mode=gate_mode)
    out = CoFE(cfg)(tiny_features(cfg))
    m, d, e = cfg.num_tokens, cfg.dim, cfg.num_experts
    assert len(out.tokens) == cfg.num_blocks
    assert all(t.shape == (B, m, d) for t in out.tokens)
    assert out.experts.shape == (B, m, e, d)
    gate_shape = (cfg.num_blocks, B, e) if gate_mode == "block" else (cfg.num_blocks, B, m, e)
    assert out.gates.shape == gate_shape and out.gates.dtype == torch.float32
    # Zero-initialised last gate layer: fusion starts as the equal average of the projected experts.
    torch.testing.assert_close(out.gates, torch.full(gate_shape, 1 / e))
    for t in out.tokens:
        torch.testing.assert_close(t, out.experts.mean(dim=2))


@pytest.mark.parametrize("gate_mode", ["block", "token"])
def test_gates_sum_to_one_and_tokens_follow_them(gate_mode):
    torch.manual_seed(1)
    cfg = CoFEConfig.from_name("tiny", gate_mode=gate_mode)
    cofe = CoFE(cfg)
    for gate in cofe.gates:
        torch.nn.init.normal_(gate.fc2.weight, std=1.0)  # move away from the uniform start
    out = cofe(tiny_features(cfg))
    torch.testing.assert_close(out.gates.sum(-1), torch.ones(out.gates.shape[:-1]))
    assert not torch.allclose(out.gates[0], out.gates[1])  # each block has its own gate
    for blk, tokens in enumerate(out.tokens):
        g = out.gates[blk] if gate_mode == "token" else out.gates[blk][:, None]  # (B, M|1, E)
        torch.testing.assert_close(tokens, (g[..., None] * out.experts).sum(dim=2))


@pytest.mark.parametrize("gate_mode", ["block", "token"])
def test_gradients_reach_projectors_and_gates(gate_mode):
    torch.manual_seed(2)
    cfg = CoFEConfig.from_name("tiny", gate_mode=gate_mode)
    cofe = CoFE(cfg)
    target = torch.randn(cfg.num_blocks, B, cfg.num_tokens, cfg.dim)
    loss = sum(((t - target[blk]) ** 2).mean() for blk, t in enumerate(cofe(tiny_features(cfg)).tokens))
    loss.backward()
    for name, p in cofe.named_parameters():
        # At the uniform start the gates' first layer sees a zero W2 downstream, so only W2 gets a gradient.
        if ".fc1." in name and name.startswith("gates."):
            assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
    # One optimiser step later the whole gate trains.
    torch.optim.SGD(cofe.parameters(), lr=0.5).step()
    cofe.zero_grad()
    loss = sum(((t - target[blk]) ** 2).mean() for blk, t in enumerate(cofe(tiny_features(cfg)).tokens))
    loss.backward()
    assert all(g.fc1.weight.grad.abs().sum() > 0 for g in cofe.gates)
    assert len(cofe.trainable_parameters()) == len(list(cofe.parameters()))


def test_gate_context_input():
    torch.manual_seed(3)
    cfg = CoFEConfig.from_name("tiny", gate_context_dim=6, gate_mode="token")
    cofe = CoFE(cfg)
    for gate in cofe.gates:
        torch.nn.init.normal_(gate.fc2.weight)
    feats = tiny_features(cfg)
    a = cofe(feats, context=torch.zeros(B, 6)).gates
    b = cofe(feats, context=torch.ones(B, 6)).gates
    assert a.shape == (cfg.num_blocks, B, cfg.num_tokens, cfg.num_experts) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"context must be \(2, 6\), got \(2, 5\)"):
        cofe(feats, context=torch.zeros(B, 5))
    with pytest.raises(ValueError, match="gate_context_dim is None"):
        CoFE(CoFEConfig.from_name("tiny"))(feats, context=torch.zeros(B, 6))


def test_features_as_sequence_bare_tensors_and_fallbacks():
    torch.manual_seed(4)
    cfg = CoFEConfig.from_name("tiny")
    cofe = CoFE(cfg)
    feats = tiny_features(cfg)
    by_name = cofe(feats).tokens
    in_order = cofe([feats[n] for n in cfg.expert_names]).tokens
    for a, b in zip(by_name, in_order, strict=True):
        torch.testing.assert_close(a, b)
    # Bare tensors: 2-D is pooled, 3-D is tokens. The MLP projector falls back to the token mean; the perceiver
    # takes a pooled vector as a single token.
    bare = [feats["identity"].pooled, feats["semantic"].tokens, feats["detail"].pooled]
    assert all(t.shape == (B, cfg.num_tokens, cfg.dim) for t in cofe(bare).tokens)
    proj = ExpertProjector(ExpertSpec("identity", 16, "mlp"), cfg)
    tokens = torch.randn(B, 3, 16)
    torch.testing.assert_close(proj(ExpertFeatures(tokens=tokens)), proj(ExpertFeatures(pooled=tokens.mean(1))))
    # Only the input a projector reads is checked: CLIP-like experts have pooled vectors of another width.
    semantic = ExpertFeatures(tokens=torch.randn(B, 5, 24), pooled=torch.randn(B, 7))
    assert cofe({**feats, "semantic": semantic}).tokens[0].shape == (B, cfg.num_tokens, cfg.dim)


def test_projector_variants_shapes():
    torch.manual_seed(5)
    res = PerceiverResampler(in_dim=24, out_dim=8, num_tokens=4, dim=16, depth=2, num_heads=2, ff_mult=2)
    assert res(torch.randn(B, 11, 24)).shape == (B, 4, 8)
    assert res(torch.randn(B, 1, 24)).shape == (B, 4, 8)  # any number of input tokens
    mlp = MLPTokenProjector(in_dim=512, out_dim=8, num_tokens=4)  # an ArcFace embedding to 4 tokens
    assert mlp(torch.randn(B, 512)).shape == (B, 4, 8)
    gate = ExpertGate(in_dim=24, hidden=16, num_experts=3)
    torch.testing.assert_close(gate.probs(torch.randn(B, 24)), torch.full((B, 3), 1 / 3))


def test_uses_expert_gate_op(monkeypatch):
    """The weighted sum goes through `expert_gate` (the Triton kernel on CUDA), once per block."""
    import cofe_fusion.model as model_module

    calls = []

    def spy(logits, experts, **kwargs):
        calls.append((tuple(logits.shape), tuple(experts.shape), kwargs["backend"]))
        return expert_gate(logits, experts, **kwargs)

    monkeypatch.setattr(model_module, "expert_gate", spy)
    cfg = CoFEConfig.from_name("tiny")
    CoFE(cfg)(tiny_features(cfg))
    assert calls == [((B, 3), (B, 4, 3, 8), "auto")] * cfg.num_blocks


def test_input_errors_name_the_expert_and_shapes():
    cfg = CoFEConfig.from_name("tiny")
    cofe = CoFE(cfg)
    feats = tiny_features(cfg)
    with pytest.raises(ValueError, match=r"expects features for experts \['identity', 'semantic', 'detail'\]"):
        cofe({k: v for k, v in feats.items() if k != "detail"})
    with pytest.raises(
        ValueError, match=r"'semantic': its perceiver projector reads tokens \(B, L>0, C\) with C=24, got \(2, 5, 23\)"
    ):
        cofe({**feats, "semantic": ExpertFeatures(tokens=torch.randn(B, 5, 23))})
    with pytest.raises(
        ValueError, match=r"'identity': its mlp projector reads pooled \(B, C\) with C=16, got \(2, 15\)"
    ):
        cofe({**feats, "identity": ExpertFeatures(pooled=torch.randn(B, 15))})
    with pytest.raises(ValueError, match=r"expert 'identity': pooled must be \(B, C\), got \(2, 3, 16\)"):
        cofe({**feats, "identity": ExpertFeatures(pooled=torch.randn(B, 3, 16))})
    with pytest.raises(ValueError, match=r"neither \.tokens"):
        cofe({**feats, "detail": ExpertFeatures()})
    with pytest.raises(ValueError, match=r"differ in batch size: \{'identity': 3, 'semantic': 2, 'detail': 2\}"):
        cofe({**feats, "identity": ExpertFeatures(pooled=torch.randn(3, 16))})
    with pytest.raises(ValueError, match=r"expects 3 expert outputs"):
        cofe(list(feats.values())[:2])


def test_config_validation_and_round_trip():
    cfg = CoFEConfig(experts={"identity": (512, "mlp"), "semantic": 1280}, num_blocks=3, dim=64)
    assert cfg.experts == (ExpertSpec("identity", 512, "mlp"), ExpertSpec("semantic", 1280, None))
    assert cfg.projector_of(cfg.experts[1]) == "perceiver"
    assert CoFEConfig.from_dict(cfg.to_dict()) == cfg
    assert CoFEConfig.from_name("wan2.1-14b").dim == 5120
    with pytest.raises(ValueError, match="unknown CoFE preset 'huge'"):
        CoFEConfig.from_name("huge")
    with pytest.raises(ValueError, match="gate_mode must be one of"):
        CoFEConfig(gate_mode="video")
    with pytest.raises(ValueError, match="duplicate names"):
        CoFEConfig(experts=[("a", 4), ("a", 8)])
    with pytest.raises(ValueError, match="resampler_dim=30 is not divisible by resampler_heads=16"):
        CoFEConfig(resampler_dim=30)
    with pytest.raises(ValueError, match=r"unknown CoFEConfig keys \['blocks'\]"):
        CoFEConfig.from_dict({"blocks": 3})
