"""Typed configuration of every curation stage, with named presets.

Each stage reads only its own dataclass. ``CurationConfig.from_dict`` builds the whole tree from plain nested
dicts (what a YAML/JSON file parses to; apps does the file parsing) and rejects unknown keys by name, so a typo
in a config file is an error, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm")


@dataclass
class IngestConfig:
    """Decoding of one input.

    Attributes:
        sample_fps: Frames per second sampled for analysis (faces, pose, mouth motion). 8 fps resolves head turns
            and, at Nyquist, the 4-5 Hz syllable rate of speech (Greenberg 1999, "Speaking in shorthand").
        analysis_max_side: Sampled frames are downscaled so that their longer side is at most this (pixels).
        window_s: Inputs are decoded and analysed in consecutive windows of this many seconds, so memory does not
            grow with the input's length: one window holds ``window_s * sample_fps`` analysis frames (60 s at
            8 fps and 640x360: 480 frames, 330 MB). Shots and clips do not cross a window boundary (a shot that
            does is cut there). Use a multiple of ``shots.max_clip_s`` so that long shots split as they would
            without windows.
        max_duration_s: Analyse only the first ``max_duration_s`` seconds of each input (``None``, the default:
            the whole input). A capped input says so in its report notes.
        max_pixels: Inputs with more pixels per frame than this are rejected before decoding (guards memory
            against absurd resolutions; 8K UHD is 33.2 Mpx).
        audio_rate: Audio is resampled to this rate, mono float32 (silero-vad takes 8 or 16 kHz).
        max_input_bytes: Inputs (files, shard members) declaring more bytes than this are refused before any of
            them is read (a two-hour 4K recording is about 50 GB). Shard members are streamed from the tar, never
            read whole, so memory stays bounded by what the decoder reads whatever the declared size.
        max_caption_bytes: Caption sidecars larger than this are not read (the input is processed without a
            caption and the note says why).
    """

    sample_fps: float = 8.0
    analysis_max_side: int = 640
    window_s: float = 60.0
    max_duration_s: float | None = None
    max_pixels: int = 7680 * 4320
    audio_rate: int = 16000
    max_input_bytes: int = 256 * 2**30
    max_caption_bytes: int = 2**20

    def __post_init__(self) -> None:
        if not self.sample_fps > 0:
            raise ValueError(f"ingest.sample_fps must be > 0, got {self.sample_fps!r}")
        if not self.window_s >= 2.0 / self.sample_fps:
            raise ValueError(f"ingest.window_s must hold at least two sampled frames, got {self.window_s!r} s")
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise ValueError(f"ingest.max_duration_s must be > 0 or null (whole input), got {self.max_duration_s!r}")


@dataclass
class ShotConfig:
    """Shot splitting (PySceneDetect's ``ContentDetector`` on the sampled frames) and clip cutting.

    Attributes:
        threshold: ContentDetector threshold on the HSV content change (27 is PySceneDetect's default).
        min_clip_s: Shots shorter than this are dropped.
        max_clip_s: Longer shots are cut into consecutive clips of at most this length (Wan trains on 5 s).
        max_frame_gap_s: Consecutive sampled frames further apart in presentation time than this (a pause in a
            variable-frame-rate recording: a phone that stopped writing frames) end a shot there; the shot ends
            one sampling step after its last frame, so no clip spans the pause with a frozen picture.
    """

    threshold: float = 27.0
    min_clip_s: float = 1.5
    max_clip_s: float = 5.0
    max_frame_gap_s: float = 1.0


@dataclass
class FaceConfig:
    """Face constraints of a clip (rules in :func:`cofe_curation.faces.check_faces`, tracking in
    :func:`cofe_curation.faces.track_main_face`).

    Attributes:
        max_second_face_ratio: A second face whose box area exceeds this fraction of the main face's area, in
            any sampled frame, rejects the clip (background faces smaller than this are tolerated).
        min_face_px: Minimum median shorter side of the main face box, in source pixels.
        min_face_ratio: Minimum median main-face-box area over frame area.
        min_detect_fraction: The main face must be found in at least this fraction of the sampled frames of its
            track's span (first to last tracked frame), so that thin detection at profile inside a continuing
            track is tolerated while a flickering detection (every other frame: 50 %) is not.
        max_gap_s: Longest run of sampled frames without the main face, inside the track or at the clip's ends.
            A head turning to profile and back at a natural speed spends well under a second beyond 75 degrees,
            where the offline detector still finds 82 % of faces (STACK.md); a longer absence is not a turn.
        min_switch_s: A face inconsistent with the track (position, size or identity) that stays at least this
            long while the tracked face is gone rejects the clip as a person switch; shorter ones are taken for
            spurious detections.
        track_max_shift: A face found after the track was lost continues it only if its box centre lies within
            this many face widths of where the face was lost, ...
        track_shift_per_s: ... plus this many face widths per second of gap.
        min_sharpness: Minimum median variance of the Laplacian of the aligned 112x112 gray face crop
            (Pech-Pacheco et al. 2000, "Diatom autofocusing in brightfield microscopy"); blurred faces fall well
            below sharp ones at this fixed scale.
        min_yaw_range_deg: The head must move: yaw range (5th to 95th percentile) at least this, whatever the
            pose; over twice the largest spread of a still head's yaw (9 real faces held still for 2 s under camera
            noise: 0.7-4.4 deg smoothed, 0.9-7.5 per frame; a still profile 2.6; README), so a static profile is
            rejected however large its yaw. AND ...
        wide_yaw_range_deg: ... either the range reaches this (a sweep no jitter makes; the webcam clip's
            second shot, a person talking with small head turns, sweeps 27.8 smoothed) ...
        min_abs_yaw_p90_deg: ... or the 90th percentile of |yaw| reaches this (the head spends at least 10 % of
            the clip beyond it). Percentiles, not the raw maximum: one mis-estimated frame must not pass a clip.
        min_score: Minimum detector score for a face to count.
        pose_smoothing_s: Width of the window over which the track's per-frame angles are smoothed
            (``cofe_encoders.face.smooth_pose``; 0: no smoothing). Half a second spans 4 sampled frames at 8 fps,
            longer than keypoint jitter and shorter than a head turn.
    """

    max_second_face_ratio: float = 0.1
    min_face_px: float = 48.0
    min_face_ratio: float = 0.004
    min_detect_fraction: float = 0.6
    max_gap_s: float = 1.0
    min_switch_s: float = 0.5
    track_max_shift: float = 0.5
    track_shift_per_s: float = 1.0
    min_sharpness: float = 15.0
    min_yaw_range_deg: float = 12.0
    wide_yaw_range_deg: float = 20.0
    min_abs_yaw_p90_deg: float = 35.0
    min_score: float = 0.6
    pose_smoothing_s: float = 0.5


@dataclass
class IdentityConfig:
    """Identity consistency within a clip and identity clusters across the run.

    Thresholds left at ``None`` come from the recogniser's profile (:data:`cofe_curation.identity.RECOGNIZERS`:
    SFace 128-d and ArcFace 512-d score the same and different people on different scales).

    Attributes:
        recognizer: Profile of the recogniser that embeds the faces: ``"auto"`` (from the face analyser:
            ``"sface"`` for the offline backend, ``"arcface"`` for insightface packs), ``"sface"`` or
            ``"arcface"``.
        max_embed_frames: Frames embedded per clip, spread over time (each embedding costs ~30 ms on a CPU).
        pose_window_deg: Frame pairs whose yaws differ by at most this are compared as they are.
        yaw_slope: Pairs further apart in yaw get this similarity credit per degree beyond the window, because
            identity similarity falls with the yaw gap (Sengupta et al. 2016, CFP frontal-profile benchmark);
            0.0025 credits a 60-degree gap with 0.1. Frames link through frames of similar pose, so the credit
            only matters where a clip has no frames between its poses; 0.005 (0.2.0) raised a person swap's
            score from 0.30 to 0.32-0.37, close to ``min_consistency``, 0.0025 keeps it at 0.30-0.31.
        outliers: ``id_consistency`` may leave out up to this many embedded frames (never more than a quarter of
            them): one bad detection or crop must not reject a clip, while an identity swap affects many frames.
        min_consistency: Clips with ``id_consistency`` below this are rejected (``None``: the profile's).
        cluster_threshold: Identity clusters: clips are merged while the linkage similarity of their clusters
            is at least this (``None``: the profile's).
        reacquire_threshold: A face found after the track was lost must match the track at least this well
            (``None``: the profile's verification threshold).
        linkage: ``"average"`` (default), ``"complete"`` or ``"single"`` linkage of the identity clusters
            (:func:`cofe_curation.identity.cluster_identities`; single linkage chains identities at scale).
    """

    recognizer: str = "auto"
    max_embed_frames: int = 8
    pose_window_deg: float = 20.0
    yaw_slope: float = 0.0025
    outliers: int = 1
    min_consistency: float | None = None
    cluster_threshold: float | None = None
    reacquire_threshold: float | None = None
    linkage: str = "average"

    def __post_init__(self) -> None:
        if self.recognizer not in ("auto", "sface", "arcface"):
            raise ValueError(f"identity.recognizer must be 'auto', 'sface' or 'arcface', got {self.recognizer!r}")
        if self.linkage not in ("average", "complete", "single"):
            raise ValueError(f"identity.linkage must be 'average', 'complete' or 'single', got {self.linkage!r}")
        if not (isinstance(self.outliers, int) and self.outliers >= 0):
            raise ValueError(f"identity.outliers must be a non-negative integer, got {self.outliers!r}")


@dataclass
class SpeechConfig:
    """Speech disambiguation.

    Attributes:
        vad_threshold: silero-vad speech probability threshold (0.5 is silero's default).
        min_speech_ratio: A clip has speech in its audio if VAD covers at least this fraction of it.
        min_mouth_excess: The mouth moves if its motion exceeds its still baseline by this many inter-ocular
            distances per second (:func:`cofe_curation.speech.mouth_evidence`; measured: the real speaker of
            ``movie-hello.mp4`` 0.24-0.36 above while he speaks, the same face silent 0.00-0.02, still real-texture
            faces at most 0.04, a chewing mouth 0.3-0.5); with speech and a still mouth the clip is a voice-over.
        min_mouth_ratio: ... and is at least this many times its still baseline (the real speaker 3.0; still faces
            turning fast through +-40 degrees up to 1.95, their mouth band distorted by the turn).
        min_voice_lock: Where the clip has pauses, a moving mouth speaks only if it moves at least this many times
            more under speech than in the pauses (the real speaker 2.4; a chewing mouth under a voice-over 0.8-1.05).
        max_yaw: Frames with a larger |yaw| (degrees, as the face analyser reads it: the offline estimator's yaw is
            corrected to true angles since cofe-encoders 0.2) are left out of the mouth measurement; the others are
            weighted by cos(yaw). 70 keeps the frames the uncorrected reading's 60 kept (about 70-75 true).
        min_usable_pairs: Frame pairs with the mouth visible needed to judge it; with fewer, speech in the audio is
            not attributed to the visible person.
        rewriter: Caption rewriter: ``"rules"`` (default, offline) or ``"module:attr"`` of a
            :class:`cofe_curation.caption.CaptionRewriter` factory (for example a local LLM). Never a network
            service by default.
        speaking_sentence: Sentence appended to captions of speaking clips that do not say so.
    """

    vad_threshold: float = 0.5
    min_speech_ratio: float = 0.2
    min_mouth_excess: float = 0.06
    min_mouth_ratio: float = 2.0
    min_voice_lock: float = 1.4
    max_yaw: float = 70.0
    min_usable_pairs: int = 6
    rewriter: str = "rules"
    speaking_sentence: str = "The person is speaking."


@dataclass
class WriteConfig:
    """Outputs.

    Attributes:
        max_side: Written clips are downscaled so their longer side is at most this (832: Wan's 480p width).
        crf: x264 constant rate factor of written clips (18: visually lossless).
        shard_max_clips: A shard is closed once it holds at least this many clips (an input's clips are never
            split across shards, so a shard may exceed it by one input's clips).
        ref_size: Side of the reference face crop ``ref.png``.
        plots: Write PNG plots at the end of a run.
    """

    max_side: int = 832
    crf: int = 18
    shard_max_clips: int = 64
    ref_size: int = 512
    plots: bool = True


@dataclass
class CurationConfig:
    """All stages."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    shots: ShotConfig = field(default_factory=ShotConfig)
    faces: FaceConfig = field(default_factory=FaceConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    write: WriteConfig = field(default_factory=WriteConfig)

    @classmethod
    def from_name(cls, name: str) -> CurationConfig:
        """A named preset: ``"default"``, or ``"tiny"`` (short clips, small outputs: tests and demos)."""
        if name == "default":
            return cls()
        if name == "tiny":
            return cls.from_dict(
                {
                    "shots": {"min_clip_s": 1.0, "max_clip_s": 4.0},
                    "identity": {"max_embed_frames": 6},
                    "write": {"max_side": 320, "crf": 23, "shard_max_clips": 2, "ref_size": 128},
                }
            )
        raise ValueError(f"unknown curation preset {name!r}; choose 'default' or 'tiny'")

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: CurationConfig | None = None) -> CurationConfig:
        """Build a config from nested dicts, overriding ``base`` (default: the defaults).

        A top-level ``preset`` key picks the base preset.

        Raises:
            ValueError: an unknown section or key, named with its path.
        """
        data = dict(data)
        if "preset" in data:
            base = cls.from_name(str(data.pop("preset")))
        cfg = dataclasses.replace(base) if base is not None else cls()
        sections = {f.name for f in dataclasses.fields(cls)}
        for section, values in data.items():
            if section not in sections:
                raise ValueError(f"unknown curation config section {section!r}; expected one of {sorted(sections)}")
            if not isinstance(values, dict):
                raise ValueError(f"curation config section {section!r} must be a mapping, got {values!r}")
            current = getattr(cfg, section)
            keys = {f.name: f for f in dataclasses.fields(current)}
            for key in values:
                if key not in keys:
                    raise ValueError(f"unknown key {section}.{key}; expected one of {sorted(keys)}")
            setattr(cfg, section, dataclasses.replace(current, **values))
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts (JSON-serialisable)."""
        return dataclasses.asdict(self)
