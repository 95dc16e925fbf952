"""Fixtures for the apps tests: curated-format shards built from a real face photo (no curation run needed)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from cofe_apps.video import write_mp4


def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # (512, 512, 3) uint8, one real frontal face


def make_curated_shards(
    folder: Path, shards: int = 2, per_shard: int = 3, frames: int = 9, size: int = 64
) -> list[str]:
    """Write ``shards`` curated WebDataset shards (DESIGN.md section 3 contract): key.mp4, key.json, key.ref.png.

    Clips pan across the real astronaut photo (the face moves in frame); each sample has its own caption.
    """
    folder.mkdir(parents=True, exist_ok=True)
    img = _astronaut()
    face = img[20:240, 120:340]  # the face region
    ref = np.asarray(Image.fromarray(face).resize((112, 112)))
    ref_png = io.BytesIO()
    Image.fromarray(ref).save(ref_png, format="PNG")
    paths = []
    for s in range(shards):
        path = folder / f"{s:03d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                key = f"clip{s:03d}_{i:03d}"
                clip = []
                for t in range(frames):
                    x0 = 100 + 4 * t + 10 * i
                    crop = img[20 + s * 8 : 20 + s * 8 + 256, x0 : x0 + 256]
                    clip.append(np.asarray(Image.fromarray(crop).resize((size, size))))
                mp4 = folder / f"{key}.mp4"
                write_mp4(np.stack(clip), mp4, fps=8)
                meta = {
                    "fps": 8,
                    "num_frames": frames,
                    "width": size,
                    "height": size,
                    "caption": f"a woman in a space suit, take {i}",
                    "caption_refined": f"a woman in a space suit {i}",
                    "speaking": False,
                    "speech_ratio": 0.0,
                    "faces": [
                        {
                            "frame": t,
                            "bbox": [10, 5, 50, 55],
                            "kps5": [[20, 20]] * 5,
                            "score": 0.9,
                            "yaw": 2.0 * t,
                            "pitch": 0.0,
                            "roll": 0.0,
                        }
                        for t in range(frames)
                    ],
                    "face_ratio": 0.4,
                    "yaw_range": 2.0 * (frames - 1),
                    "id_consistency": 0.9,
                    "identity_cluster": 0,
                    "source": "astronaut",
                }
                sink.write(
                    {
                        "__key__": key,
                        "mp4": mp4.read_bytes(),
                        "json": json.dumps(meta).encode(),
                        "ref.png": ref_png.getvalue(),
                    }
                )
                mp4.unlink()
        paths.append(str(path))
    return paths


@pytest.fixture
def curated_shards(tmp_path) -> list[str]:
    return make_curated_shards(tmp_path / "curated")


@pytest.fixture(scope="session")
def make_curated():
    """The shard builder itself, for fixtures of other scopes."""
    return make_curated_shards
