"""Temporal smoothing of a per-frame head-pose track, with missing detections kept marked.

Per-frame pose is noisy (a few pixels of keypoint jitter move the 5-point yaw by several degrees on small faces)
and has outliers (one frame where the detector snaps the keypoints to a frontal layout). :func:`smooth_pose` is
robust locally weighted linear regression (LOWESS: Cleveland, "Robust Locally Weighted Regression and Smoothing
Scatterplots", JASA 74(368), 1979): at every frame a straight line is fitted to the valid samples within
``window_s / 2`` seconds, tricube-weighted by time distance, and refitted with bisquare robustness weights from
the residuals (``robust_iters`` times). A local *line* rather than a local mean keeps the peak of a head turn
(a moving average flattens the largest yaw, the very value curation selects clips by).

Frames without a face are NaN in and NaN out: a detection failure stays visible to the caller (the bench counts
it against the model, curation decides whether a profile gap inside a track is tolerable). ``fill_gaps=True``
interpolates a missing frame only when valid samples lie on *both* sides of it within the window; nothing is
ever extrapolated past the ends of the evidence.
"""

from __future__ import annotations

import numpy as np


def _tricube(u: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(u) ** 3, 0.0, None) ** 3


def _local_line(dt: np.ndarray, v: np.ndarray, w: np.ndarray) -> float:
    """Weighted least-squares line through ``(dt, v)``, evaluated at ``dt = 0`` (weighted mean if degenerate)."""
    sw = w.sum()
    if sw <= 0:
        return float("nan")
    mt, mv = (w * dt).sum() / sw, (w * v).sum() / sw
    var = (w * (dt - mt) ** 2).sum()
    if var <= 1e-12 * max(sw, 1.0) or np.count_nonzero(w > 0) < 3:
        return float(mv)
    slope = (w * (dt - mt) * (v - mv)).sum() / var
    return float(mv - slope * mt)


def _smooth_column(t: np.ndarray, v: np.ndarray, half: float, robust_iters: int, fill: bool) -> np.ndarray:
    n = len(t)
    valid = np.isfinite(v)
    out = np.full(n, np.nan)
    if not valid.any():
        return out
    tv, vv = t[valid], v[valid]
    order = np.argsort(tv, kind="stable")
    tv, vv = tv[order], vv[order]
    robust = np.ones(len(tv))
    # Windows as index ranges into the sorted valid samples.
    lo = np.searchsorted(tv, t - half, side="left")
    hi = np.searchsorted(tv, t + half, side="right")
    targets = np.nonzero(valid | fill)[0]
    if fill:
        # A missing frame is filled only with evidence on both sides inside the window.
        before = np.searchsorted(tv, t, side="left") - lo > 0
        after = hi - np.searchsorted(tv, t, side="right") > 0
        targets = np.nonzero(valid | (before & after))[0]
    # Points exactly at the window edge keep a small weight (the tricube of 1 is 0).
    bandwidth = half * 1.0001 if half > 0 else 1.0

    def fit_at(i: int) -> float:
        sl = slice(lo[i], hi[i])
        dt = tv[sl] - t[i]
        return _local_line(dt, vv[sl], _tricube(dt / bandwidth) * robust[sl])

    valid_frames = np.nonzero(valid)[0][order]  # frame index of each sorted valid sample
    for _ in range(robust_iters):
        fit = np.array([fit_at(i) for i in valid_frames])
        res = vv - fit
        scale = np.median(np.abs(res[np.isfinite(res)])) if np.isfinite(res).any() else 0.0
        if scale <= 1e-9:
            break
        u = res / (6.0 * scale)
        robust = np.where(np.abs(u) < 1.0, (1.0 - u**2) ** 2, 0.0)
    for i in targets:
        out[i] = fit_at(i)
    # A frame whose window lost every sample to the robustness weights keeps its own value rather than NaN.
    lost = valid & ~np.isfinite(out)
    out[lost] = v[lost]
    return out


def smooth_pose(
    times: np.ndarray,
    angles: np.ndarray,
    window_s: float = 0.5,
    robust_iters: int = 2,
    fill_gaps: bool = False,
) -> np.ndarray:
    """Smooth a pose track over time, keeping NaN where there is no face.

    Args:
        times: ``(N,)`` frame times in seconds (any order; need not be evenly spaced).
        angles: ``(N, 3)`` (yaw, pitch, roll) in degrees, or any ``(N, K)`` / ``(N,)`` array of angles, with NaN
            in the rows (or entries) of frames where no face was detected. Columns are smoothed independently.
        window_s: Width of the local window in seconds (samples within ``window_s / 2`` of a frame count).
            ``0`` returns the input unchanged (NaN kept).
        robust_iters: Robustness iterations (bisquare weights); 0 for plain locally weighted regression.
        fill_gaps: Also estimate missing frames that have valid samples before *and* after them in the window.

    Returns:
        Array of the shape of ``angles``: smoothed where the input was valid (and, with ``fill_gaps``, inside
        short gaps), NaN elsewhere.

    Raises:
        ValueError: shapes disagree, times are not finite, or ``window_s`` is negative.
    """
    t = np.asarray(times, dtype=np.float64)
    a = np.asarray(angles, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"times must be 1-D (N,), got shape {t.shape}")
    if a.ndim not in (1, 2) or a.shape[0] != t.shape[0]:
        raise ValueError(f"angles must be (N,) or (N, K) with N = {t.shape[0]} (len(times)), got shape {a.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("times must be finite (mark missing faces with NaN in angles, not in times)")
    if not window_s >= 0:
        raise ValueError(f"window_s must be >= 0, got {window_s}")
    if robust_iters < 0:
        raise ValueError(f"robust_iters must be >= 0, got {robust_iters}")
    cols = a.reshape(len(t), -1)
    if window_s == 0 or len(t) == 0:
        return a.copy()
    out = np.stack(
        [_smooth_column(t, cols[:, k], window_s / 2.0, robust_iters, fill_gaps) for k in range(cols.shape[1])], 1
    )
    return out.reshape(a.shape)
