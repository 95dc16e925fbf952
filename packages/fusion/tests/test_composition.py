"""Composition proof: CoFE tokens drive a tiny cofe_dit DiT through its zero-initialised face branches.

cofe_fusion does not import cofe_dit; this test does, to show the two packages fit as DESIGN.md prescribes.
"""

import fnmatch
import re

import pytest
import torch
from torch import nn

from cofe_fusion import DIT_TRAINABLE_PATTERNS, CoFE, CoFEConfig, ExpertFeatures, freeze_dit_for_cofe

cofe_dit = pytest.importorskip("cofe_dit")

B = 2


class TinyExpert(nn.Module):
    """A frozen stand-in expert: a random conv 'backbone' giving tokens and a pooled vector, like ExpertOutput."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(3, width, kernel_size=4, stride=4)
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> ExpertFeatures:
        tokens = self.conv(images).flatten(2).transpose(1, 2)  # (B, L, C)
        return ExpertFeatures(tokens=tokens, pooled=tokens.mean(dim=1))


def build(seed: int = 0):
    torch.manual_seed(seed)
    cfg = CoFEConfig.from_name("tiny")
    dit = cofe_dit.DiT(cofe_dit.DiTConfig.from_name("tiny", face_dim=cfg.dim, num_layers=cfg.num_blocks))
    # Stand in for a pretrained DiT: Wan zero-initialises the output head, which would hide every upstream change.
    nn.init.normal_(dit.head.head.weight, std=0.02)
    cofe = CoFE(cfg)
    experts = {s.name: TinyExpert(s.width) for s in cfg.experts}
    face = torch.randn(B, 3, 16, 16)
    feats = {name: ex.encode(face) for name, ex in experts.items()}
    x = torch.randn(B, 4, 2, 4, 4)  # (B, C, F, H, W) latent video
    t = torch.tensor([300.0, 700.0])
    ctx = torch.randn(B, 8, dit.cfg.text_dim)
    return dit, cofe, feats, (x, t, ctx)


def test_zero_initialised_face_branch_leaves_the_dit_unchanged():
    dit, cofe, feats, (x, t, ctx) = build()
    with torch.no_grad():
        tokens = cofe(feats).tokens
        assert tokens[0].abs().sum() > 0  # the fused tokens themselves are not trivial
        assert torch.equal(dit(x, t, ctx, face_tokens=tokens), dit(x, t, ctx))


def test_freezing_as_cofe_prescribes_trains_only_cross_attention_projections_and_gates():
    dit, cofe, feats, (x, t, ctx) = build(seed=1)
    trainable = freeze_dit_for_cofe(dit)
    out = dit(x, t, ctx, face_tokens=cofe(feats).tokens)
    out.square().mean().backward()
    for name, p in dit.named_parameters():
        in_cross_attn = any(fnmatch.fnmatchcase(name, pat) for pat in DIT_TRAINABLE_PATTERNS)
        assert in_cross_attn == (p.grad is not None), f"{name}: trainable={in_cross_attn}, grad={p.grad is not None}"
        assert in_cross_attn == p.requires_grad, name
    assert {id(p) for p in trainable} == {id(p) for n, p in dit.named_parameters() if ".cross_attn." in n}
    assert all(b.cross_attn.face.o.weight.grad.abs().sum() > 0 for b in dit.blocks)  # the face branch learns
    assert all(p.grad is not None for p in cofe.parameters())  # reached (zero at init behind the zero branch)
    with pytest.raises(ValueError, match=re.escape("pattern 'blocks.*.attn2.*' matches no parameter of DiT")):
        freeze_dit_for_cofe(dit, ["blocks.*.attn2.*"])


@pytest.mark.slow
def test_training_a_few_steps_makes_the_face_tokens_matter():
    dit, cofe, feats, (x, t, ctx) = build(seed=2)
    params = freeze_dit_for_cofe(dit) + cofe.trainable_parameters()
    opt = torch.optim.Adam(params, lr=1e-2)
    target = torch.randn_like(x)
    before = {n: p.detach().clone() for n, p in cofe.named_parameters()}
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = (dit(x, t, ctx, face_tokens=cofe(feats).tokens) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with torch.no_grad():
        with_face = dit(x, t, ctx, face_tokens=cofe(feats).tokens)
        without = dit(x, t, ctx)
        swapped = {k: ExpertFeatures(v.tokens.flip(0), v.pooled.flip(0)) for k, v in feats.items()}  # other faces
        other_face = dit(x, t, ctx, face_tokens=cofe(swapped).tokens)
    assert (with_face - without).abs().max() > 1e-4  # the face branch now changes the output
    assert (with_face - other_face).abs().max() > 1e-6  # and which face it sees matters
    changed = [n for n, p in cofe.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("projectors.") for n in changed) and any(n.startswith("gates.") for n in changed)
