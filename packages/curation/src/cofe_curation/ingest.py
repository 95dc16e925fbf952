"""Stage 1, ingest: find inputs (folders, list files, WebDataset shards), read sidecar captions, decode.

Decoding samples frames by their timestamps, not their index, so variable-frame-rate video is sampled evenly in
time; applies the display-matrix rotation of phone videos; downscales large frames inside FFmpeg's scaler
(``VideoFrame.reformat``) so a huge input never materialises at full size; and resamples the audio track to
16 kHz mono float32 for the voice-activity model. Every failure raises :class:`IngestError` with a reason that
names the input, which the pipeline records in ``report.json`` instead of stopping.

Every input is accounted for whatever it is: discovery turns what it cannot use (dangling or looping symbolic
links, a folder reached twice through links, FIFOs and devices, tar members that are links, FIFOs or sparse, a
shard that does not open) into items that carry their problem, which the run records as ``error`` inputs. File
names that are not UTF-8 are kept as Python's surrogate-escaped strings to open the file, and written to JSON
through :func:`json_name`. Shard members are streamed from the tar, never read whole, and their declared sizes
are checked against the shard's real size and ``ingest.max_input_bytes`` before anything is read.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import stat
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


def json_name(name: str | bytes | os.PathLike) -> str:
    """A file name or source id as text that any JSON writer accepts, whatever its bytes.

    Python keeps the bytes of a name that is not UTF-8 as lone surrogates (``\\udcXX``, PEP 383), which cannot be
    encoded as UTF-8 and crash a JSON writer; here each such byte becomes the four characters ``\\xXX`` (the file
    is still named in the record, readably). Valid names come back unchanged.
    """
    return os.fsencode(name).decode("utf-8", errors="backslashreplace")


@dataclass(frozen=True)
class InputItem:
    """One input video.

    Attributes:
        source: A file path, or ``"shard.tar::member"`` for a video inside a WebDataset shard.
        caption_source: Path of the sidecar caption file (or ``"shard.tar::member"``), if any.
        problem: Why discovery could not use this entry (a dangling link, a FIFO, a link member of a shard...):
            the run records it as an ``error`` input with this reason, without opening it.
    """

    source: str
    caption_source: str | None = None
    problem: str | None = None


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


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a tar member is not read as an input (``None`` for a regular file)."""
    if member.issym():
        return f"tar member is a symbolic link (-> {json_name(member.linkname)}), not read"
    if member.islnk():
        return f"tar member is a hard link (-> {json_name(member.linkname)}), not read"
    if member.isfifo():
        return "tar member is a FIFO, not read"
    if member.ischr() or member.isblk():
        return "tar member is a device file, not read"
    if member.issparse():
        return f"tar member is sparse (declares {member.size / 1e9:.2f} GB), not read"
    if not member.isreg():
        return f"tar member of type {member.type!r} is not a regular file, not read"
    return None


def _shard_items(shard: Path) -> list[InputItem]:
    members: list[tarfile.TarInfo] = []
    items = []
    try:
        with tarfile.open(shard) as tar:
            try:
                members = [m for m in tar if not m.isdir()]
            except tarfile.ReadError as exc:  # truncated after some members: keep those, say where it stopped
                members = [m for m in tar.members if not m.isdir()]
                after = f" after {json_name(members[-1].name)}" if members else ""
                items.append(InputItem(str(shard), problem=f"WebDataset shard {json_name(shard)} ends{after}: {exc}"))
    except (tarfile.TarError, OSError) as exc:
        return [InputItem(str(shard), problem=f"cannot read WebDataset shard {json_name(shard)}: {exc}")]
    problems = {m.name: _member_problem(m) for m in members}
    # WebDataset groups members by key = name up to the first dot of the base name.
    by_key: dict[str, list[str]] = {}
    for member in members:
        name = member.name
        base = name.rsplit("/", 1)[-1]
        prefix = name[: len(name) - len(base)]
        by_key.setdefault(prefix + base.split(".", 1)[0], []).append(name)
    for key in sorted(by_key):
        names = by_key[key]
        videos = [m for m in names if _is_video(m)]
        captions = [m for m in names if m.endswith((".txt", ".json")) and problems[m] is None]
        for name in names:
            if problems[name] is not None and name not in videos:  # a link or FIFO among a sample's parts
                items.append(InputItem(f"{shard}{SHARD_SEP}{name}", problem=problems[name]))
        for video in videos:
            cap = f"{shard}{SHARD_SEP}{captions[0]}" if captions else None
            items.append(InputItem(f"{shard}{SHARD_SEP}{video}", cap, problems[video]))
    return items


def _special_kind(mode: int) -> str | None:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return None


def _walk_folder(folder: Path, add, seen_dirs: dict[str, str], seen_files: dict[str, str]) -> None:
    """Add the videos and shards under ``folder`` (sorted, recursively), following links to folders once.

    Links that lead nowhere or in a circle, a folder reached a second time through a link, a second name of a
    file already added, and FIFOs, sockets and devices become problem items, so the report lists them.
    """
    real = os.path.realpath(folder)
    if real in seen_dirs:
        add(
            InputItem(
                str(folder),
                problem=f"{json_name(folder)}: the same folder as {seen_dirs[real]} (through a link), not read twice",
            )
        )
        return
    seen_dirs[real] = json_name(folder)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: os.fsencode(e.name))
    except OSError as exc:
        add(InputItem(str(folder), problem=f"{json_name(folder)}: folder cannot be read ({exc.strerror})"))
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            st = os.stat(path)  # follows links
        except OSError as exc:
            if entry.is_symlink():
                target = json_name(os.readlink(path))
                kind = "symbolic link loop" if exc.errno == errno.ELOOP else "dangling symbolic link"
                add(InputItem(str(path), problem=f"{json_name(path)}: {kind} (-> {target})"))
            else:
                add(InputItem(str(path), problem=f"{json_name(path)}: cannot be read ({exc.strerror})"))
            continue
        if stat.S_ISDIR(st.st_mode):
            _walk_folder(path, add, seen_dirs, seen_files)
            continue
        wanted = _is_video(entry.name) or path.suffix.lower() in SHARD_EXTENSIONS
        if not wanted:
            continue
        special = _special_kind(st.st_mode)
        if special is not None:
            add(InputItem(str(path), problem=f"{json_name(path)}: {special}, not a regular file"))
            continue
        real_file = os.path.realpath(path)
        if real_file in seen_files:
            add(
                InputItem(
                    str(path),
                    problem=f"{json_name(path)}: the same file as {seen_files[real_file]} "
                    "(through a link), not curated twice",
                )
            )
            continue
        seen_files[real_file] = json_name(path)
        if _is_video(entry.name):
            add(InputItem(str(path), _sidecar(path)))
        else:
            for item in _shard_items(path):
                add(item)


def discover_inputs(inputs: list[str | Path]) -> list[InputItem]:
    """Expand folders (recursively), list files (one path per line, relative to the list) and shards.

    Args:
        inputs: Paths of videos, folders, list files (``.txt``/``.lst``/``.list``) or ``.tar`` shards.

    Returns:
        Items in a deterministic order (sorted within each folder), duplicates removed, sources as absolute paths.
        A path that does not exist is kept as an item, so that the pipeline reports it; so are the entries that
        discovery cannot use (see the module docstring), with their problem.
    """
    items: list[InputItem] = []
    seen: set[str] = set()
    seen_dirs: dict[str, str] = {}
    seen_files: dict[str, str] = {}

    def add(item: InputItem) -> None:
        if item.source not in seen:
            seen.add(item.source)
            items.append(item)

    def expand(raw: str | Path, depth: int = 0) -> None:
        # Absolute and normalised, not resolved (a symlink keeps its name): the same file named from another
        # working directory, or relatively then absolutely, is one source. Resuming and clip keys depend on it.
        path = Path(os.path.abspath(raw))
        if path.is_dir():
            _walk_folder(path, add, seen_dirs, seen_files)
        elif path.suffix.lower() in LIST_EXTENSIONS and path.is_file():
            if depth > 8:
                add(InputItem(str(path), problem=f"{json_name(path)}: list files nested more than 8 deep"))
                return
            for raw_line in path.read_bytes().splitlines():
                line = os.fsdecode(raw_line).strip()
                if line and not line.startswith("#"):
                    expand(line if Path(line).is_absolute() else path.parent / line, depth + 1)
        elif path.suffix.lower() in SHARD_EXTENSIONS and path.is_file():
            for item in _shard_items(path):
                add(item)
        else:
            add(InputItem(str(path), _sidecar(path) if path.is_file() else None))

    for raw in inputs:
        expand(raw)
    return items


@contextlib.contextmanager
def open_member(source: str, max_bytes: int | None = None) -> Iterator[io.BufferedIOBase]:
    """A shard member source (``"shard.tar::member"``) as a readable, seekable stream (nothing read in advance).

    The member's header is checked before any of its data is read: it must be a regular, non-sparse file whose
    declared size fits in the shard and in ``max_bytes``.

    Raises:
        IngestError: the shard does not open, or the member is missing, not a regular file, sparse, larger than
            ``max_bytes`` or larger than what the shard holds. The message names the source.
    """
    shard, name = source.split(SHARD_SEP, 1)
    try:
        tar = tarfile.open(shard)
    except (tarfile.TarError, OSError) as exc:
        raise IngestError(f"cannot read WebDataset shard {json_name(shard)}: {exc}") from exc
    with tar:
        member = None
        try:
            for candidate in tar:  # up to the member only (a shard truncated further on still serves it)
                if candidate.name == name:
                    member = candidate
                    break
        except tarfile.ReadError:
            pass
        if member is None:
            raise IngestError(f"{json_name(source)}: no such member in the shard")
        problem = _member_problem(member)
        if problem is not None:
            raise IngestError(f"{json_name(source)}: {problem}")
        held = os.stat(shard).st_size - member.offset_data
        if member.size > held:
            raise IngestError(
                f"{json_name(source)}: declares {member.size:,} bytes but the shard holds only {max(held, 0):,} "
                "after its header (a truncated shard or a lying header), not read"
            )
        if max_bytes is not None and member.size > max_bytes:
            raise IngestError(
                f"{json_name(source)}: declares {member.size:,} bytes, over ingest.max_input_bytes={max_bytes:,}"
            )
        handle = tar.extractfile(member)
        if handle is None:
            raise IngestError(f"{json_name(source)}: not a regular file in the shard")
        with handle:
            yield handle


def read_caption(caption_source: str | None, max_bytes: int = 2**20) -> tuple[str, str | None]:
    """Read a sidecar caption: a ``.txt`` file, or a ``.json`` with a string or a ``{"caption": ...}`` object.

    Returns:
        ``(caption, problem)``: ``problem`` names the file and the reason (unreadable, larger than ``max_bytes``,
        not UTF-8, does not parse), and the caption is then "".
    """
    if caption_source is None:
        return "", None
    name = json_name(caption_source)
    try:
        if SHARD_SEP in caption_source:
            with open_member(caption_source) as fh:
                raw = fh.read(max_bytes + 1)
        else:
            with open(caption_source, "rb") as fh:
                raw = fh.read(max_bytes + 1)
        if len(raw) > max_bytes:
            return "", f"caption file {name} is larger than ingest.max_caption_bytes={max_bytes}, not read"
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, IngestError) as exc:
        return "", f"caption file {name} could not be read: {exc}"
    if not caption_source.endswith(".json"):
        return text.strip(), None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return "", f"caption file {name} does not parse as JSON: {exc}"
    if isinstance(obj, str):
        return obj.strip(), None
    if isinstance(obj, dict) and isinstance(obj.get("caption"), str):
        return obj["caption"].strip(), None
    return "", f"caption file {name}: expected a string or an object with a 'caption' string"


@contextlib.contextmanager
def open_container(source: str, max_bytes: int | None = None) -> Iterator[av.container.InputContainer]:
    """Open a source (file path or shard member) with PyAV, raising :class:`IngestError` with the reason.

    A shard member is streamed from the tar (:func:`open_member`); a file is refused before it is opened when it
    is missing, empty, not a regular file (a FIFO would block forever) or larger than ``max_bytes``.
    """
    name = json_name(source)
    with contextlib.ExitStack() as stack:
        if SHARD_SEP in source:
            handle = stack.enter_context(open_member(source, max_bytes))
            if handle.seek(0, io.SEEK_END) == 0:
                raise IngestError(f"{name}: zero-length shard member")
            handle.seek(0)
            target = handle
        else:
            try:
                st = os.stat(source)
            except FileNotFoundError:
                raise IngestError(f"{name}: file not found") from None
            except OSError as exc:
                raise IngestError(f"{name}: cannot be read ({exc.strerror})") from None
            if not stat.S_ISREG(st.st_mode):
                raise IngestError(f"{name}: {_special_kind(st.st_mode) or 'a folder'}, not a regular file")
            if st.st_size == 0:
                raise IngestError(f"{name}: zero-length file")
            if max_bytes is not None and st.st_size > max_bytes:
                raise IngestError(f"{name}: {st.st_size:,} bytes, over ingest.max_input_bytes={max_bytes:,}")
            target = source
        try:
            container = stack.enter_context(av.open(target, mode="r"))
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise IngestError(f"{name}: not a readable media file ({type(exc).__name__}: {exc})") from exc
        yield container


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
    caption, caption_problem = read_caption(item.caption_source, cfg.max_caption_bytes)
    notes = [caption_problem] if caption_problem else []
    name = json_name(item.source)
    with open_container(item.source, cfg.max_input_bytes) as container:
        if not container.streams.video:
            raise IngestError(f"{name}: no video stream")
        stream = container.streams.video[0]
        cc = stream.codec_context
        if cc.width * cc.height > cfg.max_pixels:
            raise IngestError(f"{name}: resolution {cc.width}x{cc.height} exceeds max_pixels={cfg.max_pixels}")
        if cc.width <= 0 or cc.height <= 0:
            raise IngestError(f"{name}: video stream has no frame size")
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
                raise IngestError(f"{name}: cannot seek to {start:.2f} s ({type(exc).__name__}: {exc})") from exc
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
                raise IngestError(f"{name}: video does not decode ({type(exc).__name__}: {exc})") from exc
            notes.append(f"decoding stopped at {last_t:.2f} s: {type(exc).__name__}: {exc}")
            complete = True
        if not frames:
            if start > 0:  # the previous window ended exactly at the end of the input
                raise EOFError(f"{name}: no frames after {start:.2f} s")
            raise IngestError(f"{name}: no decodable video frames")
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
