"""Random-weight stand-ins for the bench's networks, for smoke runs (``cofe bench --random-models``) and tests.

They have the real architectures, so loading code, shapes and the whole scoring path are exercised offline, but
their numbers mean nothing. A run that uses them is reported as approximate under the field's protocols.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch

from cofe_bench.clipscore import CLIPScorer
from cofe_bench.inception import InceptionFeatures


def random_inception(seed: int = 0, calibrate_on: np.ndarray | None = None, input_size: int = 299) -> InceptionFeatures:
    """InceptionV3 with random weights whose batch-norm statistics are set from ``calibrate_on`` crops.

    Plain random init makes the 2048-d pool features vanish or explode; recomputing every BN layer's running
    mean and variance on a few images (one training-mode pass, ``momentum=None``) keeps them of unit scale, so
    that different faces give different features, as with the real network. ``input_size < 299`` makes it
    faster for tests.
    """
    torch.manual_seed(seed)
    model = InceptionFeatures(None, input_size=input_size)
    if calibrate_on is None:
        rng = np.random.default_rng(seed)
        calibrate_on = rng.integers(0, 255, (8, 224, 224, 3), dtype=np.uint8)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration pass
    model.net.train()
    with torch.no_grad():
        model.net(model.preprocess(list(calibrate_on)))
    model.eval()
    return model


def clip_tokenizer_files(out: Path) -> None:
    """CLIP's BPE ``vocab.json`` / ``merges.txt`` rebuilt from the vocabulary file open_clip ships.

    Same construction as OpenAI CLIP's ``SimpleTokenizer`` (bytes, bytes + ``</w>``, the 48894 merges, then the
    two special tokens), so the ids equal those of ``openai/clip-vit-base-patch32``'s tokenizer.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def save_tiny_clip(out: str | Path, seed: int = 0) -> Path:
    """Save a tiny random CLIP (ViT-B/32 layout: 224 px, 32 px patches, 77 text positions) with its processor.

    The directory is in the ``transformers`` layout that :meth:`CLIPScorer.from_pretrained` and torchmetrics'
    ``CLIPScore`` load.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clip_tokenizer_files(out)
    torch.manual_seed(seed)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    cfg = CLIPConfig(
        text_config={**small, "max_position_embeddings": 77, "vocab_size": 49408},
        vision_config={**small, "image_size": 224, "patch_size": 32},
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(out)
    tokenizer = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(out)
    return out


def tiny_clip(out: str | Path, seed: int = 0) -> CLIPScorer:
    """:func:`save_tiny_clip` then load it as a scorer."""
    return CLIPScorer.from_pretrained(save_tiny_clip(out, seed))
