"""Shared fixtures: real face photos (insightface's wheel), face videos made from them, and the models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cofe_bench import CurricularFace
from cofe_bench.standins import random_inception
from cofe_bench.testing import T1_BOXES, face_crop, load_photo
from cofe_encoders import build_expert
from cofe_encoders.face import build_face_analyzer


@pytest.fixture(scope="session")
def t1() -> np.ndarray:
    return load_photo("t1.jpg")


@pytest.fixture(scope="session")
def faces(t1) -> dict[str, np.ndarray]:
    """160x160 crops of the six people of t1.jpg (p0..p5)."""
    return {k: face_crop(t1, box) for k, box in T1_BOXES.items()}


@pytest.fixture(scope="session")
def analyzer():
    return build_face_analyzer("offline")


@pytest.fixture(scope="session")
def sface():
    return build_expert("identity", variant="sface")


@pytest.fixture(scope="session")
def curricular():
    torch.manual_seed(0)
    return CurricularFace(None, num_layers=18)


@pytest.fixture(scope="session")
def inception(faces):
    crops = np.stack([face_crop(f, (40, 40, 120, 120), 224) for f in faces.values()])  # (6, 224, 224, 3)
    return random_inception(seed=0, calibrate_on=crops, input_size=128)  # 299 in the protocol; 128 is faster
