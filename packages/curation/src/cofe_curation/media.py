"""Cutting a clip out of its source at full quality and encoding it as H.264 (+ AAC) mp4 bytes."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import av
import numpy as np

from cofe_curation import runtime
from cofe_curation.ingest import _target_size, _upright, open_container


def read_clips(
    source: str, spans: list[tuple[float, float]], max_side: int, rotation: int = 0, origin: float | None = None
) -> Iterator[tuple[np.ndarray, float]]:
    """Decode the time spans ``[(t0, t1), ...]`` (seconds from the first frame, ascending, not overlapping) of
    ``source`` at a constant frame rate, in one pass over the file.

    The output rate is the stream's average rate; a variable-frame-rate source is resampled to it by taking, for
    each output tick, the latest decoded frame (what FFmpeg's ``fps`` filter does by default). Between spans more
    than :data:`SEEK_GAP_S` apart the decoder seeks (to the keyframe before the next span) instead of decoding
    through the gap, so writing the clips of a long input costs one decode of what is written, not one decode
    from the start per clip. Only one span's frames are held at a time.

    Args:
        source: File path or shard member (see :func:`cofe_curation.ingest.open_container`).
        spans: Time spans to cut.
        max_side: Frames are downscaled (in FFmpeg's scaler) so their longer side is at most this.
        rotation: Display rotation to apply (degrees counter-clockwise).
        origin: Presentation time (seconds) of the source's first frame, from ingest; needed to seek. Without
            it the file is decoded from its start.

    Yields:
        ``(frames (T, H, W, 3) uint8 RGB, fps)`` per span, in order.

    Raises:
        ValueError: a span has no frames (names the source and the span).
    """
    if not spans:
        return
    with open_container(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if runtime.threads() is not None:
            stream.codec_context.thread_count = runtime.threads()
        fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        fps = min(fps, 60.0)
        frames = _decoded_frames(container, stream, spans, max_side, rotation, origin, fps)
        current = next(frames, None)
        for t0, t1 in spans:
            decoded: list[tuple[float, np.ndarray]] = []
            while current is not None and current[0] < t1:
                if current[0] >= t0 - 1.0 / fps:
                    decoded.append(current)
                current = next(frames, None)
            yield _resample(decoded, t0, t1, fps, source), fps


# Spans further apart than this are reached by seeking; closer ones by decoding through the gap (a seek lands on
# the keyframe before the target, and keyframes are typically 2-10 s apart).
SEEK_GAP_S = 10.0


def _decoded_frames(container, stream, spans, max_side, rotation, origin, fps) -> Iterator[tuple[float, np.ndarray]]:
    """``(time from the first frame, RGB frame)`` of every decoded frame that a span may need, in order."""
    index = 0  # next span to reach
    first = origin
    position = -math.inf  # time of the last decoded frame
    sought = -1  # the span last sought to: seek at most once per span (a seek may land far before its target)
    while index < len(spans):
        target = spans[index][0] - 1.0 / fps
        if first is not None and sought != index and target - max(position, 0.0) > SEEK_GAP_S:
            sought = index
            try:
                container.seek(int((first + target) / stream.time_base), stream=stream, backward=True)
            except av.FFmpegError:
                pass  # an unseekable input is decoded through
        try:
            for idx, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else idx / fps
                first = t if first is None else first
                t -= first
                position = t
                while index < len(spans) and t >= spans[index][1]:
                    index += 1
                if index == len(spans):
                    return
                if t < spans[index][0] - 1.0 / fps:
                    if sought != index and spans[index][0] - t > SEEK_GAP_S + 1.0:
                        break  # far before the next span: seek there
                    continue
                w, h, _ = _target_size(frame.width, frame.height, max_side)
                yield t, _upright(frame.to_ndarray(format="rgb24", width=w, height=h), rotation)
            else:
                return  # end of the stream
        except av.FFmpegError:
            return  # a truncated tail: keep what decoded (ingest already recorded the problem)


def _resample(decoded: list[tuple[float, np.ndarray]], t0: float, t1: float, fps: float, source: str) -> np.ndarray:
    out: list[np.ndarray] = []
    j = 0
    for k in range(max(1, round((t1 - t0) * fps))):
        tick = t0 + k / fps + 0.5 / fps
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
    """Encode ``(T, H, W, 3)`` uint8 RGB frames (even H, W) and optional mono float audio as mp4 bytes."""
    buf = io.BytesIO()
    rate = max(1, round(fps))
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
