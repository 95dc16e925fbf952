"""Head pose from five keypoints. **The one place where the angle conventions of this project are defined.**

Conventions (degrees; the subject is the person in the image):

* **yaw** > 0: the subject turns their head to *their own left* (for a subject facing the camera, the nose
  moves towards the image's right). Matches DESIGN.md §3.
* **pitch** > 0: the subject looks *up* (the nose moves towards the image's top).
* **roll** > 0: the subject tilts their head towards *their own left shoulder*, i.e. the face turns clockwise
  as the image is displayed. For a frontal face this is ``atan2(dy, dx)`` of the line from the subject's
  right eye (image left) to their left eye in image coordinates (y down). Rotating an image
  counter-clockwise by ``theta`` (``cv2.getRotationMatrix2D(c, theta, 1)``) therefore changes roll by
  ``-theta``; mirroring it horizontally negates yaw and roll and keeps pitch.

Zero pose is the face of the ArcFace alignment template: the 2D layout that insightface's ``norm_crop`` maps
every face to. All three angles are relative to the camera (a frontal face at the image border, looking
parallel to the optical axis, has yaw 0 under the weak-perspective model used here).

Method: a rigid 3D face with five points is fitted under scaled orthographic (weak-perspective) projection,
``kps ≈ s · (R X)[:2] + t``; closed-form initialisation (least-squares affine camera, projected onto scaled
rotations, as in face3d's ``P2sRt``) followed by Gauss-Newton on the reprojection error. ``R`` is decomposed as
``Rz(roll) · Ry(-yaw) · Rx(-pitch)`` in camera axes (x right, y down, z into the scene).

The 3D points: x and y are the ArcFace template, symmetrised about the face's midline; depths come from
insightface's 68-point mean 3D face (``data/objects/meanshape_68.pkl``: eye centres = mean of points 36-47,
nose tip = 30, mouth corners = 48 and 54), relative to the eyes and in units of the inter-eye distance: the
nose tip is 0.534 and the mouth corners 0.118 of it in front of the eyes.

Limitations: five points constrain three angles with little redundancy, so a detector's keypoint noise of a
few pixels moves yaw and pitch by several degrees on small faces; the generic depths make |yaw| and |pitch|
magnitudes approximate (to roughly 10-20 %), not their signs or their symmetry; beyond about 60 degrees of yaw
the far eye is occluded and detectors guess its position, so large angles saturate. Roll is the most
reliable angle. Use an insightface 3D-landmark model when accurate magnitudes matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cofe_encoders.align import ARCFACE_TEMPLATE, check_kps5

# Depths in front of the eye plane, in inter-eye-distance units (see module docstring).
_NOSE_DEPTH_IPD = 0.534
_MOUTH_DEPTH_IPD = 0.118


def _face_model() -> np.ndarray:
    """The five 3D points (x right, y down, z into the head), centred, in template pixels."""
    t = ARCFACE_TEMPLATE
    mid = (t[0, 0] + t[1, 0] + t[3, 0] + t[4, 0] + 2 * t[2, 0]) / 6.0
    eye_half = (t[1, 0] - t[0, 0]) / 2.0
    mouth_half = (t[4, 0] - t[3, 0]) / 2.0
    eye_y = (t[0, 1] + t[1, 1]) / 2.0
    mouth_y = (t[3, 1] + t[4, 1]) / 2.0
    ipd = 2.0 * eye_half
    pts = np.array(
        [
            [mid - eye_half, eye_y, 0.0],
            [mid + eye_half, eye_y, 0.0],
            [mid, t[2, 1], -_NOSE_DEPTH_IPD * ipd],
            [mid - mouth_half, mouth_y, -_MOUTH_DEPTH_IPD * ipd],
            [mid + mouth_half, mouth_y, -_MOUTH_DEPTH_IPD * ipd],
        ]
    )
    return pts - pts.mean(0)


FACE_MODEL_3D = _face_model()


@dataclass(frozen=True)
class HeadPose:
    """Head pose in degrees (conventions in :mod:`cofe_encoders.face.pose`), plus the fit's quality.

    Attributes:
        yaw: Positive to the subject's left.
        pitch: Positive looking up.
        roll: Positive tilting to the subject's left shoulder (clockwise on screen).
        rmse: Root-mean-square reprojection error of the fit, as a fraction of the inter-eye distance.
    """

    yaw: float
    pitch: float
    roll: float
    rmse: float


def _project(params: np.ndarray, model: np.ndarray) -> np.ndarray:
    rot, _ = cv2.Rodrigues(params[:3])
    return params[3] * (model @ rot.T)[:, :2] + params[4:6]


def _closed_form(kps: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Least-squares affine camera, projected onto a scaled rotation (SVD); returns Gauss-Newton params."""
    x_c = kps - kps.mean(0)
    a, *_ = np.linalg.lstsq(model, x_c, rcond=None)  # model @ a ≈ x_c, a: (3, 2)
    u, sv, vt = np.linalg.svd(a.T, full_matrices=False)  # a.T = s R[:2] (2, 3)
    r12 = u @ vt  # nearest matrix with orthonormal rows
    rot = np.vstack([r12, np.cross(r12[0], r12[1])])
    rvec, _ = cv2.Rodrigues(rot)
    return np.concatenate([rvec.ravel(), [sv.mean()], kps.mean(0)])


def estimate_head_pose(kps5: np.ndarray, iterations: int = 20) -> HeadPose:
    """Estimate yaw, pitch and roll from five keypoints (order in :mod:`cofe_encoders.align`).

    Args:
        kps5: ``(5, 2)`` keypoints in image pixels.
        iterations: Gauss-Newton iterations after the closed-form start.

    Returns:
        The :class:`HeadPose`.
    """
    kps = check_kps5(kps5)
    model = FACE_MODEL_3D
    params = _closed_form(kps, model)
    eps = 1e-6
    for _ in range(iterations):
        res = (_project(params, model) - kps).ravel()
        jac = np.empty((res.size, params.size))
        for j in range(params.size):
            step = np.zeros_like(params)
            step[j] = eps * max(1.0, abs(params[j]))
            jac[:, j] = ((_project(params + step, model) - kps).ravel() - res) / step[j]
        delta, *_ = np.linalg.lstsq(jac, -res, rcond=None)
        params = params + delta
        if np.abs(delta).max() < 1e-9:
            break
    rot, _ = cv2.Rodrigues(params[:3])
    yaw = np.degrees(np.arcsin(np.clip(rot[2, 0], -1.0, 1.0)))
    pitch = -np.degrees(np.arctan2(rot[2, 1], rot[2, 2]))
    roll = np.degrees(np.arctan2(rot[1, 0], rot[0, 0]))
    ipd = max(float(np.linalg.norm(kps[1] - kps[0])), 1e-6)
    rmse = float(np.sqrt(((_project(params, model) - kps) ** 2).sum(1).mean()) / ipd)
    return HeadPose(float(yaw), float(pitch), float(roll), rmse)
