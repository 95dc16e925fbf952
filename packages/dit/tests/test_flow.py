"""Flow matching: schedule, targets, masks, and an overfit test that the whole training path learns."""

import pytest
import torch

from cofe_dit import DiT, DiTConfig, FlowMatching, first_frame_mask, i2v_condition, per_token_timesteps, shift_sigmas
from cofe_dit.flow import add_noise, velocity_target


def test_shift_is_monotone_and_fixes_endpoints():
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    shifted = shift_sigmas(s, 5.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert torch.all(shifted[1:] > shifted[:-1])
    assert torch.all(shifted[1:-1] > s[1:-1])  # shift > 1 spends more time at high noise
    assert shift_sigmas(torch.tensor(0.5), 5.0).item() == pytest.approx(5 * 0.5 / (1 + 4 * 0.5))
    torch.testing.assert_close(shift_sigmas(s, 1.0), s)
    with pytest.raises(ValueError, match="shift must be positive"):
        shift_sigmas(s, 0.0)


def test_noising_and_target_are_rectified_flow():
    x0, noise = torch.randn(3, 2, 1, 2, 2), torch.randn(3, 2, 1, 2, 2)
    sigma = torch.tensor([0.0, 0.3, 1.0])
    xt = add_noise(x0, noise, sigma)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[2], noise[2])
    torch.testing.assert_close(xt[1], 0.7 * x0[1] + 0.3 * noise[1])
    # The velocity is the sigma-derivative of x_sigma.
    eps = 1e-3
    deriv = (
        add_noise(x0, noise, sigma.clamp(max=1 - eps) + eps) - add_noise(x0, noise, sigma.clamp(max=1 - eps))
    ) / eps
    torch.testing.assert_close(deriv, velocity_target(x0, noise), atol=1e-3, rtol=1e-3)


def test_sigma_sampling_is_seeded_and_in_range():
    fm = FlowMatching(shift=3.0, sampling="logit_normal")
    a = fm.sample_sigmas(1000, generator=torch.Generator().manual_seed(0))
    b = fm.sample_sigmas(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.min() > 0 and a.max() < 1
    assert FlowMatching(shift=1.0).sample_sigmas(20000, torch.Generator().manual_seed(1)).mean() == pytest.approx(
        0.5, abs=0.01
    )


def test_loss_mask_excludes_given_frames():
    pred, target = torch.zeros(2, 3, 4, 2, 2), torch.ones(2, 3, 4, 2, 2)
    pred[:, :, 0] = 1  # perfect on the given frame only
    mask = first_frame_mask(pred.shape)
    assert FlowMatching.loss(pred, target, mask).item() == pytest.approx(1.0)
    assert FlowMatching.loss(pred, target).item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match=r"prediction shape \(2, 3, 4, 2, 2\) != target shape \(2, 3, 4, 2\)"):
        FlowMatching.loss(pred, target[..., 0])


def test_per_token_timesteps():
    t = per_token_timesteps(torch.tensor([500.0, 20.0]), grid=(3, 2, 2), given_frames=1)
    assert t.shape == (2, 12)
    assert torch.all(t[:, :4] == 0) and torch.all(t[0, 4:] == 500) and torch.all(t[1, 4:] == 20)


def test_i2v_condition_is_wans_mask_and_clip_latent():
    """Wan 2.1 image2video.py: msk = ones(1, N, h, w); msk[:, 1:] = 0; msk = cat([repeat_interleave(msk[:, 0:1], 4),
    msk[:, 1:]]); msk.view(1, N' // 4, 4, h, w).transpose(1, 2); y = cat([msk, vae.encode(clip)])."""
    latent = torch.randn(2, 4, 5, 3, 3)  # the VAE latent of a 17-frame pixel clip [first frame, 16 zero frames]
    cond = i2v_condition(latent, num_frames=5)
    assert cond.shape == (2, 8, 5, 3, 3)
    torch.testing.assert_close(cond[:, 4:], latent)  # the clip's latent as given, every frame
    # The mask, built independently: pixel frame p (0..16) is known iff p == 0; latent frame 0 holds pixel frame 0
    # repeated 4 times, latent frame f >= 1 holds pixel frames 4f - 3 .. 4f, one per channel.
    pixels = [1.0] * 4 + [0.0] * 16  # first frame repeated, then frames 1..16
    for f in range(5):
        for c in range(4):
            assert torch.all(cond[:, c, f] == pixels[4 * f + c]), (f, c)
    with pytest.raises(ValueError, match=r"1-frame latent \(2, 4, 1, 3, 3\).*whole pixel clip \[first frame, zero"):
        i2v_condition(torch.ones(2, 4, 1, 3, 3), num_frames=5)
    with pytest.raises(ValueError, match="1-frame latent"):
        i2v_condition(torch.ones(2, 4, 1, 3, 3))
    with pytest.raises(ValueError, match="video_latent has 2 latent frames; expected 5"):
        i2v_condition(torch.ones(2, 4, 2, 3, 3), num_frames=5)
    assert i2v_condition(torch.ones(1, 4, 1, 2, 2), num_frames=1).shape == (1, 8, 1, 2, 2)  # a 1-frame clip is fine


@pytest.mark.parametrize(
    ("sampling", "shift", "median", "below_03"),
    [
        ("uniform", 1.0, 0.5, 0.300),
        ("uniform", 3.0, 0.75, 0.125),
        ("uniform", 5.0, 0.8333, 0.0789),
        ("logit_normal", 3.0, 0.75, 0.026),
        ("logit_normal", 5.0, 0.8333, 0.0070),
    ],
)
def test_training_sigma_distribution_is_documented_and_exact(sampling, shift, median, below_03):
    fm = FlowMatching(shift=shift, sampling=sampling)
    assert fm.median() == pytest.approx(median, abs=1e-4)
    assert fm.cdf(0.3) == pytest.approx(below_03, abs=5e-4)
    draws = fm.sample_sigmas(200_000, torch.Generator().manual_seed(0))
    assert (draws < 0.3).float().mean().item() == pytest.approx(fm.cdf(0.3), abs=3e-3)
    assert draws.median().item() == pytest.approx(fm.median(), abs=5e-3)


def test_flow_matching_defaults_and_validation():
    fm = FlowMatching()
    assert (fm.sampling, fm.shift) == ("uniform", 5.0)  # DiffSynth-Studio's Wan training: uniform + shift 5
    with pytest.raises(ValueError, match="unknown sigma sampling 'beta'"):
        FlowMatching(sampling="beta")
    with pytest.raises(ValueError, match="shift must be positive"):
        FlowMatching(shift=0.0)


@pytest.mark.slow
def test_tiny_model_overfits_one_batch():
    """The full training path (noising, per-token TI2V timesteps, masked loss, backward, AdamW) drives the loss
    on one fixed batch down by an order of magnitude."""
    torch.manual_seed(0)
    cfg = DiTConfig.from_name("tiny-ti2v", dim=64, ffn_dim=128, num_heads=4)
    model = DiT(cfg)
    fm = FlowMatching(shift=1.0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, cfg.out_dim, 3, 4, 4, generator=g)
    ctx = torch.randn(2, 6, cfg.text_dim, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    sigma = torch.tensor([0.3, 0.8])
    xt, t, target = fm.prepare(x0, sigma, noise)
    xt[:, :, :1] = x0[:, :, :1]  # TI2V: the first latent frame is given clean ...
    t = per_token_timesteps(t, grid=(3, 2, 2))  # ... and its tokens see t = 0
    mask = first_frame_mask(x0.shape)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = fm.loss(model(xt, t, ctx), target, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
