"""Writing and reading videos: H.264 mp4 through PyAV (its wheels bundle libx264)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from cofe_curation.media import encode_mp4


def write_mp4(frames: np.ndarray, path: str | Path, fps: float = 16.0, crf: int = 18) -> Path:
    """Write ``frames`` (T, H, W, 3) uint8 RGB as an H.264 mp4 (yuv420p), atomically.

    Raises:
        ValueError: on a wrong shape or dtype, or odd height/width (yuv420p needs even sizes).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 yuv420p needs even height and width, got {frames.shape[1]}x{frames.shape[2]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.mp4")
    tmp.write_bytes(encode_mp4(frames, fps, crf=crf))
    tmp.replace(path)
    return path


def read_mp4(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode every frame of a video as (T, H, W, 3) uint8 RGB, and its frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path} has no decodable video frames")
    return np.stack(frames), fps
