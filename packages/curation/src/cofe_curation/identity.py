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
import torch

from cofe_curation.config import IdentityConfig
from cofe_curation.faces import FaceTrack
from cofe_encoders.face import Face, FaceAnalyzer


def pick_frames(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` positions spread evenly over ``range(n)``, first and last included."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def embed_track(analyzer: FaceAnalyzer, frames: np.ndarray, track: FaceTrack, max_frames: int):
    """Identity embeddings of up to ``max_frames`` tracked faces, spread over the clip.

    Returns:
        ``(positions (K,), embeddings (K, D))``: positions index ``track.faces``; embeddings L2-normalised.
    """
    pos = pick_frames(len(track.faces), max_frames)
    if pos.size == 0:
        return pos, np.zeros((0, 0), np.float32)
    images = [frames[track.indices[p]] for p in pos]
    recognizer = getattr(analyzer, "recognizer", None)
    if recognizer is not None:  # one batched call (OfflineFaceAnalyzer)
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
