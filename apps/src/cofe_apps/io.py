"""Lightning-free I/O shared by the `cofe` commands: shard lists, clip decoding, arrays, videos, durable files, and
the exclusive lock on an output folder.

Nothing here imports torch's training stack, Lightning or MLflow, so a command's ``--help`` and its helpers stay
fast, and every command reads and writes files the same way.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# ------------------------------------------------------------------------------------------------- shard lists

# Schemes webdataset opens with a handler of its own (``pipe:`` runs a shell command). Only an item the user wrote
# with one of these keeps it; a path found by a glob or a brace pattern never gains one.
_SCHEMES = ("pipe:", "file:", "http://", "https://", "gs://", "s3://", "ais://", "hf://", "sftp://", "scp://")


def expand_shards(items: str | list[str]) -> list[str]:
    """Shard URLs from paths, brace patterns (``a-{000..009}.tar``), shell globs (``shards/*.tar``) or lists of them.

    Local paths come back absolute, so a file that happens to be named ``pipe:...#.tar`` (or ``http:...``) next to
    real shards is read as a file, never run as a command. An explicit URL the user wrote (``pipe:curl ...``,
    ``https://...``) passes through unchanged and is never globbed.
    """
    import webdataset as wds

    urls: list[str] = []
    for item in [items] if isinstance(items, str) else list(items):
        item = str(item)
        if item.startswith(_SCHEMES):
            urls.extend(wds.shardlists.expand_urls(item))
            continue
        for url in wds.shardlists.expand_urls(item):
            if any(c in url for c in "*?["):
                urls.extend(os.path.abspath(p) for p in sorted(glob.glob(url)))
            else:
                urls.append(os.path.abspath(url))
    return urls


# ----------------------------------------------------------------------------------------------- arrays, clips


def npy_bytes(arr: np.ndarray) -> bytes:
    """An array as ``.npy`` file bytes (no pickling), as training shards store it."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def read_npy(data: bytes) -> np.ndarray:
    """``.npy`` bytes -> array; object arrays (pickles) are refused."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def resize_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, 3, H0, W0)`` -> ``(N, 3, height, width)``: scale to cover (bilinear, antialiased), then centre-crop
    (:func:`cofe_encoders.images.cover_crop`, the experts' transform too)."""
    from cofe_encoders.images import cover_crop

    return cover_crop(video, height, width, mode="bilinear")


def decode_clip(data: bytes, frames: int, height: int, width: int, stride: int = 1) -> torch.Tensor:
    """mp4 bytes -> ``(3, frames, height, width)`` in [-1, 1]: frames ``0, stride, ...``, resized to cover the
    bucket and centre-cropped."""
    import av
    import torch

    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        out = []
        for i, frame in enumerate(container.decode(video=0)):
            if i % stride == 0:
                out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == frames:
                break
    if len(out) < frames:
        raise ValueError(f"clip has {len(out)} usable frames (stride {stride}); {frames} needed")
    video = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 127.5 - 1  # (F, 3, H0, W0)
    return resize_crop(video, height, width).permute(1, 0, 2, 3)  # (3, F, H, W)


def caption(meta: dict) -> str:
    """The caption a curated sample is trained and sampled with: curation's refined one (speech claims made to
    match the clip), else the source's, else empty."""
    return meta.get("caption_refined") or meta.get("caption") or ""


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(1, 3, H, W)`` float in [-1, 1]."""
    import torch

    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 127.5 - 1


# The largest image decoded for a reference or a first frame: 120 megapixels and 16384 pixels a side (above every
# phone and DSLR sensor, 360 MB as RGB). Larger files are refused from their header, before any pixel is decoded:
# a 30000 x 30000 PNG would otherwise take 2.7 GB to decode, only to be shrunk to a 512 px crop.
MAX_IMAGE_PIXELS = 120_000_000
MAX_IMAGE_SIDE = 16384


def load_image(path: str | Path) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB; a clear error naming the file otherwise (unreadable, or larger
    than ``MAX_IMAGE_PIXELS`` / ``MAX_IMAGE_SIDE``, judged from the header alone)."""
    from PIL import Image

    unreadable = (OSError, ValueError, Image.DecompressionBombError)
    limit = f"the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} MP and {MAX_IMAGE_SIDE} px a side; downscale it first"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with its size
        try:
            img = Image.open(path)  # reads the header only
        except Image.DecompressionBombError as exc:  # PIL's own refusal, from the header, above 179 MP
            raise ValueError(f"image {path} is too large to read ({exc}); {limit}") from None
        except unreadable as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc
    with img:
        w, h = img.size
        if w * h > MAX_IMAGE_PIXELS or max(w, h) > MAX_IMAGE_SIDE:
            raise ValueError(f"image {path} is too large to read ({w}x{h}, {w * h / 1e6:.0f} MP); {limit}")
        try:
            return np.asarray(img.convert("RGB"))
        except unreadable as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes, what: str = "image") -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot decode {what}: {exc}") from exc


# ------------------------------------------------------------------------------------------------------ videos


def write_mp4(frames: np.ndarray, path: str | Path, fps: float = 16.0, crf: int = 18) -> Path:
    """Write ``frames`` (T, H, W, 3) uint8 RGB as an H.264 mp4 (yuv420p), atomically.

    Raises:
        ValueError: on a wrong shape or dtype, or odd height/width (yuv420p needs even sizes).
    """
    from cofe_curation.media import encode_mp4

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 yuv420p needs even height and width, got {frames.shape[1]}x{frames.shape[2]}")
    path = Path(path)
    atomic_write_bytes(path, encode_mp4(frames, fps, crf=crf))
    return path


def read_mp4(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode every frame of a video as (T, H, W, 3) uint8 RGB, and its frame rate (0 when unknown).

    The one whole-video decoder is :func:`cofe_bench.video.read_video`; its ``VideoError`` names the file when it
    is missing, cannot be decoded or has no frame.
    """
    from cofe_bench.video import read_video

    return read_video(path)


# ------------------------------------------------------------------------------------------------ durable files


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new file in ``folder`` durable (POSIX: fsync the directory)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
    finally:
        os.close(fd)


def durable_replace(tmp: str | Path, path: str | Path) -> Path:
    """Rename ``tmp`` over ``path`` after flushing ``tmp`` to disk, then flush the folder: after a crash the file
    is either the old one or the complete new one."""
    tmp, path = Path(tmp), Path(path)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder (durable, never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_path(path: str | Path | bytes) -> str:
    """A path as a JSON-safe string whatever its bytes: names that are not UTF-8 keep their undecodable bytes as
    ``\\udcXX`` surrogate escapes in Python, which no JSON encoder writes as UTF-8; they become ``\\xXX`` text here
    (``os.fsdecode`` / ``backslashreplace``), so a record names the file and never crashes the writer."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


# ---------------------------------------------------------------------------------------------- output locking


class OutputLocked(RuntimeError):
    """Another process holds the output folder."""


LOCK_NAME = ".cofe.lock"
_LOCK_ENV = "COFE_HELD_LOCKS"


class OutputLock:
    """An exclusive lock on an output folder, held for the life of a command (``OUT/.cofe.lock``, ``flock``).

    A second command on the same folder fails at once with :class:`OutputLocked`, naming the holder (command,
    pid, host, start time). The kernel drops the lock when the holder exits, even on SIGKILL, so a killed run never
    leaves a stale lock behind. Processes that a command starts for its other ranks inherit the held folders
    (through the ``COFE_HELD_LOCKS`` environment variable) and do not try to take the lock again.

    Example:
        >>> with OutputLock(out, "cofe precompute"):  # doctest: +SKIP
        ...     write_shards(out)
    """

    def __init__(self, folder: str | Path, command: str):
        self.folder = Path(folder)
        self.command = command
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def _inherited(self) -> bool:
        held = os.environ.get(_LOCK_ENV, "")
        return str(self.folder.resolve()) in held.split(os.pathsep)

    def acquire(self) -> OutputLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        if self._inherited():
            return self
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = (
                    f"{info.get('command')} (pid {info.get('pid')} on {info.get('host')}, "
                    f"started {info.get('started')})"
                )
            except ValueError:
                who = "another process"
            raise OutputLocked(
                f"{self.folder} is in use by {who}; wait for it to finish or choose another output folder"
            ) from None
        info = {
            "command": self.command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "argv": sys.argv,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        held = [p for p in os.environ.get(_LOCK_ENV, "").split(os.pathsep) if p]
        os.environ[_LOCK_ENV] = os.pathsep.join([*held, str(self.folder.resolve())])
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        held = [p for p in os.environ.get(_LOCK_ENV, "").split(os.pathsep) if p]
        mine = str(self.folder.resolve())
        os.environ[_LOCK_ENV] = os.pathsep.join(p for p in held if p != mine)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (after resolving links)."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


# ------------------------------------------------------------------------------------------------- provenance


def git_revision() -> str:
    """The commit of the source tree this code runs from (not of the working directory), ``+dirty`` if modified."""
    here = str(Path(__file__).resolve().parent)
    try:
        rev = subprocess.check_output(["git", "-C", here, "rev-parse", "HEAD"], text=True, stderr=subprocess.DEVNULL)
        dirty = subprocess.check_output(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"], text=True)
        return rev.strip() + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
