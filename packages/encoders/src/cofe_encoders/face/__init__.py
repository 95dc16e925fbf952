"""Face analysis: detection, 5 keypoints, head pose, alignment and the reference-face crop.

Angle conventions are defined once, in :mod:`cofe_encoders.face.pose`.
"""

from cofe_encoders.align import align_crop, norm_crop
from cofe_encoders.face.analyzer import FaceAnalyzer, InsightFaceAnalyzer, OfflineFaceAnalyzer, build_face_analyzer
from cofe_encoders.face.pose import HeadPose, estimate_head_pose
from cofe_encoders.face.reference import face_mask, reference_crop
from cofe_encoders.face.types import Face

__all__ = [
    "Face",
    "FaceAnalyzer",
    "HeadPose",
    "InsightFaceAnalyzer",
    "OfflineFaceAnalyzer",
    "align_crop",
    "build_face_analyzer",
    "estimate_head_pose",
    "face_mask",
    "norm_crop",
    "reference_crop",
]
