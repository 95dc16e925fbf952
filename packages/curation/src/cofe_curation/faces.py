"""Stage 3, face constraints: one clear face, large and sharp enough, turning through a wide enough yaw range.

Faces come from ``cofe_encoders.face`` (one analyser per process, detection on every sampled frame). The main
face is tracked through a clip by box overlap; its per-frame pose is the dataset's pose annotation. Angle
conventions are those of :mod:`cofe_encoders.face.pose` (yaw > 0: the subject turns to their own left).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from cofe_curation.config import FaceConfig
from cofe_encoders.face import Face, FaceAnalyzer, norm_crop

# A detection continues the track if its box overlaps the previous one by at least this IoU (at 8 fps a head
# moves a fraction of its width between samples).
_TRACK_IOU = 0.3


def detect_faces(analyzer: FaceAnalyzer, frames: np.ndarray, min_score: float = 0.0) -> list[list[Face]]:
    """Faces of each sampled frame (no embeddings), largest first.

    Args:
        analyzer: A ``cofe_encoders`` face analyser.
        frames: ``(T, H, W, 3)`` uint8 RGB.
        min_score: Drop detections below this score.
    """
    return [[f for f in analyzer.analyze(frame, embed=False) if f.score >= min_score] for frame in frames]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def sharpness(image: np.ndarray, face: Face) -> float:
    """Variance of the Laplacian of the aligned 112x112 gray face crop (higher = sharper).

    Measured at a fixed aligned scale so that the number does not depend on the face's size in the frame.
    """
    gray = cv2.cvtColor(norm_crop(image, face.kps5), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


@dataclass
class FaceTrack:
    """The main face through one clip.

    Attributes:
        indices: ``(K,)`` sampled-frame indices (into the decoded video) where the main face was found.
        faces: The main face at each of those frames (analysis pixels).
        num_frames: Sampled frames in the clip.
        second_face_ratio: Largest area ratio of any other face to the main face, over the clip.
        sharpness: ``(K,)`` sharpness of the main face per frame.
    """

    indices: np.ndarray
    faces: list[Face]
    num_frames: int
    second_face_ratio: float = 0.0
    sharpness: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def yaws(self) -> np.ndarray:
        return np.array([f.yaw for f in self.faces], np.float64)


def track_main_face(frames: np.ndarray, detections: list[list[Face]], start: int, stop: int) -> FaceTrack:
    """Follow the main face over sampled frames ``[start, stop)``.

    The main face starts as the largest face of the first frame with a face; each later frame continues with the
    detection that overlaps the previous main box most (IoU >= 0.3), else the largest face.
    """
    indices, faces, sharp = [], [], []
    second = 0.0
    prev = None
    for i in range(start, stop):
        dets = detections[i]
        if not dets:
            continue
        main = dets[0]
        if prev is not None:
            best = max(dets, key=lambda f: _iou(f.bbox, prev.bbox))
            if _iou(best.bbox, prev.bbox) >= _TRACK_IOU:
                main = best
        others = [f.area for f in dets if f is not main]
        if others and main.area > 0:
            second = max(second, max(others) / main.area)
        indices.append(i)
        faces.append(main)
        sharp.append(sharpness(frames[i], main))
        prev = main
    return FaceTrack(np.asarray(indices, np.int64), faces, stop - start, float(second), np.asarray(sharp))


@dataclass
class FaceStats:
    """Face measurements of one clip (the numbers the decision was made on)."""

    detect_fraction: float
    face_px: float
    face_ratio: float
    sharpness: float
    yaw_range: float
    max_abs_yaw: float
    second_face_ratio: float


def face_stats(track: FaceTrack, frame_shape: tuple[int, int], scale: float) -> FaceStats:
    """Measure a track.

    Args:
        track: The clip's main-face track.
        frame_shape: ``(h, w)`` of the analysis frames.
        scale: Analysis pixels per source pixel (face sizes are reported in source pixels).
    """
    if not track.faces:
        return FaceStats(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, track.second_face_ratio)
    sides = np.array([min(f.width, f.height) for f in track.faces]) / scale
    areas = np.array([f.area for f in track.faces]) / float(frame_shape[0] * frame_shape[1])
    yaws = track.yaws
    # 5th-95th percentile range: one mis-estimated frame must not create (or hide) a head turn.
    lo, hi = np.percentile(yaws, [5, 95])
    return FaceStats(
        detect_fraction=len(track.faces) / max(track.num_frames, 1),
        face_px=float(np.median(sides)),
        face_ratio=float(np.median(areas)),
        sharpness=float(np.median(track.sharpness)),
        yaw_range=float(hi - lo),
        max_abs_yaw=float(np.abs(yaws).max()),
        second_face_ratio=track.second_face_ratio,
    )


def check_faces(stats: FaceStats, cfg: FaceConfig) -> str | None:
    """The reason the clip fails the face constraints, or ``None`` when it passes.

    Checks run in this order: no face, second face, detection rate, size, area ratio, sharpness, pose.
    """
    if stats.detect_fraction == 0:
        return "no face detected"
    if stats.second_face_ratio > cfg.max_second_face_ratio:
        return (
            f"more than one face: a second face has {stats.second_face_ratio:.2f} of the main face's area "
            f"(max_second_face_ratio={cfg.max_second_face_ratio})"
        )
    if stats.detect_fraction < cfg.min_detect_fraction:
        return f"face found in {stats.detect_fraction:.0%} of frames (min_detect_fraction={cfg.min_detect_fraction})"
    if stats.face_px < cfg.min_face_px:
        return f"face too small: {stats.face_px:.0f} px (min_face_px={cfg.min_face_px})"
    if stats.face_ratio < cfg.min_face_ratio:
        return f"face too small for the frame: area ratio {stats.face_ratio:.4f} (min_face_ratio={cfg.min_face_ratio})"
    if stats.sharpness < cfg.min_sharpness:
        return f"face too blurred: sharpness {stats.sharpness:.1f} (min_sharpness={cfg.min_sharpness})"
    if stats.yaw_range < cfg.min_yaw_range_deg and stats.max_abs_yaw < cfg.min_max_abs_yaw_deg:
        return (
            f"too little head pose variation: yaw range {stats.yaw_range:.1f} deg (min {cfg.min_yaw_range_deg}), "
            f"max |yaw| {stats.max_abs_yaw:.1f} deg (min {cfg.min_max_abs_yaw_deg})"
        )
    return None
