"""Samplers: exactness on analytic flows, second-order accuracy, determinism, guidance, TI2V first frame."""

import pytest
import torch

from cofe_dit import DiT, DiTConfig, GuidedVelocity, SamplerConfig, sample, sigma_schedule, solve


def _gaussian_velocity(scale: float):
    """Exact rectified-flow velocity for data x0 ~ N(0, scale^2 I): E[x0 | x] = (1-s) scale^2 / var * x."""

    def v(x, sigma):
        if sigma <= 0:
            return torch.zeros_like(x)
        var = (1 - sigma) ** 2 * scale**2 + sigma**2
        x0 = (1 - sigma) * scale**2 / var * x
        return (x - x0) / sigma

    return v


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m"])
def test_solvers_land_on_a_single_data_point(solver):
    target = torch.tensor([1.5, -2.0, 0.25])
    velocity = lambda x, s: (x - target) / s  # noqa: E731  (data is one point: x0 = target exactly)
    out = solve(velocity, torch.randn(3), sigma_schedule(6, 3.0).tolist(), solver)
    torch.testing.assert_close(out, target, atol=1e-5, rtol=0)


def test_dpmpp_2m_is_more_accurate_than_euler_on_a_gaussian():
    """For Gaussian data the probability-flow ODE maps noise eps to scale * eps exactly."""
    scale, noise = 0.5, torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = {}
    for solver in ("euler", "dpmpp_2m"):
        for steps in (8, 16):
            out = solve(_gaussian_velocity(scale), noise, sigma_schedule(steps, 1.0).tolist(), solver)
            errors[solver, steps] = (out - scale * noise).abs().max().item()
    assert errors["dpmpp_2m", 8] < errors["euler", 8] / 4
    # Euler is first order (error halves with twice the steps); DPM-Solver++(2M) converges faster.
    assert errors["euler", 16] == pytest.approx(errors["euler", 8] / 2, rel=0.25)
    assert errors["dpmpp_2m", 16] < errors["dpmpp_2m", 8] / 3


def _model(name="tiny", **kw):
    torch.manual_seed(0)
    model = DiT(DiTConfig.from_name(name, **kw)).eval()
    with torch.no_grad():
        model.head.head.weight.normal_(std=0.1)
    return model


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m"])
def test_sampling_is_deterministic_given_a_seed(solver):
    model = _model()
    ctx, neg = torch.randn(1, 5, 16), torch.zeros(1, 5, 16)
    cfg = SamplerConfig(steps=4, solver=solver, text_scale=4.0)
    a = sample(model, (1, 4, 3, 4, 4), ctx, negative_context=neg, config=cfg, seed=7)
    b = sample(model, (1, 4, 3, 4, 4), ctx, negative_context=neg, config=cfg, seed=7)
    c = sample(model, (1, 4, 3, 4, 4), ctx, negative_context=neg, config=cfg, seed=8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_guidance_combines_text_and_face_predictions():
    model = _model(face_dim=12)
    with torch.no_grad():
        for p in model.face_parameters():
            p.normal_(std=0.2)
    x, ctx, neg = torch.randn(1, 4, 1, 4, 4), torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    faces = [torch.randn(1, 3, 12) for _ in range(2)]
    guided = GuidedVelocity(model, ctx, negative_context=neg, face_tokens=faces, text_scale=5.0, face_scale=2.5)
    with torch.no_grad():
        v = guided(x, 0.6)
        t = torch.tensor([600.0])
        v_full = model(x, t, ctx, face_tokens=faces)
        v_text = model(x, t, ctx)
        v_neg = model(x, t, neg)
    assert guided.evaluations == 3
    torch.testing.assert_close(v, v_neg + 5.0 * (v_text - v_neg) + 2.5 * (v_full - v_text))
    # Scales of 1 skip the passes they make unnecessary.
    plain = GuidedVelocity(model, ctx, face_tokens=faces, text_scale=1.0, face_scale=1.0)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, 0.6), v_full)
    assert plain.evaluations == 1
    # A model trained with faces dropped to zero tokens contrasts with zero tokens, not with the branch off.
    zeros = [torch.zeros_like(f) for f in faces]
    dropped = GuidedVelocity(model, ctx, face_tokens=faces, text_scale=1.0, face_scale=2.0, negative_face_tokens=zeros)
    with torch.no_grad():
        v_zero = model(x, t, ctx, face_tokens=zeros)
        torch.testing.assert_close(dropped(x, 0.6), v_zero + 2.0 * (v_full - v_zero))
    assert not torch.allclose(v_zero, v_text)
    with pytest.raises(ValueError, match="needs negative_context"):
        GuidedVelocity(model, ctx, text_scale=3.0)


def test_ti2v_keeps_the_given_first_frame():
    model = _model("tiny-ti2v")
    first = torch.randn(1, 4, 1, 4, 4)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    out = sample(
        model,
        (1, 4, 3, 4, 4),
        torch.randn(1, 5, 16),
        first_frame=first,
        config=SamplerConfig(steps=3, text_scale=1.0),
        seed=0,
    )
    torch.testing.assert_close(out[:, :, :1], first)
    assert all(t.shape == (1, 12) and torch.all(t[:, :4] == 0) and torch.all(t[:, 4:] > 0) for t in seen)


def test_sampler_rejects_bad_arguments():
    model = _model()
    with pytest.raises(ValueError, match="steps must be >= 1"):
        SamplerConfig(steps=0)
    with pytest.raises(ValueError, match="unknown solver 'heun'"):
        SamplerConfig(solver="heun")
    with pytest.raises(ValueError, match=r"noise shape \(1, 4, 1, 4, 4\) != requested shape \(1, 4, 3, 4, 4\)"):
        sample(
            model,
            (1, 4, 3, 4, 4),
            torch.randn(1, 5, 16),
            noise=torch.randn(1, 4, 1, 4, 4),
            config=SamplerConfig(steps=1, text_scale=1.0),
        )
