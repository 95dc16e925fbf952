"""Head-pose estimators behind one interface, and the yaw correction of the offline 5-point estimate.

``estimator.estimate(image, faces)`` fills ``yaw``, ``pitch``, ``roll``, ``pose_source`` and ``pitch_reliable``
of each :class:`~cofe_encoders.face.types.Face` (angles in the conventions of :mod:`cofe_encoders.face.pose`).
:func:`build_pose_estimator` makes one by name; every face analyser takes ``pose=NAME, pose_weights=PATH``.

=================  ==============================================================  =========  ===============
name               what                                                            weights    pitch reliable
=================  ==============================================================  =========  ===============
``"offline"``      5-point solve + monotone yaw correction fitted for YuNet         none       no
``"offline-raw"``  the plain 5-point solve (``cofe_encoders`` 0.1.0)                none       no
``"insightface"``  insightface ``1k3d68`` 3D landmarks, pose as insightface does    pack/onnx  yes
``"6drepnet"``     6DRepNet (RepVGG-B1g2 + 6D head) on the detector box             ``.pth``   yes
=================  ==============================================================  =========  ===============

**Why the offline yaw is corrected.** On heads rendered at known angles from real photo textures
(``packages/encoders/benchmarks/bench_pose.py``), YuNet's five keypoints stay close to a frontal layout as the
head turns: the 5-point solve, within 4 degrees on exact keypoints, reads a true 60 degrees as about 48 and a
true 90 as about 66, always with the right sign. That compression is a property of the detector, so it is
undone by a monotone map of ``|yaw|`` fitted on renders of four identities and checked on four others
(:data:`YAW_CORRECTION`; yaw MAE on the held-out identities per |yaw| bin 0-30 / 30-60 / 60-80 / 80-90:
4.6 / 7.5 / 8.8 / 9.0 degrees instead of 4.2 / 7.7 / 14.5 / 22.5, |bias| <= 3.1 below 80). The map is only
valid for YuNet keypoints (the offline analyser); other detectors compress differently, so
:class:`~cofe_encoders.face.analyzer.InsightFaceAnalyzer` defaults to the pack's own 3D-landmark pose.
**5-point pitch is not reliable** (errors of 11-18 degrees; mirroring a photo moves it by 13): faces from the
5-point estimators carry ``pitch_reliable=False``; thresholds and bins must use yaw only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from cofe_encoders.face.pose import MEAN_FACE_68, estimate_head_pose
from cofe_encoders.face.types import Face

# Monotone correction of the offline 5-point |yaw| (degrees): (raw, true) knots, linear in between, capped at 90.
# Fitted by `packages/encoders/benchmarks/bench_pose.py --fit` on 228 renders of four identities (astronaut, hanks,
# t1-0, t1-2; |yaw| 0-90 in 5-degree steps, three pitch/roll variants): the mean of the inverse calibration (median
# raw |yaw| per true |yaw|, inverted) and the isotonic regression of true on raw |yaw| (fit_yaw.py says why).
# Held-out identities (hopper, t1-1, t1-3, t1-5), yaw MAE / signed |yaw| bias per true bin 0-30 / 30-60 / 60-80 /
# 80-90: raw 4.2/-1.1, 7.7/-4.6, 14.5/-14.2, 22.5/-22.5 -> corrected 4.6/+0.2, 7.5/-0.5, 8.8/-3.1, 9.0/-8.3.
YAW_CORRECTION = (
    (0.0, 0.0),
    (5.0, 4.4),
    (10.0, 10.3),
    (15.0, 16.6),
    (20.0, 24.7),
    (25.0, 27.8),
    (30.0, 33.1),
    (35.0, 36.1),
    (40.0, 43.0),
    (45.0, 50.0),
    (50.0, 59.9),
    (55.0, 68.3),
    (60.0, 77.3),
    (65.0, 81.4),
    (70.0, 85.3),
    (75.0, 88.8),
    (80.0, 90.0),
)
MAX_YAW = 90.0


def correct_yaw(yaw: float | np.ndarray, knots=YAW_CORRECTION) -> float | np.ndarray:
    """Map a raw 5-point yaw from YuNet keypoints to the corrected yaw (odd, monotone, capped at 90 degrees)."""
    raw = np.asarray(yaw, dtype=np.float64)
    xs, ys = np.array(knots, dtype=np.float64).T
    mag = np.interp(np.abs(raw), xs, ys, right=np.nan)
    # Beyond the last knot: continue with the last segment's slope, then cap.
    slope = (ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1e-9)
    mag = np.where(np.isnan(mag), ys[-1] + slope * (np.abs(raw) - xs[-1]), mag)
    out = np.sign(raw) * np.minimum(mag, MAX_YAW)
    return float(out) if np.ndim(yaw) == 0 else out


class PoseEstimator(ABC):
    """Fills the head pose of detected faces.

    Attributes:
        name: Registry name (``"offline"``, ``"offline-raw"``, ``"insightface"``, ``"6drepnet"``).
        pitch_reliable: Whether this estimator's pitch may be used for thresholds and bins.
    """

    name: str = ""
    pitch_reliable: bool = False

    @abstractmethod
    def _angles(self, image: np.ndarray, faces: list[Face]) -> list[tuple[float, float, float]]:
        """``(yaw, pitch, roll)`` per face."""

    def estimate(self, image: np.ndarray, faces: list[Face]) -> None:
        """Set ``yaw``, ``pitch``, ``roll``, ``pose_source`` and ``pitch_reliable`` of each face in place.

        Args:
            image: The uint8 RGB image the faces were found in.
            faces: Faces with ``bbox`` and ``kps5`` filled in.
        """
        if not faces:
            return
        for face, (yaw, pitch, roll) in zip(faces, self._angles(image, faces), strict=True):
            face.yaw, face.pitch, face.roll = float(yaw), float(pitch), float(roll)
            face.pose_source = self.name
            face.pitch_reliable = self.pitch_reliable

    def describe(self) -> dict:
        """A small JSON-friendly description (recorded beside curated data)."""
        return {"pose": self.name, "pitch_reliable": self.pitch_reliable}


class FivePointPose(PoseEstimator):
    """Pose from the 5 keypoints (weak-perspective fit, :func:`~cofe_encoders.face.pose.estimate_head_pose`).

    Args:
        correct: Apply :func:`correct_yaw` (the YuNet-specific correction; ``name="offline"``), or not
            (``name="offline-raw"``).

    Cost: a 6-parameter Gauss-Newton on 5 points and one interpolation: 3.2 ms per face measured on a shared,
    overloaded 2-core machine, 4.4 % of the offline analysis of a 512x512 frame (73 ms there).
    """

    def __init__(self, correct: bool = True) -> None:
        self.correct = correct
        self.name = "offline" if correct else "offline-raw"

    def _angles(self, image, faces):
        out = []
        for face in faces:
            pose = estimate_head_pose(face.kps5)
            yaw = correct_yaw(pose.yaw) if self.correct else pose.yaw
            out.append((yaw, pose.pitch, pose.roll))
        return out

    def describe(self) -> dict:
        return {**super().describe(), "yaw_correction": [list(k) for k in YAW_CORRECTION] if self.correct else None}


# ---------------------------------------------------------------------------------------------------------------
# insightface 1k3d68


def _insightface_normalisation(model) -> tuple[float, float]:
    """insightface's ``Landmark`` rule: graphs whose first nodes are named Sub/Mul (MXNet) take raw pixels."""
    names = [node.name for node in model.graph.node[:8]]
    sub = any(n.startswith(("Sub", "_minus")) for n in names) or any(n == "bn_data" for n in names[:3])
    mul = any(n.startswith(("Mul", "_mul")) for n in names) or any(n == "bn_data" for n in names[:3])
    return (0.0, 1.0) if sub and mul else (127.5, 128.0)


def pose_from_landmarks3d(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) from 68 3D landmarks in image coordinates, the way insightface's ``landmark_3d_68``
    does it: least-squares 3D affine map from the mean face (``estimate_affine_matrix_3d23d``), its first two rows
    normalised into a rotation (``P2sRt``), Euler angles by ``matrix2angle``. Those angles already follow this
    project's conventions (checked in the tests by rotating the mean face).

    Args:
        landmarks: ``(68, 3)``: x, y in image pixels, z towards the camera in the same scale.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 3):
        raise ValueError(f"expected (68, 3) landmarks, got shape {lm.shape}")
    ref = MEAN_FACE_68 * np.array([1.0, 1.0, -1.0])  # insightface's mean face: z towards the camera
    affine, *_ = np.linalg.lstsq(np.c_[ref, np.ones(68)], lm, rcond=None)  # (4, 3): lm ≈ [ref 1] @ affine
    r1, r2 = affine[:3, 0], affine[:3, 1]
    r1, r2 = r1 / np.linalg.norm(r1), r2 / np.linalg.norm(r2)
    rot = np.stack([r1, r2, np.cross(r1, r2)])
    sy = np.hypot(rot[0, 0], rot[1, 0])
    if sy > 1e-6:
        pitch, yaw = np.arctan2(rot[2, 1], rot[2, 2]), np.arctan2(-rot[2, 0], sy)
        roll = np.arctan2(rot[1, 0], rot[0, 0])
    else:
        pitch, yaw, roll = np.arctan2(-rot[1, 2], rot[1, 1]), np.arctan2(-rot[2, 0], sy), 0.0
    return float(np.degrees(yaw)), float(np.degrees(pitch)), float(np.degrees(roll))


class InsightFace3D68Pose(PoseEstimator):
    """insightface's ``1k3d68.onnx`` (68 3D landmarks) run with onnxruntime, pose from the landmarks.

    Preprocessing as insightface's ``model_zoo.Landmark.get``: a 192x192 crop centred on the detector box,
    scaled so the box's longer side is 192 / 1.5 pixels, RGB, ``(x - mean) / std`` by insightface's rule.

    Args:
        weights: ``1k3d68.onnx`` or an insightface pack directory that holds it.
        providers: onnxruntime providers (default CPU).
        intra_op_threads: onnxruntime intra-op threads (``None``: onnxruntime's default).
        allow_spinning: Let idle onnxruntime threads spin (fast, but takes a core from other processes).

    Cost: one 192x192 network run per face (about 10-15 ms on one CPU core for the real model).
    """

    name = "insightface"
    pitch_reliable = True

    def __init__(
        self,
        weights: str | Path,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
        allow_spinning: bool = True,
    ) -> None:
        import onnx

        from cofe_encoders.onnx_utils import make_session

        path = Path(weights).expanduser()
        if path.is_dir():
            path = path / "1k3d68.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"insightface 3D landmark model not found: {path} (1k3d68.onnx of a model pack)")
        self.path = path
        model = onnx.load(str(path))
        self.mean, self.std = _insightface_normalisation(model)
        self.session = make_session(model, providers, intra_op_threads, allow_spinning)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.size = int(inp.shape[2]) if isinstance(inp.shape[2], int) else 192
        out = self.session.get_outputs()[0].shape
        if len(out) != 2 or (isinstance(out[1], int) and out[1] < 68 * 3):
            raise ValueError(f"{path}: expected a (1, >= 204) 3D landmark output, got {out}")

    def landmarks(self, image: np.ndarray, face: Face) -> np.ndarray:
        """``(68, 3)`` landmarks in image pixels (z towards the camera, same scale)."""
        x1, y1, x2, y2 = np.asarray(face.bbox, dtype=np.float64)
        scale = self.size / (max(x2 - x1, y2 - y1) * 1.5)
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        m = np.array([[scale, 0.0, self.size / 2.0 - cx * scale], [0.0, scale, self.size / 2.0 - cy * scale]])
        crop = cv2.warpAffine(image, m, (self.size, self.size), borderValue=0.0)
        blob = ((crop.astype(np.float32) - self.mean) / self.std).transpose(2, 0, 1)[None]  # (1, 3, S, S) RGB
        pred = self.session.run(None, {self.input_name: np.ascontiguousarray(blob)})[0][0]
        pred = pred.reshape(-1, 3)[-68:].astype(np.float64)
        half = self.size // 2
        pred[:, :2] = (pred[:, :2] + 1.0) * half
        pred[:, 2] *= half
        inv = cv2.invertAffineTransform(m)
        out = np.empty_like(pred)
        out[:, :2] = pred[:, :2] @ inv[:, :2].T + inv[:, 2]
        out[:, 2] = pred[:, 2] * np.hypot(inv[0, 0], inv[0, 1])
        return out

    def _angles(self, image, faces):
        return [pose_from_landmarks3d(self.landmarks(image, f)) for f in faces]

    def describe(self) -> dict:
        return {**super().describe(), "weights": str(self.path)}


# ---------------------------------------------------------------------------------------------------------------
# 6DRepNet


class SixDRepNetPose(PoseEstimator):
    """6DRepNet (:mod:`cofe_encoders.face.sixdrepnet`) on each face's detector box.

    Args:
        weights: Local ``6DRepNet_300W_LP_AFLW2000.pth`` (the public release; deploy or training layout).
        device: Torch device.
        model: An already built :class:`~cofe_encoders.face.sixdrepnet.SixDRepNet` instead of ``weights``
            (tests use random weights).
        batch: Faces per network call.

    Cost: one 224x224 RepVGG-B1g2 run per face (about 11 GFLOPs: tens of ms on a CPU core, ~1 ms on a GPU).
    """

    name = "6drepnet"
    pitch_reliable = True

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", model=None, batch: int = 32) -> None:
        import torch

        from cofe_encoders.face.sixdrepnet import IMAGENET_MEAN, IMAGENET_STD, load_sixdrepnet

        if model is None:
            if weights is None:
                raise ValueError(
                    "the 6drepnet pose estimator needs pose_weights=PATH to a local 6DRepNet_300W_LP_AFLW2000.pth "
                    "(the 6DRepNet release's weights; nothing is downloaded)"
                )
            model = load_sixdrepnet(weights)
        self.weights = str(weights) if weights is not None else None
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.batch = batch
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @staticmethod
    def crop(image: np.ndarray, bbox: np.ndarray, size: int = 224) -> np.ndarray:
        """The release demo's input: the box grown by 20 % of its other side each way (clipped to the image),
        shorter side resized to ``size``, centre crop ``size x size``. Returns uint8 RGB."""
        h, w = image.shape[:2]
        x1, y1, x2, y2 = (int(v) for v in bbox)
        bw, bh = abs(x2 - x1), abs(y2 - y1)
        x1, y1 = max(0, x1 - int(0.2 * bh)), max(0, y1 - int(0.2 * bw))
        x2, y2 = min(w, x2 + int(0.2 * bh)), min(h, y2 + int(0.2 * bw))
        face = image[y1:y2, x1:x2]
        if face.size == 0:
            raise ValueError(f"face box {bbox.tolist()} lies outside the {w}x{h} image")
        fh, fw = face.shape[:2]
        k = size / min(fh, fw)
        nw, nh = max(size, round(fw * k)), max(size, round(fh * k))
        face = cv2.resize(face, (nw, nh), interpolation=cv2.INTER_LINEAR)
        ox, oy = (nw - size) // 2, (nh - size) // 2
        return face[oy : oy + size, ox : ox + size]

    def _angles(self, image, faces):
        import torch

        from cofe_encoders.face.sixdrepnet import angles_from_6drepnet

        crops = np.stack([self.crop(image, np.asarray(f.bbox)) for f in faces])  # (N, 224, 224, 3)
        out = []
        with torch.no_grad():
            for i in range(0, len(crops), self.batch):
                x = torch.from_numpy(crops[i : i + self.batch]).to(self.device).permute(0, 3, 1, 2).float() / 255.0
                x = (x - self._mean) / self._std  # (b, 3, 224, 224)
                out.append(angles_from_6drepnet(self.model(x).float()).cpu().numpy())  # (b, 3)
        return [tuple(row) for row in np.concatenate(out)]

    def describe(self) -> dict:
        return {**super().describe(), "weights": self.weights}


PoseName = Literal["offline", "offline-raw", "insightface", "6drepnet"]


def build_pose_estimator(name: PoseName = "offline", weights: str | Path | None = None, **kwargs) -> PoseEstimator:
    """Make a head-pose estimator by name (see the module docstring's table).

    Args:
        name: ``"offline"`` (default), ``"offline-raw"``, ``"insightface"`` or ``"6drepnet"``.
        weights: ``insightface``: ``1k3d68.onnx`` or its pack directory; ``6drepnet``: the ``.pth`` file.
        **kwargs: Passed to the estimator (``providers``, ``intra_op_threads``, ``allow_spinning`` for
            insightface; ``device`` for 6drepnet).
    """
    if name == "offline":
        return FivePointPose(correct=True)
    if name == "offline-raw":
        return FivePointPose(correct=False)
    if name == "insightface":
        if weights is None:
            raise ValueError("the insightface pose estimator needs pose_weights=PATH (1k3d68.onnx or its pack)")
        return InsightFace3D68Pose(weights, **kwargs)
    if name == "6drepnet":
        return SixDRepNetPose(weights, **kwargs)
    raise ValueError(f"unknown pose estimator {name!r}; choose 'offline', 'offline-raw', 'insightface' or '6drepnet'")


__all__ = [
    "YAW_CORRECTION",
    "FivePointPose",
    "InsightFace3D68Pose",
    "PoseEstimator",
    "SixDRepNetPose",
    "build_pose_estimator",
    "correct_yaw",
    "pose_from_landmarks3d",
]
