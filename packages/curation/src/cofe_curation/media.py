"""Cutting a clip out of its source at full quality and encoding it as H.264 (+ AAC) mp4 bytes."""

from __future__ import annotations

import io

import av
import numpy as np

from cofe_curation.ingest import _target_size, _upright, open_container


def read_clip(source: str, t0: float, t1: float, max_side: int, rotation: int = 0) -> tuple[np.ndarray, float]:
    """Decode ``[t0, t1)`` seconds (from the first frame) of ``source`` at a constant frame rate.

    The output rate is the stream's average rate; a variable-frame-rate source is resampled to it by taking, for
    each output tick, the latest decoded frame (what FFmpeg's ``fps`` filter does by default).

    Returns:
        ``(frames (T, H, W, 3) uint8 RGB, fps)``.
    """
    with open_container(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        fps = min(fps, 60.0)
        n_out = max(1, round((t1 - t0) * fps))
        decoded: list[tuple[float, np.ndarray]] = []
        first = None
        try:
            for idx, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else idx / fps
                first = t if first is None else first
                t -= first
                if t >= t1:
                    break
                if t < t0 - 1.0 / fps:
                    continue
                w, h, _ = _target_size(frame.width, frame.height, max_side)
                decoded.append((t, _upright(frame.to_ndarray(format="rgb24", width=w, height=h), rotation)))
        except av.FFmpegError:
            pass  # a truncated tail: keep what decoded (ingest already recorded the problem)
    out: list[np.ndarray] = []
    j = 0
    for k in range(n_out):
        tick = t0 + k / fps + 0.5 / fps
        while j + 1 < len(decoded) and decoded[j + 1][0] <= tick:
            j += 1
        if decoded:
            out.append(decoded[j][1])
    if not out:
        raise ValueError(f"{source}: no frames in [{t0:.2f}, {t1:.2f}) s")
    return np.stack(out), fps


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
