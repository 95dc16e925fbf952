"""Offline stand-ins for tests, benchmarks and demos: random-weight models and face videos from real photos.

Nothing here downloads. The random models have the real architectures (so loading code and shapes are exercised)
but their numbers mean nothing; the face videos are built from real photographs that ship inside installed
wheels (insightface's ``t1.jpg`` group photo and ``Tom_Hanks_54745.png``).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from cofe_bench.clipscore import CLIPScorer
from cofe_bench.inception import InceptionFeatures


def write_video(frames: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    """Write uint8 RGB ``(T, H, W, 3)`` (even H and W) as an H.264 mp4 with PyAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return path


def photo_dir() -> Path:
    """insightface's bundled sample images (``t1.jpg``: six people; ``Tom_Hanks_54745.png``)."""
    import insightface

    return Path(insightface.__file__).parent / "data" / "images"


def load_photo(name: str) -> np.ndarray:
    """A bundled photo as uint8 RGB."""
    from PIL import Image

    with Image.open(photo_dir() / name) as im:
        return np.asarray(im.convert("RGB"))


# Face boxes [x1, y1, x2, y2] of the six people in t1.jpg (YuNet, offline backend), left to right in the image.
T1_BOXES = {
    "p0": (60, 268, 167, 396),
    "p1": (266, 151, 371, 277),
    "p2": (465, 266, 567, 411),
    "p3": (748, 353, 846, 475),
    "p4": (905, 58, 1005, 202),
    "p5": (1125, 272, 1220, 396),
}


def face_crop(photo: np.ndarray, box: tuple[int, int, int, int], size: int = 160, margin: float = 0.9) -> np.ndarray:
    """A square ``size`` crop around ``box`` with ``margin`` of the box size on every side (face ~35% wide)."""
    x1, y1, x2, y2 = box
    cx, cy, s = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    m = np.array([[size / s, 0, size / 2 - cx * size / s], [0, size / s, size / 2 - cy * size / s]])
    return cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def moving_face_frames(face: np.ndarray, num_frames: int = 12, angle: float = 12.0, shift: float = 0.06) -> np.ndarray:
    """A face image rotated from ``-angle`` to ``+angle`` degrees and shifted across ``num_frames`` frames."""
    h, w = face.shape[:2]
    frames = []
    for t in np.linspace(-1, 1, num_frames):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle * t, 1.0)
        m[0, 2] += shift * w * t
        frames.append(cv2.warpAffine(face, m, (w, h), borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)  # (T, H, W, 3)


def faceless_frames(num_frames: int = 12, size: int = 160, seed: int = 0) -> np.ndarray:
    """Smooth moving colour blobs without any face."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (size * 2, size * 2), cv2.INTER_CUBIC)
    return np.stack([base[t * 4 : t * 4 + size, t * 4 : t * 4 + size] for t in range(num_frames)])


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


def _clip_tokenizer_files(out: Path) -> None:
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
    _clip_tokenizer_files(out)
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
