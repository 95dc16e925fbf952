"""Test and benchmark clips composed from real face photos that ship inside installed wheels.

Photos: scikit-image's ``astronaut`` (Eileen Collins), matplotlib's ``grace_hopper.jpg`` and insightface's
``t1.jpg`` group photo (one face there is turned ~44 degrees). scikit-image and insightface are test-only
dependencies of the workspace; the functions that need them import them when called.

Every face is first cut out as a reference crop (aligned by its 5 keypoints, white background), so different
identities occupy the same place on the same white backdrop: swapping one for another changes only the face, which
is an identity change but not a shot cut. A head turn is imitated with a smooth horizontal displacement field
centred on the nose (the nose moves further than the eyes and mouth corners, as when a head turns), which
the 5-point pose estimate reads as yaw.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cofe_curation.media import encode_mp4
from cofe_encoders.face import build_face_analyzer, reference_crop


@functools.cache
def _analyzer():
    return build_face_analyzer("offline")


def photo(name: str) -> np.ndarray:
    """A real photo as uint8 RGB: ``"astronaut"``, ``"hopper"`` or ``"t1"`` (six people)."""
    if name == "astronaut":
        import skimage.data

        return skimage.data.astronaut()
    if name == "hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
            return np.array(Image.open(fh).convert("RGB"))
    if name == "t1":
        import insightface

        path = Path(os.path.dirname(insightface.__file__)) / "data" / "images" / "t1.jpg"
        return np.array(Image.open(path).convert("RGB"))
    raise ValueError(f"unknown photo {name!r}; choose 'astronaut', 'hopper' or 't1'")


@functools.cache
def face_card(name: str, size: int = 256) -> np.ndarray:
    """A real face as a ``(size, size, 3)`` reference crop on white: ``"astronaut"``, ``"hopper"``, or
    ``"turned"`` / ``"turned2"`` (the two most turned faces of t1.jpg, two people)."""
    img = photo("t1" if name.startswith("turned") else name)
    faces = _analyzer().analyze(img, embed=False)
    if name.startswith("turned"):
        # The most turned face of the group (~-44 deg), or for "turned2" the second most turned (~-27 deg).
        faces = sorted(faces, key=lambda f: f.yaw)[1 if name == "turned2" else 0 :]
    if not faces:
        raise ValueError(f"no face found in photo {name!r}")
    return reference_crop(img, faces[0], size=size, expand=1.8)


def turn(card: np.ndarray, amount: float) -> np.ndarray:
    """Imitate a head turn of a face card: displace the face centre by ``amount`` x the card size."""
    h, w = card.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    cx, cy = w / 2.0, h * 0.55
    # Gaussian displacement field: width ~ the eye distance of a 1.8x-expanded crop (0.17 w), height the face.
    d = amount * w * np.exp(-(((xs - cx) / (0.12 * w)) ** 2) - ((ys - cy) / (0.3 * h)) ** 2)
    return cv2.remap(card, xs - d.astype(np.float32), ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _canvas(size: tuple[int, int]) -> np.ndarray:
    return np.full((size[1], size[0], 3), 245, np.uint8)


def _place(canvas: np.ndarray, card: np.ndarray, cx: float, cy: float, side: int) -> None:
    card = cv2.resize(card, (side, side), interpolation=cv2.INTER_AREA)
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    h, w = canvas.shape[:2]
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    canvas[ya:yb, xa:xb] = card[ya - y0 : yb - y0, xa - x0 : xb - x0]


def compose(
    kind: str, seconds: float = 3.0, fps: float = 16.0, size: tuple[int, int] = (320, 256), seed: int = 0
) -> np.ndarray:
    """Frames ``(T, H, W, 3)`` uint8 of a composed clip.

    Kinds: ``"turning"`` (one face turning; the t1.jpg face, kept by the defaults through its max |yaw|),
    ``"turning_frontal"`` (the astronaut turning a little), ``"two_faces"`` (astronaut and Hopper side by side),
    ``"swap"`` (the turning face replaced halfway by another t1.jpg person, also turned), ``"no_face"``
    (moving shapes), ``"tiny"`` (the turning face, ~30 px wide).
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * fps)
    w, h = size
    frames = []
    for i in range(n):
        phase = np.sin(2 * np.pi * i / max(n - 1, 1))  # one full turn left and right over the clip
        canvas = _canvas(size)
        side = int(h * 0.95)
        if kind in ("turning", "turning_frontal", "swap", "tiny"):
            name = "astronaut" if kind == "turning_frontal" else "turned"
            if kind == "swap" and i >= n // 2:
                name = "turned2"
            # The turned face sweeps from its own ~-23 deg to ~-51 deg; the astronaut swings about +-10 deg.
            amount = 0.06 * phase if kind == "turning_frontal" else -0.05 * (1 + phase)
            card = turn(face_card(name), amount)
            if kind == "tiny":
                _place(canvas, card, w / 2 + 3 * phase, h / 2, 80)  # a ~30 px face
            else:
                _place(canvas, card, w / 2 + 4 * phase, h / 2, side)
        elif kind == "two_faces":
            _place(canvas, turn(face_card("astronaut"), 0.04 * phase), w * 0.27, h / 2, int(w * 0.5))
            _place(canvas, turn(face_card("hopper"), -0.04 * phase), w * 0.73, h / 2, int(w * 0.5))
        elif kind == "no_face":
            canvas[:] = np.linspace(120, 220, w, dtype=np.uint8)[None, :, None]
            cv2.circle(canvas, (int(w / 2 + 60 * phase), h // 2), 40, (200, 60, 40), -1)
            cv2.rectangle(canvas, (20, 20 + i), (80, 60 + i), (40, 90, 200), -1)
        else:
            raise ValueError(f"unknown composed clip kind {kind!r}")
        if kind != "no_face":
            noise = rng.normal(0, 2.0, canvas.shape)  # camera noise, so frames are not bit-identical
            canvas = np.clip(canvas + noise, 0, 255).astype(np.uint8)
        frames.append(canvas)
    return np.stack(frames)


def tone(seconds: float, rate: int = 16000, freq: float = 220.0) -> np.ndarray:
    """A quiet sine tone (an audio track without speech)."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.1 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_clip(
    path: str | Path, frames: np.ndarray, fps: float = 16.0, audio: np.ndarray | None = None, rate: int = 16000
) -> Path:
    """Write composed frames (and optional mono float audio) as an H.264 (+ AAC) mp4 file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(frames, fps, audio, rate, crf=23))
    return path
