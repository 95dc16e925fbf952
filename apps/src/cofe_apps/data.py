"""Streaming training shards with WebDataset.

A training sample (``cofe precompute`` writes them) is a curated sample plus arrays:
    key.json        the curated annotation (caption, caption_refined, faces with per-frame pose, ...)
    key.latent.npy  (C, F', H', W') normalised Wan VAE latent, float16
    key.txt.npy     (n_tokens, text_dim) umT5 states of the real tokens, float16
    key.id.npy      (C_id,) identity expert (pooled ArcFace / SFace embedding), float16
    key.sem.npy     (L, C_sem) semantic expert tokens, float16
    key.det.npy     (L, C_det) detail expert tokens, float16
In ``raw`` mode a curated sample (key.mp4, key.json, key.ref.png) is decoded instead: frames are sampled,
resized and centre-cropped to the bucket, and the module encodes them (VAE, text, experts) on the fly.

The pipeline is an explicit list of stages (open_clip's ``data.py`` layout): shard list (resampled for multi-GPU
epochs) -> split by node (rank and world size bound in the main process, so it is right under DDP, FSDP and
spawn) -> split by worker -> tar reading -> shuffle buffer -> decode -> batch. A broken sample is logged, counted
and skipped; past ``max_bad_fraction`` of the samples a worker has read, the run fails.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from cofe_apps.components import pad_text
from cofe_apps.io import decode_clip, expand_shards, read_npy

log = logging.getLogger(__name__)

ARRAYS = ("latent", "txt", "id", "sem", "det")


class TooManyBadSamples(RuntimeError):
    """More than the allowed fraction of samples could not be read."""


class SkipCounter:
    """WebDataset error handler: log and skip a broken sample, count it, fail past a fraction (per worker)."""

    def __init__(self, max_bad_fraction: float = 0.1, min_samples: int = 20):
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.bad = 0
        self.good = 0

    def __call__(self, exn: BaseException) -> bool:
        self.bad += 1
        msg = f"skipping a broken sample ({self.bad} so far): {type(exn).__name__}: {exn}"
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
        total = self.bad + self.good
        if total >= self.min_samples and self.bad > self.max_bad_fraction * total:
            raise TooManyBadSamples(
                f"{self.bad} of {total} samples were broken, more than max_bad_fraction={self.max_bad_fraction}"
            ) from exn
        return True  # continue


class SplitByNode:
    """Give rank ``r`` of ``w`` the shards ``r, r + w, ...`` (bound at construction, in the main process)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, src: Iterator) -> Iterator:
        for i, item in enumerate(src):
            if i % self.world_size == self.rank:
                yield item


class DecodePrecomputed:
    """Raw tar members -> dict of float32 arrays and the annotation; counts good samples for the handler."""

    def __init__(self, counter: SkipCounter):
        self.counter = counter

    def __call__(self, sample: dict) -> dict:
        key = sample.get("__key__", "?")
        missing = [a for a in ARRAYS if f"{a}.npy" not in sample]
        if missing:
            raise ValueError(f"sample {key!r} ({sample.get('__url__', '?')}) lacks {missing}: is it a training shard?")
        out = {"__key__": key, "meta": json.loads(sample["json"]) if "json" in sample else {}}
        for a in ARRAYS:
            arr = read_npy(sample[f"{a}.npy"]).astype(np.float32)
            if not np.isfinite(arr).all():
                raise ValueError(f"sample {key!r}: {a}.npy contains NaN or Inf")
            out[a] = arr
        self.counter.good += 1
        return out


class DecodeRaw:
    """A curated sample (key.mp4, key.json, key.ref.png) -> frames cropped to the bucket, reference face, caption."""

    def __init__(self, counter: SkipCounter, frames: int, height: int, width: int, stride: int):
        self.counter = counter
        self.frames, self.height, self.width, self.stride = frames, height, width, stride

    def __call__(self, sample: dict) -> dict:
        from PIL import Image

        key = sample.get("__key__", "?")
        missing = [p for p in ("mp4", "json", "ref.png") if p not in sample]
        if missing:
            raise ValueError(f"sample {key!r} ({sample.get('__url__', '?')}) lacks {missing}: is it a curated shard?")
        video = decode_clip(sample["mp4"], self.frames, self.height, self.width, self.stride)  # (3, F, H, W)
        ref = np.asarray(Image.open(io.BytesIO(sample["ref.png"])).convert("RGB"))
        meta = json.loads(sample["json"])
        self.counter.good += 1
        return {"__key__": key, "video": video, "ref": ref, "meta": meta}


class CollateRaw:
    """Stack raw samples: ``video (B, 3, F, H, W)`` in [-1, 1], reference faces and captions as lists."""

    def __call__(self, samples: list[dict]) -> dict:
        return {
            "keys": [s["__key__"] for s in samples],
            "video": torch.stack([s["video"] for s in samples]),
            "ref": [s["ref"] for s in samples],
            "caption": [s["meta"].get("caption_refined") or s["meta"].get("caption", "") for s in samples],
        }


class Collate:
    """Stack a list of decoded samples into a batch; text is zero-padded to ``text_len``."""

    def __init__(self, text_len: int):
        self.text_len = text_len

    def __call__(self, samples: list[dict]) -> dict:
        shapes = {s["latent"].shape for s in samples}
        if len(shapes) > 1:
            raise ValueError(f"latents of one batch must share a size (use buckets); got {sorted(shapes)}")
        return {
            "keys": [s["__key__"] for s in samples],
            "latent": torch.from_numpy(np.stack([s["latent"] for s in samples])),
            "txt": pad_text([s["txt"] for s in samples], self.text_len),
            "id": torch.from_numpy(np.stack([s["id"] for s in samples])),
            "sem": torch.from_numpy(np.stack([s["sem"] for s in samples])),
            "det": torch.from_numpy(np.stack([s["det"] for s in samples])),
            "caption": [s["meta"].get("caption_refined") or s["meta"].get("caption", "") for s in samples],
        }


class ShardDataModule(L.LightningDataModule):
    """Training shards -> batches, correct under DDP / FSDP (explicit node and worker splitting).

    Args:
        train_shards: shard URLs or paths, brace patterns allowed (``data/train-{000..099}.tar``), or a list.
        batch_size: samples per batch per rank.
        num_workers: DataLoader workers per rank.
        shuffle_buffer: samples held for shuffling (0 disables).
        resampled: draw shards with replacement forever (multi-GPU epochs of equal length); then
            ``epoch_samples`` sets the epoch length.
        epoch_samples: samples per epoch per rank (with ``resampled``); None streams each rank's shards once.
        text_len: text tokens per sample after padding (the DiT's ``text_len``).
        max_bad_fraction: fail when more than this fraction of read samples is broken.
        seed: shuffling / resampling seed.
        mode: ``precomputed`` (training shards of ``cofe precompute``) or ``raw`` (curated shards: clips are decoded
            here and encoded by the module, which then needs ``components``).
        frames, height, width, stride: the bucket of ``raw`` mode (1 + 4k frames, sizes multiple of 16).
    """

    def __init__(
        self,
        train_shards: str | list[str] = "",
        batch_size: int = 2,
        num_workers: int = 0,
        shuffle_buffer: int = 64,
        resampled: bool = False,
        epoch_samples: int | None = None,
        text_len: int = 512,
        max_bad_fraction: float = 0.1,
        seed: int = 0,
        mode: str = "precomputed",
        frames: int = 17,
        height: int = 64,
        width: int = 64,
        stride: int = 1,
    ):
        super().__init__()
        if mode not in ("precomputed", "raw"):
            raise ValueError(f"mode must be 'precomputed' or 'raw', got {mode!r}")
        self.save_hyperparameters()
        self.counter = SkipCounter(max_bad_fraction)

    def _urls(self) -> list[str]:
        urls = expand_shards(self.hparams.train_shards)
        if not urls:
            raise ValueError("ShardDataModule.train_shards is empty: give shard paths or a brace pattern")
        return urls

    def pipeline(self, rank: int = 0, world_size: int = 1) -> wds.DataPipeline:
        hp = self.hparams
        urls = self._urls()
        if not hp.resampled and len(urls) % world_size:
            raise ValueError(
                f"{len(urls)} shards do not split evenly over {world_size} ranks: unequal batch counts hang DDP; "
                "use resampled=True with epoch_samples, or a shard count divisible by the world size"
            )
        stages = [wds.ResampledShards(urls, seed=hp.seed + rank)] if hp.resampled else [wds.SimpleShardList(urls)]
        if not hp.resampled:
            stages.append(SplitByNode(rank, world_size))
        stages += [wds.split_by_worker, wds.tarfile_to_samples(handler=self.counter)]
        if hp.shuffle_buffer > 0:  # before decoding: the buffer holds compressed bytes, not arrays
            stages.append(wds.shuffle(hp.shuffle_buffer, initial=min(hp.shuffle_buffer, 16), seed=hp.seed + rank))
        if hp.mode == "raw":
            decode = DecodeRaw(self.counter, hp.frames, hp.height, hp.width, hp.stride)
            collate = CollateRaw()
        else:
            decode, collate = DecodePrecomputed(self.counter), Collate(hp.text_len)
        stages += [
            wds.map(decode, handler=self.counter),
            wds.batched(hp.batch_size, collation_fn=collate, partial=False),
        ]
        pipe = wds.DataPipeline(*stages)
        if hp.resampled:
            if not hp.epoch_samples:
                raise ValueError("resampled=True needs epoch_samples (samples per epoch per rank)")
            pipe = pipe.with_epoch(max(1, hp.epoch_samples // (hp.batch_size * max(1, hp.num_workers))))
        return pipe

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        return DataLoader(
            self.pipeline(rank, world),
            batch_size=None,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )
