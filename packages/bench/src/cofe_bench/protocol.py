"""Evaluation protocols: the field's (``consisid``) and ours (``cofe``), as one typed config with presets.

Every constant of the ``consisid`` preset is a fact of ConsisID's published evaluation scripts
(``../shared/PROTOCOL.md`` in the CoFE repository; Yuan et al., "Identity-Preserving Text-to-Video Generation by
Frequency Decomposition", CVPR 2025): 16 frames, largest face, a 25% gray padding retry, 224 px alignment,
clamped cosine, frames without a face skipped, CLIP on OpenCV BGR frames.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

Protocol = Literal["consisid", "cofe"]


@dataclass(frozen=True)
class BenchConfig:
    """How a video is scored.

    Attributes:
        protocol: ``"consisid"`` (reproduces the published scripts) or ``"cofe"`` (stricter, see the README).
        num_frames: Frames sampled per video for the face metrics and for CLIPScore (ConsisID: 16).
        pad_retry: When no face is found, pad the image by ``pad_fraction`` of its size on every side with
            ``pad_value`` gray and detect again (ConsisID's ``pad_np_bgr_image(scale=1.25)``).
        pad_fraction: Padding per side as a fraction of the image size (ConsisID: 0.25).
        pad_value: Padding gray level (ConsisID: 128).
        align_size: Side of the aligned face crop fed to CurricularFace and Inception (ConsisID: 224).
        missing_face_as_zero: ``cofe``: a sampled frame without a face scores 0 in FaceSim (``consisid`` skips it).
        clip_bgr: Feed CLIP the frames in OpenCV BGR order, as ConsisID's CLIPScore script does by accident.
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
    yaw_edges: tuple[float, ...] = field(default=(30.0, 60.0))

    motion_side: int = 64

    def __post_init__(self) -> None:
        if self.protocol not in ("consisid", "cofe"):
            raise ValueError(f"unknown protocol {self.protocol!r}; choose 'consisid' or 'cofe'")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        edges = tuple(float(e) for e in self.yaw_edges)
        if any(e <= 0 for e in edges) or list(edges) != sorted(set(edges)):
            raise ValueError(f"yaw_edges must be positive and strictly increasing, got {self.yaw_edges}")
        object.__setattr__(self, "yaw_edges", edges)

    @classmethod
    def from_name(cls, name: Protocol, **overrides) -> BenchConfig:
        """The ``"consisid"`` or ``"cofe"`` preset, with optional field overrides (e.g. ``yaw_edges``)."""
        if name == "consisid":
            base = cls(protocol="consisid", missing_face_as_zero=False, clip_bgr=True)
        elif name == "cofe":
            base = cls(protocol="cofe", missing_face_as_zero=True, clip_bgr=False)
        else:
            raise ValueError(f"unknown protocol {name!r}; choose 'consisid' or 'cofe'")
        return replace(base, **overrides)

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
