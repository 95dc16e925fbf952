"""The reference-face crop: aligned, zoomed out, background set to white.

Identity-preserving video models condition on a reference face with the background removed so that the
reference's backdrop and clothes do not leak into the video (ConsisID and PhotoMaker whiten or mask the
background of the reference). Without a face-parsing model, the face region is an ellipse fixed in the
aligned frame: after 5-point alignment every face has its eyes and mouth at the template's positions, so one
ellipse in template coordinates covers forehead to chin and cheek to cheek for any input pose that the
alignment can handle.
"""

from __future__ import annotations

import cv2
import numpy as np

from cofe_encoders.align import ARCFACE_SIZE, align_crop, check_kps5
from cofe_encoders.face.types import Face
from cofe_encoders.images import ImageLike, to_uint8

# Face ellipse in 112x112 ArcFace-template pixels: centre between the eyes and the chin, semi-axes from the
# template's inter-eye distance (35.2 px): face width ≈ 2.5 x IPD, eyebrow-top-of-forehead to chin ≈ 3.3 x IPD.
FACE_ELLIPSE_CENTRE = (56.0, 62.0)
FACE_ELLIPSE_AXES = (44.0, 58.0)


def face_mask(size: int, expand: float, mask_scale: float = 1.0, feather: float = 0.04) -> np.ndarray:
    """Soft face mask in an aligned crop made by :func:`cofe_encoders.align.align_crop`.

    Args:
        size: Side of the aligned crop.
        expand: The crop's zoom-out factor.
        mask_scale: Grow (>1) or shrink (<1) the ellipse.
        feather: Width of the soft edge, as a fraction of ``size`` (0 for a hard edge).

    Returns:
        ``(size, size)`` float32 mask in [0, 1], 1 on the face.
    """
    k = size / ARCFACE_SIZE / expand
    centre = ((FACE_ELLIPSE_CENTRE[0] - 56.0) * k + size / 2.0, (FACE_ELLIPSE_CENTRE[1] - 56.0) * k + size / 2.0)
    axes = (FACE_ELLIPSE_AXES[0] * k * mask_scale, FACE_ELLIPSE_AXES[1] * k * mask_scale)
    mask = np.zeros((size, size), np.float32)
    # cv2.ellipse draws on an integer grid; shift=4 keeps sub-pixel precision for the centre and axes.
    c = (round(centre[0] * 16), round(centre[1] * 16))
    a = (round(axes[0] * 16), round(axes[1] * 16))
    cv2.ellipse(mask, c, a, 0.0, 0.0, 360.0, 1.0, thickness=-1, lineType=cv2.LINE_AA, shift=4)
    if feather > 0:
        sigma = feather * size / 2.0
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return np.clip(mask, 0.0, 1.0)


def reference_crop(
    image: ImageLike,
    face: Face | np.ndarray,
    size: int = 512,
    expand: float = 1.6,
    background: int = 255,
    mask_scale: float = 1.0,
    feather: float = 0.04,
) -> np.ndarray:
    """Aligned reference-face crop with everything outside the face ellipse set to ``background`` (white).

    Args:
        image: The RGB image the face was found in.
        face: A :class:`Face` or its ``(5, 2)`` keypoints.
        size: Output side in pixels.
        expand: Zoom-out relative to the ArcFace crop (1.6 shows the whole head).
        background: Gray level of the background (255 = white).
        mask_scale: Grow or shrink the face ellipse.
        feather: Soft-edge width as a fraction of ``size``.

    Returns:
        ``(size, size, 3)`` uint8 RGB crop.
    """
    img = to_uint8(image)
    kps = check_kps5(face.kps5 if isinstance(face, Face) else face)
    crop = align_crop(img, kps, size=size, expand=expand, border_value=background).astype(np.float32)
    mask = face_mask(size, expand, mask_scale, feather)[..., None]
    out = crop * mask + float(background) * (1.0 - mask)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
