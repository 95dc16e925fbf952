"""Rotation-robust keypoints for detectors trained on upright faces.

YuNet (like most single-shot detectors trained on WIDER FACE without rotation augmentation) regresses
keypoints that stay close to an upright face: measured on scikit-image's ``astronaut``, rotating the image by
30 degrees moved YuNet's eye line by only 2-4 degrees, and on the insightface group photo its roll was about
half of what the faces show. Roll (and the alignment built on the keypoints) would then be wrong for tilted
heads. Two steps fix most of it:

1. **Uprighting angle.** For a near-frontal face, the in-plane angle is found as the rotation that makes the
   face crop most mirror-symmetric (normalised cross-correlation of the high-passed crop with its mirror image,
   over angle and midline offset). A face's bilateral symmetry does not depend on the detector, so this
   estimate turns exactly with the image. For turned faces (symmetry score low) the keypoints' own roll is
   used instead.
2. **Upright re-detection.** The face is cut out, rotated upright by that angle and detected again, where the
   detector is accurate; its keypoints are mapped back to the image. This is repeated once with the new roll.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from cofe_encoders.align import transform_points

# Below this symmetry correlation the face is too turned (or occluded) for the mirror test to be trusted;
# measured on the real test photos: near-frontal faces 0.50-0.73 (upright or rotated), faces turned by
# 20-55 degrees 0.28-0.44.
MIN_SYMMETRY = 0.45
_N = 48  # side of the crop the symmetry search runs on


def _highpass_crop(gray: np.ndarray, centre: np.ndarray, side: float, angle: float) -> np.ndarray:
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle), _N / side)
    m[:, 2] += np.array([_N / 2.0, _N / 2.0]) - centre
    p = cv2.warpAffine(gray, m, (_N, _N), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # Remove shading so one-sided lighting does not dominate the mirror correlation.
    return p - cv2.GaussianBlur(p, (0, 0), 3.0)


def _symmetry(p: np.ndarray) -> float:
    rows = slice(int(0.15 * _N), int(0.95 * _N))
    cols = np.arange(int(0.2 * _N), int(0.8 * _N))
    a = p[rows][:, cols]
    a = a - a.mean()
    best = -1.0
    for dx in range(-5, 6):
        mirror = np.clip(np.round(2 * (_N / 2.0 + dx) - cols).astype(int), 0, _N - 1)
        b = p[rows][:, mirror]
        b = b - b.mean()
        r = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-9))
        best = max(best, r)
    return best


def symmetry_angle(
    gray: np.ndarray, centre: np.ndarray, side: float, around: float = 0.0, span: float = 36.0
) -> tuple[float, float]:
    """The rotation (degrees, counter-clockwise as displayed, OpenCV's sign) that makes a face most symmetric.

    Args:
        gray: Float32 grayscale image.
        centre: Face centre ``(x, y)``.
        side: Face size in pixels (the detector box side).
        around: Centre of the angle search.
        span: Half-width of the search.

    Returns:
        ``(angle, score)``: the angle and its mirror correlation in [-1, 1].
    """
    coarse = [(a, _symmetry(_highpass_crop(gray, centre, side, a))) for a in np.arange(-span, span + 0.1, 3.0) + around]
    a0 = max(coarse, key=lambda t: t[1])[0]
    fine = [(a, _symmetry(_highpass_crop(gray, centre, side, a))) for a in np.arange(-2.0, 2.01, 0.5) + a0]
    return max(fine, key=lambda t: t[1])


def eye_roll(kps5: np.ndarray) -> float:
    """Roll in degrees (clockwise as displayed positive) of the eye line."""
    d = kps5[1] - kps5[0]
    return float(np.degrees(np.arctan2(d[1], d[0])))


def refine_keypoints(
    image: np.ndarray,
    kps5: np.ndarray,
    box_side: float,
    detect: Callable[[np.ndarray], list[tuple[np.ndarray, float]]],
    max_yaw_for_symmetry: float = 25.0,
    yaw: float = 0.0,
) -> np.ndarray:
    """Re-detect one face upright and map its keypoints back (see module docstring).

    Args:
        image: uint8 RGB image.
        kps5: The detector's first keypoints.
        box_side: The detector's box side in pixels.
        detect: Runs the detector on an RGB crop and returns ``[(kps5, score), ...]``.
        max_yaw_for_symmetry: Only near-frontal faces use the symmetry angle.
        yaw: The face's yaw from the first keypoints.

    Returns:
        Refined ``(5, 2)`` keypoints (the input ones when re-detection finds nothing).
    """
    centre = kps5.mean(0)
    # A face turned clockwise by r is made upright by OpenCV's counter-clockwise rotation by r: same sign.
    angle = eye_roll(kps5)
    if abs(yaw) <= max_yaw_for_symmetry:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        sym_angle, score = symmetry_angle(gray, centre, box_side, around=angle)
        if score >= MIN_SYMMETRY:
            angle = sym_angle
    out = kps5
    size = 192  # YuNet sees the face at about 90 px: inside its best-trained scale range
    for _ in range(2):
        scale = size / (2.2 * box_side)
        m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle), scale)
        m[:, 2] += np.array([size / 2.0, size / 2.0]) - centre
        crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        found = detect(crop)
        if not found:
            break
        mid = np.array([size / 2.0, size / 2.0])
        kps_crop = min(found, key=lambda t: float(np.linalg.norm(t[0].mean(0) - mid)))[0]
        out = transform_points(kps_crop, cv2.invertAffineTransform(m))
        residual = eye_roll(kps_crop)
        if abs(residual) < 1.0:
            break
        angle += residual
        centre = out.mean(0)
    return out
