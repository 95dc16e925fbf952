"""Samplers: exactness on analytic flows, convergence order, UniPC step-for-step parity with diffusers, Wan's
schedule and integer timesteps, guidance at every pair of scales, determinism, TI2V first frame."""

import math

import numpy as np
import pytest
import torch

from cofe_dit import (
    DiT,
    DiTConfig,
    GuidedVelocity,
    SamplerConfig,
    model_timestep,
    sample,
    shift_sigmas,
    sigma_schedule,
    solve,
)

SOLVERS = ["unipc", "euler", "dpmpp_2m"]


def _gaussian_velocity(scale: float):
    """Exact rectified-flow velocity for data x0 ~ N(0, scale^2 I): E[x0 | x] = (1-s) scale^2 / var * x."""

    def v(x, sigma):
        var = (1 - sigma) ** 2 * scale**2 + sigma**2
        x0 = (1 - sigma) * scale**2 / var * x
        return (x - x0) / sigma

    return v


def _gaussian_std(sigma: float, scale: float) -> float:
    return math.sqrt((1 - sigma) ** 2 * scale**2 + sigma**2)


@pytest.mark.parametrize("solver", SOLVERS)
def test_solvers_land_on_a_single_data_point(solver):
    target = torch.tensor([1.5, -2.0, 0.25])
    velocity = lambda x, s: (x - target) / s  # noqa: E731  (data is one point: x0 = target exactly)
    out = solve(velocity, torch.randn(3), sigma_schedule(6, 3.0).tolist(), solver)
    torch.testing.assert_close(out, target, atol=1e-5, rtol=0)


def test_solver_orders_on_a_gaussian():
    """For Gaussian data the probability-flow ODE is linear, x(s) = x(s0) std(s) / std(s0): Euler converges at
    first order, DPM-Solver++(2M) at second, and UniPC (second order + corrector) is the most accurate."""
    scale = 0.5
    noise = torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = {}
    for solver in SOLVERS:
        for steps in (16, 32):
            sigmas = torch.linspace(0.9, 0.05, steps + 1, dtype=torch.float64).tolist()
            exact = noise * _gaussian_std(sigmas[-1], scale) / _gaussian_std(sigmas[0], scale)
            errors[solver, steps] = (solve(_gaussian_velocity(scale), noise, sigmas, solver) - exact).abs().max().item()
    assert errors["euler", 16] / errors["euler", 32] == pytest.approx(2.0, rel=0.1)
    assert errors["dpmpp_2m", 16] / errors["dpmpp_2m", 32] > 3.5
    assert errors["unipc", 16] / errors["unipc", 32] > 2.5
    for steps in (16, 32):
        assert errors["unipc", steps] < errors["dpmpp_2m", steps] < errors["euler", steps] / 3


def _nonlinear_velocity(seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 8, generator=g) / 3

    def v(x, s):
        return torch.tanh(x @ w) * (1 + s) - 0.7 * x + s * x.mean()

    return v


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 30])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_unipc_matches_diffusers_step_for_step(steps, shift):
    """solve(..., "unipc") is diffusers' flow UniPC (bh2, order 2, lower-order final) on the same sigmas."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=2,
        solver_type="bh2",
        lower_order_final=True,
    )
    sched.set_timesteps(steps)
    sigmas = sigma_schedule(steps, shift, schedule="diffusers")
    # Same sigmas (ours in fp64, theirs stored fp32) and the same integer timesteps given to the model.
    assert torch.equal(sigmas.float(), sched.sigmas)
    assert [int(model_timestep(s)) for s in sigmas[:-1].tolist()] == sched.timesteps.tolist()
    velocity = _nonlinear_velocity(steps)
    x0 = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    expected, x = [], x0.clone()
    for i, t in enumerate(sched.timesteps):
        x = sched.step(velocity(x, float(sched.sigmas[i])), t, x, return_dict=False)[0]
        expected.append(x)
    got = []
    solve(velocity, x0.clone(), sigmas.tolist(), "unipc", callback=lambda i, z: got.append(z))
    assert len(got) == len(expected) == steps
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        rel = ((a - b).abs().max() / b.abs().max()).item()
        assert rel <= 1e-5, (i, rel)


def test_wan_schedule_is_wans_flow_unipc_schedule():
    """Wan's FlowUniPCMultistepScheduler: sigma_max = fp32(1 - 1/1000) read back with .item(), then
    np.linspace(sigma_max, 0, steps + 1)[:-1] shifted, 0 appended; timesteps = int64(sigmas * 1000)."""
    steps, shift = 50, 5.0
    sigma_max = torch.tensor(1 - 1 / 1000, dtype=torch.float32).item()
    s = np.linspace(sigma_max, 0, steps + 1)[:-1]
    s = shift * s / (1 + (shift - 1) * s)
    ours = sigma_schedule(steps, shift)
    assert ours.dtype == torch.float64 and ours[-1] == 0 and len(ours) == steps + 1
    np.testing.assert_array_equal(ours[:-1].numpy(), s)
    assert [model_timestep(x) for x in ours[:-1].tolist()] == (s * 1000).astype(np.int64).tolist()
    assert model_timestep(float(ours[0])) == 999.0
    # The diffusers schedule starts 1/1000 higher in unshifted sigma.
    d = sigma_schedule(steps, 1.0, schedule="diffusers")
    w = sigma_schedule(steps, 1.0)
    assert d[1] - w[1] == pytest.approx(1e-3, abs=1e-7)  # Wan's sigma_max carries fp32 rounding (1.3e-8)


def _model(name="tiny", **kw):
    torch.manual_seed(0)
    model = DiT(DiTConfig.from_name(name, **kw)).eval()
    with torch.no_grad():
        model.head.head.weight.normal_(std=0.1)
    return model


def test_model_sees_integer_timesteps_and_exact_sigmas_drive_the_solver():
    model = _model()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    cfg = SamplerConfig(steps=5, shift=3.0, text_scale=1.0)
    sample(model, (1, 4, 3, 4, 4), torch.randn(1, 5, 16), config=cfg, seed=0)
    expected = [float(int(s * 1000)) for s in cfg.sigmas()[:-1]]
    assert [t.item() for t in seen] == expected
    assert any(s * 1000 != int(s * 1000) for s in cfg.sigmas()[:-1])  # truncation really happened


@pytest.mark.parametrize("solver", SOLVERS)
def test_sampling_is_deterministic_given_a_seed(solver):
    model = _model()
    ctx, neg = torch.randn(1, 5, 16), torch.zeros(1, 5, 16)
    cfg = SamplerConfig(steps=4, solver=solver, text_scale=4.0)
    a = sample(model, (1, 4, 3, 4, 4), ctx, negative_context=neg, config=cfg, seed=7)
    b = sample(model, (1, 4, 3, 4, 4), ctx, negative_context=neg, config=cfg, seed=7)
    c = sample(model, (1, 4, 3, 4, 4), ctx, negative_context=neg, config=cfg, seed=8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.fixture(scope="module")
def face_setup():
    model = _model(face_dim=12)
    with torch.no_grad():
        for p in model.face_parameters():
            p.normal_(std=0.2)
    g = torch.Generator().manual_seed(3)
    x, ctx, neg = torch.randn(1, 4, 1, 4, 4, generator=g), torch.randn(1, 5, 16, generator=g), torch.randn(1, 5, 16)
    faces = [torch.randn(1, 3, 12, generator=g) for _ in range(2)]
    zeros = [torch.zeros_like(f) for f in faces]
    t = torch.tensor([600.0])
    with torch.no_grad():
        v = {
            "full": model(x, t, ctx, face_tokens=faces),  # v(text, face)
            "text": model(x, t, ctx, face_tokens=zeros),  # v(text, -): the face-unconditional input is zeros
            "neg": model(x, t, neg, face_tokens=zeros),  # v(-, -)
        }
    return model, x, ctx, neg, faces, zeros, v


@pytest.mark.parametrize(
    ("s_t", "s_f", "passes"),
    [(5.0, 1.0, 3), (5.0, 1.0001, 3), (1.0, 3.0, 2), (3.0, 0.0, 2), (5.0, 5.0, 2), (1.0, 1.0, 1), (1.0, 0.0, 1)],
)
def test_guidance_is_the_documented_formula_at_every_scale(face_setup, s_t, s_f, passes):
    model, x, ctx, neg, faces, zeros, v = face_setup
    guided = GuidedVelocity(
        model, ctx, negative_context=neg, face_tokens=faces, negative_face_tokens=zeros, text_scale=s_t, face_scale=s_f
    )
    with torch.no_grad():
        got = guided(x, 0.6)
    expected = v["neg"] + s_t * (v["text"] - v["neg"]) + s_f * (v["full"] - v["text"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert guided.evaluations == passes


def test_guidance_has_no_cliff_at_face_scale_one(face_setup):
    """The old sampler rode the face on the text guidance at face_scale=1 (a jump at 1.0001); now it is continuous."""
    model, x, ctx, neg, faces, zeros, v = face_setup
    out = {}
    for s_f in (1.0, 1.0001):
        guided = GuidedVelocity(
            model, ctx, negative_context=neg, face_tokens=faces, negative_face_tokens=zeros, face_scale=s_f
        )
        with torch.no_grad():
            out[s_f] = guided(x, 0.6)
    step = (out[1.0001] - out[1.0]).abs().max().item()
    assert step <= 2e-4 * (v["full"] - v["text"]).abs().max().item() + 1e-6
    assert (v["full"] - v["text"]).abs().max() > 1e-3  # the face really changes the prediction


def test_guidance_without_faces_is_classifier_free_guidance(face_setup):
    model, x, ctx, neg, *_ = face_setup
    t = torch.tensor([600.0])
    with torch.no_grad():
        cond, uncond = model(x, t, ctx), model(x, t, neg)
        guided = GuidedVelocity(model, ctx, negative_context=neg, text_scale=4.0, face_scale=2.0)
        torch.testing.assert_close(guided(x, 0.6), uncond + 4.0 * (cond - uncond), atol=1e-5, rtol=1e-5)
    assert guided.evaluations == 2
    # The face branch off (negative_face_tokens=None) is the default face-unconditional input.
    with pytest.raises(ValueError, match="needs negative_context"):
        GuidedVelocity(model, ctx, text_scale=3.0)
    GuidedVelocity(model, ctx, face_tokens=[None, None], text_scale=1.0, face_scale=2.0)  # needs no negative


def test_ti2v_keeps_the_given_first_frame():
    model = _model("tiny-ti2v")
    first = torch.randn(1, 4, 1, 4, 4)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    for solver in SOLVERS:
        seen.clear()
        out = sample(
            model,
            (1, 4, 3, 4, 4),
            torch.randn(1, 5, 16),
            first_frame=first,
            config=SamplerConfig(steps=3, text_scale=1.0, solver=solver),
            seed=0,
        )
        torch.testing.assert_close(out[:, :, :1], first)
        assert all(t.shape == (1, 12) and torch.all(t[:, :4] == 0) and torch.all(t[:, 4:] > 0) for t in seen)


def test_sampler_config_from_preset_defaults():
    cfg = SamplerConfig.from_defaults(DiTConfig.from_name("wan2.1-i2v-14b"))
    assert (cfg.steps, cfg.shift, cfg.solver, cfg.text_scale, cfg.face_scale) == (40, 3.0, "unipc", 5.0, 1.0)
    cfg = SamplerConfig.from_defaults(DiTConfig.from_name("wan2.2-ti2v-5b").sampling, steps=20, face_scale=2.0)
    assert (cfg.steps, cfg.shift, cfg.face_scale) == (20, 5.0, 2.0)
    assert SamplerConfig().solver == "unipc"
    with pytest.raises(ValueError, match=r"unknown SamplerConfig fields \['stpes'\]"):
        SamplerConfig.from_defaults(DiTConfig.from_name("tiny"), stpes=3)


def test_sampler_rejects_bad_arguments():
    model = _model()
    with pytest.raises(ValueError, match="steps must be >= 1"):
        SamplerConfig(steps=0)
    with pytest.raises(ValueError, match="unknown solver 'heun'"):
        SamplerConfig(solver="heun")
    with pytest.raises(ValueError, match="unknown schedule 'karras'"):
        SamplerConfig(schedule="karras")
    with pytest.raises(ValueError, match=r"noise shape \(1, 4, 1, 4, 4\) != requested shape \(1, 4, 3, 4, 4\)"):
        sample(
            model,
            (1, 4, 3, 4, 4),
            torch.randn(1, 5, 16),
            noise=torch.randn(1, 4, 1, 4, 4),
            config=SamplerConfig(steps=1, text_scale=1.0),
        )
    v = _nonlinear_velocity(0)
    full = shift_sigmas(torch.linspace(1, 0, 5, dtype=torch.float64), 3.0).tolist()
    with pytest.raises(ValueError, match=r"UniPC needs sigmas\[0\] < 1"):
        solve(v, torch.randn(2, 8), full, "unipc")
    with pytest.raises(ValueError, match="sigmas must decrease strictly"):
        solve(v, torch.randn(2, 8), [0.9, 0.5, 0.5, 0.0], "euler")
