"""Sampling levers: face window, face-branch scale, batched guidance and the step cache. Defaults reproduce the plain
guided sampler bit for bit; the levers are checked against what they claim."""

import pytest
import torch

from cofe_dit import DiT, DiTConfig, GuidedVelocity, SamplerConfig, StepCache, i2v_condition, sample, solve
from cofe_dit.sampling import model_timestep

SHAPE = (1, 4, 3, 4, 4)
BATCH_TOL = dict(atol=1e-5, rtol=1e-5)  # batched vs separate passes, fp32: GEMMs of another batch size


def _model(name="tiny", face_dim=12, seed=0) -> DiT:
    torch.manual_seed(seed)
    model = DiT(DiTConfig.from_name(name, face_dim=face_dim)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def setup():
    model = _model()
    g = torch.Generator().manual_seed(1)
    ctx, neg = torch.randn(1, 5, 16, generator=g), torch.randn(1, 5, 16, generator=g)
    faces = [torch.randn(1, 3, 12, generator=g) for _ in range(2)]
    return model, ctx, neg, faces


def _reference(model, ctx, neg, faces, neg_faces, config, face_on=lambda i: True, noise_seed=0):
    """The plain sampler, written out: v = sum_k w_k v_k over the three passes, conditional first."""
    sigmas = config.sigmas()
    s_t, s_f = config.text_scale, config.face_scale
    weights = {"full": s_f, "text": s_t - s_f, "neg": 1.0 - s_t}

    def velocity(x, sigma):
        i = sigmas.index(sigma)
        t = torch.full((1,), model_timestep(sigma))
        inputs = {
            "full": (ctx, faces if face_on(i) else neg_faces),
            "text": (ctx, neg_faces),
            "neg": (neg, neg_faces),
        }
        v = None
        for key in ("full", "text", "neg"):
            if weights[key] != 0.0:
                term = weights[key] * model(x, t, inputs[key][0], face_tokens=inputs[key][1]).float()
                v = term if v is None else v + term
        return v

    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(noise_seed))
    with torch.no_grad():
        return solve(velocity, noise, sigmas, config.solver)


def test_defaults_are_the_plain_sampler_bit_for_bit(setup):
    model, ctx, neg, faces = setup
    zeros = [torch.zeros_like(f) for f in faces]
    config = SamplerConfig(steps=3, text_scale=4.0, face_scale=2.0)
    assert (config.face_window, config.batch_guidance, config.cache_threshold) == ((0.0, 1.0), False, 0.0)
    got = sample(model, SHAPE, ctx, negative_context=neg, face_tokens=faces, negative_face_tokens=zeros, config=config)
    assert torch.equal(got, _reference(model, ctx, neg, faces, zeros, config))


def test_face_window_gives_faces_only_inside_and_merges_passes(setup):
    model, ctx, neg, faces = setup
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a, k: seen.append(k["face_tokens"]), with_kwargs=True)
    try:
        config = SamplerConfig(steps=4, text_scale=4.0, face_scale=2.0, face_window=(0.5, 1.0))
        got = sample(model, SHAPE, ctx, negative_context=neg, face_tokens=faces, config=config)
    finally:
        hook.remove()
    # Steps 0, 1 (i/n = 0, 0.25): face pass = text pass, merged: 2 evaluations; steps 2, 3: 3 evaluations.
    assert len(seen) == 2 + 2 + 3 + 3
    assert [s is faces for s in seen] == [False, False, False, False, True, False, False, True, False, False]
    expected = _reference(model, ctx, neg, faces, None, config, face_on=lambda i: i >= 2)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)  # merged weights: (s_t - s_f) + s_f = s_t
    for bad in ((0.5, 0.4), (-0.1, 1.0), (0.0, 1.5), (0.2,)):
        with pytest.raises(ValueError, match="face_window must"):
            SamplerConfig(face_window=bad)
    assert SamplerConfig(face_window=[0, 0.5]).face_window == (0.0, 0.5)  # from YAML: a list


def test_face_branch_scale_reaches_only_the_face_pass(setup):
    model, ctx, neg, faces = setup
    seen = []
    hook = model.register_forward_pre_hook(
        lambda m, a, k: seen.append((k["face_tokens"] is faces, k.get("face_scale", "absent"))), with_kwargs=True
    )
    try:
        config = SamplerConfig(steps=2, text_scale=4.0, face_scale=2.0)
        sample(model, SHAPE, ctx, negative_context=neg, face_tokens=faces, config=config)
        assert set(seen) == {(True, "absent"), (False, "absent")}  # default: the plain call
        seen.clear()
        sample(model, SHAPE, ctx, negative_context=neg, face_tokens=faces, config=config, face_branch_scale=[0.5, 2])
        assert seen[:3] == [(True, [0.5, 2.0]), (False, "absent"), (False, "absent")]
    finally:
        hook.remove()
    with pytest.raises(ValueError, match=r"face_branch_scale needs one entry per block \(2\), got 1"):
        sample(model, SHAPE, ctx, negative_context=neg, face_tokens=faces, config=config, face_branch_scale=[1.0])


@pytest.mark.parametrize("neg_faces", ["none", "zeros"])
def test_batch_guidance_equals_separate_passes(setup, neg_faces):
    """None face tokens (branch off) differ from zero tokens by the branch's bias path; batching keeps both right."""
    model, ctx, neg, faces = setup
    negatives = None if neg_faces == "none" else [torch.zeros_like(f) for f in faces]
    with torch.no_grad():
        bias_path = model(
            torch.ones(SHAPE), torch.tensor([500.0]), ctx, face_tokens=[torch.zeros_like(f) for f in faces]
        )
        assert (bias_path - model(torch.ones(SHAPE), torch.tensor([500.0]), ctx)).abs().max() > 1e-3
    out = {}
    for batched in (False, True):
        config = SamplerConfig(steps=2, text_scale=4.0, face_scale=2.0, batch_guidance=batched)
        out[batched] = sample(
            model, SHAPE, ctx, negative_context=neg, face_tokens=faces, negative_face_tokens=negatives, config=config,
            face_branch_scale=[1.5, 1.0],
        )  # fmt: skip
    torch.testing.assert_close(out[True], out[False], **BATCH_TOL)
    velocity = GuidedVelocity(
        model, ctx, negative_context=neg, face_tokens=faces, negative_face_tokens=negatives, text_scale=4.0,
        face_scale=2.0, batch_guidance=True,
    )  # fmt: skip
    with torch.no_grad():
        velocity(torch.randn(SHAPE), 0.5)
    assert velocity.evaluations == 1  # three passes, one forward


def test_batch_guidance_with_i2v_and_ti2v_conditions():
    for name in ("tiny-i2v", "tiny-ti2v"):
        model = _model(name, face_dim=None)
        g = torch.Generator().manual_seed(4)
        ctx, neg = torch.randn(1, 5, 16, generator=g), torch.randn(1, 5, 16, generator=g)
        extra = {}
        if name == "tiny-i2v":
            extra = dict(
                cond=i2v_condition(torch.randn(1, 4, 3, 4, 4, generator=g), 3),
                clip_tokens=torch.randn(1, 3, model.cfg.image_dim, generator=g),
            )
        else:
            extra = dict(first_frame=torch.randn(1, 4, 1, 4, 4, generator=g))
        out = [
            sample(model, SHAPE, ctx, negative_context=neg, config=SamplerConfig(steps=2, batch_guidance=b), **extra)
            for b in (False, True)
        ]
        torch.testing.assert_close(out[1], out[0], **BATCH_TOL)


def test_batch_guidance_needs_equal_shapes(setup):
    model, ctx, neg, faces = setup
    with pytest.raises(ValueError, match=r"context \(1, 5, 16\) and negative_context \(1, 7, 16\) must have the same"):
        GuidedVelocity(model, ctx, negative_context=torch.randn(1, 7, 16), batch_guidance=True)
    short = [torch.zeros(1, 2, 12)] * 2
    with pytest.raises(ValueError, match=r"face_tokens\[0\] and negative_face_tokens\[0\] must have the same shape"):
        GuidedVelocity(
            model, ctx, negative_context=neg, face_tokens=faces, negative_face_tokens=short, batch_guidance=True
        )


# ---------------------------------------------------------------------------------------------------- step cache


def test_step_cache_off_by_default_and_exact_when_it_never_reuses(setup):
    model, ctx, neg, faces = setup
    config = SamplerConfig(steps=4, text_scale=4.0, face_scale=2.0)
    plain = sample(model, SHAPE, ctx, negative_context=neg, face_tokens=faces, config=config)
    cache = StepCache(1e-12)  # runs block 0 separately and compares, but never reuses
    kept = sample(model, SHAPE, ctx, negative_context=neg, face_tokens=faces, config=config, step_cache=cache)
    assert torch.equal(kept, plain)
    assert (cache.cached, cache.computed) == (0, 12) and len(cache.changes) == 2 * 3  # steps 1-2 compared, 3 passes


def test_step_cache_reuses_between_the_first_and_last_step(setup):
    model, ctx, neg, faces = setup
    plain_config = SamplerConfig(steps=4, text_scale=4.0, face_scale=2.0)
    plain = sample(model, SHAPE, ctx, negative_context=neg, face_tokens=faces, config=plain_config)
    cache = StepCache(1e6)  # reuses whenever allowed
    config = SamplerConfig(steps=4, text_scale=4.0, face_scale=2.0, cache_threshold=1e6)
    got = sample(model, SHAPE, ctx, negative_context=neg, face_tokens=faces, config=config, step_cache=cache)
    assert (cache.cached, cache.computed) == (3 * 2, 3 * 2)  # steps 1-2 reused, 0 and 3 computed, per pass
    assert {step for step, *_ in cache.changes} == {1, 2}
    assert torch.isfinite(got).all() and not torch.equal(got, plain)
    # Batched guidance: one stream for the three passes together.
    cache = StepCache(1e6)
    config = SamplerConfig(steps=4, text_scale=4.0, face_scale=2.0, batch_guidance=True, cache_threshold=1e6)
    batched = sample(model, SHAPE, ctx, negative_context=neg, face_tokens=faces, config=config, step_cache=cache)
    assert (cache.cached, cache.computed) == (2, 2)
    torch.testing.assert_close(batched, got, atol=1e-4, rtol=1e-4)


def test_step_cache_reuse_adds_the_stored_residual():
    """A reused call returns block0(h) + R*, R* being the other blocks' residual of the last computed step."""
    model = _model(face_dim=None)
    x, t, ctx = torch.randn(SHAPE), torch.tensor([500.0]), torch.randn(1, 5, 16)
    cache = StepCache(1e6)
    with torch.no_grad():
        cache.start_step(1, 3)
        first = model(x, t, ctx, step_cache=cache, cache_key="a")  # nothing stored yet: computed
        assert torch.equal(first, model(x, t, ctx)) and cache.computed == 1
        cache.start_step(2, 3)  # the last step never reuses
        model(x, t, ctx, step_cache=cache, cache_key="a")
        assert cache.cached == 0
        cache.start_step(1, 3)
        reused = model(x + 0.01, t, ctx, step_cache=cache, cache_key="a")
    assert cache.cached == 1
    torch.testing.assert_close(reused, model(x + 0.01, t, ctx), atol=0.05, rtol=0.05)  # close, not equal
    assert not torch.equal(reused, model(x + 0.01, t, ctx))


def test_step_cache_arguments_are_validated(setup):
    model, ctx, *_ = setup
    with pytest.raises(ValueError, match="threshold must be finite and >= 0"):
        StepCache(-0.1)
    with pytest.raises(ValueError, match="warmup_steps must be >= 1"):
        StepCache(0.1, warmup_steps=0)
    with pytest.raises(ValueError, match="cache_threshold must be finite and >= 0"):
        SamplerConfig(cache_threshold=float("nan"))
    with pytest.raises(ValueError, match=r"step_cache has threshold 0.1 but config.cache_threshold is 0.2"):
        sample(model, SHAPE, ctx, config=SamplerConfig(steps=2, text_scale=1.0, cache_threshold=0.2),
               step_cache=StepCache(0.1))  # fmt: skip
    with pytest.raises(ValueError, match="step_cache needs sigmas"):
        GuidedVelocity(model, ctx, text_scale=1.0, step_cache=StepCache(0.1))
    with pytest.raises(RuntimeError, match="call start_step"):
        model(torch.randn(SHAPE), torch.tensor([1.0]), ctx, step_cache=StepCache(0.1), cache_key=0)
