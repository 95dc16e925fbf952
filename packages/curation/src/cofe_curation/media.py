"""Cutting clips out of their source at a constant rate, by presentation timestamps, and encoding them as H.264
(+ AAC) mp4 bytes."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from cofe_curation import runtime
from cofe_curation.ingest import _target_size, _upright, open_container


@dataclass
class Cut:
    """One clip cut from its source.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB at a constant rate ``fps``, frame ``k`` showing the source at
            ``t0 + k / fps`` (the latest source frame at or before the middle of that tick).
        fps: The clip's frame rate (exact: ``30000/1001`` stays that).
        still: The source frame nearest the requested still time at full resolution, upright, or ``None``.
        still_time: That frame's presentation time (seconds from the first frame), or ``None``.
    """

    frames: np.ndarray
    fps: Fraction
    still: np.ndarray | None = None
    still_time: float | None = None


# Frame rates a variable-rate span is snapped to when its mean rate is within 1 % of one.
STANDARD_RATES = tuple(
    Fraction(r) for r in ("24000/1001", "24", "25", "30000/1001", "30", "48", "50", "60000/1001", "60")
)
MAX_FPS = Fraction(60)
# Decoding starts this long before a span, so that the frame on screen at its start is seen whatever the frame rate
# (a variable-rate source may hold one frame for a long time).
_LEAD_S = 1.0


def span_rate(times: np.ndarray, average: Fraction | None) -> Fraction:
    """The constant frame rate to write a span at, from the presentation times of its source frames.

    A span whose frame intervals all lie within 10 % of the stream's average interval is written at the average
    rate (a constant-rate source keeps its exact rate). Otherwise (variable frame rate: a stream's average is
    meaningless across a pause, 0.78 fps for 2 x 40 frames around a 100 s gap) the rate is the span's own mean
    rate, snapped to a standard rate within 1 %, else rounded to 0.01 fps. At most :data:`MAX_FPS`.

    Args:
        times: ``(N,)`` ascending presentation times of the source frames inside the span, seconds.
        average: The stream's average rate, if it has one.
    """
    d = np.diff(np.asarray(times, np.float64))
    if average and (d.size == 0 or np.all(np.abs(d * float(average) - 1.0) <= 0.1)):
        return min(Fraction(average), MAX_FPS)
    if d.size == 0 or times[-1] <= times[0]:
        return min(Fraction(average or 25), MAX_FPS)
    mean = (len(times) - 1) / float(times[-1] - times[0])
    near = min(STANDARD_RATES, key=lambda r: abs(float(r) - mean))
    rate = near if abs(float(near) - mean) <= 0.01 * mean else Fraction(round(mean * 100), 100)
    return min(rate, MAX_FPS)


def cut_clips(
    source: str,
    spans: list[tuple[float, float]],
    max_side: int,
    rotation: int = 0,
    origin: float | None = None,
    stills: list[float | None] | None = None,
) -> Iterator[Cut]:
    """Decode the time spans ``[(t0, t1), ...]`` (seconds from the first frame, ascending, not overlapping) of
    ``source`` at a constant frame rate, in one pass over the file.

    Frames are placed by their presentation timestamps: each span is written at :func:`span_rate` of its own
    source frames, frame ``k`` showing the latest source frame at or before ``t0 + (k + 0.5) / fps`` (what
    FFmpeg's ``fps`` filter does), so a clip's frame count and times agree with its annotation whatever the
    source's timing. Between spans more than :data:`SEEK_GAP_S` apart the decoder seeks (to the keyframe before
    the next span) instead of decoding through the gap, so writing the clips of a long input costs one decode of
    what is written, not one decode from the start per clip. Only one span's frames are held at a time.

    Args:
        source: File path or shard member (see :func:`cofe_curation.ingest.open_container`).
        spans: Time spans to cut.
        max_side: Frames are downscaled (in FFmpeg's scaler) so their longer side is at most this.
        rotation: Display rotation to apply (degrees counter-clockwise).
        origin: Presentation time (seconds) of the source's first frame, from ingest; needed to seek. Without
            it the file is decoded from its start.
        stills: Per span, a time (seconds from the first frame) whose source frame to return at full resolution
            (``Cut.still``), or ``None``.

    Yields:
        One :class:`Cut` per span, in order.

    Raises:
        ValueError: a span has no frames (names the source and the span).
    """
    if not spans:
        return
    stills = list(stills) if stills is not None else [None] * len(spans)
    with open_container(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if runtime.threads() is not None:
            stream.codec_context.thread_count = runtime.threads()
        average = stream.average_rate or stream.guessed_rate
        average = Fraction(average) if average else None
        frames = _decoded_frames(container, stream, spans, origin)
        current = next(frames, None)
        for (t0, t1), still_t in zip(spans, stills, strict=True):
            before = None  # the last source frame before t0 (on screen at t0)
            inside: list[tuple[float, np.ndarray]] = []
            best = None  # (distance, time, av frame) nearest the still time
            while current is not None and current[0] < t1:
                t, frame = current
                if still_t is not None and (best is None or abs(t - still_t) < best[0]):
                    best = (abs(t - still_t), t, frame)
                if t < t0 - 1e-6:
                    before = current
                else:
                    inside.append((t, _small(frame, max_side, rotation)))
                current = next(frames, None)
            rate = span_rate(np.array([t for t, _ in inside]), average)
            decoded = ([(before[0], _small(before[1], max_side, rotation))] if before is not None else []) + inside
            still = None
            if best is not None:
                still = _upright(best[2].to_ndarray(format="rgb24"), rotation)
            yield Cut(_resample(decoded, t0, t1, rate, source), rate, still, None if best is None else best[1])


def read_clips(
    source: str, spans: list[tuple[float, float]], max_side: int, rotation: int = 0, origin: float | None = None
) -> Iterator[tuple[np.ndarray, float]]:
    """:func:`cut_clips` as ``(frames (T, H, W, 3) uint8 RGB, fps)`` per span."""
    for cut in cut_clips(source, spans, max_side, rotation, origin):
        yield cut.frames, float(cut.fps)


def _small(frame: av.VideoFrame, max_side: int, rotation: int) -> np.ndarray:
    w, h, _ = _target_size(frame.width, frame.height, max_side)
    return _upright(frame.to_ndarray(format="rgb24", width=w, height=h), rotation)


# Spans further apart than this are reached by seeking; closer ones by decoding through the gap (a seek lands on
# the keyframe before the target, and keyframes are typically 2-10 s apart).
SEEK_GAP_S = 10.0


def _decoded_frames(container, stream, spans, origin) -> Iterator[tuple[float, av.VideoFrame]]:
    """``(time from the first frame, decoded frame)`` of every frame that a span may need, in order."""
    index = 0  # next span to reach
    first = origin
    position = -math.inf  # time of the last decoded frame
    sought = -1  # the span last sought to: seek at most once per span (a seek may land far before its target)
    while index < len(spans):
        target = spans[index][0] - _LEAD_S
        if first is not None and sought != index and target - max(position, 0.0) > SEEK_GAP_S:
            sought = index
            try:
                container.seek(int((first + target) / stream.time_base), stream=stream, backward=True)
            except av.FFmpegError:
                pass  # an unseekable input is decoded through
        try:
            for idx, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else idx / 25.0
                first = t if first is None else first
                t -= first
                position = t
                while index < len(spans) and t >= spans[index][1]:
                    index += 1
                if index == len(spans):
                    return
                if t < spans[index][0] - _LEAD_S:
                    if sought != index and spans[index][0] - t > SEEK_GAP_S + _LEAD_S:
                        break  # far before the next span: seek there
                    continue
                yield t, frame
            else:
                return  # end of the stream
        except av.FFmpegError:
            return  # a truncated tail: keep what decoded (ingest already recorded the problem)


def _resample(decoded: list[tuple[float, np.ndarray]], t0: float, t1: float, fps: Fraction, source: str) -> np.ndarray:
    out: list[np.ndarray] = []
    j = 0
    for k in range(max(1, round((t1 - t0) * fps))):
        tick = t0 + (k + 0.5) / float(fps)
        while j + 1 < len(decoded) and decoded[j + 1][0] <= tick:
            j += 1
        if decoded:
            out.append(decoded[j][1])
    if not out:
        raise ValueError(f"{source}: no frames in [{t0:.2f}, {t1:.2f}) s")
    return np.stack(out)


def read_clip(source: str, t0: float, t1: float, max_side: int, rotation: int = 0) -> tuple[np.ndarray, float]:
    """Decode ``[t0, t1)`` seconds (from the first frame) of ``source`` at a constant frame rate (one span of
    :func:`read_clips`).

    Returns:
        ``(frames (T, H, W, 3) uint8 RGB, fps)``.
    """
    return next(read_clips(source, [(t0, t1)], max_side, rotation))


def encode_mp4(
    frames: np.ndarray, fps: float, audio: np.ndarray | None = None, audio_rate: int = 16000, crf: int = 18
) -> bytes:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames (even H, W) and optional mono float audio as mp4 bytes.

    ``fps`` may be a :class:`~fractions.Fraction` (``30000/1001``); a float is written as the nearest fraction with
    a denominator up to 1001, so the stream's rate is the one the annotation states.
    """
    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    with av.open(buf, mode="w", format="mp4") as container:
        vstream = container.add_stream("libx264", rate=rate)
        vstream.width, vstream.height = frames.shape[2], frames.shape[1]
        vstream.pix_fmt = "yuv420p"
        vstream.options = {"crf": str(crf), "preset": "veryfast"}
        if runtime.threads() is not None:
            vstream.options["threads"] = str(runtime.threads())
        astream = None
        if audio is not None and audio.size:
            astream = container.add_stream("aac", rate=audio_rate, layout="mono")
        for frame in frames:
            for packet in vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None:
            aframe = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio, dtype=np.float32)[None, :], format="flt", layout="mono"
            )
            aframe.sample_rate = audio_rate
            aframe.pts = 0
            # The encoder's own resampler/FIFO splits the block into AAC's 1024-sample frames.
            for packet in astream.encode(aframe):
                container.mux(packet)
            for packet in astream.encode(None):
                container.mux(packet)
    return buf.getvalue()
