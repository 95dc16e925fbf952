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
import io
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from cofe_curation.media import encode_mp4
from cofe_encoders.face import build_face_analyzer, reference_crop


@functools.cache
def _analyzer():
    return build_face_analyzer("offline")


def photo(name: str) -> np.ndarray:
    """A real photo as uint8 RGB: ``"astronaut"``, ``"hopper"``, ``"t1"`` (six people) or ``"hanks"`` (a 112 px
    aligned face from insightface's wheel)."""
    if name == "astronaut":
        import skimage.data

        return skimage.data.astronaut()
    if name == "hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
            return np.array(Image.open(fh).convert("RGB"))
    if name in ("t1", "hanks"):
        import insightface

        file = "t1.jpg" if name == "t1" else "Tom_Hanks_54745.png"
        path = Path(os.path.dirname(insightface.__file__)) / "data" / "images" / file
        return np.array(Image.open(path).convert("RGB"))
    raise ValueError(f"unknown photo {name!r}; choose 'astronaut', 'hopper', 't1' or 'hanks'")


# Every real identity a face card can show: three single portraits and the six people of t1.jpg (left to right).
IDENTITIES = ("astronaut", "hopper", "hanks", *(f"t1-{i}" for i in range(6)))


@functools.cache
def face_card(name: str, size: int = 256) -> np.ndarray:
    """A real face as a ``(size, size, 3)`` reference crop on white: one of :data:`IDENTITIES` (``"t1-0"`` ...
    ``"t1-5"``: the people of t1.jpg from left to right), or ``"turned"`` / ``"turned2"`` (the two most turned
    faces of t1.jpg, two people)."""
    img = photo("t1" if name.startswith(("turned", "t1-")) else name)
    faces = _analyzer().analyze(img, embed=False)
    if name.startswith("turned"):
        # The most turned face of the group (~-44 deg), or for "turned2" the second most turned (~-27 deg).
        faces = sorted(faces, key=lambda f: f.yaw)[1 if name == "turned2" else 0 :]
    elif name.startswith("t1-"):
        index = int(name[3:])
        faces = sorted(faces, key=lambda f: f.bbox[0])[index : index + 1]
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
    (moving shapes), ``"tiny"`` (the turning face, ~30 px wide), ``"still"`` (the turned face moving sideways, its
    mouth still).
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * fps)
    w, h = size
    frames = []
    for i in range(n):
        phase = np.sin(2 * np.pi * i / max(n - 1, 1))  # one full turn left and right over the clip
        canvas = _canvas(size)
        side = int(h * 0.95)
        if kind == "still":
            _place(canvas, face_card("turned"), w / 2 + 4 * phase, h / 2, side)
        elif kind in ("turning", "turning_frontal", "swap", "tiny"):
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


def turning_clip(
    name: str,
    sweep: tuple[float, float] = (-0.1, 0.1),
    seconds: float = 3.0,
    fps: float = 16.0,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
) -> np.ndarray:
    """Frames ``(T, H, W, 3)`` uint8 of one real face (a :data:`IDENTITIES` name) turning from ``sweep[0]`` to
    ``sweep[1]`` and back (amounts of :func:`turn`; +-0.06 reads as about +-10 degrees of yaw on a frontal face),
    drifting a little sideways, with camera noise."""
    rng = np.random.default_rng(seed)
    n = round(seconds * fps)
    w, h = size
    card = face_card(name)
    frames = []
    for i in range(n):
        phase = 0.5 - 0.5 * np.cos(2 * np.pi * i / max(n - 1, 1))  # 0 -> 1 -> 0: out to sweep[1] and back
        amount = sweep[0] + (sweep[1] - sweep[0]) * phase
        canvas = _canvas(size)
        _place(canvas, turn(card, amount), w / 2 + 4 * (phase - 0.5), h / 2, int(h * 0.95))
        frames.append(np.clip(canvas + rng.normal(0, 2.0, canvas.shape), 0, 255).astype(np.uint8))
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


def _write_custom(path: Path, frames: np.ndarray, fps: float, rotation: int = 0, vfr: bool = False) -> Path:
    """Write frames as H.264 with a display rotation, or with irregular timestamps (VFR, in Matroska)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        if vfr:
            stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if vfr:
                frame.pts, frame.time_base = t, Fraction(1, 1000)
                # Alternating 40 ms and 100 ms steps (25 and 10 fps), as a phone does when light changes.
                t += 40 if i % 2 else 100
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_bad_inputs(folder: str | Path, base: np.ndarray | None = None, fps: float = 16.0) -> dict[str, Path]:
    """Write the awkward inputs a curation run must survive, each next to a good one.

    Returns:
        name -> path for ``corrupt``, ``truncated``, ``empty``, ``audio_only`` (no video stream), ``no_audio``,
        ``vfr``, ``rotated`` (phone video with a 90-degree display matrix), ``large`` (3840x2160),
        ``non_ascii`` (a non-ASCII file name) and ``bad_caption`` (its ``.json`` sidecar does not parse).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = compose("turning") if base is None else base
    seconds = len(base) / fps
    good = encode_mp4(base, fps, tone(seconds), crf=23)
    paths = {}
    paths["corrupt"] = folder / "corrupt.mp4"
    paths["corrupt"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    paths["truncated"] = folder / "truncated.mp4"
    paths["truncated"].write_bytes(good[: len(good) // 3])
    paths["empty"] = folder / "empty.mp4"
    paths["empty"].write_bytes(b"")
    paths["audio_only"] = folder / "audio_only.mp4"
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone(1.0)[None, :], format="flt", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    paths["audio_only"].write_bytes(buf.getvalue())
    paths["no_audio"] = write_clip(folder / "no_audio.mp4", base, fps)
    paths["vfr"] = _write_custom(folder / "vfr.mkv", base, fps, vfr=True)
    paths["rotated"] = _write_custom(folder / "rotated.mp4", np.ascontiguousarray(np.rot90(base, -1, (1, 2))), fps, 90)
    # 1.5 s at 6 fps keeps the 4K encode short (a clip must last at least min_clip_s = 1.5 s by default).
    large = np.stack([cv2.resize(f, (3840, 2160), interpolation=cv2.INTER_LINEAR) for f in base[:: round(fps / 6)][:9]])
    paths["large"] = write_clip(folder / "large.mp4", large, 6.0)
    paths["non_ascii"] = write_clip(folder / "visage_é_顔.mp4", base, fps, tone(seconds))
    paths["bad_caption"] = write_clip(folder / "bad_caption.mp4", base, fps, tone(seconds))
    (folder / "bad_caption.json").write_text('{"caption": "a person turning their head",', encoding="utf-8")
    return paths


# The real speaking webcam clip (CC-BY-SA-4.0) inside Debian's forensics-samples-files package.
REAL_CLIP_MEMBER = "usr/share/forensics-samples/original-files/movie2/movie-hello.mp4"


def real_clip(cache_dir: str | Path | None = None, download: bool = True) -> Path | None:
    """Path of ``movie-hello.mp4`` (a real person speaking to a webcam), or ``None`` when it cannot be had.

    Looks at ``$COFE_MOVIE_HELLO``, the installed Debian package, and ``cache_dir`` (default
    ``~/.cache/cofe/forensics-samples``); with ``download``, fetches the package with ``apt-get download`` and
    unpacks it with ``dpkg -x`` into the cache (no root needed).
    """
    cache = Path(cache_dir or Path.home() / ".cache" / "cofe" / "forensics-samples")
    for cand in (os.environ.get("COFE_MOVIE_HELLO"), "/" + REAL_CLIP_MEMBER, cache / REAL_CLIP_MEMBER):
        if cand and Path(cand).is_file():
            return Path(cand)
    if not download or shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return None
    cache.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["apt-get", "download", "forensics-samples-files"], cwd=cache, check=True, capture_output=True, timeout=300
        )
        debs = sorted(cache.glob("forensics-samples-files_*.deb"))
        subprocess.run(["dpkg", "-x", str(debs[-1]), str(cache)], check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError, IndexError):
        return None
    path = cache / REAL_CLIP_MEMBER
    return path if path.is_file() else None
