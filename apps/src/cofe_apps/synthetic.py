"""Small curated-format datasets built from a real photograph, for tests, benchmarks and the CPU demo.

The photograph is Grace Hopper's portrait that ships inside matplotlib (``mpl-data/sample_data``), a real face
available offline wherever the apps are installed. Clips pan and zoom across it so the face moves in frame; the
shard samples follow DESIGN.md section 3 (key.mp4, key.json, key.ref.png), with annotations that are plausible
placeholders (no curation is run here; `cofe curate` produces real ones).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from cofe_curation.media import encode_mp4

# The face in grace_hopper.jpg (600 x 512), as the offline detector finds it: x0, y0, x1, y1.
HOPPER_FACE = (183, 120, 353, 333)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def hopper() -> np.ndarray:
    """Grace Hopper's portrait, ``(600, 512, 3)`` uint8 RGB."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def reference_crop(image: np.ndarray | None = None, size: int = 112) -> np.ndarray:
    """A square crop around the face, resized to ``size``: ``(size, size, 3)`` uint8."""
    image = hopper() if image is None else image
    x0, y0, x1, y1 = HOPPER_FACE
    c, half = ((x0 + x1) // 2, (y0 + y1) // 2), max(x1 - x0, y1 - y0) // 2 + 10
    crop = image[max(0, c[1] - half) : c[1] + half, max(0, c[0] - half) : c[0] + half]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))


def reference_pair(image: np.ndarray | None = None, head_size: int = 128) -> tuple[np.ndarray, np.ndarray, list]:
    """The face of ``image`` (Grace Hopper's by default) as curation writes it: the 112 x 112 ArcFace-aligned crop
    (``ref_id.png``), the whitened head crop (``ref.png``) and the 5 points in the head crop's pixels."""
    from cofe_encoders import norm_crop
    from cofe_encoders.align import alignment_matrix, transform_points
    from cofe_encoders.face import build_face_analyzer, reference_crop

    image = hopper() if image is None else image
    face = build_face_analyzer("offline").largest(image, embed=False)
    head = reference_crop(image, face, size=head_size)
    kps = transform_points(face.kps5, alignment_matrix(face.kps5, head_size, 1.6))
    return norm_crop(image, face.kps5), head, [[round(float(x), 2), round(float(y), 2)] for x, y in kps]


def make_curated_shards(
    folder: str | Path, shards: int = 2, per_shard: int = 3, frames: int = 9, size: int = 64
) -> list[str]:
    """Write ``shards`` curated WebDataset shards of ``per_shard`` clips each; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img = hopper()
    ident, head, ref_kps = reference_pair(img)
    ref_png, ref_id_png = (_png(x) for x in (head, ident))
    paths = []
    for s in range(shards):
        path = folder / f"{s:03d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                key = f"clip{s:03d}_{i:03d}"
                clip = []
                for t in range(frames):
                    side = 360 - 6 * t - 10 * s  # zoom in while panning right
                    x0, y0 = 60 + 3 * t + 8 * i, 40 + 4 * s
                    crop = img[y0 : y0 + side, x0 : x0 + side]
                    clip.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR)))
                meta = {
                    "fps": 8,
                    "num_frames": frames,
                    "width": size,
                    "height": size,
                    "caption": f"a woman in a naval uniform, take {i}",
                    "caption_refined": f"a woman in a naval uniform looks at the camera, take {i}",
                    "speaking": False,
                    "speech_ratio": 0.0,
                    "faces": [
                        {
                            "frame": t,
                            "bbox": [16, 8, 48, 48],
                            "kps5": [[26, 24], [38, 24], [32, 31], [27, 38], [37, 38]],
                            "score": 0.9,
                            "yaw": 0.0,
                            "pitch": 0.0,
                            "roll": 0.0,
                        }
                        for t in range(frames)
                    ],
                    "face_ratio": 0.4,
                    "yaw_range": 0.0,
                    "id_consistency": 1.0,
                    "identity_cluster": 0,
                    "source": "matplotlib:grace_hopper.jpg",
                    "ref_kps5": ref_kps,
                    "ref_align": {"size": head.shape[0], "expand": 1.6},
                }
                mp4 = encode_mp4(np.stack(clip), fps=8)
                sample = {"__key__": key, "mp4": mp4, "json": json.dumps(meta).encode(), "ref.png": ref_png}
                sink.write({**sample, "ref_id.png": ref_id_png})
        paths.append(str(path))
    return paths


def arcface_like_onnx(path: Path, dim: int = 512) -> Path:
    """A random ONNX graph with an ArcFace recogniser's interface (112 x 112 RGB in, a ``dim``-d embedding out)."""
    import onnx  # onnx is installed with onnxruntime's tooling (tests, benchmarks)
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 16, 16)).astype(np.float32) * 0.05, "w"),
             numpy_helper.from_array(rng.standard_normal((dim, 8 * 7 * 7)).astype(np.float32) * 0.1, "fc"),
             numpy_helper.from_array(np.zeros(dim, np.float32), "b")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["data", "w"], ["f"], kernel_shape=[16, 16], strides=[16, 16]),
             helper.make_node("Flatten", ["f"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "fc", "b"], ["emb"], transB=1)]  # fmt: skip
    graph = helper.make_graph(
        nodes, "arcface_like", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", dim])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def move_off_zero_init(model, seed: int = 0, scale: float = 0.2) -> None:
    """Add seeded noise to a CoFE network's face branch, gates and output head (``CoFEModel`` or anything with
    ``dit.`` / ``cofe.`` parameter names), which start at zero: an untrained model then draws a video that
    depends on the face, so tests and benchmarks of sampling can see the face conditioning act."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "cross_attn.face" in name or "gates" in name or name.startswith("dit.head.head"):
                p.add_(torch.randn(p.shape, generator=gen) * scale)
