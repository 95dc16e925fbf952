"""Stage 3, face constraints: one clear face, large and sharp enough, turning through a wide enough yaw range.

Faces come from ``cofe_encoders.face`` (one analyser per process, detection on every sampled frame). Angle
conventions are those of :mod:`cofe_encoders.face.pose` (yaw > 0: the subject turns to their own left).

**Tracking** (:func:`track_main_face`). Detections are first linked frame to frame by box overlap into
*tracklets* (IoU >= 0.3 between consecutive sampled frames: at 8 fps a head moves a fraction of its width between
samples). The main face is the largest face of the first frame with a face; its track continues through its
tracklet. A detector loses a face for a few frames when it turns to profile (YuNet finds 98 % of faces up to 75
degrees of yaw and 82 % at 75-90, STACK.md), so when the tracklet ends the track looks for the next tracklet that
starts within ``max_gap_s`` and is *consistent*: its box lies near where the face was lost (``track_max_shift``
face widths, plus ``track_shift_per_s`` per second of gap), it has a similar size, and, when an identity check is
given, its embedding matches the track's frame of nearest yaw. A face that is not consistent is never adopted
(before 0.3.0 the track fell back to the largest face and could switch people silently): if such a face stays
at least ``min_switch_s`` while the tracked one is gone, the clip is rejected as a person switch.

**Pose track.** The per-frame angles are smoothed over time (``cofe_encoders.face.smooth_pose``: robust local
lines over ``pose_smoothing_s``, which keep the peak of a turn) on the tracked frames only, so a frame without a
face stays without a pose; the pose statistics and the reference choice use the smoothed yaw, the shard JSON keeps
both (``yaw``, ``yaw_smooth``).

**Rules** (:func:`check_faces`). Detection is counted over the track's span (first to last tracked frame), and
every run of frames without the main face, inside the track or at the clip's ends, must be at most
``max_gap_s``: a clip that turns to profile and back keeps its frames; the gaps are recorded in the shard JSON.
Pose uses percentiles, never the raw maximum (one mis-estimated frame must not create or hide a head turn).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from cofe_curation.config import FaceConfig
from cofe_encoders.face import Face, FaceAnalyzer, norm_crop, smooth_pose

# Detections in consecutive sampled frames belong to one tracklet if their boxes overlap by at least this IoU.
_TRACK_IOU = 0.3
# A detection overlapping the tracked face's box by at least this IoU is a second detection of the same head (YuNet's
# NMS suppresses only above 0.3, and a strongly turned face can fire twice: measured 0.28-0.29 on a composed
# profile), not a second person; two people's faces do not overlap this much unless one hides the other.
_DUPLICATE_IOU = 0.2


def detect_faces(analyzer: FaceAnalyzer, frames: np.ndarray, min_score: float = 0.0) -> list[list[Face]]:
    """Faces of each sampled frame (no embeddings), largest first.

    Args:
        analyzer: A ``cofe_encoders`` face analyser.
        frames: ``(T, H, W, 3)`` uint8 RGB.
        min_score: Drop detections below this score.
    """
    return [[f for f in analyzer.analyze(frame, embed=False) if f.score >= min_score] for frame in frames]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes."""
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def sharpness(image: np.ndarray, face: Face) -> float:
    """Variance of the Laplacian of the aligned 112x112 gray face crop (higher = sharper).

    Measured at a fixed aligned scale so that the number does not depend on the face's size in the frame.
    """
    gray = cv2.cvtColor(norm_crop(image, face.kps5), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


@dataclass
class IdentityCheck:
    """How the tracker tells whether a face found after the track was lost is the tracked person.

    Attributes:
        embed: ``(frame (H, W, 3) uint8, face) -> (D,)`` L2-normalised identity embedding.
        threshold: Minimum pose-compensated cosine similarity for the same person (the recogniser's verification
            threshold, :data:`cofe_curation.identity.RECOGNIZERS`).
        window: Yaw gap (degrees) compared without compensation.
        slope: Similarity credit per degree of yaw gap beyond ``window``.
    """

    embed: Callable[[np.ndarray, Face], np.ndarray]
    threshold: float
    window: float = 20.0
    slope: float = 0.0025


@dataclass
class _Tracklet:
    frames: list[int]
    faces: list[Face]

    @property
    def start(self) -> int:
        return self.frames[0]

    @property
    def end(self) -> int:
        return self.frames[-1]


def _tracklets(detections: list[list[Face]], start: int, stop: int) -> list[_Tracklet]:
    """Detections of frames ``[start, stop)`` linked frame to frame by box overlap (greedy, highest IoU first)."""
    done: list[_Tracklet] = []
    active: list[_Tracklet] = []
    for i in range(start, stop):
        dets = detections[i]
        pairs = sorted(
            ((box_iou(t.faces[-1].bbox, d.bbox), ti, di) for ti, t in enumerate(active) for di, d in enumerate(dets)),
            key=lambda p: -p[0],
        )
        used_t: set[int] = set()
        used_d: set[int] = set()
        for overlap, ti, di in pairs:
            if overlap < _TRACK_IOU:
                break
            if ti in used_t or di in used_d:
                continue
            active[ti].frames.append(i)
            active[ti].faces.append(dets[di])
            used_t.add(ti)
            used_d.add(di)
        done += [t for ti, t in enumerate(active) if ti not in used_t]
        active = [t for ti, t in enumerate(active) if ti in used_t]
        active += [_Tracklet([i], [d]) for di, d in enumerate(dets) if di not in used_d]
    return sorted(done + active, key=lambda t: (t.start, -t.faces[0].area))


@dataclass
class FaceTrack:
    """The main face through one clip.

    Attributes:
        indices: ``(K,)`` sampled-frame indices (into the decoded video) where the main face was found.
        faces: The main face at each of those frames (analysis pixels).
        num_frames: Sampled frames in the clip.
        second_face_ratio: Largest area ratio of any other face to the main face, over the clip.
        sharpness: ``(K,)`` sharpness of the main face per frame.
        gaps: Runs of the clip's sampled frames without the main face (inside the track and at the clip's ends),
            as ``(t_from, t_to)`` seconds of the source.
        span: Sampled frames from the first to the last tracked frame (``0`` for an empty track).
        switch: Why the track ended at a different person (``None``: it did not).
        reacquired: How often the track picked its face up again after losing it.
        smoothed: ``(K, 3)`` yaw, pitch, roll smoothed over time (``None``: not smoothed).
    """

    indices: np.ndarray
    faces: list[Face]
    num_frames: int
    second_face_ratio: float = 0.0
    sharpness: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gaps: list[tuple[float, float]] = field(default_factory=list)
    span: int = 0
    switch: str | None = None
    reacquired: int = 0
    smoothed: np.ndarray | None = None

    @property
    def yaws(self) -> np.ndarray:
        """``(K,)`` per-frame yaw as the estimator read it."""
        return np.array([f.yaw for f in self.faces], np.float64)

    @property
    def pose_yaws(self) -> np.ndarray:
        """``(K,)`` yaw the rules use: smoothed over time where the track was smoothed, else per frame."""
        return self.smoothed[:, 0] if self.smoothed is not None else self.yaws


def _centre(face: Face) -> np.ndarray:
    return np.array([(face.bbox[0] + face.bbox[2]) / 2.0, (face.bbox[1] + face.bbox[3]) / 2.0])


class _Identities:
    """Embeddings of tracked faces, computed on demand and cached (a few per clip: only when a track is lost)."""

    def __init__(self, check: IdentityCheck, frames: np.ndarray) -> None:
        self.check = check
        self.frames = frames
        self._cache: dict[int, np.ndarray] = {}

    def embedding(self, index: int, face: Face) -> np.ndarray:
        key = id(face)
        if key not in self._cache:
            self._cache[key] = np.asarray(self.check.embed(self.frames[index], face), np.float64)
        return self._cache[key]

    def similarity(self, chain: list[tuple[int, Face]], index: int, face: Face) -> float:
        """Pose-compensated similarity of ``face`` to the track's frame of nearest yaw (its latest on ties)."""
        j, ref = min(reversed(chain), key=lambda p: abs(p[1].yaw - face.yaw))
        sim = float(self.embedding(index, face) @ self.embedding(j, ref))
        gap = abs(ref.yaw - face.yaw)
        return min(1.0, sim + self.check.slope * max(0.0, gap - self.check.window))


def track_main_face(
    frames: np.ndarray,
    detections: list[list[Face]],
    start: int,
    stop: int,
    times: np.ndarray | None = None,
    cfg: FaceConfig | None = None,
    identity: IdentityCheck | None = None,
    end_time: float | None = None,
) -> FaceTrack:
    """Follow the main face over sampled frames ``[start, stop)`` (see the module docstring for the rules).

    Args:
        frames: ``(T, H, W, 3)`` uint8 sampled frames.
        detections: Faces of each sampled frame (:func:`detect_faces`).
        start: First sampled frame of the clip.
        stop: One past its last.
        times: ``(T,)`` seconds of each sampled frame (default: 8 fps from 0).
        cfg: Gap and consistency limits (default: :class:`FaceConfig` defaults).
        identity: Embeds faces to check the identity of a face found after the track was lost (default: position
            and size only).
        end_time: End of the clip, seconds (default: one sampling step after its last frame).
    """
    cfg = cfg or FaceConfig()
    times = np.arange(len(detections)) / 8.0 if times is None else np.asarray(times, np.float64)
    step = float(np.median(np.diff(times[start:stop]))) if stop - start > 1 else 0.125
    t_end = float(times[stop - 1] + step) if end_time is None else float(end_time)
    tracklets = _tracklets(detections, start, stop)
    if not tracklets:
        return FaceTrack(np.zeros(0, np.int64), [], stop - start, gaps=[(float(times[start]), t_end)])
    ids = _Identities(identity, frames) if identity is not None else None
    first = tracklets[0].start
    chain_parts = [max((t for t in tracklets if t.start == first), key=lambda t: t.faces[0].area)]
    chain: list[tuple[int, Face]] = list(zip(chain_parts[0].frames, chain_parts[0].faces, strict=True))
    used = {id(chain_parts[0])}
    switch = None
    while True:
        end = chain[-1][0]
        last = chain[-1][1]
        candidates = [
            t
            for t in tracklets
            if id(t) not in used and t.start > end and times[t.start] - times[end] - step <= cfg.max_gap_s + 1e-6
        ]
        if not candidates:
            break
        linked, inconsistent = None, []
        for t in candidates:
            why = _inconsistency(t, end, last, chain, times, cfg, ids)
            if why is None:
                linked = t
                break
            inconsistent.append((t, why))
        if linked is None:
            # A face of main-face size that stays while the tracked one is gone: another person took its place.
            for t, why in inconsistent:
                lasting = times[t.end] - times[t.start] + step
                ratio = np.median([f.area for f in t.faces]) / max(last.area, 1e-6)
                if lasting >= cfg.min_switch_s - 1e-6 and ratio > cfg.max_second_face_ratio:
                    switch = (
                        f"person switch: the tracked face was lost at {times[end] + step:.2f} s and another face "
                        f"appears at {times[t.start]:.2f} s for {lasting:.2f} s ({why})"
                    )
                    break
            break
        used.add(id(linked))
        chain_parts.append(linked)
        chain += list(zip(linked.frames, linked.faces, strict=True))
    indices = np.array([i for i, _ in chain], np.int64)
    faces = [f for _, f in chain]
    smoothed = None
    if cfg.pose_smoothing_s > 0:
        angles = np.array([[f.yaw, f.pitch, f.roll] for f in faces], np.float64)  # (K, 3)
        smoothed = smooth_pose(times[indices], angles, window_s=cfg.pose_smoothing_s)
    return FaceTrack(
        indices=indices,
        faces=faces,
        num_frames=stop - start,
        second_face_ratio=_second_face_ratio(detections, chain, start, stop),
        sharpness=np.array([sharpness(frames[i], f) for i, f in chain]),
        gaps=_gaps(indices, start, stop, times, t_end),
        span=int(indices[-1] - indices[0] + 1),
        switch=switch,
        reacquired=len(chain_parts) - 1,
        smoothed=smoothed,
    )


def _inconsistency(
    t: _Tracklet,
    end: int,
    last: Face,
    chain: list[tuple[int, Face]],
    times: np.ndarray,
    cfg: FaceConfig,
    ids: _Identities | None,
) -> str | None:
    """Why tracklet ``t`` cannot continue a track last seen as ``last`` at frame ``end`` (``None``: it can)."""
    face = t.faces[0]
    gap_s = float(times[t.start] - times[end])
    shift = float(np.linalg.norm(_centre(face) - _centre(last))) / max(last.width, 1e-6)
    allowed = cfg.track_max_shift + cfg.track_shift_per_s * gap_s
    if shift > allowed:
        return f"its box is {shift:.2f} face widths from where the face was lost (max {allowed:.2f})"
    size = float(np.sqrt(face.area / max(last.area, 1e-6)))
    if not 0.5 <= size <= 2.0:
        return f"its size is {size:.2f}x the tracked face's"
    if ids is not None:
        # The most frontal of the new face's first second is compared with the track's frame of nearest yaw:
        # frames of similar pose, so a legitimate return from profile is not mistaken for another person.
        first_s = [k for k, i in enumerate(t.frames) if times[i] - times[t.start] <= 1.0]
        k = min(first_s, key=lambda k: abs(t.faces[k].yaw))
        sim = ids.similarity(chain, t.frames[k], t.faces[k])
        if sim < ids.check.threshold:
            return f"identity similarity {sim:.2f} to the tracked face at similar pose (min {ids.check.threshold})"
    return None


def _second_face_ratio(detections: list[list[Face]], chain: list[tuple[int, Face]], start: int, stop: int) -> float:
    """Largest area of a face that is not the tracked one over the tracked face's area (its last area where the
    track has no face in a frame); detections overlapping the tracked box by IoU >= 0.2 are the same head."""
    main_at = {i: f for i, f in chain}
    ratio = 0.0
    ref = chain[0][1]
    for i in range(start, stop):
        main = main_at.get(i)
        ref = main if main is not None else ref
        others = [f.area for f in detections[i] if f is not main and box_iou(f.bbox, ref.bbox) < _DUPLICATE_IOU]
        if others and ref.area > 0:
            ratio = max(ratio, max(others) / ref.area)
    return float(ratio)


def _gaps(indices: np.ndarray, start: int, stop: int, times: np.ndarray, t_end: float) -> list[tuple[float, float]]:
    """Runs of frames in ``[start, stop)`` not in ``indices``, as ``(t_from, t_to)`` seconds."""
    present = np.zeros(stop - start, bool)
    present[indices - start] = True
    gaps = []
    i = 0
    while i < len(present):
        if present[i]:
            i += 1
            continue
        j = i
        while j < len(present) and not present[j]:
            j += 1
        t_to = float(times[start + j]) if j < len(present) else t_end
        gaps.append((float(times[start + i]), t_to))
        i = j
    return gaps


@dataclass
class FaceStats:
    """Face measurements of one clip (the numbers the decision was made on).

    Attributes:
        detect_fraction: Tracked frames over the track's span (first to last tracked frame).
        face_px: Median shorter side of the face box, source pixels.
        face_ratio: Median face-box area over frame area.
        sharpness: Median sharpness (:func:`sharpness`).
        yaw_range: 95th minus 5th percentile of the track's yaw, degrees.
        abs_yaw_p90: 90th percentile of |yaw|, degrees.
        second_face_ratio: See :class:`FaceTrack`.
        max_gap_s: Longest run without the main face (inside the track or at the clip's ends), seconds.
        max_abs_yaw: Largest |yaw| (reported; no rule uses it).
        switch: The person-switch reason of the track, if any.
    """

    detect_fraction: float
    face_px: float
    face_ratio: float
    sharpness: float
    yaw_range: float
    abs_yaw_p90: float
    second_face_ratio: float
    max_gap_s: float = 0.0
    max_abs_yaw: float = 0.0
    switch: str | None = None


def face_stats(track: FaceTrack, frame_shape: tuple[int, int], scale: float) -> FaceStats:
    """Measure a track.

    Args:
        track: The clip's main-face track.
        frame_shape: ``(h, w)`` of the analysis frames.
        scale: Analysis pixels per source pixel (face sizes are reported in source pixels).
    """
    longest = max((b - a for a, b in track.gaps), default=0.0)
    if not track.faces:
        return FaceStats(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, track.second_face_ratio, longest, 0.0, track.switch)
    sides = np.array([min(f.width, f.height) for f in track.faces]) / scale
    areas = np.array([f.area for f in track.faces]) / float(frame_shape[0] * frame_shape[1])
    yaws = track.pose_yaws
    lo, hi = np.percentile(yaws, [5, 95])
    return FaceStats(
        detect_fraction=len(track.faces) / max(track.span, 1),
        face_px=float(np.median(sides)),
        face_ratio=float(np.median(areas)),
        sharpness=float(np.median(track.sharpness)),
        yaw_range=float(hi - lo),
        abs_yaw_p90=float(np.percentile(np.abs(yaws), 90)),
        second_face_ratio=track.second_face_ratio,
        max_gap_s=float(longest),
        max_abs_yaw=float(np.abs(yaws).max()),
        switch=track.switch,
    )


def check_faces(stats: FaceStats, cfg: FaceConfig) -> str | None:
    """The reason the clip fails the face constraints, or ``None`` when it passes.

    Checks run in this order: no face, person switch, second face, gaps, detection rate over the track's span,
    size, area ratio, sharpness, pose. The pose rule (:class:`FaceConfig`): the head must move,
    ``yaw_range >= min_yaw_range_deg``, AND either move a lot, ``yaw_range >= wide_yaw_range_deg``, or reach a
    large pose, ``abs_yaw_p90 >= min_abs_yaw_p90_deg``. A static clip fails whatever its pose.
    """
    if stats.detect_fraction == 0:
        return "no face detected"
    if stats.switch:
        return stats.switch
    if stats.second_face_ratio > cfg.max_second_face_ratio:
        return (
            f"more than one face: a second face has {stats.second_face_ratio:.2f} of the main face's area "
            f"(max_second_face_ratio={cfg.max_second_face_ratio})"
        )
    if stats.max_gap_s > cfg.max_gap_s + 1e-6:
        return f"face lost for {stats.max_gap_s:.2f} s (max_gap_s={cfg.max_gap_s})"
    if stats.detect_fraction < cfg.min_detect_fraction:
        return (
            f"face found in {stats.detect_fraction:.0%} of the track's frames "
            f"(min_detect_fraction={cfg.min_detect_fraction})"
        )
    if stats.face_px < cfg.min_face_px:
        return f"face too small: {stats.face_px:.0f} px (min_face_px={cfg.min_face_px})"
    if stats.face_ratio < cfg.min_face_ratio:
        return f"face too small for the frame: area ratio {stats.face_ratio:.4f} (min_face_ratio={cfg.min_face_ratio})"
    if stats.sharpness < cfg.min_sharpness:
        return f"face too blurred: sharpness {stats.sharpness:.1f} (min_sharpness={cfg.min_sharpness})"
    if stats.yaw_range < cfg.min_yaw_range_deg:
        return (
            f"too little head pose variation (static head): yaw range (5-95 %) {stats.yaw_range:.1f} deg "
            f"at |yaw| (p90) {stats.abs_yaw_p90:.1f} deg (min_yaw_range_deg={cfg.min_yaw_range_deg})"
        )
    if stats.yaw_range < cfg.wide_yaw_range_deg and stats.abs_yaw_p90 < cfg.min_abs_yaw_p90_deg:
        return (
            f"too little head pose variation: yaw range (5-95 %) {stats.yaw_range:.1f} deg "
            f"(wide_yaw_range_deg={cfg.wide_yaw_range_deg}) and |yaw| (p90) {stats.abs_yaw_p90:.1f} deg "
            f"(min_abs_yaw_p90_deg={cfg.min_abs_yaw_p90_deg})"
        )
    return None
