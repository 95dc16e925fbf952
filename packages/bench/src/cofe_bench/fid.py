"""Frechet distances: ConsisID's per-frame face "FID" and a true set-level FID.

Fréchet distance between Gaussians (Dowson & Landau 1982; FID, Heusel et al., NeurIPS 2017):
``d² = |mu1 - mu2|² + Tr(S1 + S2 - 2 (S1 S2)^{1/2})``.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def pair_distance(a: np.ndarray, b: np.ndarray) -> float:
    """ConsisID's per-frame face "FID" between two feature vectors.

    Its script duplicates each single activation into a 2-sample set (``np.repeat(x, 2, axis=0)``) before
    ``calculate_fid``: both covariances are then exactly zero and the value reduces to ``|a - b|²``, the squared
    Euclidean distance of the two 2048-d vectors. Computed directly here (no 2048x2048 square root).
    """
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(np.sum((a - b) ** 2))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``features`` ``(N, D)``, in float64."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"set-level FID needs features of shape (N >= 2, D), got {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    Numerics (as in pytorch-fid, Seitzer 2020): everything in float64; ``scipy.linalg.sqrtm`` of ``S1 S2``; when
    the product is singular (fewer samples than dimensions) and the root is not finite, ``eps * I`` is added to
    both covariances; a small imaginary part from round-off (< 1e-3 relative) is dropped, a large one raises.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # singular products are expected (N < D); they are handled below, not reported by scipy.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: singular covariance product, adding {eps} to the diagonals", stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(covmean.imag))
        scale = max(np.max(np.abs(covmean.real)), 1.0)
        if imag > 1e-3 * scale:
            raise ValueError(f"FID: matrix square root has a large imaginary component ({imag:.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def set_fid(real: np.ndarray, fake: np.ndarray, method: str = "auto") -> float:
    """FID between two feature sets ``(N1, D)`` and ``(N2, D)`` (N >= 2 each).

    Args:
        real: Reference-side features.
        fake: Generated-side features.
        method: ``"sqrtm"`` (covariances, then :func:`frechet_distance`), ``"svd"`` (exact low-rank form below),
            or ``"auto"``: ``"svd"`` when either set has no more samples than dimensions (face crops per
            benchmark are usually fewer than Inception's 2048 dimensions), else ``"sqrtm"``.

    The low-rank form: with centred feature matrices ``X1 (N1, D)``, ``X2 (N2, D)``, ``S_i = X_iᵀ X_i / (N_i - 1)``,
    the non-zero eigenvalues of ``S1 S2`` are the squared singular values of ``A = X1 X2ᵀ / sqrt((N1-1)(N2-1))``,
    so ``Tr (S1 S2)^{1/2} = ||A||_*`` (nuclear norm): exact, no ``D x D`` square root and no ``eps`` needed.
    """
    x1, x2 = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1] or min(len(x1), len(x2)) < 2:
        raise ValueError(f"set-level FID needs two (N >= 2, D) feature sets of equal D, got {x1.shape}, {x2.shape}")
    if method == "auto":
        method = "svd" if min(len(x1), len(x2)) <= x1.shape[1] else "sqrtm"
    if method == "sqrtm":
        return frechet_distance(*gaussian_stats(x1), *gaussian_stats(x2))
    if method != "svd":
        raise ValueError(f"unknown FID method {method!r}; choose 'auto', 'sqrtm' or 'svd'")
    mu1, mu2 = x1.mean(0), x2.mean(0)
    c1, c2 = x1 - mu1, x2 - mu2  # (N1, D), (N2, D)
    n1, n2 = len(x1) - 1, len(x2) - 1
    tr1, tr2 = float(np.sum(c1 * c1)) / n1, float(np.sum(c2 * c2)) / n2  # Tr S1, Tr S2
    nuclear = float(np.linalg.svd(c1 @ c2.T, compute_uv=False).sum()) / np.sqrt(n1 * n2)
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2.0 * nuclear)
