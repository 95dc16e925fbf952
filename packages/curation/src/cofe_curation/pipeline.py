"""The stages put together: one decoded input in, its clips' decisions and shard samples out.

:class:`Curator` runs stages 2-6 on a :class:`~cofe_curation.ingest.DecodedVideo` (:meth:`Curator.process`), or all
stages on one input, window by window (:meth:`Curator.curate_input`: what each DataLoader worker of ``cofe curate``
runs, see :mod:`cofe_curation.loader`). It is plain Python: any loop (a script, a Lightning predict loop) can drive
it, and each stage function can be called on its own.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from cofe_curation.caption import CaptionRewriter, build_rewriter, rewrite_many
from cofe_curation.config import CurationConfig
from cofe_curation.faces import (
    FaceStats,
    FaceTrack,
    IdentityCheck,
    box_iou,
    check_faces,
    detect_faces,
    face_stats,
    track_main_face,
)
from cofe_curation.identity import (
    build_recognizer,
    check_identity,
    clip_embedding,
    embed_track,
    id_consistency,
    recognizer_profile,
    thresholds,
)
from cofe_curation.ingest import DecodedVideo, IngestError, InputItem, decode_windows, json_name
from cofe_curation.media import Cut, cut_clips, encode_mp4
from cofe_curation.shots import ClipSpan, shot_clips
from cofe_curation.speech import (
    SpeechResult,
    decide_speaking,
    mouth_evidence,
    speech_facts,
    speech_ratio,
    speech_segments,
)
from cofe_encoders.align import alignment_matrix, transform_points
from cofe_encoders.face import Face, FaceAnalyzer, OfflineFaceAnalyzer, build_face_analyzer, norm_crop, reference_crop

# ``ref.png``: the reference crop zoomed out 1.6x around the ArcFace template (the whole head, whitened background),
# for the semantic and detail experts; ``ref_id.png`` is the 112x112 ArcFace template crop itself, for the
# identity expert (SFace on the unmasked template crop reproduces the aligned embedding of the frame, cosine
# 0.9997; re-aligning the masked ``ref.png`` from its keypoints gives only ~0.85).
REF_EXPAND = 1.6

STAGES = ("ingest", "shots", "faces", "identity", "speech", "write")


@dataclass
class ClipResult:
    """One clip's decision, and its shard sample when kept.

    Attributes:
        key: WebDataset key (``__key__``), unique per source and clip.
        t0: Start in the source, seconds.
        t1: End in the source, seconds.
        decision: ``"kept"`` or ``"rejected"``.
        stage: The stage that rejected it (``"faces"``, ``"identity"``), or ``"write"`` when kept.
        reason: Why.
        annotation: The shard JSON (DESIGN.md §3) of a kept clip.
        embedding: ``(D,)`` clip identity embedding (clustering across the run).
        mp4: Encoded clip bytes.
        ref_png: Reference face crop (zoomed out, whitened background), PNG bytes.
        ref_id_png: The reference frame's 112x112 ArcFace-template crop, PNG bytes.
    """

    key: str
    t0: float
    t1: float
    decision: str
    stage: str
    reason: str
    annotation: dict[str, Any] | None = None
    embedding: np.ndarray | None = None
    mp4: bytes | None = None
    ref_png: bytes | None = None
    ref_id_png: bytes | None = None

    def record(self) -> dict[str, Any]:
        """The report entry (no media)."""
        rec = {"key": self.key, "t0": round(self.t0, 3), "t1": round(self.t1, 3)}
        rec.update(decision=self.decision, stage=self.stage, reason=self.reason)
        if self.annotation is not None:
            keys = (
                "yaw_range",
                "abs_yaw_p90",
                "id_consistency",
                "speaking",
                "speech_ratio",
                "face_ratio",
                "num_frames",
            )
            rec["summary"] = {k: self.annotation[k] for k in keys}
            rec["speech_reason"] = self.annotation.get("speech_reason")
            rec["recognizer"] = self.annotation.get("recognizer")
            rec["speech"] = speech_facts(self.annotation)
            rec["yaws"] = [f.get("yaw_smooth", f["yaw"]) for f in self.annotation["faces"]]
        if self.embedding is not None:
            rec["embedding"] = [round(float(v), 5) for v in self.embedding]
        return rec


@dataclass
class InputResult:
    """One input's decision and its clips.

    Attributes:
        source: Source id.
        decision: ``"kept"`` (at least one clip kept), ``"rejected"`` (no clip kept) or ``"error"`` (unusable).
        reason: Why (for ``"kept"``: how many clips).
        notes: Non-fatal problems (bad caption file, VFR, no audio, truncated decoding).
        clips: Clip results.
        seconds: Wall time per stage.
        duration: Analysed seconds of video (from the start of the input).
        frames: Sampled frames analysed.
        windows: Windows the input was analysed in (:attr:`IngestConfig.window_s`).
    """

    source: str
    decision: str
    reason: str
    notes: list[str] = field(default_factory=list)
    clips: list[ClipResult] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    duration: float = 0.0
    frames: int = 0
    windows: int = 1

    def record(self) -> dict[str, Any]:
        """The report entry (no media)."""
        return {
            "source": json_name(self.source),
            "decision": self.decision,
            "reason": self.reason,
            "notes": self.notes,
            "duration": round(self.duration, 3),
            "analysed_s": [0.0, round(self.duration, 3)],
            "windows": self.windows,
            "clips": [c.record() for c in self.clips],
        }


def error_result(source: str, reason: str) -> InputResult:
    """The result of an input that could not be decoded."""
    return InputResult(source, "error", reason)


def clip_key(source: str, index: int) -> str:
    """A WebDataset-safe key (no dots, ASCII) that is stable for a source and clip index (from the source's bytes,
    so a name that is not UTF-8 has a key too)."""
    return f"{hashlib.sha1(os.fsencode(source)).hexdigest()[:16]}_{index:03d}"


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Prepared:
    """Output of :meth:`Curator.prepare`: clip spans, faces per sampled frame, and the seconds spent."""

    spans: list[ClipSpan]
    detections: list[list[Face]]
    seconds: dict[str, float]


@dataclass
class Decided:
    """A clip that passed every decision of :meth:`Curator.process`, waiting to be cut and written.

    ``index`` is its place in the input's clip list; ``refined`` is ``(caption, rewriter)``, set once the input's
    captions have been rewritten in one batch; ``stats`` and ``speech`` are the face and speaking decisions.
    """

    index: int
    key: str
    span: ClipSpan
    track: FaceTrack
    consistency: float
    stats: FaceStats
    speech: SpeechResult
    refined: tuple[str, str] | None = None


class Curator:
    """Runs stages 2-6 on decoded inputs.

    Args:
        cfg: The configuration.
        analyzer: A ``cofe_encoders`` face analyser (default: the offline YuNet + SFace backend).
        rewriter: A caption rewriter (default: built from ``cfg.speech.rewriter``).
    """

    def __init__(
        self,
        cfg: CurationConfig | None = None,
        analyzer: FaceAnalyzer | None = None,
        rewriter: CaptionRewriter | None = None,
    ) -> None:
        self.cfg = cfg or CurationConfig()
        self.analyzer = analyzer or build_face_analyzer("offline", score_threshold=self.cfg.faces.min_score)
        self.rewriter = rewriter or build_rewriter(self.cfg.speech.rewriter, self.cfg.speech.speaking_sentence)
        self.recognizer = build_recognizer(self.analyzer)
        self.ref_analyzer = reference_analyzer(self.analyzer, self.cfg.faces.min_score)
        self.thresholds = thresholds(self.cfg.identity, recognizer_profile(self.cfg.identity, self.analyzer))

    def embed_face(self, frame: np.ndarray, face: Face) -> np.ndarray:
        """The ``(D,)`` L2-normalised identity embedding of one face in one frame."""
        recognizer = self.recognizer or getattr(self.analyzer, "recognizer", None)
        if recognizer is not None:
            return recognizer.encode([frame], kps5=[face.kps5]).pooled[0].numpy()
        found = self.analyzer.analyze(frame, embed=True)
        best = max(found, key=lambda f: -np.abs(f.bbox - face.bbox).sum()) if found else None
        if best is None or best.embedding is None:
            raise RuntimeError("the face analyser returned no embedding; it needs a recognition model")
        return np.asarray(best.embedding) / max(float(np.linalg.norm(best.embedding)), 1e-12)

    def pose_info(self, track: FaceTrack) -> dict[str, Any]:
        """How the faces' angles were estimated (recorded once per clip, beside the faces): the analyser's
        description, whether pitch may be used (5-point pitch errs by 11-18 degrees: never), and the smoothing."""
        info = dict(self.analyzer.describe())
        info["pitch_reliable"] = bool(track.faces) and all(f.pitch_reliable for f in track.faces)
        info["smoothing_s"] = self.cfg.faces.pose_smoothing_s if track.smoothed is not None else 0.0
        return info

    def _identity_check(self) -> IdentityCheck:
        ic = self.cfg.identity
        return IdentityCheck(self.embed_face, self.thresholds.reacquire, ic.pose_window_deg, ic.yaw_slope)

    def prepare(self, video: DecodedVideo) -> Prepared:
        """Shot split and face detection on every sampled frame of the clips (the per-frame work); can run
        elsewhere than :meth:`process` (pass its result there)."""
        cfg = self.cfg
        tic = time.perf_counter()
        spans = shot_clips(video.frames, video.times, video.duration, cfg.ingest.sample_fps, cfg.shots)
        seconds = {"shots": time.perf_counter() - tic}
        tic = time.perf_counter()
        needed = sorted({i for s in spans for i in range(s.start, s.stop)})
        detections: list = [[] for _ in range(len(video.frames))]
        if needed:
            found = detect_faces(self.analyzer, video.frames[needed], cfg.faces.min_score)
            for i, faces in zip(needed, found, strict=True):
                detections[i] = faces
        seconds["faces"] = time.perf_counter() - tic
        return Prepared(spans, detections, seconds)

    def process(self, video: DecodedVideo, prepared: Prepared | None = None, first_clip: int = 0) -> InputResult:
        """Curate one decoded input or window (never raises on bad content: the result says why it was rejected).

        Decides every clip first (faces, identity, speech), then cuts all kept clips from the source in one
        decoding pass (:func:`cofe_curation.media.read_clips`) and encodes them.

        Args:
            video: The decoded input (or one window of it, see :func:`cofe_curation.ingest.decode_windows`).
            prepared: The result of :meth:`prepare` if it already ran (elsewhere); computed here otherwise.
            first_clip: Index of the first clip of this window in its input (clip keys are unique per input).
        """
        cfg = self.cfg
        prepared = prepared or self.prepare(video)
        spans, detections = prepared.spans, prepared.detections
        seconds: dict[str, float] = defaultdict(float, prepared.seconds)
        result = InputResult(video.source, "rejected", "", list(video.notes), duration=video.duration)
        result.frames = len(video.frames)
        segments = None
        pending = []  # kept clips, written after all decisions
        for ci, span in enumerate(spans):
            key = clip_key(video.source, first_clip + ci)
            tic = time.perf_counter()
            track = track_main_face(
                video.frames,
                detections,
                span.start,
                span.stop,
                times=video.times,
                cfg=cfg.faces,
                identity=self._identity_check(),
                end_time=span.t1,
            )
            stats = face_stats(track, video.frames.shape[1:3], video.scale)
            reason = check_faces(stats, cfg.faces)
            seconds["faces"] += time.perf_counter() - tic
            if reason:
                result.clips.append(ClipResult(key, span.t0, span.t1, "rejected", "faces", reason))
                continue

            tic = time.perf_counter()
            pos, emb = embed_track(
                self.analyzer, video.frames, track, cfg.identity.max_embed_frames, recognizer=self.recognizer
            )
            yaws = track.pose_yaws[pos]
            consistency = id_consistency(emb, yaws, cfg.identity)
            reason = check_identity(consistency, self.thresholds.min_consistency)
            seconds["identity"] += time.perf_counter() - tic
            if reason:
                result.clips.append(ClipResult(key, span.t0, span.t1, "rejected", "identity", reason))
                continue

            tic = time.perf_counter()
            has_audio = video.audio is not None and video.audio.size > 0
            if has_audio and segments is None:
                found = speech_segments(video.audio, video.audio_rate, cfg.speech.vad_threshold)
                segments = [(s + video.start, e + video.start) for s, e in found]  # window -> input time
            ratio = speech_ratio(segments or [], span.t0, span.t1)
            gap = 1.5 / cfg.ingest.sample_fps
            evidence = mouth_evidence(
                video.frames,
                track,
                video.times,
                gap,
                segments or [],
                video.audio,
                video.audio_rate,
                video.start,
                cfg.speech.max_yaw,
            )
            speech = decide_speaking(ratio, evidence, has_audio, cfg.speech)  # captions: one batch, below
            seconds["speech"] += time.perf_counter() - tic
            pending.append(Decided(len(result.clips), key, span, track, consistency, stats, speech))
            result.clips.append(ClipResult(key, span.t0, span.t1, "kept", "write", ""))  # filled in below
            result.clips[-1].embedding = clip_embedding(emb, yaws)

        # One batch of captions per input (a local LLM rewriter generates them together, on its device).
        tic = time.perf_counter()
        batch = rewrite_many(
            self.rewriter, [(video.caption, p.speech.speaking, speech_facts(p.speech)) for p in pending]
        )
        for p, refined in zip(pending, batch, strict=True):
            p.refined = refined
        seconds["speech"] += time.perf_counter() - tic

        tic = time.perf_counter()
        refs = [reference_index(p.track) for p in pending]
        cuts = cut_clips(
            video.source,
            [(p.span.t0, p.span.t1) for p in pending],
            cfg.write.max_side,
            video.rotation,
            video.origin,
            stills=[float(video.times[p.track.indices[r]]) for p, r in zip(pending, refs, strict=True)],
        )
        for p, ref, cut in zip(pending, refs, cuts, strict=True):
            clip = self._write(video, p, cut, ref)
            clip.embedding = result.clips[p.index].embedding
            result.clips[p.index] = clip
        seconds["write"] += time.perf_counter() - tic
        result.seconds = dict(seconds)
        _decide(result, cfg)
        return result

    def curate_input(self, item: InputItem) -> InputResult:
        """Decode and curate one whole input, window by window (:attr:`IngestConfig.window_s`), so memory stays
        bounded by one window however long the input is. Never raises: an unusable input is an ``error`` result
        with the reason, and a window that fails after good ones ends the input with a note.
        """
        if item.problem is not None:
            return error_result(item.source, item.problem)
        windows = []
        tic = time.perf_counter()
        try:
            for video in decode_windows(item, self.cfg.ingest):
                decode_s = time.perf_counter() - tic
                first_clip = sum(len(w.clips) for w in windows)
                windows.append(self.process(video, first_clip=first_clip))
                windows[-1].seconds["ingest"] = decode_s
                del video
                tic = time.perf_counter()
        except IngestError as exc:
            if not windows:
                return error_result(item.source, str(exc))
            windows[-1].notes.append(f"decoding stopped at {windows[-1].duration:.2f} s: {exc}")
        except Exception as exc:  # one broken input must not stop a run: record it and go on
            return error_result(item.source, f"{json_name(item.source)}: {type(exc).__name__}: {exc}")
        return merge_windows(windows, self.cfg)

    def _write(self, video: DecodedVideo, decided: Decided, cut: Cut, ref: int) -> ClipResult:
        """The kept clip as written: its mp4 (with its audio), reference images and annotation JSON; ``ref`` is
        the track position of the reference frame."""
        cfg = self.cfg
        key, span, track, stats, speech = decided.key, decided.span, decided.track, decided.stats, decided.speech
        consistency, refined = decided.consistency, decided.refined
        frames, fps = cut.frames, cut.fps
        height, width = frames.shape[1:3]
        k = width / video.frames.shape[2]  # analysis pixels -> clip pixels
        audio = None
        if video.audio is not None and video.audio.size:
            a0 = round((span.t0 - video.start) * video.audio_rate)
            a1 = round((span.t1 - video.start) * video.audio_rate)
            audio = video.audio[max(0, a0) : a1]
        mp4 = encode_mp4(frames, fps, audio, video.audio_rate, cfg.write.crf)
        faces = []
        smooth = track.pose_yaws
        for i, face, yaw_smooth in zip(track.indices, track.faces, smooth, strict=True):
            t = float(video.times[i]) - span.t0  # seconds into the clip
            # The first clip frame that shows this analysed frame: frame f shows the latest source frame at or
            # before t0 + (f + 0.5) / fps (cofe_curation.media.cut_clips).
            frame = min(len(frames) - 1, max(0, math.ceil(t * float(fps) - 0.5 - 1e-6)))
            rec = {
                "frame": frame,
                "time": round(t, 4),
                "bbox": [round(float(v) * k, 2) for v in face.bbox],
                "kps5": [[round(float(x) * k, 2), round(float(y) * k, 2)] for x, y in face.kps5],
            }
            rec.update({n: v for n, v in face.to_dict().items() if n not in ("bbox", "kps5")})
            rec["yaw_smooth"] = round(float(yaw_smooth), 2)
            faces.append(rec)
        ref_images, ref_rec = self._reference(video, track, ref, cut, faces[ref], span.t0)
        annotation = {
            "fps": round(float(fps), 4),
            "num_frames": len(frames),
            "width": width,
            "height": height,
            "duration": round(len(frames) / float(fps), 4),
            "caption": video.caption,
            "caption_refined": refined[0],
            "caption_rewriter": refined[1],
            "speaking": speech.speaking,
            "speech_ratio": round(speech.speech_ratio, 4),
            "voice_over": speech.voice_over,
            "speech_reason": speech.reason,
            "speech_evidence": speech.evidence.to_dict(),
            "faces": faces,
            "pose": self.pose_info(track),
            "face_gaps": [[round(a - span.t0, 4), round(b - span.t0, 4)] for a, b in track.gaps],
            "detect_fraction": round(stats.detect_fraction, 4),
            "reacquired": track.reacquired,
            "face_ratio": round(stats.face_ratio, 5),
            "face_px": round(stats.face_px * k * video.scale, 2),
            "sharpness": round(stats.sharpness, 2),
            "yaw_range": round(stats.yaw_range, 2),
            "abs_yaw_p90": round(stats.abs_yaw_p90, 2),
            "max_abs_yaw": round(stats.max_abs_yaw, 2),
            "id_consistency": round(consistency, 4),
            "recognizer": self.thresholds.recognizer,
            "identity_cluster": -1,  # set across the whole run by cofe_curation.shards.finalize
            **ref_rec,
            "source": json_name(video.source),
            "source_start": round(span.t0, 4),
            "source_end": round(span.t1, 4),
            "angles": "degrees; yaw > 0 subject turns to their left, pitch > 0 up, roll > 0 to their left shoulder",
        }
        reason = f"kept: yaw range {stats.yaw_range:.0f} deg, id consistency {consistency:.2f}"
        clip = ClipResult(key, span.t0, span.t1, "kept", "write", reason, annotation, None, mp4)
        clip.ref_png, clip.ref_id_png = _png(ref_images[0]), _png(ref_images[1])
        return clip

    def _reference(self, video: DecodedVideo, track: FaceTrack, ref: int, cut: Cut, face_rec: dict, t0: float):
        """``(ref.png image, ref_id.png image)`` and their JSON fields, from the full-resolution source frame.

        The face is detected again on that frame (the analysis frame was downscaled) by
        :func:`reference_analyzer`: the detection that overlaps the tracked box most gives the keypoints; without
        one, the tracked keypoints are scaled up.
        """
        size = self.cfg.write.ref_size
        tracked = track.faces[ref]
        image = cut.still
        if image is None:  # no still decoded (cannot happen for a decodable span): the written frame
            image = cut.frames[face_rec["frame"]]
            kps = np.asarray(face_rec["kps5"], np.float64)
        else:
            up = image.shape[1] / video.frames.shape[2]  # analysis pixels -> source pixels
            box = tracked.bbox * up
            found = [f for f in self.ref_analyzer.analyze(image, embed=False) if box_iou(f.bbox, box) >= 0.3]
            best = max(found, key=lambda f: box_iou(f.bbox, box)) if found else None
            kps = np.asarray(best.kps5 if best is not None else tracked.kps5 * up, np.float64)
        ref_png = reference_crop(image, kps, size=size, expand=REF_EXPAND)
        ref_id = norm_crop(image, kps)
        ref_kps5 = transform_points(kps, alignment_matrix(kps, size, REF_EXPAND))
        fields = {
            "ref_frame": face_rec["frame"],
            # seconds into the clip (the source frame the crops come from; the clip frame ref_frame shows it)
            "ref_time": round(face_rec["time"] if cut.still_time is None else cut.still_time - t0, 4),
            "ref_kps5": [[round(float(x), 3), round(float(y), 3)] for x, y in ref_kps5],
            "ref_align": {"size": size, "expand": REF_EXPAND, "template": "arcface-112"},
            "ref_source_kps5": [[round(float(x), 3), round(float(y), 3)] for x, y in kps],
            "ref_source_size": [int(image.shape[1]), int(image.shape[0])],
        }
        return (ref_png, ref_id), fields


def reference_analyzer(analyzer: FaceAnalyzer, min_score: float) -> FaceAnalyzer:
    """The analyser whose keypoints align the reference crops: the recogniser's own alignment convention.

    ArcFace-family recognisers are trained on crops aligned with their detector's raw 5 points (insightface:
    SCRFD + ``norm_crop``; SFace: YuNet + OpenCV's ``FaceRecognizerSF.alignCrop``). The offline analyser refines
    YuNet's points for rotated faces (:mod:`cofe_encoders.face.refine`), which moves them by a few pixels and
    cost up to 0.06 of cosine against the aligned embedding of the frame on the real webcam clip; so the
    reference is aligned with a YuNet that does not refine (and detects at up to 1920 px, not 1280). Other
    analysers are used as they are.
    """
    if isinstance(analyzer, OfflineFaceAnalyzer) and analyzer.refine:
        return OfflineFaceAnalyzer(
            score_threshold=min_score, max_side=1920, detector_path=analyzer.detector_path, refine=False
        )
    return analyzer


def reference_index(track: FaceTrack) -> int:
    """The tracked frame the reference is cut from: the most frontal of the sharper half (position in
    ``track.faces``)."""
    sharp_half = np.argsort(-track.sharpness)[: max(1, (len(track.faces) + 1) // 2)]
    return int(sharp_half[np.argmin(np.abs(track.pose_yaws[sharp_half]))])


def _decide(result: InputResult, cfg: CurationConfig) -> None:
    """Set an input's decision and reason from its clips."""
    kept = sum(c.decision == "kept" for c in result.clips)
    if kept:
        result.decision, result.reason = "kept", f"{kept} of {len(result.clips)} clips kept"
    elif result.clips:
        stages = sorted({c.stage for c in result.clips})
        result.decision, result.reason = "rejected", f"all {len(result.clips)} clips rejected ({', '.join(stages)})"
    else:
        result.decision = "rejected"
        result.reason = f"no shot of at least min_clip_s={cfg.shots.min_clip_s} s (video {result.duration:.2f} s long)"


def merge_windows(windows: list[InputResult], cfg: CurationConfig) -> InputResult:
    """One input's result from the results of its windows (in order): clips, notes (once each) and seconds."""
    first = windows[0]
    merged = InputResult(first.source, "rejected", "", duration=windows[-1].duration)
    seconds: dict[str, float] = defaultdict(float)
    for window in windows:
        merged.clips += window.clips
        merged.notes += [n for n in window.notes if n not in merged.notes]
        merged.frames += window.frames
        for stage, s in window.seconds.items():
            seconds[stage] += s
    merged.seconds = dict(seconds)
    merged.windows = len(windows)
    _decide(merged, cfg)
    return merged
