"""Loading and checking face-recognition ONNX graphs for onnxruntime.

Handles the three things that make real recognition ONNX files fail in onnxruntime or give silently wrong
embeddings:

* graphs exported with their weights listed as graph inputs (OpenCV zoo's SFace; its int8 build also keeps
  the float weights' names as inputs that no node reads): onnxruntime then demands a value for every one of
  them. Every input that is an initializer, the output of a node, or read by no node is dropped; exactly one
  real input must remain.
* input normalisation: insightface ArcFace graphs exported from PyTorch (glintr100, w600k_r50) expect
  ``(x - 127.5) / 127.5``; graphs converted from MXNet carry the normalisation inside (a ``Sub``/``Mul`` right
  after the input) and expect raw 0-255 pixels. insightface's ``ArcFaceONNX`` tells them apart by looking
  for those nodes; :func:`inspect_input_normalisation` does the same, by the op types that consume the input.
* the final feature map before the embedding layer, which can be exposed as spatial tokens
  (:func:`expose_feature_map`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


class InvalidModelError(ValueError):
    """A model file exists but is not the kind of model expected (wrong graph, input or output)."""


@dataclass(frozen=True)
class GraphInfo:
    """What :func:`load_graph` found out about a graph.

    Attributes:
        input_name: Name of the single image input.
        input_shape: Its shape; ``None`` for dynamic dimensions.
        raw_pixels: True when the graph normalises its input itself (feed 0-255).
        feature_map: Name of the tensor that feeds the final flatten + linear embedding layer, or ``None``.
    """

    input_name: str
    input_shape: tuple[int | None, ...]
    raw_pixels: bool
    feature_map: str | None


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim)


def load_graph(path: str | Path, what: str = "model") -> tuple[onnx.ModelProto, GraphInfo]:
    """Load an ONNX file, drop weight-inputs and describe its single image input.

    Args:
        path: Local ``.onnx`` file.
        what: Words for error messages (``"identity model"``).

    Returns:
        The cleaned model and a :class:`GraphInfo`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        InvalidModelError: not ONNX, or not exactly one image-like input.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, google.protobuf errors, OSError...
        raise InvalidModelError(f"{what} {path} is not a readable ONNX file: {exc}") from exc
    graph = model.graph
    produced = {out for node in graph.node for out in node.output}
    consumed = {name for node in graph.node for name in node.input}
    weights = {init.name for init in graph.initializer} | produced
    real = [inp for inp in graph.input if inp.name not in weights and inp.name in consumed]
    if len(real) != 1:
        raise InvalidModelError(
            f"{what} {path}: expected exactly one image input, found {len(real)}: {[i.name for i in real]}"
        )
    if len(real) != len(graph.input):
        graph.ClearField("input")
        graph.input.extend(real)
    inp = real[0]
    shape = _dims(inp)
    if len(shape) != 4 or shape[1] not in (3, None):
        raise InvalidModelError(f"{what} {path}: expected an image input (N, 3, H, W), input {inp.name!r} is {shape}")
    consumers = [node.op_type for node in graph.node if inp.name in node.input]
    raw_pixels = bool(consumers) and all(op in ("Sub", "Mul", "Add", "Div") for op in consumers)
    return model, GraphInfo(inp.name, shape, raw_pixels, _find_feature_map(graph))


def _find_feature_map(graph: onnx.GraphProto) -> str | None:
    """Name of the (B, C, h, w) tensor flattened into the last Gemm/MatMul, if the graph has that shape."""
    by_output = {out: node for node in graph.node for out in node.output}
    for node in reversed(graph.node):
        if node.op_type not in ("Gemm", "MatMul"):
            continue
        src = by_output.get(node.input[0])
        if src is not None and src.op_type in ("Flatten", "Reshape"):
            return src.input[0]
        return None
    return None


def expose_feature_map(model: onnx.ModelProto, name: str) -> None:
    """Add tensor ``name`` as an extra graph output (in place), so one run returns it with the embedding."""
    if any(o.name == name for o in model.graph.output):
        return
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))


def make_session(
    model: onnx.ModelProto,
    providers: list[str] | None = None,
    intra_op_threads: int | None = None,
    allow_spinning: bool = True,
) -> ort.InferenceSession:
    """An onnxruntime session for an in-memory model (CPU unless ``providers`` says otherwise).

    Args:
        model: The graph.
        providers: Execution providers, best first; unavailable ones are skipped.
        intra_op_threads: Threads for one operator (``None``: onnxruntime's default, one per core). With it set,
            inter-op parallelism is 1 (these graphs are sequential).
        allow_spinning: Let idle worker threads spin-wait. Spinning is faster for one process alone but takes
            the cores from other processes (curation runs one process per core): pass ``False`` there.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3  # keep onnxruntime's initializer warnings out of user logs
    if intra_op_threads is not None:
        if intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        options.intra_op_num_threads = int(intra_op_threads)
        options.inter_op_num_threads = 1
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    available = ort.get_available_providers()
    providers = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=providers)


def check_embedding_output(
    session: ort.InferenceSession, info: GraphInfo, size: int, path: Path | str, what: str = "model"
) -> int:
    """Run one blank image through ``session`` and return the embedding width.

    Raises:
        InvalidModelError: the graph does not accept a ``(1, 3, size, size)`` image or does not return a
            ``(1, D)`` embedding as its first output.
    """
    h, w = info.input_shape[2], info.input_shape[3]
    if (h is not None and h != size) or (w is not None and w != size):
        raise InvalidModelError(f"{what} {path}: expected a {size}x{size} input, graph input is {h}x{w}")
    dummy = np.zeros((1, 3, size, size), dtype=np.float32)
    try:
        out = session.run(None, {info.input_name: dummy})[0]
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidArgument types
        raise InvalidModelError(f"{what} {path}: running a (1, 3, {size}, {size}) image failed: {exc}") from exc
    if out.ndim != 2 or out.shape[0] != 1:
        raise InvalidModelError(f"{what} {path}: expected a (1, D) embedding output, got shape {out.shape}")
    return int(out.shape[1])
