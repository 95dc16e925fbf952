"""CLIPScore (Hessel et al., EMNLP 2021, without their 2.5 weight): ``100 x cos(image embedding, text embedding)``.

The model is the one ConsisID evaluates with, ``openai/clip-vit-base-patch32`` in the Hugging Face
``transformers`` layout (a local directory with ``config.json``, the weights and the tokenizer files), the same
layout torchmetrics' ``CLIPScore`` loads, so both compute from identical weights. ``transformers`` is imported
only when a scorer is built (the ``cofe-apps`` environment has it).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


class CLIPScorer:
    """Frozen CLIP text-image scorer.

    Args:
        model: A ``transformers.CLIPModel``.
        processor: Its ``transformers.CLIPProcessor`` (resize 224 bicubic, centre crop, CLIP normalisation,
            BPE tokenizer).
        device: Compute device.
    """

    def __init__(self, model, processor, device: str = "cpu") -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.processor = processor
        self.device = torch.device(device)
        # CLIP's text transformer has 77 positions (Radford et al. 2021); prompts are cut there.
        self.max_tokens = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> CLIPScorer:
        """Load a local Hugging Face CLIP directory (never downloads).

        Raises:
            FileNotFoundError: ``path`` is not a directory with a ``config.json``.
        """
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"CLIP model directory {path} has no config.json; expected a local copy of "
                "openai/clip-vit-base-patch32 (transformers layout)"
            )
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(str(path), local_files_only=True)
        processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
        return cls(model, processor, device)

    def num_tokens(self, prompt: str) -> int:
        """Tokens of ``prompt`` including the start and end tokens, before truncation."""
        return len(self.processor.tokenizer(prompt, truncation=False)["input_ids"])

    @torch.no_grad()
    def score(self, frames: Sequence[np.ndarray], prompt: str) -> tuple[np.ndarray, bool]:
        """Per-frame CLIPScore of ``frames`` against ``prompt``.

        Args:
            frames: uint8 ``(H, W, 3)`` arrays, passed to the processor as they are (the caller decides RGB or,
                for the ConsisID protocol, BGR).
            prompt: The text; cut to the model's 77 tokens with a warning when longer.

        Returns:
            ``(scores, truncated)``: ``(F,)`` float64 ``100 * cos`` per frame, and whether the prompt was cut.
        """
        truncated = self.num_tokens(prompt) > self.max_tokens
        if truncated:
            warnings.warn(
                f"CLIPScore: prompt has {self.num_tokens(prompt)} tokens, truncated to {self.max_tokens}: "
                f"{prompt[:60]!r}...",
                stacklevel=3,
            )
        inputs = self.processor(
            text=[prompt],
            images=[np.ascontiguousarray(f) for f in frames],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        out = self.model(**inputs)
        img = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)  # (F, E)
        txt = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)  # (1, E)
        return (100.0 * img @ txt.T)[:, 0].double().cpu().numpy(), truncated
