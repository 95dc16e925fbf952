"""Evaluation protocols: the field's (``consisid``, ``opens2v``) and ours (``cofe``), as one typed config with presets.

Every constant of the ``consisid`` preset is a fact of ConsisID's published evaluation scripts
(``../shared/PROTOCOL.md`` in the CoFE repository; Yuan et al., "Identity-Preserving Text-to-Video Generation by
Frequency Decomposition", CVPR 2025; PKU-YuanGroup/ConsisID ``eval/get_facesim_fid.py``): 16 frames, largest face,
a 25% gray padding retry, 224 px alignment, clamped cosine, frames without a face skipped, CLIP on OpenCV BGR frames.

The ``opens2v`` preset reproduces the face metrics of OpenS2V-Eval (Yuan et al., "OpenS2V-Nexus: A Detailed Benchmark
and Million-Scale Dataset for Subject-to-Video Generation", arXiv 2505.20292), read from its ``eval/get_facesim.py``
and ``eval/merge_result.py`` (two public mirrors of PKU-YuanGroup/OpenS2V-Nexus, dreamofuture/OpenS2V-Nexus at
bc97603 and franciszzj/OpenS2V-Nexus at dabfab7, identical in these respects):

* 32 frames at ``np.linspace(0, N - 1, 32, dtype=int)`` (``sample_video_frames(num_frames=32)``);
* the same face analysis as ConsisID: insightface ``FaceAnalysis(root=...)`` with no pack name, which is
  insightface's default ``buffalo_l``, ``prepare(det_size=(320, 320))``, the largest face by box area, the
  ``pad_np_bgr_image(scale=1.25)`` retry with the keypoints shifted back, ``norm_crop(..., 224)``, CurricularFace
  IR-101 on the crop resized to 112 with ``(x/255 - 0.5)/0.5``; a frame without a face is skipped;
* FaceSim-Cur: per frame ``max(0, cos)``, and a frame whose clamped score is 0 is **dropped** from the mean
  (``if cur_score != 0.0: cur_scores.append(...)``), so a frame that looks like someone else does not lower it;
* FaceSim-Arc: the same zero-dropping was meant, but the script tests the list instead of the score
  (``if arc_scores != 0.0``: a list never equals 0.0), so every face frame is kept, zeros included: FaceSim-Arc is
  ConsisID's clamped mean over face frames;
* a video with no face frame scores 0.0 in both; a video whose reference shows no face is left out;
* the leaderboard's "FaceSim" is FaceSim-Cur only: the mean over videos of ``min(cur_score, 1)`` (``merge_result.py``).

Not verified (no access): which files the ``face_extractor`` folder of the BestWishYsh/OpenS2V-Weight repository
holds (the code implies ``models/buffalo_l``), the paper's own wording of the metric, and whether the upstream
repository has since fixed the ``arc_scores`` typo. OpenS2V-Eval decodes with decord (one mirror) or imageio's
ffmpeg reader (the other); we decode with PyAV, which can differ from them in colour conversion by a level or so.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

Protocol = Literal["consisid", "cofe", "opens2v"]
Recognizer = Literal["arcface", "dlib"]
PROTOCOLS = ("cofe", "consisid", "opens2v")
RECOGNIZERS = ("arcface", "dlib")


@dataclass(frozen=True)
class BenchConfig:
    """How a video is scored.

    Attributes:
        protocol: ``"consisid"`` or ``"opens2v"`` (reproduce the published scripts) or ``"cofe"`` (stricter, see the
            README).
        num_frames: Frames sampled per video for the face metrics and for CLIPScore (ConsisID: 16, OpenS2V: 32).
        pad_retry: When no face is found, pad the image by ``pad_fraction`` of its size on every side with
            ``pad_value`` gray and detect again (ConsisID's ``pad_np_bgr_image(scale=1.25)``).
        pad_fraction: Padding per side as a fraction of the image size (ConsisID: 0.25).
        pad_value: Padding gray level (ConsisID: 128).
        align_size: Side of the aligned face crop fed to CurricularFace and Inception (ConsisID: 224).
        missing_face_as_zero: ``cofe``: a sampled frame without a face scores 0 in FaceSim (``consisid`` skips it).
        clip_bgr: Feed CLIP the frames in OpenCV BGR order, as ConsisID's CLIPScore script does by accident.
        drop_zero_cur: ``opens2v``: frames whose clamped FaceSim-Cur is 0 are left out of its mean.
        recognizer: The network that scores identity under ``cofe``: ``"arcface"`` (the ArcFace-family model given
            to the evaluator: FaceSim-Arc) or ``"dlib"`` (dlib's ResNet, independent of the networks that condition
            the model: FaceSim-dlib); it also gives ``id_frame_sim`` and ``id_drift``. The field's protocols use
            ArcFace.
        yaw_edges: Bin edges on |yaw| in degrees (default bins |yaw| < 30, 30-60, > 60; DESIGN.md section 4).
        motion_side: Frames are downscaled to this shorter side before the motion measure.
    """

    protocol: Protocol = "cofe"
    num_frames: int = 16
    pad_retry: bool = True
    pad_fraction: float = 0.25
    pad_value: int = 128
    align_size: int = 224
    missing_face_as_zero: bool = True
    clip_bgr: bool = False
    drop_zero_cur: bool = False
    recognizer: Recognizer = "arcface"
    yaw_edges: tuple[float, ...] = field(default=(30.0, 60.0))

    motion_side: int = 64

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if self.recognizer not in RECOGNIZERS:
            raise ValueError(f"unknown recognizer {self.recognizer!r}; choose one of {', '.join(RECOGNIZERS)}")
        if self.recognizer != "arcface" and self.protocol != "cofe":
            raise ValueError(
                f"recognizer {self.recognizer!r} is an option of the 'cofe' protocol; {self.protocol!r} scores "
                "identity with ArcFace as its published scripts do"
            )
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        edges = tuple(float(e) for e in self.yaw_edges)
        if any(e <= 0 for e in edges) or list(edges) != sorted(set(edges)):
            raise ValueError(f"yaw_edges must be positive and strictly increasing, got {self.yaw_edges}")
        object.__setattr__(self, "yaw_edges", edges)

    @classmethod
    def from_name(cls, name: Protocol, **overrides) -> BenchConfig:
        """The ``"consisid"``, ``"opens2v"`` or ``"cofe"`` preset, with optional overrides (e.g. ``yaw_edges``)."""
        if name == "consisid":
            base = cls(protocol="consisid", missing_face_as_zero=False, clip_bgr=True)
        elif name == "opens2v":
            # OpenS2V-Eval's face script has no CLIPScore and no FID: those columns are our extras, scored as in cofe.
            base = cls(protocol="opens2v", num_frames=32, missing_face_as_zero=False, drop_zero_cur=True)
        elif name == "cofe":
            base = cls(protocol="cofe", missing_face_as_zero=True, clip_bgr=False)
        else:
            raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
        return replace(base, **overrides)

    def facesim_mean(self, values: Sequence[float], num_frames: int, key: str = "arc") -> float | None:
        """A FaceSim over a set of sampled frames, by the protocol's rule (per video, or per yaw bin).

        Args:
            values: The clamped per-frame scores of the frames that have a face.
            num_frames: All sampled frames of the set, face-less ones included.
            key: ``"arc"``, ``"cur"`` or ``"dlib"`` (OpenS2V drops zeros from FaceSim-Cur only).

        Returns:
            ``cofe``: the sum over face frames / ``num_frames`` (a frame without a face scores 0). ``consisid`` and
            ``opens2v``: the mean over face frames (OpenS2V-Eval's FaceSim-Cur without the frames that scored 0),
            0.0 when none is left. ``None`` for an empty set.
        """
        if num_frames == 0:
            return None
        if self.missing_face_as_zero:
            return float(np.sum(values) / num_frames)
        if key == "cur" and self.drop_zero_cur:
            values = [v for v in values if v != 0.0]  # OpenS2V get_facesim.py: `if cur_score != 0.0`
        return float(np.mean(values)) if len(values) else 0.0

    @property
    def yaw_bins(self) -> list[str]:
        """Bin labels, e.g. ``["|yaw|<30", "30-60", ">60"]``."""
        e = self.yaw_edges
        labels = [f"|yaw|<{e[0]:g}"]
        labels += [f"{lo:g}-{hi:g}" for lo, hi in itertools.pairwise(e)]
        labels.append(f">{e[-1]:g}")
        return labels

    def yaw_bin(self, yaw: float) -> str:
        """The label of the bin holding ``|yaw|`` (a value on an edge goes to the upper bin)."""
        idx = int(np.searchsorted(np.asarray(self.yaw_edges), abs(float(yaw)), side="right"))
        return self.yaw_bins[idx]


def face_frame_indices(num_video_frames: int, num_samples: int = 16) -> np.ndarray:
    """Frames for the face metrics: ``np.linspace(0, N - 1, 16, dtype=int)`` (ConsisID ``sample_video_frames``).

    Indices repeat when the video is shorter than ``num_samples``, exactly as in the published script.
    """
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_video_frames}")
    return np.linspace(0, num_video_frames - 1, num_samples, dtype=int)


def clip_frame_indices(num_video_frames: int, num_samples: int = 16) -> np.ndarray:
    """Frames for CLIPScore: ``int(i * N / 16)`` for ``i < 16`` (ConsisID's CLIPScore script)."""
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_video_frames}")
    return np.array([int(i * num_video_frames / num_samples) for i in range(num_samples)], dtype=int)


def interpolate_track(positions: Sequence[float], yaws: Sequence[float], at: Sequence[float]) -> np.ndarray:
    """Linear interpolation of a yaw track (held constant beyond its ends); repeated positions are averaged.

    Args:
        positions: Relative positions in the clip, 0 (first frame) to 1 (last frame).
        yaws: Yaw at each position (degrees).
        at: Relative positions to evaluate.
    """
    pos = np.asarray(positions, np.float64)
    val = np.asarray(yaws, np.float64)
    if pos.size == 0 or pos.shape != val.shape:
        raise ValueError(f"a yaw track needs matching, non-empty positions and values, got {pos.shape} and {val.shape}")
    uniq, inverse = np.unique(pos, return_inverse=True)
    mean = np.bincount(inverse, weights=val) / np.bincount(inverse)
    return np.interp(np.asarray(at, np.float64), uniq, mean)


def relative_positions(indices: Sequence[int], num_video_frames: int) -> np.ndarray:
    """Frame indices of a ``num_video_frames`` video as positions in [0, 1] (0 for a one-frame video)."""
    idx = np.asarray(indices, np.float64)
    return idx / (num_video_frames - 1) if num_video_frames > 1 else np.zeros_like(idx)


@dataclass(frozen=True)
class ProtocolCheck:
    """Whether a run can claim the protocol it asked for.

    ``consisid`` and ``opens2v`` are exact only with the models their scripts use (insightface ``buffalo_l``:
    SCRFD ``det_10g`` at ``det_size=(320, 320)`` and ArcFace ``w600k_r50``, plus the CurricularFace IR-101
    checkpoint); any other set-up is reported as ``<protocol>-approx`` with the reasons. ``cofe`` is our own
    protocol: it is always what it says, and names its recogniser.

    Attributes:
        requested: The protocol asked for.
        exact: Whether every model and setting matches the published script.
        reasons: What differs, one line each (empty when exact).
    """

    requested: str
    exact: bool = True
    reasons: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``"consisid"``, or ``"consisid-approx"`` when the run differs from the published script."""
        return self.requested if self.exact else f"{self.requested}-approx"

    @property
    def warning(self) -> str | None:
        """A one-paragraph warning for an approximate run, else ``None``."""
        if self.exact:
            return None
        return (
            f"protocol {self.requested!r} was asked for but this run differs from its published script, so it is "
            f"reported as {self.label!r} and its numbers are not comparable with papers: " + "; ".join(self.reasons)
        )


@dataclass(frozen=True)
class TargetPose:
    """The yaw a generated video should show over time: the target clip's track, by relative position.

    Attributes:
        positions: ``(K,)`` relative positions in the target clip, 0 (first frame) to 1 (last frame).
        yaws: ``(K,)`` yaw at each position, degrees.
        source: Where it came from: ``"target_yaw"`` (the manifest's per-frame track) or ``"target_video"`` (the
            ground-truth clip analysed at the sampled times).
    """

    positions: np.ndarray
    yaws: np.ndarray
    source: str

    @classmethod
    def from_frames(cls, yaws: Sequence[float | None], source: str = "target_yaw") -> TargetPose | None:
        """From one yaw per target frame (``None`` for an unknown frame); ``None`` when no frame is known."""
        known = [(i, float(v)) for i, v in enumerate(yaws) if v is not None]
        if not known:
            return None
        pos = relative_positions([i for i, _ in known], len(yaws))
        return cls(pos, np.array([v for _, v in known], np.float64), source)

    def at(self, positions: Sequence[float]) -> np.ndarray:
        """Yaw at relative positions (linear interpolation, constant beyond the ends)."""
        return interpolate_track(self.positions, self.yaws, positions)
