"""Shared fixtures: real face photos shipped in registry wheels, and ONNX recognisers built in the test."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """Eileen Collins, 512x512 RGB (scikit-image's `data.astronaut`, public domain, ships in the wheel)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def hopper() -> np.ndarray:
    """Grace Hopper, 512x600 RGB (matplotlib's `sample_data/grace_hopper.jpg`, ships in the wheel)."""
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return np.asarray(Image.open(path).convert("RGB"))


def _paste(canvas: np.ndarray, tile: np.ndarray, x: int, y: int) -> None:
    canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile


@pytest.fixture(scope="session")
def group_photo(astronaut: np.ndarray, hopper: np.ndarray) -> tuple[np.ndarray, int]:
    """A composite of real faces: two people, each twice at another scale (one mirrored). Four faces."""
    canvas = np.full((560, 1100, 3), 180, np.uint8)
    astro = astronaut[20:260, 130:330]  # (240, 200) head and shoulders
    grace = hopper[60:420, 130:410]  # (360, 280)
    _paste(canvas, astro, 20, 40)
    _paste(canvas, grace, 250, 100)
    small_grace = cv2.resize(grace[:, ::-1], (168, 216), interpolation=cv2.INTER_AREA)
    _paste(canvas, small_grace, 580, 60)
    big_astro = cv2.resize(astro, (300, 360), interpolation=cv2.INTER_AREA)
    _paste(canvas, big_astro, 780, 150)
    return canvas, 4


@pytest.fixture(scope="session")
def insightface_group_photo() -> np.ndarray:
    """insightface's `t1.jpg` (six people) when insightface is installed or COFE_GROUP_PHOTO points to it."""
    path = os.environ.get("COFE_GROUP_PHOTO")
    if not path:
        spec = importlib.util.find_spec("insightface")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("insightface's t1.jpg is unavailable: insightface is not installed and COFE_GROUP_PHOTO unset")
        path = str(Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / "t1.jpg")
    if not Path(path).is_file():
        pytest.skip(f"group photo not found at {path}")
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="session")
def analyzer():
    from cofe_encoders.face import OfflineFaceAnalyzer

    return OfflineFaceAnalyzer()


def make_recognizer_onnx(
    path: Path,
    *,
    size: int = 112,
    dim: int = 8,
    in_graph_norm: bool = False,
    weight_inputs: bool = False,
    batch: int | str = "N",
    output_rank: int = 2,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write an ArcFace-shaped ONNX graph: [Sub, Mul] -> Conv(16x16, stride 16) -> Flatten -> Gemm.

    Returns the weights so a test can compute the expected output with torch.
    """
    rng = np.random.default_rng(seed)
    grid = size // 16
    conv_w = rng.standard_normal((4, 3, 16, 16)).astype(np.float32) * 0.05
    fc_w = rng.standard_normal((dim, 4 * grid * grid)).astype(np.float32) * 0.1
    fc_b = rng.standard_normal(dim).astype(np.float32) * 0.1
    inits = [
        numpy_helper.from_array(conv_w, "conv_w"),
        numpy_helper.from_array(fc_w, "fc_w"),
        numpy_helper.from_array(fc_b, "fc_b"),
    ]
    nodes = []
    src = "data"
    if in_graph_norm:  # MXNet-style: the graph normalises 0-255 pixels itself
        inits += [
            numpy_helper.from_array(np.array([127.5], np.float32), "mean"),
            numpy_helper.from_array(np.array([0.0078125], np.float32), "scale"),
        ]
        nodes += [
            helper.make_node("Sub", ["data", "mean"], ["minus"]),
            helper.make_node("Mul", ["minus", "scale"], ["x"]),
        ]
        src = "x"
    nodes += [
        helper.make_node("Conv", [src, "conv_w"], ["fmap"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Flatten", ["fmap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["emb"], transB=1),
    ]
    out_name = "emb"
    if output_rank == 4:
        nodes.append(helper.make_node("Reshape", ["emb", "shape4"], ["emb4"]))
        inits.append(numpy_helper.from_array(np.array([-1, dim, 1, 1], np.int64), "shape4"))
        out_name = "emb4"
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, size, size])]
    if weight_inputs:  # like OpenCV zoo's SFace: weights and dangling names listed as graph inputs
        inputs.append(helper.make_tensor_value_info("conv_w", TensorProto.FLOAT, [4, 3, 16, 16]))
        inputs.append(helper.make_tensor_value_info("unused_weight", TensorProto.FLOAT, [3]))
    out_shape = [batch, dim] if output_rank == 2 else [batch, dim, 1, 1]
    graph = helper.make_graph(
        nodes, "arcface_like", inputs, [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return {"conv_w": conv_w, "fc_w": fc_w, "fc_b": fc_b}
