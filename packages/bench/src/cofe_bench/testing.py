"""Test media: face videos built from real photographs, for the tests and benchmarks of the bench (not for users).

Nothing here downloads: the photographs ship inside the insightface wheel (``t1.jpg``, a group photo of six people,
and ``Tom_Hanks_54745.png``), which is a development dependency of the workspace, not of ``cofe-bench``; the
production code never imports this module. The random-weight model stand-ins that ``cofe bench --random-models``
uses live in :mod:`cofe_bench.standins`.
"""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np


def write_video(frames: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    """Write uint8 RGB ``(T, H, W, 3)`` (even H and W) as an H.264 mp4 with PyAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return path


def photo_dir() -> Path:
    """insightface's bundled sample images (``t1.jpg``: six people; ``Tom_Hanks_54745.png``)."""
    import insightface

    return Path(insightface.__file__).parent / "data" / "images"


def load_photo(name: str) -> np.ndarray:
    """A bundled photo as uint8 RGB."""
    from PIL import Image

    with Image.open(photo_dir() / name) as im:
        return np.asarray(im.convert("RGB"))


# Face boxes [x1, y1, x2, y2] of the six people in t1.jpg (YuNet, offline backend), left to right in the image.
T1_BOXES = {
    "p0": (60, 268, 167, 396),
    "p1": (266, 151, 371, 277),
    "p2": (465, 266, 567, 411),
    "p3": (748, 353, 846, 475),
    "p4": (905, 58, 1005, 202),
    "p5": (1125, 272, 1220, 396),
}


def face_crop(photo: np.ndarray, box: tuple[int, int, int, int], size: int = 160, margin: float = 0.9) -> np.ndarray:
    """A square ``size`` crop around ``box`` with ``margin`` of the box size on every side (face ~35% wide)."""
    x1, y1, x2, y2 = box
    cx, cy, s = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    m = np.array([[size / s, 0, size / 2 - cx * size / s], [0, size / s, size / 2 - cy * size / s]])
    return cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def moving_face_frames(face: np.ndarray, num_frames: int = 12, angle: float = 12.0, shift: float = 0.06) -> np.ndarray:
    """A face image rotated from ``-angle`` to ``+angle`` degrees and shifted across ``num_frames`` frames."""
    h, w = face.shape[:2]
    frames = []
    for t in np.linspace(-1, 1, num_frames):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle * t, 1.0)
        m[0, 2] += shift * w * t
        frames.append(cv2.warpAffine(face, m, (w, h), borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)  # (T, H, W, 3)


def faceless_frames(num_frames: int = 12, size: int = 160, seed: int = 0) -> np.ndarray:
    """Smooth moving colour blobs without any face."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (size * 2, size * 2), cv2.INTER_CUBIC)
    return np.stack([base[t * 4 : t * 4 + size, t * 4 : t * 4 + size] for t in range(num_frames)])
