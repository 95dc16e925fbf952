"""Image inputs accepted by every expert and face analyser, checked once here.

Accepted forms (all RGB):

* a ``uint8`` numpy array ``(H, W, 3)``, or a ``uint8`` array ``(B, H, W, 3)`` for a batch;
* a ``PIL.Image.Image`` in mode ``"RGB"``;
* a float ``torch.Tensor`` ``(3, H, W)`` or ``(B, 3, H, W)`` with values in ``[0, 1]``;
* a list or tuple of the single-image forms above (sizes may differ).

Anything else (grayscale, RGBA, BGR-by-mistake cannot be detected) raises ``ValueError`` or ``TypeError``
naming the offending item and its shape, so a caller never gets a failure deep inside OpenCV or ONNX.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ImageLike = np.ndarray | Image.Image | torch.Tensor
Images = ImageLike | Sequence[ImageLike]

# Tolerance for float inputs slightly outside [0, 1] after resampling.
_RANGE_EPS = 1e-3


def _describe(item: Any) -> str:
    if isinstance(item, np.ndarray | torch.Tensor):
        return f"{type(item).__name__} of shape {tuple(item.shape)} and dtype {item.dtype}"
    if isinstance(item, Image.Image):
        return f"PIL image of mode {item.mode!r} and size {item.size}"
    return type(item).__name__


def _check_hw(h: int, w: int, where: str) -> None:
    if h == 0 or w == 0:
        raise ValueError(f"{where}: empty image ({h}x{w} pixels)")


def _one_to_uint8(item: Any, where: str) -> np.ndarray:
    """One image -> contiguous ``uint8`` ``(H, W, 3)`` RGB array."""
    if isinstance(item, Image.Image):
        if item.mode != "RGB":
            raise ValueError(f"{where}: expected an RGB image, got {_describe(item)}; use image.convert('RGB')")
        arr = np.asarray(item)
    elif isinstance(item, np.ndarray):
        arr = item
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"{where}: expected an RGB array (H, W, 3), got {_describe(arr)}")
        if arr.dtype != np.uint8:
            raise ValueError(f"{where}: expected dtype uint8 (0-255), got {_describe(arr)}")
    elif isinstance(item, torch.Tensor):
        t = _one_to_float(item, where)
        arr = (t.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    else:
        raise TypeError(f"{where}: expected a numpy array, PIL image or torch tensor, got {_describe(item)}")
    _check_hw(arr.shape[0], arr.shape[1], where)
    return np.ascontiguousarray(arr)


def _one_to_float(item: Any, where: str) -> torch.Tensor:
    """One image -> float ``(3, H, W)`` tensor in [0, 1] (on the input's device for tensors)."""
    if isinstance(item, torch.Tensor):
        if item.ndim != 3 or item.shape[0] != 3:
            raise ValueError(f"{where}: expected a tensor (3, H, W), got {_describe(item)}")
        if not item.is_floating_point():
            raise ValueError(f"{where}: expected a float tensor in [0, 1], got {_describe(item)}")
        _check_hw(item.shape[1], item.shape[2], where)
        lo, hi = float(item.min()), float(item.max())
        if lo < -_RANGE_EPS or hi > 1 + _RANGE_EPS:
            raise ValueError(f"{where}: float tensor values must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]")
        return item
    arr = _one_to_uint8(item, where)
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float().div_(255.0)  # a writable copy


def _split(images: Images) -> list[Any]:
    """Split any accepted input into a list of single images."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images.unbind(0))
    if isinstance(images, np.ndarray | torch.Tensor | Image.Image):
        return [images]
    if isinstance(images, Sequence) and not isinstance(images, str | bytes):
        items = list(images)
        if not items:
            raise ValueError("expected at least one image, got an empty sequence")
        return items
    raise TypeError(f"expected an image or a sequence of images, got {_describe(images)}")


def to_uint8_list(images: Images) -> list[np.ndarray]:
    """Convert any accepted input to a list of ``uint8`` ``(H, W, 3)`` RGB arrays.

    Args:
        images: One image or a batch in any form listed in the module docstring.

    Returns:
        One contiguous RGB array per image.

    Raises:
        ValueError: empty input, non-RGB or out-of-range image (the message names the index and shape).
        TypeError: unsupported object type.
    """
    items = _split(images)
    if len(items) == 0:
        raise ValueError("expected at least one image, got an empty batch")
    return [_one_to_uint8(item, f"image {i}") for i, item in enumerate(items)]


def to_uint8(image: ImageLike) -> np.ndarray:
    """Convert exactly one image to a ``uint8`` ``(H, W, 3)`` RGB array (see :func:`to_uint8_list`)."""
    items = _split(image)
    if len(items) != 1:
        raise ValueError(f"expected a single image, got a batch of {len(items)}")
    return _one_to_uint8(items[0], "image")


def to_float_list(images: Images) -> list[torch.Tensor]:
    """Convert any accepted input to a list of float ``(3, H, W)`` tensors in [0, 1]."""
    items = _split(images)
    if len(items) == 0:
        raise ValueError("expected at least one image, got an empty batch")
    return [_one_to_float(item, f"image {i}") for i, item in enumerate(items)]


def cover_crop(x: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Scale ``x`` so that it covers ``height x width`` (antialiased), then cut out the centre.

    The one resize-and-crop of the project: the experts' input transform (:func:`resize_center_crop`) and the
    video buckets of training clips (the apps' ``resize_crop``) are this with their own interpolation.

    Args:
        x: ``(..., C, H, W)`` float tensor (any leading dimensions: one image, a batch, the frames of a clip).
        height, width: Output size.
        mode: ``"bilinear"`` or ``"bicubic"``.

    Returns:
        ``(..., C, height, width)``; unchanged values where no resize is needed.
    """
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        flat = x.reshape(-1, *x.shape[-3:])  # (N, C, H, W): interpolate's antialiasing wants 4-D input
        flat = F.interpolate(flat, size=(nh, nw), mode=mode, antialias=True, align_corners=False)
        x = flat.reshape(*x.shape[:-2], nh, nw)
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[..., top : top + height, left : left + width]


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bicubic, antialiased) and centre-crop to ``size x size``.

    This is the CLIP / DINOv2 evaluation transform (``Resize(size)`` + ``CenterCrop(size)``), done on
    tensors so it runs on the expert's device.

    Args:
        image: ``(3, H, W)`` float tensor in [0, 1].
        size: Output side length.

    Returns:
        ``(3, size, size)`` float tensor, clamped to [0, 1].
    """
    return cover_crop(image, size, size, mode="bicubic").clamp(0.0, 1.0)
