"""Threads per process: one setting for OpenCV, PyTorch, onnxruntime, the FFmpeg decoders and x264.

``cofe curate`` runs one single-threaded curation process per core (DataLoader workers). Left at their defaults,
every library in such a process starts a thread pool the size of the machine (onnxruntime's threads also spin
while they wait), and on 2 cores two processes with two threads each contend: measured on the project's 2-core
machine, one SFace embedding took 50 ms with one onnxruntime thread and 96 ms with two while the other core was
busy. :func:`set_threads` fixes the count for every library at once; stages read it back with :func:`threads`.
"""

from __future__ import annotations

_THREADS: int | None = None


def set_threads(n: int | None) -> None:
    """Use ``n`` threads in this process (``None``: each library's own default).

    Sets OpenCV's and PyTorch's pools now; onnxruntime sessions, FFmpeg decoders and the x264 encoder created
    afterwards by this package read it from :func:`threads`.

    Raises:
        ValueError: ``n`` is not a positive integer or ``None``.
    """
    global _THREADS
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"threads must be a positive integer or None, got {n!r}")
    _THREADS = n
    if n is None:
        return
    import cv2
    import torch

    cv2.setNumThreads(n)
    torch.set_num_threads(n)


def threads() -> int | None:
    """The thread count set by :func:`set_threads` (``None``: library defaults)."""
    return _THREADS
