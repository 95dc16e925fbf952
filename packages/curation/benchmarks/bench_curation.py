"""Curation throughput: the whole pipeline vs each stage alone, in the same run.

    .venv/bin/python packages/curation/benchmarks/bench_curation.py [--inputs N] [--workers 1] [--threads 2]

Inputs: ``N`` clips composed from real face photos (3 s, 320x256, 16 fps, with audio; a mix of kept and rejected
kinds) plus the real webcam clip ``movie-hello.mp4`` (8.3 s, 1280x720, 30 fps) when it is available.

1. Each stage alone, one after another on one process: decode (stage 1) for every input, then shots, faces,
   identity, speech and write on the decoded inputs (:class:`cofe_curation.Curator` times its stages).
2. The pipeline as ``cofe curate`` runs it (without Lightning): decoding, shot splitting and face detection in
   DataLoader workers; tracking, identity, speech and the shard writer in the main process.

Prints throughput (seconds of input video per wall second, analysed frames per second) and the ratio of the
pipeline to its slowest stage (target >= 0.8), with the device, thread count and git revision.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from cofe_curation import CurationConfig, Curator, IngestError, ShardWriter, decode, discover_inputs, error_result
from cofe_curation.synth import compose, real_clip, tone, write_clip

KINDS = ("turning", "swap", "two_faces", "turning_frontal", "tiny", "no_face")


class _Prepare(Dataset):
    """What ``cofe curate``'s DataLoader workers do: decode, split shots, detect faces."""

    def __init__(self, items, cfg):
        self.items, self.cfg, self.curator = items, cfg, None

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        try:
            video = decode(self.items[i], self.cfg.ingest)
        except IngestError as exc:
            return error_result(self.items[i].source, str(exc))
        self.curator = self.curator or Curator(self.cfg)
        prepared = self.curator.prepare(video)
        video.frames = torch.from_numpy(video.frames)  # shared memory between processes
        return video, prepared


def _one_thread(_worker_id: int) -> None:
    # Each process gets one core's worth of threads: two processes with two threads each on two cores thrash.
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _first(batch):
    return batch[0]


def _git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=12, help="composed inputs (plus the real clip if available)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (decode, shots, detection)")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenCV threads of the main process")
    parser.add_argument("--no-real", action="store_true", help="leave out movie-hello.mp4")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    cfg = CurationConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = {k: compose(k) for k in KINDS}
        for i in range(args.inputs):
            write_clip(
                tmp / "in" / f"{i:03d}_{KINDS[i % len(KINDS)]}.mp4", frames[KINDS[i % len(KINDS)]], 16.0, tone(3.0)
            )
        real = None if args.no_real else real_clip(download=False)
        if real is not None:
            (tmp / "in" / "movie-hello.mp4").write_bytes(real.read_bytes())
        items = discover_inputs([tmp / "in"])
        curator = Curator(cfg)
        curator.process(decode(items[0], cfg.ingest))  # warm-up: model loading, first-call costs

        # 1. Stages alone.
        stage_s: dict[str, float] = defaultdict(float)
        tic = time.perf_counter()
        videos = [decode(item, cfg.ingest) for item in items]
        stage_s["decode"] = time.perf_counter() - tic  # dict order: decode, then the stages in run order
        seconds_in = sum(v.duration for v in videos)
        frames_in = sum(len(v.frames) for v in videos)
        for video in videos:
            for stage, s in curator.process(video).seconds.items():
                stage_s[stage] += s
        del videos

        # 2. The pipeline.
        # The first item per worker only starts it (spawn, imports, model loading), as at the start of a long run;
        # timing starts when they have arrived.
        warm = max(args.workers, 1)
        loader = DataLoader(
            _Prepare(items[:1] * warm + items, cfg),
            batch_size=1,
            num_workers=args.workers,
            collate_fn=_first,
            worker_init_fn=_one_thread,
            prefetch_factor=2 if args.workers else None,
            multiprocessing_context="spawn" if args.workers else None,  # as cofe curate
        )
        writer = ShardWriter(tmp / "out", 0, cfg.write.shard_max_clips)
        batches = iter(loader)
        start = time.perf_counter()
        for _ in range(warm):
            next(batches)
        worker_start = time.perf_counter() - start
        tic = time.perf_counter()
        kept = 0
        for batch in batches:
            if isinstance(batch, tuple):
                video, prepared = batch
                video.frames = video.frames.numpy()
                result = curator.process(video, prepared)
            else:
                result = batch
            kept += sum(c.decision == "kept" for c in result.clips)
            writer.add(result)
        writer.close()
        pipeline_s = time.perf_counter() - tic

    load = os.getloadavg()[0]
    print(f"device: CPU {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} (other processes)")
    print(f"threads {args.threads}, {args.workers} worker(s); git {_git_rev()}; python {sys.version.split()[0]}")
    real_txt = ", movie-hello.mp4 8.3 s 1280x720 30 fps" if real else ""
    print(f"inputs: {len(items)} ({args.inputs} composed 3 s 320x256 16 fps{real_txt}); {seconds_in:.1f} s of video")
    print(f"{frames_in} frames analysed at {cfg.ingest.sample_fps:g} fps; {kept} clips kept")
    print(f"{'stage':<10}{'seconds':>9}{'video s/s':>11}{'frames/s':>10}")
    rates = {}
    serial = sum(stage_s.values())
    stage_s["serial"] = serial  # all stages one after another
    stage_s["pipeline"] = pipeline_s
    for stage, s in stage_s.items():
        rate = seconds_in / s if s > 0 else float("inf")
        if stage not in ("serial", "pipeline"):
            rates[stage] = rate
        print(f"{stage:<10}{s:>9.2f}{rate:>11.2f}{frames_in / s if s > 0 else float('inf'):>10.1f}")
    slowest = min(rates, key=rates.get)
    ratio = (seconds_in / pipeline_s) / rates[slowest]
    print(f"pipeline / slowest stage ({slowest}): {ratio:.2f}  (target >= 0.8)")
    print(f"(worker start, excluded: {worker_start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
