"""Five-point face alignment in insightface's ``norm_crop`` convention.

Keypoint order everywhere in this package (insightface / RetinaFace / YuNet order), as ``(x, y)`` pixels:

0. the subject's right eye (left in the image for a frontal face),
1. the subject's left eye,
2. the nose tip,
3. the subject's right mouth corner,
4. the subject's left mouth corner.

``norm_crop`` maps these points onto the standard ArcFace 112x112 template with the least-squares similarity
transform (rotation, uniform scale, translation) of Umeyama (1991), exactly what insightface's
``face_align.estimate_norm`` does through ``skimage.transform.SimilarityTransform.estimate``.
"""

from __future__ import annotations

import cv2
import numpy as np

# The ArcFace 5-point template for a 112x112 crop (insightface `utils/face_align.py`, `arcface_dst`; the same
# points as the InsightFace recognition training data, deepinsight/insightface `recognition/common`).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_SIZE = 112


def check_kps5(kps5: np.ndarray, what: str = "kps5") -> np.ndarray:
    """Return ``kps5`` as a float64 ``(5, 2)`` array, or raise ``ValueError`` naming its shape."""
    arr = np.asarray(kps5, dtype=np.float64)
    if arr.shape != (5, 2):
        raise ValueError(f"{what}: expected 5 keypoints of shape (5, 2), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: keypoints must be finite, got {arr.tolist()}")
    return arr


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` points onto ``dst`` points.

    Implements Umeyama, "Least-squares estimation of transformation parameters between two point patterns",
    IEEE TPAMI 13(4), 1991, eqs. (34)-(43), for 2D points, with the reflection correction ``S``.

    Args:
        src: ``(N, 2)`` source points.
        dst: ``(N, 2)`` destination points.

    Returns:
        ``(2, 3)`` float64 affine matrix ``M`` with ``dst ≈ M @ [x, y, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = src.shape[0]
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    cov = dst_c.T @ src_c / n  # (2, 2), eq. (38)
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(2)
    if np.linalg.det(cov) < 0:  # eq. (39): avoid a reflection
        s[1, 1] = -1.0
    rot = u @ s @ vt  # eq. (40)
    var_src = (src_c**2).sum() / n  # eq. (36)
    scale = float(np.trace(np.diag(d) @ s) / var_src) if var_src > 0 else 1.0  # eq. (42)
    trans = mu_dst - scale * rot @ mu_src  # eq. (41)
    return np.concatenate([scale * rot, trans[:, None]], axis=1)


def template(size: int = ARCFACE_SIZE, expand: float = 1.0) -> np.ndarray:
    """The ArcFace template for a ``size x size`` crop, zoomed out by ``expand`` around the crop centre.

    ``expand=1`` and ``size`` a multiple of 112 give insightface's ``estimate_norm`` targets exactly
    (``arcface_dst * size / 112``). ``expand > 1`` keeps the face centred but shows more context (hair, chin,
    background), which the semantic and detail experts and the reference crop want.
    """
    if size <= 0 or expand <= 0:
        raise ValueError(f"size and expand must be positive, got size={size}, expand={expand}")
    centre = ARCFACE_SIZE / 2.0
    return (ARCFACE_TEMPLATE - centre) * (size / ARCFACE_SIZE) / expand + size / 2.0


def alignment_matrix(kps5: np.ndarray, size: int = ARCFACE_SIZE, expand: float = 1.0) -> np.ndarray:
    """The ``(2, 3)`` similarity transform from image pixels to the aligned ``size x size`` crop."""
    return umeyama_similarity(check_kps5(kps5), template(size, expand))


def align_crop(
    image: np.ndarray,
    kps5: np.ndarray,
    size: int = ARCFACE_SIZE,
    expand: float = 1.0,
    border_value: int | tuple[int, int, int] = 0,
) -> np.ndarray:
    """Warp ``image`` so that ``kps5`` land on the (scaled, zoomed-out) ArcFace template.

    Args:
        image: ``(H, W, 3)`` uint8 image (any channel order; it is not changed).
        kps5: ``(5, 2)`` keypoints in the order documented in this module.
        size: Output side in pixels.
        expand: Zoom-out factor (1 = ArcFace crop).
        border_value: Fill for pixels outside the source image (insightface uses 0).

    Returns:
        ``(size, size, 3)`` uint8 aligned crop.
    """
    m = alignment_matrix(kps5, size, expand)
    if isinstance(border_value, int):
        border_value = (border_value,) * 3
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=border_value)


def norm_crop(image: np.ndarray, kps5: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """insightface ``face_align.norm_crop``: the aligned ArcFace crop (112x112 by default), black border."""
    return align_crop(image, kps5, size=size, expand=1.0, border_value=0)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a ``(2, 3)`` affine ``matrix`` to ``(N, 2)`` points."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]
