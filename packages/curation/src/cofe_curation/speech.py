"""Stage 5a, speech disambiguation: does the visible person speak?

Speech heard in the audio is not enough: a voice-over or an off-screen speaker (the commonest case in film and
TV) is audible over a face that does not speak, and a mouth that moves without a voice (chewing, smiling,
singing along silently) does not speak either. The decision (:func:`decide_speaking`) combines three measured
signals, and every clip records them (:class:`SpeechEvidence`, the shard JSON's ``speech_evidence``):

- **Voice**: the fraction of the clip that silero-vad (its model ships in the ``silero-vad`` package) hears as
  speech (``speech_ratio``).
- **The mouth's own motion, in absolute terms** (``mouth_motion``, :func:`mouth_evidence`). Every tracked face is
  aligned by its 5 keypoints onto the ArcFace template (``cofe_encoders.align.norm_crop``: the eyes 35.2 px apart
  in a 112 px crop, so motion is in units of the face's own size). Dense optical flow between consecutive crops
  gives the vertical motion of two bands, the upper lip and the lower lip with the chin; the mouth *opens or
  closes* when they move apart or together beyond the uniform vertical stretch that the eye and nose bands show
  (the stretch of a head nodding or coming closer). Its rate, in inter-ocular distances (IOD) per second, is
  ``mouth_motion``. The same second difference measured on the upper face (forehead, eyes, nose: nothing there
  articulates) is the clip's own still-mouth baseline (``mouth_baseline``): what head motion, alignment jitter and
  compression produce without a moving mouth. The mouth moves when it exceeds that baseline by
  :attr:`SpeechConfig.min_mouth_excess`.
- **Agreement with the voice where there are pauses** (``voice_lock``, ``envelope_corr``): with enough sampled
  frame pairs both inside and outside the speech segments, the mouth's motion while the voice is heard over its
  motion in the pauses (``voice_lock``; a speaker's mouth moves with the voice, a chewing mouth under a voice-over
  moves as much in the pauses), and the correlation of the per-pair mouth motion with the audio's log energy over
  the same interval (``envelope_corr``, recorded as evidence). Continuous speech has no pauses to compare with: then
  the absolute motion alone decides (the fix for voice-overs that never pause: before 0.3.0 the audio decided).

**Yaw.** A turned face shows its mouth foreshortened and its 5-point alignment degrades, so frames whose
|yaw| exceeds :attr:`SpeechConfig.max_yaw` (70 degrees: the offline estimator's corrected yaw, where its uncorrected
reading said 60) are excluded, and the remaining pairs are weighted by ``cos(yaw)`` (the larger |yaw| of the pair):
frontal frames count most. ``usable_frames`` and ``usable_pairs`` record how many were left; fewer than
:attr:`SpeechConfig.min_usable_pairs` pairs under speech means the mouth cannot be judged, and the clip is not
called speaking.

Measured (``movie-hello.mp4`` and clips composed from real photos with :mod:`cofe_curation.synth`; the numbers the
thresholds rest on, reproduced by the tests): the real speaker's mouth moves 0.24-0.36 IOD/s above a baseline
of 0.10-0.13 while he speaks; the same face in its silent seconds, 0.00-0.02 above its baseline; still
real-texture faces, frontal or turning through +-50 degrees, at most 0.04 above; a chewing mouth 0.3-0.5, with a
``voice_lock`` of 0.8-1.05 under a voice-over against 2.4 for the real speaker.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch

from cofe_curation.config import SpeechConfig
from cofe_curation.faces import FaceTrack
from cofe_encoders.align import norm_crop

# Bands of the 112x112 ArcFace template crop (cofe_encoders.align.ARCFACE_TEMPLATE: eyes at y≈51.6, 35.2 px apart;
# nose tip (56, 71.7); mouth corners at y≈92.3, x 41.5-70.7), as (rows, cols) and their centre row.
_IOD_PX = 35.24
_FOREHEAD = (slice(26, 38), slice(36, 76))
_EYES = (slice(44, 58), slice(28, 84))
_NOSE = (slice(64, 76), slice(40, 72))
_UPPER_LIP = (slice(76, 86), slice(40, 72))
_LOWER_LIP = (slice(96, 108), slice(40, 72))


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


Band = tuple[slice, slice]


def _row(band: Band) -> float:
    return (band[0].start + band[0].stop - 1) / 2.0


def _second_difference(flow_y: np.ndarray, top: Band, mid: Band, low: Band, high: Band) -> float:
    """Vertical motion of band ``high`` relative to band ``low``, minus what the uniform stretch from band ``top``
    to band ``mid`` predicts over the same distance (pixels per frame step)."""
    stretch = (flow_y[mid].mean() - flow_y[top].mean()) / (_row(mid) - _row(top))
    return float(flow_y[high].mean() - flow_y[low].mean() - stretch * (_row(high) - _row(low)))


def articulation(prev: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """``(mouth, control)``: how far the mouth opened or closed from aligned gray crop ``prev`` to ``cur``, and the
    same second difference of vertical motion on the upper face (nothing there articulates), both in pixels of
    the 112 px template crop per frame step (absolute values).

    Args:
        prev: ``(112, 112)`` uint8 aligned gray face crop.
        cur: The next one.
    """
    # Farneback flow (3 levels, 15 px window): the jaw moves a few pixels of a 112 crop per 1/8 s while speaking.
    flow = cv2.calcOpticalFlowFarneback(prev, cur, None, 0.5, 3, 15, 3, 5, 1.2, 0)  # (112, 112, 2)
    fy = flow[..., 1]  # (112, 112) vertical motion, px
    mouth = _second_difference(fy, _EYES, _NOSE, _UPPER_LIP, _LOWER_LIP)
    control = _second_difference(fy, _FOREHEAD, _EYES, _EYES, _NOSE)
    return abs(mouth), abs(control)


@dataclass
class SpeechEvidence:
    """What the speaking decision of a clip rests on (the shard JSON's ``speech_evidence``).

    Attributes:
        speech_ratio: Fraction of the clip silero-vad hears as speech.
        mouth_motion: How fast the mouth opens and closes, IOD per second (weighted mean over the usable frame
            pairs under speech when the clip has enough of them, else over all usable pairs); ``None`` without
            usable pairs.
        mouth_baseline: The still-mouth baseline of the same pairs: the same measurement on the upper face.
        voice_lock: Mouth motion under speech over mouth motion in the pauses (``None`` without enough pairs of
            both: continuous speech, or none).
        envelope_corr: Pearson correlation of the per-pair mouth motion with the audio's log energy (``None``
            under the same condition, or without audio).
        usable_frames: Tracked frames with |yaw| <= ``max_yaw``.
        usable_pairs: Consecutive usable frame pairs closer than the largest time step.
        voiced_pairs: Usable pairs inside a speech segment.
        tracked_frames: All tracked frames of the clip.
        rule: The rule that decided (see :func:`decide_speaking`).
    """

    speech_ratio: float = 0.0
    mouth_motion: float | None = None
    mouth_baseline: float | None = None
    voice_lock: float | None = None
    envelope_corr: float | None = None
    usable_frames: int = 0
    usable_pairs: int = 0
    voiced_pairs: int = 0
    tracked_frames: int = 0
    rule: str = ""

    def to_dict(self) -> dict:
        """JSON-ready, floats rounded to 4 decimals."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _log_energy(audio: np.ndarray, rate: int, start: float, t0: float, t1: float) -> float:
    a = audio[max(0, round((t0 - start) * rate)) : max(0, round((t1 - start) * rate))]
    return float(10.0 * np.log10(np.mean(np.square(a, dtype=np.float64)) + 1e-10)) if a.size else -100.0


def mouth_evidence(
    frames: np.ndarray,
    track: FaceTrack,
    times: np.ndarray,
    max_gap: float,
    segments: list[tuple[float, float]],
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
    audio_start: float = 0.0,
    max_yaw: float = 60.0,
    min_pairs: int = 3,
) -> SpeechEvidence:
    """Measure the mouth of a clip's tracked face against its voice (see the module docstring).

    Args:
        frames: ``(T, H, W, 3)`` uint8 sampled frames of the video.
        track: The clip's main-face track (its per-frame yaw decides which frames are usable).
        times: ``(T,)`` frame times, seconds; only consecutive tracked frames closer than ``max_gap`` are compared.
        max_gap: Largest time step of a compared pair, seconds.
        segments: Speech segments of the audio, seconds (same clock as ``times``).
        audio: ``(N,)`` mono audio for ``envelope_corr`` (optional).
        audio_rate: Its sample rate.
        audio_start: Time of ``audio[0]`` on the clock of ``times``.
        max_yaw: Frames with a larger |yaw| (degrees) are not used.
        min_pairs: Pairs needed both inside and outside speech to compare them (``voice_lock``,
            ``envelope_corr``), and under speech for ``mouth_motion`` to be measured there.

    Returns:
        The evidence, ``speech_ratio`` and ``rule`` left for :func:`decide_speaking`.
    """
    yaws = track.yaws
    usable = np.abs(yaws) <= max_yaw
    crops: dict[int, np.ndarray] = {}

    def crop(k: int) -> np.ndarray:
        if k not in crops:
            i = int(track.indices[k])
            crops[k] = cv2.cvtColor(norm_crop(frames[i], track.faces[k].kps5), cv2.COLOR_RGB2GRAY)
        return crops[k]

    rows = []  # (voiced, weight, mouth IOD/s, control IOD/s, log energy)
    for k in range(1, len(track.faces)):
        t_prev, t = float(times[track.indices[k - 1]]), float(times[track.indices[k]])
        dt = t - t_prev
        if not (usable[k] and usable[k - 1]) or dt <= 0 or dt > max_gap:
            continue
        mouth, control = articulation(crop(k - 1), crop(k))
        voiced = any(s <= (t_prev + t) / 2 <= e for s, e in segments)
        weight = float(np.cos(np.radians(max(abs(yaws[k]), abs(yaws[k - 1])))))
        energy = _log_energy(audio, audio_rate, audio_start, t_prev, t) if audio is not None else 0.0
        rows.append((voiced, weight, mouth / _IOD_PX / dt, control / _IOD_PX / dt, energy))
    ev = SpeechEvidence(usable_frames=int(usable.sum()), usable_pairs=len(rows), tracked_frames=len(track.faces))
    if not rows:
        return ev
    arr = np.array(rows, np.float64)  # (P, 5)
    on = arr[:, 0] > 0
    ev.voiced_pairs = int(on.sum())
    sel = arr[on] if on.sum() >= min_pairs else arr
    ev.mouth_motion = float(np.average(sel[:, 2], weights=sel[:, 1]))
    ev.mouth_baseline = float(np.average(sel[:, 3], weights=sel[:, 1]))
    if on.sum() >= min_pairs and (~on).sum() >= min_pairs:
        eps = 1e-3  # IOD/s: far below any measured motion, keeps a perfectly still pause finite
        voiced = np.average(arr[on, 2], weights=arr[on, 1])
        pauses = np.average(arr[~on, 2], weights=arr[~on, 1])
        ev.voice_lock = float((voiced + eps) / (pauses + eps))
        if audio is not None and arr[:, 4].std() > 0 and arr[:, 2].std() > 0:
            ev.envelope_corr = float(np.corrcoef(arr[:, 2], arr[:, 4])[0, 1])
    return ev


@dataclass
class SpeechResult:
    """Speech decision of one clip.

    Attributes:
        speaking: The visible person speaks.
        speech_ratio: Fraction of the clip with speech in its audio.
        voice_over: Speech is heard but the visible person is not seen speaking it.
        reason: The decision in words.
        evidence: The measurements and the deciding rule.
    """

    speaking: bool
    speech_ratio: float
    voice_over: bool
    reason: str
    evidence: SpeechEvidence

    @property
    def rule(self) -> str:
        return self.evidence.rule

    @property
    def mouth_motion(self) -> float | None:
        return self.evidence.mouth_motion


RULES = (
    "no_audio",
    "no_speech",
    "mouth_moves_without_voice",
    "mouth_not_visible",
    "voice_over",
    "mouth_out_of_sync",
    "mouth_follows_voice",
    "mouth_moves_in_continuous_speech",
)


def decide_speaking(ratio: float, evidence: SpeechEvidence | None, has_audio: bool, cfg: SpeechConfig) -> SpeechResult:
    """Combine voice and mouth into the speaking decision; the evidence records the rule that decided.

    Rules, in order (:data:`RULES`):

    1. ``no_audio``: no audio track: not speaking.
    2. ``no_speech`` / ``mouth_moves_without_voice``: VAD covers less than ``min_speech_ratio`` of the clip: not
       speaking, whatever the mouth does (chewing, smiling, silent singing along).
    3. ``mouth_not_visible``: speech, but fewer than ``min_usable_pairs`` frame pairs with |yaw| <= ``max_yaw``:
       the mouth cannot be judged, so the clip is not called speaking (a voice-over is as likely).
    4. ``voice_over``: speech, but the mouth does not move: its motion is less than ``min_mouth_excess`` IOD/s above
       its still baseline, or less than ``min_mouth_ratio`` times it (a fast head turn raises both).
    5. ``mouth_out_of_sync`` / ``mouth_follows_voice``: the mouth moves and the clip has pauses: it speaks when
       ``voice_lock >= min_voice_lock`` (it moves more with the voice than in the pauses).
    6. ``mouth_moves_in_continuous_speech``: the mouth moves, speech throughout (no pauses to compare): speaking.

    Args:
        ratio: Speech ratio of the clip.
        evidence: :func:`mouth_evidence` of the clip (``None``: no face measurement).
        has_audio: The input has an audio track.
        cfg: Thresholds.
    """
    ev = evidence if evidence is not None else SpeechEvidence()
    ev.speech_ratio = ratio if has_audio else 0.0

    def result(speaking: bool, voice_over: bool, rule: str, reason: str) -> SpeechResult:
        ev.rule = rule
        return SpeechResult(speaking, ev.speech_ratio, voice_over, reason, ev)

    if not has_audio:
        return result(False, False, "no_audio", "no audio track")
    measured = ev.mouth_motion is not None and ev.mouth_baseline is not None
    excess = (ev.mouth_motion - ev.mouth_baseline) if measured else 0.0
    moves = (
        measured
        and ev.usable_pairs >= cfg.min_usable_pairs
        and excess >= cfg.min_mouth_excess
        and ev.mouth_motion >= cfg.min_mouth_ratio * ev.mouth_baseline
    )
    motion = (
        f"the mouth moves {ev.mouth_motion:.3f} IOD/s against a still baseline of {ev.mouth_baseline:.3f}"
        if measured
        else ""
    )
    if ratio < cfg.min_speech_ratio:
        if moves:
            return result(False, False, "mouth_moves_without_voice", f"no speech (VAD {ratio:.0%}) but {motion}")
        return result(False, False, "no_speech", f"no speech: VAD covers {ratio:.0%} of the audio")
    heard = f"speech in {ratio:.0%} of the audio"
    if not measured or ev.usable_pairs < cfg.min_usable_pairs:
        reason = (
            f"{heard}, but only {ev.usable_pairs} frame pairs show the mouth (|yaw| <= {cfg.max_yaw:g}; "
            f"{cfg.min_usable_pairs} needed): not called speaking"
        )
        return result(False, True, "mouth_not_visible", reason)
    if not moves:
        return result(False, True, "voice_over", f"{heard} but {motion}: voice-over")
    if ev.voice_lock is not None:
        if ev.voice_lock >= cfg.min_voice_lock:
            return result(True, False, "mouth_follows_voice", f"{heard}; {motion}, {ev.voice_lock:.2f}x more with it")
        reason = (
            f"{heard}; {motion} but as much in the pauses (voice lock {ev.voice_lock:.2f} < {cfg.min_voice_lock:g}):"
            " voice-over over a moving mouth"
        )
        return result(False, True, "mouth_out_of_sync", reason)
    return result(True, False, "mouth_moves_in_continuous_speech", f"{heard}, without pauses; {motion}")


def speech_facts(source: SpeechResult | dict) -> dict:
    """What the speech stage measured and decided, as one flat dict: ``speaking``, ``voice_over`` and the
    :class:`SpeechEvidence` fields (``speech_ratio``, ``mouth_motion``, ``mouth_baseline``, ``voice_lock``,
    ``envelope_corr``, ``usable_frames``, ``usable_pairs``, ``voiced_pairs``, ``tracked_frames``, ``rule``).

    From a :class:`SpeechResult` it is what a caption rewriter is told (the local LLM's prompt); from a clip's shard
    annotation it is the report entry, with ``caption``, ``caption_refined`` and ``caption_rewriter`` added.
    """
    if isinstance(source, SpeechResult):
        return {"speaking": source.speaking, "voice_over": source.voice_over, **source.evidence.to_dict()}
    facts = {"speaking": bool(source.get("speaking")), "voice_over": bool(source.get("voice_over"))}
    facts.update(source.get("speech_evidence") or {})
    facts.update({k: source.get(k) for k in ("caption", "caption_refined", "caption_rewriter")})
    return facts


def speech_report(clips: list[dict], examples: int = 6) -> dict:
    """The speech stage's part of the curation report, from kept clips' report records (``record()["speech"]``).

    Returns:
        ``{"speaking", "silent", "voice_over", "rules": {rule: count}, "rewriters": {source: count},
        "examples": [{"key", "class", "rule", "caption", "caption_refined", "caption_rewriter"}, ...]}``:
        ``silent`` counts clips without speech in their audio (or without audio), ``voice_over`` those with speech
        that the visible person does not speak; examples show up to ``examples`` changed captions, taking each
        class in turn.
    """
    counts = {"speaking": 0, "silent": 0, "voice_over": 0}
    rules: dict[str, int] = {}
    sources: dict[str, int] = {}
    by_class: dict[str, list[dict]] = {"speaking": [], "voice_over": [], "silent": []}
    for clip in clips:
        facts = clip.get("speech") or {}
        speaking = bool(facts.get("speaking", clip.get("summary", {}).get("speaking")))
        cls = "speaking" if speaking else "voice_over" if facts.get("voice_over") else "silent"
        counts[cls] += 1
        rule = facts.get("rule") or "unknown"
        rules[rule] = rules.get(rule, 0) + 1
        source = str(facts.get("caption_rewriter") or "unknown").split(" (")[0]
        sources[source] = sources.get(source, 0) + 1
        if facts.get("caption_refined") is not None and facts.get("caption") != facts.get("caption_refined"):
            by_class[cls].append(
                {
                    "key": clip.get("key"),
                    "class": cls,
                    "rule": rule,
                    **{k: facts.get(k) for k in ("caption", "caption_refined", "caption_rewriter")},
                }
            )
    picked: list[dict] = []
    while len(picked) < examples and any(by_class.values()):
        for cls in ("speaking", "voice_over", "silent"):
            if by_class[cls] and len(picked) < examples:
                picked.append(by_class[cls].pop(0))
    return {**counts, "rules": dict(sorted(rules.items())), "rewriters": sources, "examples": picked}


def speech_summary(stage: dict) -> tuple[str, list[str]]:
    """``(note, example lines)`` for the printed curation summary, from ``report["counts"]["stages"]["speech"]``."""
    note = (
        f"{stage.get('speaking', 0)} speaking, {stage.get('voice_over', 0)} voice-over, {stage.get('silent', 0)} silent"
    )
    lines = []
    for ex in stage.get("examples", []):
        lines.append(f"  [{ex['class']}, {ex['rule']}, {ex['caption_rewriter']}]")
        lines.append(f"    {ex['caption']!r}")
        lines.append(f"    -> {ex['caption_refined']!r}")
    if lines:
        lines.insert(0, "captions (original -> refined):")
    return note, lines
