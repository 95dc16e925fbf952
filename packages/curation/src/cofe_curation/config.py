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
    """

    sample_fps: float = 8.0
    analysis_max_side: int = 640
    window_s: float = 60.0
    max_duration_s: float | None = None
    max_pixels: int = 7680 * 4320
    audio_rate: int = 16000

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
    """

    threshold: float = 27.0
    min_clip_s: float = 1.5
    max_clip_s: float = 5.0


@dataclass
class FaceConfig:
    """Face constraints of a clip.

    Attributes:
        max_second_face_ratio: A second face whose box area exceeds this fraction of the main face's area, in
            any sampled frame, rejects the clip (background faces smaller than this are tolerated).
        min_face_px: Minimum median shorter side of the main face box, in source pixels.
        min_face_ratio: Minimum median main-face-box area over frame area.
        min_detect_fraction: The main face must be found in at least this fraction of sampled frames.
        min_sharpness: Minimum median variance of the Laplacian of the aligned 112x112 gray face crop
            (Pech-Pacheco et al. 2000, "Diatom autofocusing in brightfield microscopy"); blurred faces fall well
            below sharp ones at this fixed scale.
        min_yaw_range_deg: Keep the clip if its yaw range (5th to 95th percentile) reaches this, ...
        min_max_abs_yaw_deg: ... or if its largest |yaw| reaches this.
        min_score: Minimum detector score for a face to count.
    """

    max_second_face_ratio: float = 0.1
    min_face_px: float = 48.0
    min_face_ratio: float = 0.004
    min_detect_fraction: float = 0.8
    min_sharpness: float = 15.0
    min_yaw_range_deg: float = 25.0
    min_max_abs_yaw_deg: float = 40.0
    min_score: float = 0.6


@dataclass
class IdentityConfig:
    """Identity consistency within a clip and identity clusters across the run.

    Attributes:
        max_embed_frames: Frames embedded per clip, spread over time (each embedding costs ~50 ms on a CPU).
        pose_window_deg: Frame pairs whose yaws differ by at most this are compared as they are.
        yaw_slope: Pairs further apart in yaw get this similarity credit per degree beyond the window, because
            identity similarity falls with the yaw gap (Sengupta et al. 2016, CFP frontal-profile benchmark);
            0.005 credits a 60-degree gap with 0.2, which keeps different people (SFace <= 0.30) below
            ``min_consistency`` up to 50 degrees apart.
        quantile: ``id_consistency`` is this quantile of the compensated pair similarities (robust to one bad
            detection, low enough that an identity swap in a third of the clip pulls it down).
        min_consistency: Clips with ``id_consistency`` below this are rejected. SFace scores the same person
            0.62-0.95 and different people <= 0.30 (STACK.md, cofe_encoders README).
        cluster_threshold: Clips whose mean embeddings have cosine >= this are linked into one identity
            (connected components).
    """

    max_embed_frames: int = 8
    pose_window_deg: float = 20.0
    yaw_slope: float = 0.005
    quantile: float = 0.1
    min_consistency: float = 0.45
    cluster_threshold: float = 0.5


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
        max_yaw: Frames with a larger |yaw| (degrees, as the face analyser reads it) are left out of the mouth
            measurement; the others are weighted by cos(yaw).
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
    max_yaw: float = 60.0
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
