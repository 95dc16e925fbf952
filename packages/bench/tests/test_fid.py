"""Fréchet distances against ConsisID's formula and torchmetrics' implementation, on the same features."""

import numpy as np
import pytest
import torch
from torchmetrics.image.fid import _compute_fid

from cofe_bench import frechet_distance, gaussian_stats, pair_distance, set_fid


def consisid_calculate_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """ConsisID's get_activations (repeat a single row twice) + calculate_fid, with its eigh matrix root."""
    real, fake = np.repeat(real[None], 2, axis=0), np.repeat(fake[None], 2, axis=0)
    r, f = torch.tensor(real, dtype=torch.float64), torch.tensor(fake, dtype=torch.float64)
    mu1, s1, mu2, s2 = r.mean(0), torch.cov(r.T), f.mean(0), torch.cov(f.T)
    prod = s1.mm(s2)
    w, v = torch.linalg.eigh(prod)
    covmean = (v * torch.sqrt(torch.clamp(w, min=0))).mm(v.T)
    return float(torch.sum((mu1 - mu2) ** 2) + torch.trace(s1 + s2 - 2 * covmean))


def test_pair_distance_is_consisid_duplicated_fid():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=64), rng.normal(size=64)
    assert pair_distance(a, b) == pytest.approx(consisid_calculate_fid(a, b), rel=1e-12)
    assert pair_distance(a, a) == 0.0


@pytest.mark.parametrize(
    ("n1", "n2", "d"),
    # 2048-d (Inception's width) is checked by benchmarks/bench_metrics.py: torchmetrics needs ~15 s there.
    [(300, 250, 16), (40, 30, 64), (12, 9, 128)],
)
def test_set_fid_matches_torchmetrics(n1, n2, d):
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    real = rng.normal(size=(n1, d)) @ mix
    fake = rng.normal(loc=0.3, size=(n2, d)) @ mix * 1.2
    mu1, s1 = gaussian_stats(real)
    mu2, s2 = gaussian_stats(fake)
    ref = float(_compute_fid(*(torch.from_numpy(x) for x in (mu1, s1, mu2, s2))))
    ours = set_fid(real, fake)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-6)
    if d <= 64:  # the scipy sqrtm path agrees too (2048-d sqrtm is slow on 2 cores)
        sq = set_fid(real, fake, method="sqrtm")
        assert sq == pytest.approx(ref, rel=1e-4, abs=1e-4)


def test_frechet_distance_closed_form_and_identity():
    # 1-D Gaussians: (mu1 - mu2)² + s1 + s2 - 2 sqrt(s1 s2)
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == pytest.approx(
        4 + 4 + 9 - 2 * 6
    )
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 8))
    assert set_fid(x, x) == pytest.approx(0.0, abs=1e-8)
    assert set_fid(x, x, method="sqrtm") == pytest.approx(0.0, abs=1e-6)


def test_set_fid_errors():
    with pytest.raises(ValueError, match="N >= 2"):
        set_fid(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="unknown FID method"):
        set_fid(np.ones((3, 4)), np.ones((3, 4)), method="x")
