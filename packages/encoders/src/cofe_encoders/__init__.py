"""Frozen face experts (ArcFace identity, CLIP semantic, DINOv2 detail) and face analysis.

One interface for the three experts: ``build_expert(kind, weights=PATH).encode(images)`` returns an
:class:`ExpertOutput` with ``tokens (B, L, C)`` and ``pooled (B, C)``. Images are uint8 ``(H, W, 3)`` RGB
arrays, RGB PIL images, or float tensors ``(B, 3, H, W)`` in [0, 1] (:mod:`cofe_encoders.images`).
Face analysis lives in :mod:`cofe_encoders.face`; head-pose angle conventions in
:mod:`cofe_encoders.face.pose`.
"""

from cofe_encoders.align import ARCFACE_TEMPLATE, align_crop, alignment_matrix, norm_crop, umeyama_similarity
from cofe_encoders.base import ExpertOutput, FrozenExpert
from cofe_encoders.detail import DINOv2Expert
from cofe_encoders.identity import ArcFaceExpert
from cofe_encoders.onnx_utils import InvalidModelError
from cofe_encoders.registry import build_expert
from cofe_encoders.semantic import CLIPVisionExpert

__version__ = "0.2.1"

__all__ = [
    "ARCFACE_TEMPLATE",
    "ArcFaceExpert",
    "CLIPVisionExpert",
    "DINOv2Expert",
    "ExpertOutput",
    "FrozenExpert",
    "InvalidModelError",
    "__version__",
    "align_crop",
    "alignment_matrix",
    "build_expert",
    "norm_crop",
    "umeyama_similarity",
]
