"""CoFE inference controls: per-expert weights on the learned gates, and finiteness checks behind a debug flag."""

import pytest
import torch

from cofe_fusion import CoFE, CoFEConfig, ExpertFeatures


def _cofe(gate_mode="block", seed=0) -> tuple[CoFE, dict]:
    """A tiny CoFE with non-uniform gates, and features for it."""
    torch.manual_seed(seed)
    cfg = CoFEConfig.from_name("tiny", gate_mode=gate_mode)
    cofe = CoFE(cfg)
    for gate in cofe.gates:
        torch.nn.init.normal_(gate.fc2.weight, std=1.0)  # away from the uniform start
    g = torch.Generator().manual_seed(seed + 1)
    feats = {
        s.name: ExpertFeatures(
            tokens=None if s.projector == "mlp" else torch.randn(2, 5, s.width, generator=g),
            pooled=torch.randn(2, s.width, generator=g),
        )
        for s in cfg.experts
    }
    return cofe, feats


@pytest.mark.parametrize("gate_mode", ["block", "token"])
def test_expert_weights_renormalise_the_learned_gates(gate_mode):
    cofe, feats = _cofe(gate_mode)
    plain = cofe(feats)
    default = cofe(feats, expert_weights=None)
    assert all(torch.equal(a, b) for a, b in zip(default.tokens, plain.tokens, strict=True))
    assert torch.equal(default.gates, plain.gates)
    w = torch.tensor([2.0, 0.5, 0.0])  # identity x2, semantic x0.5, detail removed
    out = cofe(feats, expert_weights={"identity": 2.0, "semantic": 0.5, "detail": 0.0})
    expected = plain.gates * w / (plain.gates * w).sum(-1, keepdim=True)  # g'_k = g_k w_k / sum_j g_j w_j
    torch.testing.assert_close(out.gates, expected)
    assert torch.all(out.gates[..., 2] == 0)
    for blk, tokens in enumerate(out.tokens):
        g = out.gates[blk] if gate_mode == "token" else out.gates[blk][:, None]  # (B, M|1, E)
        torch.testing.assert_close(tokens, (g[..., None] * out.experts).sum(dim=2))
    # A sequence in config order is the same; unnamed experts keep weight 1; all-ones is the learned gates.
    seq = cofe(feats, expert_weights=[2.0, 0.5, 0.0])
    assert torch.equal(seq.gates, out.gates)
    torch.testing.assert_close(cofe(feats, expert_weights={"detail": 1.0}).gates, plain.gates)
    torch.testing.assert_close(cofe(feats, expert_weights=[3.0, 3.0, 3.0]).gates, plain.gates)


def test_zero_weight_keeps_gradients_finite():
    cofe, feats = _cofe()
    out = cofe(feats, expert_weights=[1.0, 0.0, 1.0])
    (sum(t.square().sum() for t in out.tokens) + out.gates.square().sum()).backward()
    grads = [p.grad for p in cofe.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"identity": 1.0, "face": 2.0}, r"names unknown experts \['face'\]; the experts are \['identity', "),
        ([1.0, 2.0], r"needs one weight per expert \['identity', 'semantic', 'detail'\], got 2"),
        ([1.0, -0.5, 1.0], r"must be finite and >= 0, got \{'semantic': -0.5\}"),
        ([1.0, float("nan"), 1.0], r"must be finite and >= 0, got \{'semantic': nan\}"),
        ([0.0, 0.0, 0.0], r"are all zero: no expert left"),
    ],
)
def test_bad_expert_weights_are_rejected(weights, message):
    cofe, feats = _cofe()
    with pytest.raises(ValueError, match=message):
        cofe(feats, expert_weights=weights)


def test_finite_checks_only_when_debugging(monkeypatch):
    """The NaN check is a host sync per block on CUDA: off by default, on with `debug_checks` or the env var."""
    monkeypatch.delenv("COFE_DEBUG_CHECKS", raising=False)
    cofe, feats = _cofe()
    assert cofe.debug_checks is False
    with torch.no_grad():
        cofe.gates[1].fc2.bias[0] = float("nan")
    out = cofe(feats)  # default: no check, the NaN propagates
    assert torch.isnan(out.tokens[1]).all() and torch.isfinite(out.tokens[0]).all()
    cofe.debug_checks = True
    with pytest.raises(ValueError, match=r"gate 1 logits of shape \(2, 3\) contain NaN or Inf"):
        cofe(feats)
    cofe.debug_checks = False
    monkeypatch.setenv("COFE_DEBUG_CHECKS", "1")
    with pytest.raises(ValueError, match=r"gate 1 logits"):
        cofe(feats)
    # A zero expert weight's -inf logit is intended, not an error.
    with torch.no_grad():
        cofe.gates[1].fc2.bias[0] = 0.0
    assert all(torch.isfinite(t).all() for t in cofe(feats, expert_weights=[0.0, 1.0, 1.0]).tokens)


def test_default_forward_makes_no_host_sync(monkeypatch):
    """A tensor -> Python conversion is a device sync on CUDA; neither a default nor a weighted forward makes one."""
    monkeypatch.delenv("COFE_DEBUG_CHECKS", raising=False)
    cofe, feats = _cofe()

    def sync(*args, **kwargs):
        raise AssertionError("host sync in the forward")

    for name in ("__bool__", "item", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    cofe(feats)
    cofe(feats, expert_weights={"identity": 2.0, "detail": 0.0})
