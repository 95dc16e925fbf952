"""Largest-face detection with ConsisID's padded retry, on top of :mod:`cofe_encoders.face`."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cofe_encoders.face import Face, FaceAnalyzer


@dataclass
class DetectedFace:
    """The largest face of an image.

    Attributes:
        face: The backend's face; its ``bbox`` and ``kps5`` are in the pixels of ``source``.
        source: The image the face was detected in: the input, or the padded input after a retry.
        offset: ``(left, top)`` padding added to the input (``(0, 0)`` without a retry).
        kps5: ``(5, 2)`` keypoints in the input image's pixels (ConsisID shifts them back the same way).
        padded: Whether the face was only found after padding.
    """

    face: Face
    source: np.ndarray
    offset: tuple[int, int]
    kps5: np.ndarray
    padded: bool

    @property
    def yaw(self) -> float:
        return float(self.face.yaw)


def pad_image(image: np.ndarray, fraction: float = 0.25, value: int = 128) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad ``image`` by ``int(H * fraction)`` rows and ``int(W * fraction)`` columns on each side.

    ConsisID ``pad_np_bgr_image(np_image, scale=1.25)``: constant gray ``(128, 128, 128)`` border.

    Returns:
        The padded image and the ``(left, top)`` offset of the original inside it.
    """
    h, w = image.shape[:2]
    top, left = int(h * fraction), int(w * fraction)
    padded = cv2.copyMakeBorder(image, top, top, left, left, cv2.BORDER_CONSTANT, value=(value, value, value))
    return padded, (left, top)


def detect_largest(
    analyzer: FaceAnalyzer,
    image: np.ndarray,
    pad_retry: bool = True,
    fraction: float = 0.25,
    value: int = 128,
) -> DetectedFace | None:
    """Find the largest face (by box area), retrying once on a padded image.

    Args:
        analyzer: A face analysis backend (``cofe_encoders.face.build_face_analyzer``).
        image: uint8 RGB ``(H, W, 3)``.
        pad_retry: Retry on the gray-padded image when nothing is found (faces cut by the frame edge).
        fraction: Padding fraction per side.
        value: Padding gray level.

    Returns:
        The face, or ``None`` when none is found.
    """
    faces = analyzer.analyze(image, embed=False, max_faces=1)
    if faces:
        return DetectedFace(faces[0], image, (0, 0), np.asarray(faces[0].kps5, np.float64), False)
    if not pad_retry:
        return None
    padded, (left, top) = pad_image(image, fraction, value)
    faces = analyzer.analyze(padded, embed=False, max_faces=1)
    if not faces:
        return None
    kps = np.asarray(faces[0].kps5, np.float64) - np.array([left, top], np.float64)
    return DetectedFace(faces[0], padded, (left, top), kps, True)
