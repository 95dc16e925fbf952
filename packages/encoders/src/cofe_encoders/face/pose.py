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

# insightface's mean 3D face of the 68-point (iBUG 300-W) landmark layout, the reference its `landmark_3d_68` pose
# is computed against (insightface `python-package/insightface/data/objects/meanshape_68.pkl`, rounded to 4
# decimals). Stored there with x right, y down, z *towards* the camera (nose tip z = +0.60); here z is negated so
# that it follows this module's camera axes (z into the scene). Units: about 10.5 cm (jaw width 0-16 = 1.25).
_MEANSHAPE_68_TOWARDS_CAMERA = np.array(
    [
        [-0.6267, -0.2927, -0.3140],
        [-0.5997, -0.1225, -0.2924],
        [-0.5710, 0.0512, -0.2549],
        [-0.5339, 0.2128, -0.1866],
        [-0.4797, 0.3506, -0.0477],
        [-0.3958, 0.4465, 0.0733],
        [-0.2988, 0.5107, 0.1798],
        [-0.1884, 0.5544, 0.3167],
        [0.0015, 0.5844, 0.3884],
        [0.1910, 0.5517, 0.3143],
        [0.3269, 0.4896, 0.1684],
        [0.4400, 0.4024, 0.0360],
        [0.5069, 0.3116, -0.0948],
        [0.5409, 0.2045, -0.2027],
        [0.5741, 0.0457, -0.2842],
        [0.5991, -0.1459, -0.2965],
        [0.6275, -0.3077, -0.3020],
        [-0.4747, -0.4376, 0.2365],
        [-0.4167, -0.4718, 0.3160],
        [-0.3475, -0.4841, 0.3661],
        [-0.2606, -0.4764, 0.3992],
        [-0.1671, -0.4578, 0.4166],
        [0.1232, -0.4587, 0.4251],
        [0.2064, -0.4804, 0.4158],
        [0.2867, -0.4901, 0.3920],
        [0.3624, -0.4769, 0.3528],
        [0.4256, -0.4501, 0.2953],
        [-0.0076, -0.3231, 0.4619],
        [-0.0079, -0.2557, 0.5105],
        [-0.0077, -0.1992, 0.5525],
        [-0.0073, -0.1426, 0.5987],
        [-0.1450, 0.0331, 0.4197],
        [-0.0843, 0.0313, 0.4732],
        [-0.0055, 0.0398, 0.5147],
        [0.0635, 0.0461, 0.4792],
        [0.1340, 0.0220, 0.4191],
        [-0.3868, -0.3134, 0.2596],
        [-0.3167, -0.3501, 0.3285],
        [-0.2341, -0.3549, 0.3335],
        [-0.1552, -0.3152, 0.3143],
        [-0.2309, -0.2843, 0.3256],
        [-0.3175, -0.2852, 0.3099],
        [0.1390, -0.3098, 0.3183],
        [0.2195, -0.3532, 0.3380],
        [0.3017, -0.3497, 0.3331],
        [0.3767, -0.3135, 0.2632],
        [0.2967, -0.2871, 0.3220],
        [0.2146, -0.2905, 0.3312],
        [-0.2014, 0.2374, 0.3795],
        [-0.1373, 0.1858, 0.4653],
        [-0.0765, 0.1512, 0.5036],
        [-0.0025, 0.1687, 0.5164],
        [0.0644, 0.1509, 0.5045],
        [0.1265, 0.1795, 0.4686],
        [0.2182, 0.2390, 0.3757],
        [0.1329, 0.2839, 0.4401],
        [0.0680, 0.2974, 0.4774],
        [-0.0005, 0.3000, 0.4871],
        [-0.0693, 0.2970, 0.4805],
        [-0.1425, 0.2743, 0.4381],
        [-0.1781, 0.2306, 0.3964],
        [-0.0740, 0.2147, 0.4653],
        [-0.0026, 0.2141, 0.4832],
        [0.0598, 0.2108, 0.4722],
        [0.1669, 0.2313, 0.3968],
        [0.0598, 0.2238, 0.4664],
        [-0.0014, 0.2258, 0.4752],
        [-0.0752, 0.2307, 0.4671],
    ],
    dtype=np.float64,
)
MEAN_FACE_68 = _MEANSHAPE_68_TOWARDS_CAMERA * np.array([1.0, 1.0, -1.0])


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The ``(3, 3)`` head rotation for angles in degrees: ``Rz(roll) · Ry(-yaw) · Rx(-pitch)`` in camera axes.

    A head point ``X`` (x right, y down, z into the scene, head frontal at zero) is seen at ``R @ X``. Inverse of
    :func:`matrix_to_angles`.
    """
    y, p, r = np.radians([yaw, pitch, roll])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(p), np.sin(p)], [0.0, -np.sin(p), np.cos(p)]])  # Rx(-pitch)
    ry = np.array([[np.cos(y), 0.0, -np.sin(y)], [0.0, 1.0, 0.0], [np.sin(y), 0.0, np.cos(y)]])  # Ry(-yaw)
    rz = np.array([[np.cos(r), -np.sin(r), 0.0], [np.sin(r), np.cos(r), 0.0], [0.0, 0.0, 1.0]])  # Rz(roll)
    return rz @ ry @ rx


def matrix_to_angles(rot: np.ndarray) -> tuple[float, float, float]:
    """``(yaw, pitch, roll)`` in degrees of a head rotation in camera axes (inverse of :func:`rotation_matrix`)."""
    rot = np.asarray(rot, dtype=np.float64)
    yaw = np.degrees(np.arcsin(np.clip(rot[2, 0], -1.0, 1.0)))
    pitch = -np.degrees(np.arctan2(rot[2, 1], rot[2, 2]))
    roll = np.degrees(np.arctan2(rot[1, 0], rot[0, 0]))
    return float(yaw), float(pitch), float(roll)


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


def _rodrigues(rvecs: np.ndarray) -> np.ndarray:
    """``(K, 3)`` rotation vectors -> ``(K, 3, 3)`` matrices (Rodrigues' formula, batched)."""
    theta = np.linalg.norm(rvecs, axis=1)[:, None, None]  # (K, 1, 1)
    safe = np.where(theta > 1e-12, theta, 1.0)
    k = rvecs[:, :, None] / safe  # (K, 3, 1) unit axes
    kx = np.zeros((len(rvecs), 3, 3))
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -k[:, 2, 0], k[:, 1, 0], -k[:, 0, 0]
    kx = kx - kx.transpose(0, 2, 1)
    out = np.eye(3) + np.sin(theta) * kx + (1.0 - np.cos(theta)) * (kx @ kx)
    return np.where(theta > 1e-12, out, np.eye(3))


def _project_many(params: np.ndarray, model: np.ndarray) -> np.ndarray:
    """``(K, 6)`` parameter sets -> ``(K, N, 2)`` projections ``s · (R X)[:2] + t``."""
    rot = _rodrigues(params[:, :3])  # (K, 3, 3)
    return params[:, 3, None, None] * np.einsum("kij,nj->kni", rot[:, :2], model) + params[:, None, 4:6]


def _project(params: np.ndarray, model: np.ndarray) -> np.ndarray:
    return _project_many(params[None], model)[0]


def _closed_form(kps: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Least-squares affine camera, projected onto a scaled rotation (SVD); returns Gauss-Newton params."""
    x_c = kps - kps.mean(0)
    a, *_ = np.linalg.lstsq(model - model.mean(0), x_c, rcond=None)  # model @ a ≈ x_c, a: (3, 2)
    u, sv, vt = np.linalg.svd(a.T, full_matrices=False)  # a.T = s R[:2] (2, 3)
    r12 = u @ vt  # nearest matrix with orthonormal rows
    rot = np.vstack([r12, np.cross(r12[0], r12[1])])
    rvec, _ = cv2.Rodrigues(rot)
    t = kps.mean(0) - sv.mean() * (model.mean(0) @ rot.T)[:2]
    return np.concatenate([rvec.ravel(), [sv.mean()], t])


@dataclass(frozen=True)
class PoseFit:
    """A weak-perspective fit ``points ≈ scale · (rotation @ X)[:2] + translation``.

    Attributes:
        rotation: ``(3, 3)`` head rotation in camera axes (angles: :func:`matrix_to_angles`).
        scale: Pixels per model unit.
        translation: ``(2,)`` pixels.
        rmse: Root-mean-square reprojection error in pixels.
    """

    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    rmse: float


def fit_weak_perspective(points: np.ndarray, model: np.ndarray, iterations: int = 20) -> PoseFit:
    """Fit a rigid 3D point model to 2D points under scaled orthographic projection.

    Closed-form start (least-squares affine camera projected onto a scaled rotation, as in face3d's ``P2sRt``),
    then Gauss-Newton on the reprojection error over rotation (Rodrigues vector), scale and translation.

    Args:
        points: ``(N, 2)`` image points in pixels, ``N >= 4``.
        model: ``(N, 3)`` corresponding model points (x right, y down, z into the scene).
        iterations: Gauss-Newton iterations.

    Returns:
        The :class:`PoseFit`.
    """
    kps = np.asarray(points, dtype=np.float64)
    model = np.asarray(model, dtype=np.float64)
    if kps.ndim != 2 or kps.shape[1] != 2 or model.shape != (kps.shape[0], 3) or kps.shape[0] < 4:
        raise ValueError(f"expected (N, 2) points and (N, 3) model points, N >= 4; got {kps.shape} and {model.shape}")
    params = _closed_form(kps, model)
    eps = 1e-6
    for _ in range(iterations):
        # Forward-difference Jacobian, all six perturbations projected in one batch.
        steps = np.diag(eps * np.maximum(1.0, np.abs(params)))  # (6, 6)
        proj = _project_many(np.vstack([params, params + steps]), model) - kps  # (7, N, 2)
        res = proj[0].ravel()
        jac = ((proj[1:].reshape(6, -1) - res) / np.diag(steps)[:, None]).T  # (2N, 6)
        delta, *_ = np.linalg.lstsq(jac, -res, rcond=None)
        params = params + delta
        if np.abs(delta).max() < 1e-7:
            break
    rot = _rodrigues(params[None, :3])[0]
    rmse = float(np.sqrt(((_project(params, model) - kps) ** 2).sum(1).mean()))
    return PoseFit(rot, float(params[3]), params[4:6].copy(), rmse)


def estimate_head_pose(kps5: np.ndarray, iterations: int = 20) -> HeadPose:
    """Estimate yaw, pitch and roll from five keypoints (order in :mod:`cofe_encoders.align`).

    This is the raw 5-point solve: exact on exact keypoints, but detector keypoints compress |yaw| (see
    :mod:`cofe_encoders.face.estimators` for the corrected offline estimator) and its pitch is unreliable.

    Args:
        kps5: ``(5, 2)`` keypoints in image pixels.
        iterations: Gauss-Newton iterations after the closed-form start.

    Returns:
        The :class:`HeadPose`.
    """
    kps = check_kps5(kps5)
    fit = fit_weak_perspective(kps, FACE_MODEL_3D, iterations)
    yaw, pitch, roll = matrix_to_angles(fit.rotation)
    ipd = max(float(np.linalg.norm(kps[1] - kps[0])), 1e-6)
    return HeadPose(yaw, pitch, roll, fit.rmse / ipd)
