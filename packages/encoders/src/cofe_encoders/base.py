"""The one interface shared by the three frozen experts.

Every expert maps a batch of images to an :class:`ExpertOutput` with ``tokens (B, L, C_tok)`` and
``pooled (B, C_pool)``. Freezing happens here and only here: :meth:`FrozenExpert.freeze` puts the module in
``eval()`` mode and turns off gradients, and :meth:`FrozenExpert.train` refuses to leave eval mode, so a
parent ``model.train()`` (Lightning calls it every epoch) cannot re-enable dropout or stochastic depth in a
frozen backbone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from cofe_encoders.images import Images, resize_center_crop, to_float_list


@dataclass(frozen=True)
class ExpertOutput:
    """What an expert returns.

    Attributes:
        tokens: ``(B, L, C_tok)`` token sequence (patch tokens, or one token for the identity embedding).
        pooled: ``(B, C_pool)`` one global vector per image.
    """

    tokens: torch.Tensor
    pooled: torch.Tensor


class FrozenExpert(nn.Module, ABC):
    """Base class of the frozen experts.

    Subclasses implement :meth:`_encode`, taking the raw images (any form accepted by
    :mod:`cofe_encoders.images`) and returning float tensors; the base class handles no-grad, device and dtype.

    Attributes:
        kind: ``"identity"``, ``"semantic"`` or ``"detail"``.
        num_tokens: ``L`` of the tokens.
        token_dim: ``C_tok`` of the tokens.
        pooled_dim: ``C_pool`` of the pooled vector.
        image_size: Side of the square network input after preprocessing.
    """

    kind: str = ""
    num_tokens: int
    token_dim: int
    pooled_dim: int
    image_size: int

    def __init__(self) -> None:
        super().__init__()
        # An empty buffer that follows `.to(device, dtype)`: it tells experts without parameters (the ONNX
        # identity expert) where their outputs should live.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    def freeze(self) -> FrozenExpert:
        """Put the expert in eval mode and disable gradients for all its parameters (idempotent)."""
        super().train(False)
        self.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> FrozenExpert:
        """Stay in eval mode whatever ``mode`` is: experts are frozen (see module docstring)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """The device outputs are returned on."""
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype outputs are returned in (and compute runs in, for the torch experts)."""
        return self._anchor.dtype

    @abstractmethod
    def _encode(self, images: Images, **kwargs) -> ExpertOutput:
        """Encode images; called under ``torch.no_grad()``."""

    @torch.no_grad()
    def encode(self, images: Images, **kwargs) -> ExpertOutput:
        """Encode a batch of images.

        Args:
            images: uint8 ``(H, W, 3)`` RGB arrays, RGB PIL images, or a float tensor ``(B, 3, H, W)`` in
                [0, 1] (see :mod:`cofe_encoders.images`). Preprocessing (resize, normalisation and, for the
                identity expert, alignment) happens inside.
            **kwargs: Expert-specific options (for example ``kps5`` for the identity expert).

        Returns:
            ``ExpertOutput`` on :attr:`device` in :attr:`dtype`. The tensors do not require grad; they are
            ordinary tensors (not inference-mode tensors), so they can feed trainable layers.
        """
        out = self._encode(images, **kwargs)
        return ExpertOutput(
            tokens=out.tokens.to(device=self.device, dtype=self.dtype),
            pooled=out.pooled.to(device=self.device, dtype=self.dtype),
        )

    def forward(self, images: Images, **kwargs) -> ExpertOutput:
        """Same as :meth:`encode`."""
        return self.encode(images, **kwargs)

    #: What the expert is designed to see (recorded by :meth:`describe`): ``"arcface-112-aligned"`` for the
    #: identity expert, ``"head-crop-<size>"`` (the reference head crop, resized) for the ViT experts.
    input_kind: str = ""
    variant: str = ""
    weights: str | None = None

    def describe(self) -> dict:
        """Machine-readable description, recorded in precompute's ``config.json``.

        Returns:
            ``{"kind", "variant", "weights", "token_dim", "num_tokens", "pooled_dim", "image_size", "input"}``
            (subclasses add their own options).
        """
        return {
            "kind": self.kind,
            "variant": self.variant,
            "weights": self.weights,
            "token_dim": int(self.token_dim),
            "num_tokens": int(self.num_tokens),
            "pooled_dim": int(self.pooled_dim),
            "image_size": int(self.image_size),
            "input": self.input_kind,
        }


class ViTExpert(FrozenExpert):
    """A frozen ViT expert: resize + centre-crop to ``image_size`` and normalise with the ``mean`` / ``std`` buffers
    (``(1, 3, 1, 1)``) that the subclass registers for its training data (CLIP's or ImageNet's statistics).

    Designed input: the **reference head crop** (:func:`cofe_encoders.face.reference_crop`: aligned by the 5
    points, zoomed out 1.6x so hair, ears, head shape and accessories are in, background whitened), square, so
    the resize to ``image_size`` keeps its aspect and the centre crop cuts nothing. Why this crop and not the
    ArcFace one: CLIP and DINOv2 were trained on whole, centred objects (LAION, LVD-142M), and what they add to
    the identity embedding is exactly what the tight 112 crop cuts off (hairstyle, face shape, skin and
    accessories); the white background keeps the reference's backdrop and clothes from leaking into the video,
    as ConsisID and PhotoMaker whiten theirs.
    """

    image_size: int

    @property
    def input_kind(self) -> str:  # type: ignore[override]
        return f"head-crop-{self.image_size}"

    def preprocess(self, images: Images) -> torch.Tensor:
        """``(B, 3, S, S)`` normalised input on the expert's device and dtype."""
        x = torch.stack([resize_center_crop(im.to(self.device), self.image_size) for im in to_float_list(images)])
        x = (x - self.mean) / self.std  # (B, 3, S, S)
        return x.to(self.dtype)
