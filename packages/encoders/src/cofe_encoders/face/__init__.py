"""Face analysis: detection, 5 keypoints, head pose, alignment and the reference-face crop.

Angle conventions are defined once, in :mod:`cofe_encoders.face.pose`.
"""

from cofe_encoders.align import align_crop, norm_crop
from cofe_encoders.face.analyzer import FaceAnalyzer, InsightFaceAnalyzer, OfflineFaceAnalyzer, build_face_analyzer
from cofe_encoders.face.estimators import (
    FivePointPose,
    InsightFace3D68Pose,
    PoseEstimator,
    SixDRepNetPose,
    build_pose_estimator,
    correct_yaw,
)
from cofe_encoders.face.pose import HeadPose, estimate_head_pose, matrix_to_angles, rotation_matrix
from cofe_encoders.face.reference import face_mask, reference_crop
from cofe_encoders.face.smoothing import smooth_pose
from cofe_encoders.face.types import Face

__all__ = [
    "Face",
    "FaceAnalyzer",
    "FivePointPose",
    "HeadPose",
    "InsightFace3D68Pose",
    "InsightFaceAnalyzer",
    "OfflineFaceAnalyzer",
    "PoseEstimator",
    "SixDRepNetPose",
    "align_crop",
    "build_face_analyzer",
    "build_pose_estimator",
    "correct_yaw",
    "estimate_head_pose",
    "face_mask",
    "matrix_to_angles",
    "norm_crop",
    "reference_crop",
    "rotation_matrix",
    "smooth_pose",
]
