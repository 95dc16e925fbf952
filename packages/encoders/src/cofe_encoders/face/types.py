"""The face record shared by both face-analysis backends."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Face:
    """One detected face.

    Attributes:
        bbox: ``(4,)`` float ``[x1, y1, x2, y2]`` in pixels of the analysed image (insightface's convention).
        kps5: ``(5, 2)`` keypoints, order as in :mod:`cofe_encoders.align` (subject's right eye, left eye,
            nose tip, right mouth corner, left mouth corner).
        score: Detector confidence in [0, 1].
        yaw: Degrees, positive to the subject's left (conventions in :mod:`cofe_encoders.face.pose`).
        pitch: Degrees, positive looking up.
        roll: Degrees, positive tilting to the subject's left shoulder.
        embedding: Optional L2-normalised identity embedding from the backend's recogniser.
        landmarks: Optional dense landmarks ``(N, 2)`` (insightface 2d106), when the backend has them.
        pose_source: Which estimator set the angles (``"offline"``, ``"offline-raw"``, ``"insightface"``,
            ``"6drepnet"``; :mod:`cofe_encoders.face.estimators`); ``""`` when none has.
        pitch_reliable: Whether ``pitch`` may be used for thresholds and bins. False for the 5-point estimators
            (their pitch errs by 11-18 degrees); use yaw only then.
    """

    bbox: np.ndarray
    kps5: np.ndarray
    score: float
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    embedding: np.ndarray | None = None
    landmarks: np.ndarray | None = field(default=None, repr=False)
    pose_source: str = ""
    pitch_reliable: bool = False

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def to_dict(self) -> dict:
        """JSON-friendly dict with the fields of the curated-shard contract (DESIGN.md §3).

        ``pose_source`` and ``pitch_reliable`` are per estimator, not per face: record them once beside the
        faces (for example from ``analyzer.describe()``), not in every face record.
        """
        return {
            "bbox": [round(float(v), 2) for v in self.bbox],
            "kps5": [[round(float(x), 2), round(float(y), 2)] for x, y in self.kps5],
            "score": round(float(self.score), 4),
            "yaw": round(float(self.yaw), 2),
            "pitch": round(float(self.pitch), 2),
            "roll": round(float(self.roll), 2),
        }
