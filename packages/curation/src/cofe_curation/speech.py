"""Stage 5a, speech disambiguation: does the visible person speak?

Two signals must agree: the audio has speech (silero-vad, which ships its model in the ``silero-vad`` package)
and the visible mouth moves. Audible speech with a still mouth is a voice-over or an off-screen speaker, so the
clip is not "speaking"; a moving mouth with no voice (chewing, smiling) is not speaking either.

Mouth motion comes from the landmarks: the 5 keypoints align every tracked face onto the ArcFace template
(``cofe_encoders.align.norm_crop``), which fixes the mouth at the same place in every crop; the motion is the
mean absolute frame-to-frame change of the mouth patch minus that of a nose-and-cheek patch of the same crop.
Subtracting the control patch removes what moves the whole face (head motion, alignment jitter, lighting).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from cofe_curation.config import SpeechConfig
from cofe_curation.faces import FaceTrack
from cofe_encoders.align import norm_crop

# Patches in 112x112 ArcFace-template pixels (cofe_encoders.align.ARCFACE_TEMPLATE: mouth corners at y≈92,
# x 41.5-70.7; nose tip at (56, 71.7)). Rows, then columns. Shifts of up to 3 px absorb keypoint jitter.
_MOUTH = (slice(82, 104), slice(36, 76))
_CONTROL = (slice(52, 76), slice(24, 88))
_SHIFT = 3


@functools.cache
def _vad_model():
    from silero_vad import load_silero_vad

    return load_silero_vad()


def speech_segments(audio: np.ndarray, rate: int, threshold: float = 0.5) -> list[tuple[float, float]]:
    """Speech segments ``[(start_s, end_s), ...]`` found by silero-vad.

    Args:
        audio: ``(N,)`` float32 mono audio in [-1, 1].
        rate: 16000 or 8000 (silero-vad's rates).
        threshold: Speech probability threshold.
    """
    from silero_vad import get_speech_timestamps

    if audio.size < rate // 10:
        return []
    with torch.no_grad():
        stamps = get_speech_timestamps(
            torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
            _vad_model(),
            sampling_rate=rate,
            threshold=threshold,
        )
    return [(s["start"] / rate, s["end"] / rate) for s in stamps]


def speech_ratio(segments: list[tuple[float, float]], t0: float, t1: float) -> float:
    """Fraction of ``[t0, t1)`` covered by the speech ``segments``."""
    if t1 <= t0:
        return 0.0
    covered = sum(max(0.0, min(e, t1) - max(s, t0)) for s, e in segments)
    return min(1.0, covered / (t1 - t0))


def _registered_change(a: np.ndarray, b: np.ndarray, patch: tuple[slice, slice], radius: int) -> float:
    """Mean absolute change of ``patch`` from crop ``b`` to crop ``a``, minimised over shifts of up to ``radius``
    pixels: a rigid shift (keypoint jitter) is not motion, a change of shape (a mouth opening) is."""
    rows, cols = patch
    ref = b[rows, cols]
    best = np.inf
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            moved = a[rows.start + dy : rows.stop + dy, cols.start + dx : cols.stop + dx]
            best = min(best, float(np.abs(moved - ref).mean()))
    return best


def mouth_motion(
    frames: np.ndarray,
    track: FaceTrack,
    times: np.ndarray,
    max_gap: float,
    segments: list[tuple[float, float]],
    min_pairs: int = 3,
) -> float | None:
    """Voice-locked mouth motion: how much more the mouth moves while speech is heard than while it is not.

    ``(mouth_voiced / mouth_unvoiced) / (control_voiced / control_unvoiced)``, each the mean registered change
    between consecutive tracked frames. The visible speaker's mouth moves with the voice (about 1.7 on the real
    ``movie-hello.mp4``); a voice-over leaves it as it was (0.9-1.1 for a still real face under the same speech).
    Comparing the mouth with itself cancels its texture (a turned face's mouth region holds the face contour, so
    its raw change is large even when still); dividing by the control patch cancels head motion that happens
    to coincide with the voice.

    Args:
        frames: ``(T, H, W, 3)`` uint8 sampled frames of the video.
        track: The main-face track of the clip.
        times: ``(T,)`` frame times; only consecutive tracked frames closer than ``max_gap`` seconds are used.
        max_gap: Largest time step of a compared pair.
        segments: Speech segments of the audio, seconds.
        min_pairs: Frame pairs needed both inside and outside speech.

    Returns:
        The ratio, or ``None`` when the clip lacks ``min_pairs`` voiced or unvoiced pairs (speech throughout, or
        none): then it cannot be measured.
    """
    crops = [
        cv2.cvtColor(norm_crop(frames[i], f.kps5), cv2.COLOR_RGB2GRAY).astype(np.float32)
        for i, f in zip(track.indices, track.faces, strict=True)
    ]
    rows = []  # (voiced, mouth change, control change)
    for k in range(1, len(crops)):
        t = times[track.indices[k]]
        if t - times[track.indices[k - 1]] > max_gap:
            continue
        voiced = any(s <= t <= e for s, e in segments)
        mouth = _registered_change(crops[k], crops[k - 1], _MOUTH, _SHIFT)
        control = _registered_change(crops[k], crops[k - 1], _CONTROL, _SHIFT)
        rows.append((voiced, mouth, control))
    arr = np.array(rows, np.float64).reshape(-1, 3)
    on, off = arr[arr[:, 0] > 0], arr[arr[:, 0] == 0]
    if len(on) < min_pairs or len(off) < min_pairs:
        return None
    eps = 1e-3
    mouth = (on[:, 1].mean() + eps) / (off[:, 1].mean() + eps)
    control = (on[:, 2].mean() + eps) / (off[:, 2].mean() + eps)
    return float(mouth / control)


@dataclass
class SpeechResult:
    """Speech decision of one clip."""

    speaking: bool
    speech_ratio: float
    mouth_motion: float | None
    reason: str


def decide_speaking(ratio: float, motion: float | None, has_audio: bool, cfg: SpeechConfig) -> SpeechResult:
    """Combine the audio and mouth signals into the speaking decision, with its reason."""
    if not has_audio:
        return SpeechResult(False, 0.0, motion, "no audio track")
    voiced = ratio >= cfg.min_speech_ratio
    if not voiced:
        return SpeechResult(False, ratio, motion, f"no speech: VAD covers {ratio:.0%} of the audio")
    if motion is None:
        reason = f"speech in {ratio:.0%} of the audio, without pauses to measure the mouth against: audio decides"
        return SpeechResult(True, ratio, motion, reason)
    if motion >= cfg.min_mouth_motion:
        return SpeechResult(
            True, ratio, motion, f"speech in {ratio:.0%} of the audio; the mouth moves with it ({motion:.2f})"
        )
    reason = f"speech in {ratio:.0%} of the audio but the mouth does not move with it ({motion:.2f}): voice-over"
    return SpeechResult(False, ratio, motion, reason)
