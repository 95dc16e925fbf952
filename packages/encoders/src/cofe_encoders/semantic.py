"""Semantic expert: a CLIP vision tower (open_clip), weights from a local file.

Tokens are the patch tokens of one transformer block's output (the penultimate block by default, the layer
IP-Adapter-Plus and PhotoMaker read: the last block is shaped most by the contrastive head, the one before it
keeps more local detail), without the class token and before ``ln_post``. Pooled is the projected image
embedding, the vector CLIP compares with text.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from cofe_encoders.base import ExpertOutput, ViTExpert
from cofe_encoders.images import Images
from cofe_encoders.weights import load_state_dict_file

# A CLIP-shaped tower small enough for CPU tests (random weights).
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 56, "layers": 3, "width": 64, "head_width": 32, "patch_size": 14},
}


def _vision_cfg(variant: str) -> tuple[int, dict, bool]:
    if variant == "tiny":
        cfg = TINY_CLIP
    else:
        cfg = open_clip.get_model_config(variant)
        if cfg is None:
            raise ValueError(f"unknown CLIP variant {variant!r}; use 'tiny' or an open_clip name such as 'ViT-L-14'")
    return int(cfg["embed_dim"]), dict(cfg["vision_cfg"]), bool(cfg.get("quick_gelu", False))


class CLIPVisionExpert(ViTExpert):
    """Frozen open_clip vision tower.

    Designed input: the reference head crop (:func:`cofe_encoders.face.reference_crop`), resized to
    ``image_size`` (224 for ViT-H/14: 16 x 16 = 256 tokens); why, in :class:`~cofe_encoders.base.ViTExpert`.

    Args:
        variant: open_clip model name (``"ViT-H-14"``, the default: LAION-2B ViT-H/14, 1280-d tokens, the tower
            Wan 2.1 I2V's CLIP also uses; ``"ViT-L-14-quickgelu"`` for OpenAI's ViT-L/14, ``"ViT-L-14"``...)
            or ``"tiny"`` (random weights, for tests). Weights: open_clip's ``laion2b_s32b_b79k``
            ``open_clip_pytorch_model.bin`` for ViT-H-14.
        weights: Local checkpoint: an open_clip / OpenAI state dict (``.bin``, ``.pt``, ``.pth``,
            ``.safetensors``) of the whole CLIP model (keys ``visual.*``) or of the vision tower alone.
            ``None`` keeps random weights.
        layer: Which block's output gives the tokens (negative counts from the end; ``-2`` = penultimate).
        image_size: Input side (default: the model's).
        depth: Keep only this many transformer blocks, at the variant's full width (random-weight rehearsals of
            a real geometry on a CPU; refused with ``weights``). None keeps the variant's depth.
    """

    kind = "semantic"

    def __init__(
        self,
        variant: str = "ViT-H-14",
        weights: str | Path | None = None,
        layer: int = -2,
        image_size: int | None = None,
        depth: int | None = None,
    ) -> None:
        super().__init__()
        embed_dim, vision_cfg, quick_gelu = _vision_cfg(variant)
        if image_size is not None:
            vision_cfg["image_size"] = image_size
        if depth is not None:
            if weights is not None:
                raise ValueError("depth= shrinks a random-weight tower; a checkpoint has its own depth")
            vision_cfg["layers"] = depth
        cfg = open_clip.model.CLIPVisionCfg(**vision_cfg)
        self.visual = open_clip.model._build_vision_tower(embed_dim, cfg, quick_gelu=quick_gelu)
        depth = len(self.visual.transformer.resblocks)
        if not -depth <= layer < depth:
            raise ValueError(f"layer {layer} out of range for a {depth}-block tower ({variant})")
        self.layer = layer % depth
        self.variant = variant
        self.weights = str(weights) if weights is not None else None
        if weights is not None:
            state = load_state_dict_file(weights, "CLIP")
            if any(k.startswith("visual.") for k in state):
                state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
            try:
                self.visual.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ValueError(f"CLIP weights {weights} do not match variant {variant!r}: {exc}") from exc
        size = self.visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        grid = self.image_size // cfg.patch_size
        self.num_tokens = grid * grid
        self.token_dim = cfg.width
        self.pooled_dim = embed_dim
        self.register_buffer("mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def describe(self) -> dict:
        return {**super().describe(), "layer": self.layer}

    def _encode(self, images: Images) -> ExpertOutput:
        x = self.preprocess(images)  # (B, 3, S, S)
        out = self.visual.forward_intermediates(x, indices=[self.layer], output_fmt="NLC")
        tokens = out["image_intermediates"][0]  # (B, N, width), class token removed
        pooled = out["image_features"]  # (B, embed_dim)
        return ExpertOutput(tokens=tokens, pooled=pooled)
