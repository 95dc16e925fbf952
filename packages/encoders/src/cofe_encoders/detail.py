"""Detail expert: DINOv2 (timm), weights from a local file.

Tokens are the final patch tokens after the last norm (registers and class token removed); pooled is the
normalised class token, DINOv2's global descriptor.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from cofe_encoders.base import ExpertOutput, ViTExpert
from cofe_encoders.images import Images
from cofe_encoders.weights import resolve_file

# A DINOv2-shaped ViT small enough for CPU tests (random weights): same patch size, layer scale and
# (for the reg variant) register tokens as the real models.
TINY_DINOV2 = {"embed_dim": 48, "depth": 2, "num_heads": 2}
_TINY = {
    "tiny": ("vit_small_patch14_dinov2", TINY_DINOV2),
    "tiny-reg": ("vit_small_patch14_reg4_dinov2", TINY_DINOV2),
}


class DINOv2Expert(ViTExpert):
    """Frozen DINOv2 ViT from timm.

    Designed input: the reference head crop (:func:`cofe_encoders.face.reference_crop`), resized to
    ``image_size``; why, in :class:`~cofe_encoders.base.ViTExpert`. DINOv2's patch tokens carry the local
    texture and shape detail (skin, hair strands, wrinkles) that CLIP's contrastive training discards.

    Args:
        variant: timm name (``"vit_large_patch14_dinov2.lvd142m"``, ``"vit_large_patch14_reg4_dinov2.lvd142m"``,
            ...) or ``"tiny"`` / ``"tiny-reg"`` (random weights, for tests).
        weights: Local checkpoint file (timm or original DINOv2 layout; timm converts it and resamples the
            position embedding to ``image_size``), loaded through ``pretrained_cfg_overlay=dict(file=...)``.
            ``None`` keeps random weights.
        image_size: Input side, a multiple of 14 (224 gives 16x16 = 256 patch tokens).
        depth: Keep only this many blocks, at the variant's full width (random-weight rehearsals of a real
            geometry on a CPU; refused with ``weights``). None keeps the variant's depth.
    """

    kind = "detail"

    def __init__(
        self,
        variant: str = "vit_large_patch14_dinov2.lvd142m",
        weights: str | Path | None = None,
        image_size: int = 224,
        depth: int | None = None,
    ) -> None:
        super().__init__()
        if image_size % 14 != 0:
            raise ValueError(f"image_size must be a multiple of the patch size 14, got {image_size}")
        name, extra = _TINY.get(variant, (variant, {}))
        kwargs = dict(extra, img_size=image_size, num_classes=0)
        if depth is not None:  # random-weight rehearsals at the variant's width
            if weights is not None:
                raise ValueError("depth= shrinks a random-weight model; a checkpoint has its own depth")
            kwargs["depth"] = depth
        if weights is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(resolve_file(weights, "DINOv2"))})
        try:
            self.model = timm.create_model(name, **kwargs)
        except RuntimeError as exc:  # timm raises RuntimeError for unknown names and mismatched checkpoints
            raise ValueError(f"could not build DINOv2 variant {variant!r} with weights {weights}: {exc}") from exc
        self.variant = variant
        self.weights = str(weights) if weights is not None else None
        self.image_size = image_size
        self.num_prefix = self.model.num_prefix_tokens
        grid = image_size // 14
        self.num_tokens = grid * grid
        self.token_dim = self.pooled_dim = self.model.embed_dim
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def _encode(self, images: Images) -> ExpertOutput:
        x = self.preprocess(images)  # (B, 3, S, S)
        feats = self.model.forward_features(x)  # (B, prefix + N, C), after the final norm
        return ExpertOutput(tokens=feats[:, self.num_prefix :], pooled=feats[:, 0])
