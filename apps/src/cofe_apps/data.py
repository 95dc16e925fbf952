"""Streaming training shards with WebDataset, at scale: reproducible, equal on every rank, resumable.

A training sample (``cofe precompute`` writes them) is a curated sample plus arrays:
    key.json        the curated annotation (caption, caption_refined, faces with per-frame pose, ...)
    key.latent.npy  (C, F', H', W') normalised VAE latent, float16
    key.txt.npy     (n_tokens, text_dim) umT5 states of the real tokens, float16
    key.id.npy      (C_id,) identity expert (pooled ArcFace / SFace embedding of the aligned crop), float16
    key.sem.npy     (L, C_sem) semantic expert tokens, float16
    key.det.npy     (L, C_det) detail expert tokens, float16
    key.clip.npy    (I, C_img) CLIP image tokens of the first frame (Wan 2.1 I2V only)
    key.cond.npy    (C, F', H', W') VAE latent of [first frame, zero frames] (Wan 2.1 I2V only)
In ``raw`` mode a curated sample (key.mp4, key.json, key.ref.png, key.ref_id.png) is decoded instead: frames are
sampled, resized and centre-cropped to the bucket, and the module encodes them (VAE, text, experts) on the fly.

The pipeline is an explicit list of stages (open_clip's ``data.py`` layout), run per DataLoader worker:
    shard order for this epoch (seeded by ``seed`` and the epoch, the same on every rank; with ``resampled`` shards
    are drawn with replacement, seeded by seed, epoch, rank and worker) -> this rank's shards -> this worker's
    shards -> tar reading -> shuffle buffer of undecoded samples (seeded per epoch, rank and worker) -> skip what an
    interrupted run already trained on -> decode -> batch -> cap.
Equal batch counts: without ``resampled``, every rank yields the same number of batches per epoch (the smallest
rank's, from the shards' sample counts: precompute's ``config.json`` records them, otherwise the tar headers are
counted once), so uneven shards cannot hang DDP / FSDP; the batches left out are logged. With ``resampled`` each
rank yields ``epoch_samples // batch_size`` batches.
Resume: the data module's state (epoch and batches already trained in it) is saved in every checkpoint; a resumed
run skips exactly those batches (undecoded) and replays none.
A broken sample is logged (rate-limited), counted and skipped; past ``max_bad_fraction`` of the samples a worker has
read, the run fails.
"""

from __future__ import annotations

import json
import logging
import random
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cofe_apps.components import pad_text
from cofe_apps.io import caption, decode_clip, expand_shards, read_npy
from cofe_apps.specs import EXPERT_KEYS

log = logging.getLogger(__name__)

ARRAYS = ("latent", "txt", *EXPERT_KEYS.values())
I2V_ARRAYS = ("clip", "cond")


class TooManyBadSamples(RuntimeError):
    """More than the allowed fraction of samples could not be read."""


class SkipCounter:
    """WebDataset error handler: log and skip a broken sample, count it, fail past a fraction (per worker).

    Logging is rate-limited: the first ``log_first`` skips each, then every ``log_every``-th with the running count.
    """

    def __init__(self, max_bad_fraction: float = 0.1, min_samples: int = 20, log_first: int = 10, log_every: int = 100):
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.log_first, self.log_every = log_first, log_every
        self.bad = 0
        self.good = 0

    def __call__(self, exn: BaseException) -> bool:
        self.bad += 1
        if self.bad <= self.log_first or self.bad % self.log_every == 0:
            msg = f"skipping a broken sample ({self.bad} so far): {type(exn).__name__}: {exn}"
            log.warning(msg)
            warnings.warn(msg, stacklevel=2)
        total = self.bad + self.good
        if total >= self.min_samples and self.bad > self.max_bad_fraction * total:
            raise TooManyBadSamples(
                f"{self.bad} of {total} samples were broken, more than max_bad_fraction={self.max_bad_fraction}"
            ) from exn
        return True  # continue


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
        for a in (*ARRAYS, *(a for a in I2V_ARRAYS if f"{a}.npy" in sample)):
            arr = read_npy(sample[f"{a}.npy"]).astype(np.float32)
            if not np.isfinite(arr).all():
                raise ValueError(f"sample {key!r}: {a}.npy contains NaN or Inf")
            out[a] = arr
        self.counter.good += 1
        return out


class DecodeRaw:
    """A curated sample -> frames cropped to the bucket, the aligned identity crop, the reference head crop."""

    def __init__(self, counter: SkipCounter, frames: int, height: int, width: int, stride: int):
        self.counter = counter
        self.frames, self.height, self.width, self.stride = frames, height, width, stride
        self._analyzer = None

    def __call__(self, sample: dict) -> dict:
        from cofe_apps.components import reference_crops

        key = sample.get("__key__", "?")
        missing = [p for p in ("mp4", "json", "ref.png") if p not in sample]
        if missing:
            raise ValueError(f"sample {key!r} ({sample.get('__url__', '?')}) lacks {missing}: is it a curated shard?")
        video = decode_clip(sample["mp4"], self.frames, self.height, self.width, self.stride)  # (3, F, H, W)
        if "ref_id.png" not in sample and self._analyzer is None:
            from cofe_encoders.face import build_face_analyzer

            self._analyzer = build_face_analyzer("offline")
        ident, head, _ = reference_crops(sample, self._analyzer)
        meta = json.loads(sample["json"])
        self.counter.good += 1
        return {"__key__": key, "video": video, "ref_id": ident, "ref": head, "meta": meta}


class CollateRaw:
    """Stack raw samples: ``video (B, 3, F, H, W)`` in [-1, 1], reference crops and captions as lists."""

    def __call__(self, samples: list[dict]) -> dict:
        return {
            "keys": [s["__key__"] for s in samples],
            "video": torch.stack([s["video"] for s in samples]),
            "ref_id": [s["ref_id"] for s in samples],
            "ref": [s["ref"] for s in samples],
            "caption": [caption(s["meta"]) for s in samples],
        }


class Collate:
    """Stack a list of decoded samples into a batch; text is zero-padded to ``text_len``."""

    def __init__(self, text_len: int):
        self.text_len = text_len

    def __call__(self, samples: list[dict]) -> dict:
        shapes = {s["latent"].shape for s in samples}
        if len(shapes) > 1:
            raise ValueError(f"latents of one batch must share a size (use buckets); got {sorted(shapes)}")
        batch = {
            "keys": [s["__key__"] for s in samples],
            "txt": pad_text([s["txt"] for s in samples], self.text_len),
            "caption": [caption(s["meta"]) for s in samples],
        }
        for a in (*ARRAYS, *I2V_ARRAYS):
            if a == "txt" or a not in samples[0]:
                continue
            batch[a] = torch.from_numpy(np.stack([s[a] for s in samples]))
        return batch


# --------------------------------------------------------------------------------------------------- the stream


def count_samples(url: str) -> int:
    """Samples in a tar shard, from its headers (members of one key are one sample); nothing is decoded."""
    keys = set()
    with tarfile.open(url, "r|*") as tar:
        for member in tar:
            if member.isfile():
                name = member.name.rsplit("/", 1)[-1]
                keys.add(member.name[: len(member.name) - len(name)] + name.split(".", 1)[0])
    return len(keys)


def _caps(batches: list[list[int]]) -> list[list[int]]:
    """Per rank and worker, how many batches to yield so that every rank yields the same total (the smallest
    rank's), never more than a worker has; filled worker by worker like the DataLoader's round robin."""
    total = min(sum(ws) for ws in batches)
    caps = []
    for ws in batches:
        cap = [0] * len(ws)
        left = total
        while left:
            for w, n in enumerate(ws):
                if left and cap[w] < n:
                    cap[w] += 1
                    left -= 1
        caps.append(cap)
    return caps


def _skips(caps: list[int], done: int) -> list[int]:
    """Batches each worker already yielded after ``done`` batches of the DataLoader's round robin over workers
    (a worker that has yielded its cap drops out of the rotation)."""
    skips = [0] * len(caps)
    w = 0
    for _ in range(min(done, sum(caps))):
        while skips[w] >= caps[w]:
            w = (w + 1) % len(caps)
        skips[w] += 1
        w = (w + 1) % len(caps)
    return skips


class ShardStream(IterableDataset):
    """The per-worker pipeline described in the module docstring (picklable: bound in the main process)."""

    def __init__(self, urls: list[str], counts: dict[str, int] | None, rank: int, world: int, hp: dict,
                 counter: SkipCounter, start_epoch: int = 0, resume: tuple[int, int] | None = None):  # fmt: skip
        self.urls, self.counts, self.rank, self.world = urls, counts, rank, world
        self.hp, self.counter = hp, counter
        self.start_epoch, self.resume = start_epoch, resume
        self._iters = 0

    def _workers(self) -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def plan(self, epoch: int, num_workers: int) -> tuple[list[list[list[str]]], list[list[int]]]:
        """Shards of every (rank, worker) this epoch and the batches each yields."""
        hp = self.hp
        bs = hp["batch_size"]
        if hp["resampled"]:
            per_rank = max(1, hp["epoch_samples"] // bs)
            caps = [[per_rank // num_workers + (w < per_rank % num_workers) for w in range(num_workers)]] * self.world
            return [], caps
        order = list(self.urls)
        random.Random(f"{hp['seed']}-{epoch}").shuffle(order)  # the same order on every rank
        shards = [[order[r :: self.world][w::num_workers] for w in range(num_workers)] for r in range(self.world)]
        batches = [[sum(self.counts[u] for u in ws) // bs for ws in rank] for rank in shards]
        return shards, _caps(batches)

    def __iter__(self) -> Iterator[dict]:
        hp = self.hp
        worker, num_workers = self._workers()
        epoch = self.start_epoch + self._iters
        self._iters += 1
        shards, caps = self.plan(epoch, num_workers)
        cap = caps[self.rank][worker]
        done = self.resume[1] if self.resume and self.resume[0] == epoch else 0
        skip_batches = _skips(caps[self.rank], done)[worker]
        rng_key = f"{hp['seed']}-{epoch}-{self.rank}-{worker}"
        if hp["resampled"]:
            rng = random.Random(rng_key)
            source = ({"url": rng.choice(self.urls)} for _ in iter(int, 1))  # endless, seeded draws
        else:
            source = ({"url": u} for u in shards[self.rank][worker])
        samples = wds.tariterators.tarfile_samples(source, handler=self.counter)
        if hp["shuffle_buffer"] > 0:  # before decoding: the buffer holds compressed bytes, not arrays
            rng = random.Random("shuffle-" + rng_key)
            samples = wds.filters._shuffle(samples, hp["shuffle_buffer"], min(hp["shuffle_buffer"], 16), rng=rng)
        samples = _skip(samples, skip_batches * hp["batch_size"])  # what the interrupted run trained on
        if hp["mode"] == "raw":
            decode = DecodeRaw(self.counter, hp["frames"], hp["height"], hp["width"], hp["stride"])
            collate = CollateRaw()
        else:
            decode, collate = DecodePrecomputed(self.counter), Collate(hp["text_len"])
        decoded = wds.filters._map(samples, decode, handler=self.counter)
        batches = wds.filters._batched(decoded, hp["batch_size"], collation_fn=collate, partial=False)
        for i, batch in enumerate(batches):
            if i >= cap - skip_batches:
                break
            yield batch


def _skip(it, n: int):
    for i, x in enumerate(it):
        if i >= n:
            yield x


class ShardDataModule(L.LightningDataModule):
    """Training shards -> batches, correct under DDP / FSDP (explicit node and worker splitting, equal counts).

    Args:
        train_shards: shard paths, brace patterns (``train/rank0-{000000..000009}.tar``) or globs
            (``train/*.tar``), or a list of them.
        batch_size: samples per batch per rank.
        num_workers: DataLoader workers per rank.
        shuffle_buffer: undecoded samples held for shuffling (0 disables).
        resampled: draw shards with replacement (then ``epoch_samples`` sets the epoch length).
        epoch_samples: samples per epoch per rank, with ``resampled``.
        text_len: text tokens per sample after padding (the DiT's ``text_len``).
        max_bad_fraction: fail when more than this fraction of read samples is broken.
        seed: seed of the shard order, the shuffle buffer and the resampling (combined with the epoch).
        mode: ``precomputed`` (training shards of ``cofe precompute``) or ``raw`` (curated shards: clips are decoded
            here and encoded by the module, which then needs ``components``).
        frames: raw mode: pixel frames per clip (1 + 4k).
        height: raw mode: bucket height in pixels.
        width: raw mode: bucket width in pixels.
        stride: raw mode: take every ``stride``-th decoded frame.
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
        mode: Literal["precomputed", "raw"] = "precomputed",
        frames: int = 17,
        height: int = 64,
        width: int = 64,
        stride: int = 1,
    ):
        super().__init__()
        if mode not in ("precomputed", "raw"):
            raise ValueError(f"mode must be 'precomputed' or 'raw', got {mode!r}")
        if resampled and not epoch_samples:
            raise ValueError("resampled=True needs epoch_samples (samples per epoch per rank)")
        self.save_hyperparameters()
        self.counter = SkipCounter(max_bad_fraction)
        self._resume: tuple[int, int] | None = None
        self._counts: dict[str, int] | None = None

    def _urls(self) -> list[str]:
        urls = expand_shards(self.hparams.train_shards)
        if not urls:
            raise ValueError("ShardDataModule.train_shards is empty: give shard paths or a brace pattern")
        return urls

    def counts(self, urls: list[str]) -> dict[str, int]:
        """Samples per shard: precompute's record in ``config.json`` where it has one, else the tar headers."""
        if self._counts is None or set(self._counts) != set(urls):
            recorded: dict[str, int] = {}
            for folder in {Path(u).parent for u in urls}:
                cfg = folder / "config.json"
                try:
                    shards = json.loads(cfg.read_text()).get("shards", {}) if cfg.is_file() else {}
                except ValueError:
                    shards = {}
                recorded.update({str(folder / name): int(v["samples"]) for name, v in shards.items()})
            self._counts = {}
            for u in urls:
                try:
                    self._counts[u] = recorded[u] if u in recorded else count_samples(u)
                except (OSError, tarfile.TarError) as exc:
                    warnings.warn(f"cannot read shard {u}: {exc}; it counts as empty", stacklevel=2)
                    self._counts[u] = 0
        return self._counts

    def stream(self, rank: int = 0, world_size: int = 1, epoch: int = 0) -> ShardStream:
        """The dataset of rank ``rank`` of ``world_size`` (``epoch``: the first epoch it yields)."""
        hp = dict(self.hparams)
        urls = self._urls()
        counts = None
        if not hp["resampled"]:
            workers = max(1, hp["num_workers"])
            if len(urls) < workers * world_size:
                raise ValueError(
                    f"{len(urls)} shards cannot feed {world_size} ranks x {workers} workers (each needs a shard): "
                    "write more, smaller shards, use fewer workers, or resampled=True with epoch_samples"
                )
            counts = self.counts(urls)
        stream = ShardStream(urls, counts, rank, world_size, hp, self.counter, epoch, self._resume)
        if counts is not None:
            _, caps = stream.plan(epoch, max(1, hp["num_workers"]))
            total = sum(counts.values())
            used = sum(sum(c) for c in caps) * hp["batch_size"]
            if used < total and rank == 0:
                log.info("epoch %d: %d of %d samples in equal batch counts per rank", epoch, used, total)
        return stream

    def pipeline(self, rank: int = 0, world_size: int = 1, epoch: int = 0) -> ShardStream:
        """Same as :meth:`stream` (iterate it for the batches of one epoch in the main process)."""
        return self.stream(rank, world_size, epoch)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        epoch = trainer.current_epoch if trainer is not None else 0
        return DataLoader(
            self.stream(rank, world, epoch),
            batch_size=None,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            # Worker seeds from a generator of their own: creating the iterator never draws from the global
            # stream the model's noise comes from (a resumed run then draws exactly what an uninterrupted one does).
            generator=torch.Generator().manual_seed(self.hparams.seed),
        )

    # ------------------------------------------------------------------------------------------------ resume

    def state_dict(self) -> dict:
        """Where the stream is: the epoch and the batches of it already trained (saved in every checkpoint)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": int(trainer.current_epoch), "batches": int(progress.processed)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume = (int(state["epoch"]), int(state["batches"]))
