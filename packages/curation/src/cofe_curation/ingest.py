"""Stage 1, ingest: find inputs (folders, list files, WebDataset shards), read sidecar captions, decode.

Decoding samples frames by their timestamps, not their index, so variable-frame-rate video is sampled evenly in
time; applies the display-matrix rotation of phone videos; downscales large frames inside FFmpeg's scaler
(``VideoFrame.reformat``) so a huge input never materialises at full size; and resamples the audio track to
16 kHz mono float32 for the voice-activity model. Every failure raises :class:`IngestError` with a reason that
names the input, which the pipeline records in ``report.json`` instead of stopping.
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from cofe_curation import runtime
from cofe_curation.config import VIDEO_EXTENSIONS, IngestConfig

LIST_EXTENSIONS = (".txt", ".lst", ".list")
SHARD_EXTENSIONS = (".tar",)
SHARD_SEP = "::"  # source id of a video inside a WebDataset shard: "shard.tar::member"


class IngestError(Exception):
    """An input that cannot be used; the message is the reason recorded in the report."""


@dataclass(frozen=True)
class InputItem:
    """One input video.

    Attributes:
        source: A file path, or ``"shard.tar::member"`` for a video inside a WebDataset shard.
        caption_source: Path of the sidecar caption file (or ``"shard.tar::member"``), if any.
    """

    source: str
    caption_source: str | None = None


@dataclass
class DecodedVideo:
    """One decoded input, or one window of it (:attr:`IngestConfig.window_s`).

    Attributes:
        source: Source id (see :class:`InputItem`).
        frames: ``(T, h, w, 3)`` uint8 RGB frames sampled at ``sample_fps``, upright, downscaled by ``scale``.
        times: ``(T,)`` float64 presentation time of each sampled frame, seconds from the input's first frame.
        scale: Analysis pixels per source pixel (``<= 1``).
        width: Source width after rotation, pixels.
        height: Source height after rotation, pixels.
        fps: Source average frame rate.
        duration: End of the analysed part, seconds from the first frame (the analysed duration of a whole
            input; ``duration - start`` for a window).
        rotation: Display rotation applied, degrees counter-clockwise (0, 90, 180, 270).
        audio: ``(N,)`` float32 mono audio at ``audio_rate`` from ``start`` on, or ``None`` when the input has no
            audio.
        audio_rate: Sample rate of ``audio``.
        caption: The sidecar caption ("" when there is none or it does not parse).
        notes: Things worth recording about this input that did not stop it (bad caption file, VFR, ...).
        start: Start of this window, seconds from the first frame (0 for the first window).
        origin: Presentation time of the input's first frame in the container, seconds (to seek to a window).
        complete: No window follows: the input ended in this one, or ``max_duration_s`` was reached.
    """

    source: str
    frames: np.ndarray
    times: np.ndarray
    scale: float
    width: int
    height: int
    fps: float
    duration: float
    rotation: int = 0
    audio: np.ndarray | None = None
    audio_rate: int = 16000
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    start: float = 0.0
    origin: float = 0.0
    complete: bool = True


def _is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def _sidecar(path: Path) -> str | None:
    for ext in (".txt", ".json"):
        cand = path.with_suffix(ext)
        if cand.is_file():
            return str(cand)
    return None


def _shard_items(shard: Path) -> list[InputItem]:
    try:
        with tarfile.open(shard) as tar:
            names = [m.name for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError) as exc:
        raise IngestError(f"cannot read WebDataset shard {shard}: {exc}") from exc
    items = []
    # WebDataset groups members by key = name up to the first dot of the base name.
    by_key: dict[str, list[str]] = {}
    for name in names:
        base = name.rsplit("/", 1)[-1]
        prefix = name[: len(name) - len(base)]
        by_key.setdefault(prefix + base.split(".", 1)[0], []).append(name)
    for key in sorted(by_key):
        members = by_key[key]
        videos = [m for m in members if _is_video(m)]
        captions = [m for m in members if m.endswith((".txt", ".json"))]
        for video in videos:
            cap = f"{shard}{SHARD_SEP}{captions[0]}" if captions else None
            items.append(InputItem(f"{shard}{SHARD_SEP}{video}", cap))
    return items


def discover_inputs(inputs: list[str | Path]) -> list[InputItem]:
    """Expand folders (recursively), list files (one path per line, relative to the list) and shards.

    Args:
        inputs: Paths of videos, folders, list files (``.txt``/``.lst``/``.list``) or ``.tar`` shards.

    Returns:
        Items in a deterministic order (sorted within each folder), duplicates removed, sources as absolute paths.
        A path that does not exist is kept as an item, so that the pipeline reports it.
    """
    items: list[InputItem] = []
    seen: set[str] = set()

    def add(item: InputItem) -> None:
        if item.source not in seen:
            seen.add(item.source)
            items.append(item)

    for raw in inputs:
        # Absolute and normalised, not resolved (a symlink keeps its name): the same file named from another
        # working directory, or relatively then absolutely, is one source. Resuming and clip keys depend on it.
        path = Path(os.path.abspath(raw))
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if _is_video(child.name):
                    add(InputItem(str(child), _sidecar(child)))
                elif child.suffix.lower() in SHARD_EXTENSIONS:
                    for item in _shard_items(child):
                        add(item)
        elif path.suffix.lower() in LIST_EXTENSIONS and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    entry = Path(line) if Path(line).is_absolute() else path.parent / line
                    for item in discover_inputs([entry]):
                        add(item)
        elif path.suffix.lower() in SHARD_EXTENSIONS and path.is_file():
            for item in _shard_items(path):
                add(item)
        else:
            add(InputItem(str(path), _sidecar(path) if path.is_file() else None))
    return items


def read_bytes(source: str) -> bytes | None:
    """The bytes of a shard member source (``"shard.tar::member"``), or ``None`` for a plain file path."""
    if SHARD_SEP not in source:
        return None
    shard, member = source.split(SHARD_SEP, 1)
    try:
        with tarfile.open(shard) as tar:
            handle = tar.extractfile(member)
            if handle is None:
                raise IngestError(f"{source}: not a regular file in the shard")
            return handle.read()
    except (tarfile.TarError, OSError, KeyError) as exc:
        raise IngestError(f"cannot read {member} from shard {shard}: {exc}") from exc


def read_caption(caption_source: str | None) -> tuple[str, str | None]:
    """Read a sidecar caption: a ``.txt`` file, or a ``.json`` with a string or a ``{"caption": ...}`` object.

    Returns:
        ``(caption, problem)``: ``problem`` names the file and the parse error, and the caption is then "".
    """
    if caption_source is None:
        return "", None
    try:
        data = read_bytes(caption_source)
        raw = data if data is not None else Path(caption_source).read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, IngestError) as exc:
        return "", f"caption file {caption_source} could not be read: {exc}"
    if not caption_source.endswith(".json"):
        return text.strip(), None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return "", f"caption file {caption_source} does not parse as JSON: {exc}"
    if isinstance(obj, str):
        return obj.strip(), None
    if isinstance(obj, dict) and isinstance(obj.get("caption"), str):
        return obj["caption"].strip(), None
    return "", f"caption file {caption_source}: expected a string or an object with a 'caption' string"


def open_container(source: str) -> av.container.InputContainer:
    """Open a source (file path or shard member) with PyAV, raising :class:`IngestError` with the reason."""
    data = read_bytes(source)
    if data is None:
        path = Path(source)
        if not path.exists():
            raise IngestError(f"{source}: file not found")
        if path.stat().st_size == 0:
            raise IngestError(f"{source}: zero-length file")
    elif not data:
        raise IngestError(f"{source}: zero-length shard member")
    try:
        return av.open(io.BytesIO(data) if data is not None else source, mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise IngestError(f"{source}: not a readable media file ({type(exc).__name__}: {exc})") from exc


def _target_size(width: int, height: int, max_side: int) -> tuple[int, int, float]:
    scale = min(1.0, max_side / max(width, height))
    # Even sizes: H.264 yuv420p needs them, and analysis does not care.
    w = max(2, round(width * scale / 2) * 2)
    h = max(2, round(height * scale / 2) * 2)
    return w, h, scale


def _upright(img: np.ndarray, rotation: int) -> np.ndarray:
    # Display matrix rotation is counter-clockwise (FFmpeg av_display_rotation_get; PyAV VideoFrame.rotation);
    # showing the frame upright means rotating it by that angle, as FFmpeg's autorotate does.
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(img, k=k)) if k else img


def decode_audio(
    container: av.container.InputContainer, rate: int, start: float, end: float | None, origin: float = 0.0
) -> np.ndarray | None:
    """Decode ``[start, end)`` seconds (from the first video frame) of the first audio stream to mono float32
    at ``rate`` Hz, or ``None`` if there is none. ``end=None`` reads to the end."""
    if not container.streams.audio:
        return None
    astream = container.streams.audio[0]
    try:
        if start > 0:  # land before `start`; the exact sample is found from the decoded frames' times
            container.seek(max(0, int((origin + start - 0.5) / astream.time_base)), stream=astream, backward=True)
        else:
            container.seek(0)
    except av.FFmpegError:
        container.seek(0)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks = []
    total = 0
    first = None  # time of the first decoded sample, seconds from the first video frame
    try:
        for frame in container.decode(astream):
            if first is None:
                first = float(frame.time) - origin if frame.time is not None else start
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
                total += chunks[-1].size
            if end is not None and first + total / rate >= end:
                break
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError:
        pass  # a truncated audio track: keep what decoded
    if not chunks:
        return np.zeros(0, np.float32)
    audio = np.concatenate(chunks)
    offset = round((start - (first or 0.0)) * rate)
    if offset < 0:  # the audio starts after `start`: silence until it does
        audio, offset = np.concatenate([np.zeros(-offset, np.float32), audio]), 0
    stop = None if end is None else offset + round((end - start) * rate)
    return audio[offset:stop].astype(np.float32)


def decode(item: InputItem, cfg: IngestConfig, start: float = 0.0, origin: float | None = None) -> DecodedVideo:
    """Decode one window of an input: ``cfg.window_s`` seconds from ``start``, frames sampled at ``cfg.sample_fps``,
    upright and downscaled, plus its audio. :func:`decode_windows` gives all windows of an input.

    Args:
        item: The input.
        cfg: Ingest settings.
        start: Window start, seconds from the input's first frame.
        origin: ``DecodedVideo.origin`` of the input's first window (needed when ``start > 0``: the decoder
            seeks to the window).

    Raises:
        IngestError: the input is missing, empty, not media, has no video stream, is too large or has no
            decodable frame. The message names the input.
        EOFError: ``start > 0`` is at or after the end of the input.
    """
    caption, caption_problem = read_caption(item.caption_source)
    notes = [caption_problem] if caption_problem else []
    with open_container(item.source) as container:
        if not container.streams.video:
            raise IngestError(f"{item.source}: no video stream")
        stream = container.streams.video[0]
        cc = stream.codec_context
        if cc.width * cc.height > cfg.max_pixels:
            raise IngestError(f"{item.source}: resolution {cc.width}x{cc.height} exceeds max_pixels={cfg.max_pixels}")
        if cc.width <= 0 or cc.height <= 0:
            raise IngestError(f"{item.source}: video stream has no frame size")
        fps = float(stream.average_rate or stream.guessed_rate or 0.0) or 25.0
        stream.thread_type = "AUTO"
        if runtime.threads() is not None:
            stream.codec_context.thread_count = runtime.threads()
        step = 1.0 / cfg.sample_fps
        cap = math.inf if cfg.max_duration_s is None else cfg.max_duration_s
        end = min(start + cfg.window_s, cap)
        if start > 0 and origin is not None:
            try:  # to the keyframe before the window
                container.seek(int((origin + start) / stream.time_base), stream=stream, backward=True)
            except av.FFmpegError as exc:
                raise IngestError(f"{item.source}: cannot seek to {start:.2f} s ({type(exc).__name__}: {exc})") from exc
        frames, times = [], []
        next_t = start - 1e-6
        rotation = 0
        t0 = origin
        last_t = start
        pts_gaps = []
        complete = True
        try:
            for idx, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else idx / fps
                if t0 is None:
                    t0 = t
                rotation = round(getattr(frame, "rotation", 0) or 0) % 360
                t -= t0
                if t < start - 1e-6:
                    continue  # between the keyframe and the window
                pts_gaps.append(t - last_t)
                last_t = t
                if t >= end - 1e-6:
                    if end >= cap:
                        total = f" of {container.duration / av.time_base:.1f} s" if container.duration else ""
                        notes.append(f"only the first {cap:g} s{total} were analysed (ingest.max_duration_s)")
                    else:
                        complete = False  # another window follows
                    break
                if t + 1e-6 < next_t:
                    continue
                next_t = (math.floor(t / step + 1e-6) + 1) * step
                w, h, _ = _target_size(frame.width, frame.height, cfg.analysis_max_side)
                img = frame.to_ndarray(format="rgb24", width=w, height=h)
                frames.append(_upright(img, rotation))
                times.append(t)
        except av.FFmpegError as exc:
            if not frames:
                raise IngestError(f"{item.source}: video does not decode ({type(exc).__name__}: {exc})") from exc
            notes.append(f"decoding stopped at {last_t:.2f} s: {type(exc).__name__}: {exc}")
            complete = True
        if not frames:
            if start > 0:  # the previous window ended exactly at the end of the input
                raise EOFError(f"{item.source}: no frames after {start:.2f} s")
            raise IngestError(f"{item.source}: no decodable video frames")
        gaps = np.asarray(pts_gaps[1:])
        if gaps.size > 2 and float(gaps.std()) > 0.1 * float(np.median(gaps)):
            notes.append("variable frame rate: sampled by timestamps")
        duration = end if not complete else min(max(last_t + 1.0 / fps, times[-1] + step), end)
        audio = decode_audio(container, cfg.audio_rate, start, duration, t0 or 0.0)
    if audio is None:
        notes.append("no audio track")
    src_w, src_h = cc.width, cc.height
    if rotation in (90, 270):
        src_w, src_h = src_h, src_w
    scale = frames[0].shape[1] / src_w
    return DecodedVideo(
        source=item.source,
        frames=np.stack(frames),
        times=np.asarray(times, np.float64),
        scale=float(scale),
        width=int(src_w),
        height=int(src_h),
        fps=fps,
        duration=float(duration),
        rotation=rotation,
        audio=audio,
        audio_rate=cfg.audio_rate,
        caption=caption,
        notes=notes,
        start=float(start),
        origin=float(t0 or 0.0),
        complete=complete,
    )


def decode_windows(item: InputItem, cfg: IngestConfig) -> Iterator[DecodedVideo]:
    """Every window of an input, in order: one :func:`decode` call each, one window in memory at a time.

    Raises:
        IngestError: the input is unusable (from the first window), or a later window failed to decode; the
            windows yielded before it are good.
    """
    video = decode(item, cfg)
    while True:
        yield video
        if video.complete:
            return
        start, origin = video.duration, video.origin
        del video  # let the caller free the window before the next one is decoded
        try:
            video = decode(item, cfg, start, origin)
        except EOFError:  # the input ended exactly at the window boundary
            return
