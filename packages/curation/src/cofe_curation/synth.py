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

    Kinds: ``"turning"`` (one face turning; the t1.jpg face, kept by the defaults through its large |yaw|),
    ``"turning_frontal"`` (the astronaut turning a little), ``"two_faces"`` (astronaut and Hopper side by side),
    ``"swap"`` (the turning face replaced halfway by another t1.jpg person, also turned), ``"no_face"``
    (moving shapes), ``"tiny"`` (the turning face, ~30 px wide), ``"still"`` (the turned face moving sideways, its
    mouth still), ``"profile_and_back"`` (the turned face turning on to profile, where the detector loses it for
    about a fifth of the clip, and back), ``"static_profile"`` (the turned face held at profile, drifting
    sideways), ``"switch"`` (the turned face turning away until it is lost, then another person, Grace Hopper,
    in its place).
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
        elif kind in ("profile_and_back", "static_profile"):
            # 0 -> -0.4 -> 0 reads -30 -> about -70 -> -30 degrees; YuNet loses the face beyond about -0.35.
            bump = 0.5 - 0.5 * np.cos(2 * np.pi * i / max(n - 1, 1))
            amount = -0.3 if kind == "static_profile" else -0.4 * bump
            _place(canvas, turn(face_card("turned"), amount), w / 2 + 4 * phase, h / 2, side)
        elif kind == "switch":
            half = n // 2
            if i < half:  # turns away: 0 -> -0.5, lost for the last third of the half
                _place(canvas, turn(face_card("turned"), -0.5 * i / max(half - 1, 1)), w / 2, h / 2, side)
            else:  # another person where the first one was, turning a little
                _place(canvas, turn(face_card("hopper"), 0.08 * phase), w / 2, h / 2, side)
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


# Formants (F1, F2, F3 in Hz) of seven English vowels of adult male speakers (Peterson & Barney 1952).
_VOWELS = (
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (570, 840, 2410),
    (440, 1020, 2240),
    (660, 1720, 2410),
)


def speech_like(
    seconds: float, pauses: bool = True, rate: int = 16000, seed: int = 0
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Speech-like audio that silero-vad hears as speech, and the syllables it is made of.

    Source-filter synthesis by additive harmonics: each syllable is a voiced vowel (a glottal harmonic series of
    a 100-140 Hz pitch with a slight rise and fall, shaped by the three formants of one of seven vowels) with a
    sine-shaped loudness envelope of 150-280 ms, followed by a short noise burst (a consonant). Words are 2-4
    syllables; with ``pauses`` they are separated by 0.4-0.7 s of silence, else by 20-60 ms (continuous speech).

    Returns:
        ``(audio (N,) float32 in [-0.5, 0.5], syllables [(t0, t1), ...] in seconds)``.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n, np.float64)
    syllables = []
    pos = 0.1
    while pos < seconds - 0.3:
        for _ in range(int(rng.integers(2, 5))):
            dur = float(rng.uniform(0.15, 0.28))
            a, b = int(pos * rate), min(n, int((pos + dur) * rate))
            if b - a < rate // 50:
                break
            t = np.arange(b - a) / rate
            f0 = rng.uniform(100, 140) * (1 + 0.1 * np.sin(np.pi * t / dur))  # (L,) pitch contour
            phase = 2 * np.pi * np.cumsum(f0) / rate
            formants = _VOWELS[int(rng.integers(len(_VOWELS)))]
            voiced = np.zeros(b - a)
            for k in range(1, int(4000 / f0.max())):
                f = k * f0.mean()
                # Resonance gain of harmonic k: each formant a 2nd-order peak (bandwidths 80/100/120 Hz), over a
                # -12 dB/octave glottal source.
                gain = sum(1.0 / (1.0 + ((f - fm) / bw) ** 2) for fm, bw in zip(formants, (80, 100, 120), strict=True))
                voiced += gain / k**2 * np.sin(k * phase)
            out[a:b] += voiced * np.sin(np.pi * t / dur) ** 0.7
            c = min(n, b + int(0.04 * rate))
            out[b:c] += rng.normal(0, 0.3, c - b) * np.hanning(c - b) * np.abs(voiced).max()
            syllables.append((a / rate, b / rate))
            pos += dur + 0.04
        pos += float(rng.uniform(0.4, 0.7) if pauses else rng.uniform(0.02, 0.06))
    out *= 0.5 / max(np.abs(out).max(), 1e-9)
    return out.astype(np.float32), syllables


def mouth_opening(times: np.ndarray, syllables: list[tuple[float, float]]) -> np.ndarray:
    """How far the mouth is open (0-1) at ``times`` while saying ``syllables``: a sine arc over each syllable."""
    times = np.asarray(times, np.float64)
    opening = np.zeros_like(times)
    for t0, t1 in syllables:
        inside = (times >= t0) & (times <= t1)
        opening[inside] = np.maximum(opening[inside], np.sin(np.pi * (times[inside] - t0) / (t1 - t0)))
    return opening


@functools.cache
def card_keypoints(name: str) -> np.ndarray:
    """The 5 keypoints ``(5, 2)`` of :func:`face_card` ``name`` (eyes, nose, mouth corners; card pixels)."""
    faces = _analyzer().analyze(face_card(name), embed=False)
    if not faces:
        raise ValueError(f"no face found on the face card {name!r}")
    return np.asarray(max(faces, key=lambda f: f.area).kps5, np.float32)


def open_mouth(card: np.ndarray, kps5: np.ndarray, amount: float) -> np.ndarray:
    """Open the mouth of a face card: the lower lip and chin drop by up to ``amount`` x 0.22 inter-ocular
    distances (a wide-open jaw), the gap between the lips darkens (the mouth cavity), the upper face stays.

    Args:
        card: ``(H, W, 3)`` uint8 face card.
        kps5: Its 5 keypoints (:func:`card_keypoints`).
        amount: 0 (closed, the card unchanged) to 1.
    """
    if amount <= 0:
        return card
    h, w = card.shape[:2]
    kps5 = np.asarray(kps5, np.float32)
    centre = (kps5[3] + kps5[4]) / 2
    width = float(np.linalg.norm(kps5[4] - kps5[3]))
    iod = float(np.linalg.norm(kps5[1] - kps5[0]))
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    drop = amount * 0.22 * iod
    u = (xs - centre[0]) / (0.75 * width)  # across the mouth
    v = (ys - centre[1]) / (0.9 * iod)  # down from the mouth line to below the chin
    side = np.exp(-1.5 * u**2)
    # Full drop from just below the lips to the chin, fading out above the mouth line and below the chin.
    profile = np.where(v < 0, np.exp(-((v / 0.08) ** 2)), np.exp(-(np.maximum(v - 0.6, 0) ** 2) / 0.5))
    d = (drop * side * profile).astype(np.float32)
    out = cv2.remap(card, xs, ys - d, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    gap = np.exp(-2 * (u / 0.8) ** 2) * np.clip(1 - np.abs((ys - centre[1] - 0.45 * drop) / (0.5 * drop)), 0, 1)
    return (out * (1 - 0.75 * gap[..., None])).astype(np.uint8)


def talking_clip(
    name: str,
    opening: np.ndarray | None = None,
    fps: float = 8.0,
    sweep: tuple[float, float] = (0.0, 0.0),
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
) -> np.ndarray:
    """Frames ``(T, H, W, 3)`` uint8 of a real face (a :data:`IDENTITIES` name) whose mouth opens by ``opening``
    ``(T,)`` (0-1 per frame, e.g. :func:`mouth_opening` of a :func:`speech_like` voice, or a chewing rhythm),
    turning through ``sweep`` and back (amounts of :func:`turn`; ``(0, 0)``: frontal, still), with camera noise.
    ``opening=None`` keeps the mouth still for 3 s."""
    opening = np.zeros(round(3 * fps)) if opening is None else np.asarray(opening, np.float64)
    rng = np.random.default_rng(seed)
    n = len(opening)
    w, h = size
    card, kps5 = face_card(name), card_keypoints(name)
    frames = []
    for i in range(n):
        phase = 0.5 - 0.5 * np.cos(2 * np.pi * i / max(n - 1, 1))
        amount = sweep[0] + (sweep[1] - sweep[0]) * phase
        canvas = _canvas(size)
        _place(
            canvas,
            turn(open_mouth(card, kps5, float(opening[i])), amount),
            w / 2 + 4 * (phase - 0.5),
            h / 2,
            int(h * 0.95),
        )
        frames.append(np.clip(canvas + rng.normal(0, 2.0, canvas.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


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
    # 1.5 s at 6 fps keeps the 4K encode short (a clip must last at least min_clip_s = 1.5 s by default); the nine
    # frames span the whole turn, so the head moves as much as in the others.
    pick = np.linspace(0, len(base) - 1, 9).round().astype(int)
    large = np.stack([cv2.resize(f, (3840, 2160), interpolation=cv2.INTER_LINEAR) for f in base[pick]])
    paths["large"] = write_clip(folder / "large.mp4", large, 6.0)
    paths["non_ascii"] = write_clip(folder / "visage_é_顔.mp4", base, fps, tone(seconds))
    paths["bad_caption"] = write_clip(folder / "bad_caption.mp4", base, fps, tone(seconds))
    (folder / "bad_caption.json").write_text('{"caption": "a person turning their head",', encoding="utf-8")
    return paths


def write_vfr_gap(
    path: str | Path, frames: np.ndarray, fps: float = 16.0, gap_s: float = 100.0, split: int | None = None
) -> Path:
    """Write frames as H.264 at ``fps`` with a pause of ``gap_s`` seconds after frame ``split`` (default: half),
    as a phone that stopped recording frames writes it (the container follows the suffix: ``.mp4``, ``.mkv``). In
    mp4, 80 frames around a 100 s pause have an average rate of 0.76 fps, which says nothing about either side of
    the pause."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    split = len(frames) // 2 if split is None else split
    tick = Fraction(1, round(fps) * 100)  # 100 ticks per frame: exact frame times, and the pause to 10 ms
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = tick
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i * 100 + (round(gap_s / tick) if i >= split else 0)
            frame.time_base = tick
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_sparse_tar(path: str | Path, member: str = "huge.mp4", declared: int = 3 * 2**30) -> Path:
    """A WebDataset-looking shard of a few KB whose one member declares ``declared`` bytes: a GNU sparse member
    (a file of holes, as ``tar --sparse`` stores it). Reading it whole would materialise ``declared`` bytes."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tar = shutil.which("tar")
    if tar is None:
        raise RuntimeError("write_sparse_tar needs GNU tar on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        hole = Path(tmp) / member
        with open(hole, "wb") as fh:
            fh.truncate(declared)  # a sparse file: no blocks on disk
        subprocess.run([tar, "--sparse", "-cf", str(path.resolve()), member], cwd=tmp, check=True, timeout=120)
    return path


def write_lying_tar(path: str | Path, member: str = "liar.mp4", declared: int = 200 * 10**9) -> Path:
    """A shard whose member header declares ``declared`` bytes but whose data ends after 4 KB (a truncated
    download, or a header written to exhaust a reader's memory)."""
    import tarfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        info = tarfile.TarInfo(member)
        info.size = declared
        fh.write(info.tobuf(format=tarfile.GNU_FORMAT))
        fh.write(b"\0" * 4096)
    return path


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
