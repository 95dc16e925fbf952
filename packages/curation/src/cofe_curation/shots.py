"""Stage 2, shot splitting and clip cutting.

Cuts come from PySceneDetect's ``ContentDetector`` (weighted HSV change between consecutive frames, Castellano,
PySceneDetect docs "Detection algorithms"), fed the already sampled analysis frames, so the video is decoded once.
Shots are then cut into consecutive clips of at most ``max_clip_s``; pieces shorter than ``min_clip_s`` are
dropped (a long shot's short remainder too).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np
from scenedetect import ContentDetector
from scenedetect.common import FrameTimecode

from cofe_curation.config import ShotConfig

# ContentDetector's score barely depends on resolution; 256 px keeps it cheap.
_DETECT_SIDE = 256


@dataclass(frozen=True)
class ClipSpan:
    """A clip: sampled frames ``[start, stop)`` of a decoded video, and its time span ``[t0, t1)`` in seconds."""

    start: int
    stop: int
    t0: float
    t1: float

    @property
    def duration(self) -> float:
        return self.t1 - self.t0


def detect_cuts(frames: np.ndarray, sample_fps: float, threshold: float = 27.0) -> list[int]:
    """Indices of the first frame of each new shot (not including 0).

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB frames sampled at ``sample_fps``.
        sample_fps: Their rate (PySceneDetect counts its minimum scene length in frames).
        threshold: ContentDetector threshold.
    """
    detector = ContentDetector(threshold=threshold, min_scene_len=max(1, round(0.5 * sample_fps)))
    cuts: list[int] = []
    for i, frame in enumerate(frames):
        h, w = frame.shape[:2]
        s = min(1.0, _DETECT_SIDE / max(h, w))
        small = cv2.resize(frame, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        # PySceneDetect expects OpenCV's BGR channel order.
        cuts += [tc.frame_num for tc in detector.process_frame(FrameTimecode(i, fps=sample_fps), small[..., ::-1])]
    return sorted({c for c in cuts if 0 < c < len(frames)})


def split_clips(times: np.ndarray, duration: float, cuts: list[int], cfg: ShotConfig) -> list[ClipSpan]:
    """Cut shots into clips of ``[min_clip_s, max_clip_s]`` seconds.

    A shot also ends where consecutive sampled frames are more than ``cfg.max_frame_gap_s`` apart in presentation
    time (a pause in a variable-frame-rate recording); it then ends one sampling step after its last frame, so no
    clip stretches over the pause with a frozen picture.

    Args:
        times: ``(T,)`` times of the sampled frames, seconds.
        duration: Duration of the analysed video, seconds (end of the last shot).
        cuts: First frame index of each shot after the first.
        cfg: Clip lengths.
    """
    n = len(times)
    if n == 0:
        return []
    gaps = np.diff(times)
    step = float(np.median(gaps)) if gaps.size else 0.0
    pauses = [i + 1 for i in np.flatnonzero(gaps > cfg.max_frame_gap_s).tolist()]
    bounds = sorted({0, *cuts, *pauses, n})

    def end_after(i: int) -> float:
        """When the content of sampled frame ``i`` ends: the next frame, unless a pause follows it."""
        nxt = float(times[i + 1]) if i + 1 < n else duration
        return nxt if nxt - float(times[i]) <= cfg.max_frame_gap_s else float(times[i]) + step

    clips = []
    for a, b in itertools.pairwise(bounds):
        if b <= a:
            continue
        shot_end = end_after(b - 1)
        start = a
        while start < b:
            t0 = float(times[start])
            limit = t0 + cfg.max_clip_s
            stop = start
            while stop < b and times[stop] < limit - 1e-9:
                stop += 1
            t1 = min(shot_end, limit) if stop == b else float(times[stop])
            if t1 - t0 >= cfg.min_clip_s - 1e-9:
                clips.append(ClipSpan(start, stop, t0, t1))
            start = stop
    return clips


def shot_clips(frames: np.ndarray, times: np.ndarray, duration: float, sample_fps: float, cfg: ShotConfig):
    """Detect cuts and return the clips (:func:`detect_cuts` then :func:`split_clips`)."""
    return split_clips(times, duration, detect_cuts(frames, sample_fps, cfg.threshold), cfg)
