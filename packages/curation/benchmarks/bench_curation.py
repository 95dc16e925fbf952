"""Curation throughput: the whole pipeline vs each stage alone, in the same run.

    .venv/bin/python packages/curation/benchmarks/bench_curation.py [--inputs N] [--workers 2] [--threads 2] [--cli]

Inputs: ``N`` clips composed from real face photos (3 s, 320x256, 16 fps, with audio; a mix of kept and rejected
kinds) plus the real webcam clip ``movie-hello.mp4`` (8.3 s, 1280x720, 30 fps) when it is available.

1. Each stage alone, one after another in this process with ``--threads`` threads: decode (stage 1) for every
   input, then shots, faces, identity, speech and write on the decoded inputs (:class:`cofe_curation.Curator`
   times its stages), with the wall and CPU seconds of each.
2. The pipeline exactly as ``cofe curate`` runs it within a rank, without Lightning: the same
   :func:`cofe_curation.input_loader` over :func:`cofe_curation.largest_first` inputs (``--workers`` processes
   curating whole inputs with one thread each) and the same :class:`cofe_curation.ShardWriter` in this process.
   Worker start (spawn, imports, model loading) is excluded, as at the start of a long run: each worker first
   curates a warm-up input and then waits at a barrier until every worker has; the clock starts when the first
   warm-up result arrives, which is when the workers leave the barrier together.
3. With ``--cli``, also the ``cofe curate`` command itself on the same inputs, end to end (Lightning, worker
   start and the final report included).

Prints throughput (seconds of input video per wall second, analysed frames per second) and the ratio of the
pipeline to its slowest stage (target >= 0.8), with the device, thread count and git revision.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from cofe_curation import (
    CurationConfig,
    Curator,
    ShardWriter,
    decode,
    discover_inputs,
    largest_first,
    set_threads,
)
from cofe_curation.loader import InputDataset, loader_for
from cofe_curation.synth import compose, real_clip, tone, write_clip

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))  # helpers shared by benchmarks
from provenance import git_revision

KINDS = ("turning", "swap", "two_faces", "turning_frontal", "tiny", "no_face")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Gated(InputDataset):
    """``cofe curate``'s dataset, whose first ``len(barrier)`` items (one per worker: the DataLoader hands out
    indices round-robin) wait for each other after they are curated."""

    def __init__(self, items, cfg, barrier):
        super().__init__(items, cfg)
        self.barrier = barrier

    def __getitem__(self, index):
        c0 = time.process_time()
        result = super().__getitem__(index)
        result.seconds["worker_cpu"] = time.process_time() - c0  # this worker's CPU time on this input
        if self.barrier is not None and index < self.barrier.parties:
            self.barrier.wait()
        return result


def _pipelines(items, warm_dir: Path, out: Path, cfg: CurationConfig, workers: int, repeat: int):
    """``cofe curate``'s loop within a rank, ``repeat`` times over the same workers; returns the wall seconds and
    the workers' CPU seconds of each round."""
    warm = discover_inputs([warm_dir])[: max(workers, 1)]
    barrier = multiprocessing.get_context("spawn").Barrier(workers) if workers else None
    loader = loader_for(_Gated(warm + largest_first(items), cfg, barrier), workers, persistent=True)
    warm_sources = {item.source for item in warm}
    times, cpus = [], []
    for r in range(repeat):
        writer = ShardWriter(out / str(r), 0, cfg.write.shard_max_clips)
        tic = None if workers else time.perf_counter()
        cpu = 0.0
        for result in loader:
            if result.source in warm_sources:
                tic = tic or time.perf_counter()
                continue
            cpu += result.seconds.pop("worker_cpu")
            writer.add(result)
        writer.close()
        times.append(time.perf_counter() - tic)
        cpus.append(cpu)
    return times, cpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=12, help="composed inputs (plus the real clip if available)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (as cofe curate --workers)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the stages-alone measurement")
    parser.add_argument("--no-real", action="store_true", help="leave out movie-hello.mp4")
    parser.add_argument("--cli", action="store_true", help="also time the cofe curate command end to end")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of each measurement; the fastest counts (shared machines)"
    )
    args = parser.parse_args(argv)
    set_threads(args.threads)
    cfg = CurationConfig()
    with tempfile.TemporaryDirectory(prefix="cofe-bench-curation-") as tmp:
        tmp = Path(tmp)
        frames = {k: compose(k) for k in KINDS}
        for i in range(args.inputs):
            kind = KINDS[i % len(KINDS)]
            write_clip(tmp / "in" / f"{i:03d}_{kind}.mp4", frames[kind], 16.0, tone(3.0))
        for w in range(max(args.workers, 1)):  # one warm-up input per worker, all stages (a kept clip)
            write_clip(tmp / "warm" / f"warm{w}.mp4", frames["turning"], 16.0, tone(3.0))
        real = None if args.no_real else real_clip(download=False)
        if real is not None:
            shutil.copy(real, tmp / "in" / "movie-hello.mp4")
        items = discover_inputs([tmp / "in"])
        curator = Curator(cfg)
        curator.process(decode(items[0], cfg.ingest))  # warm-up: model loading, first-call costs

        # 1. Stages alone, `repeat` rounds; each stage's fastest round counts (other jobs only ever slow a round).
        rounds = []
        for _ in range(args.repeat):
            wall: dict[str, float] = defaultdict(float)
            cpu: dict[str, float] = defaultdict(float)
            tic, c0 = time.perf_counter(), _cpu()
            videos = [decode(item, cfg.ingest) for item in items]
            wall["decode"], cpu["decode"] = time.perf_counter() - tic, _cpu() - c0  # dict order: run order
            seconds_in = sum(v.duration for v in videos)
            frames_in = sum(len(v.frames) for v in videos)
            for video in videos:
                c0 = _cpu()
                seconds = curator.process(video).seconds
                for stage, s in seconds.items():
                    wall[stage] += s
                # Process CPU time is not split by stage inside process(); share it out by wall time.
                spent = _cpu() - c0
                total = sum(seconds.values()) or 1.0
                for stage, s in seconds.items():
                    cpu[stage] += spent * s / total
            del videos
            rounds.append((wall, cpu))
        wall = {stage: min(r[0][stage] for r in rounds) for stage in rounds[0][0]}
        cpu = {stage: min(r[1][stage] for r in rounds) for stage in rounds[0][1]}
        serial_s = min(sum(r[0].values()) for r in rounds)

        # 2. The pipeline, as cofe curate runs it; the fastest round counts.
        pipeline_rounds, pipeline_cpu = _pipelines(items, tmp / "warm", tmp / "out", cfg, args.workers, args.repeat)
        pipeline_s = min(pipeline_rounds)
        kept = sum(
            sum(c["decision"] == "kept" for c in rec["clips"])
            for path in sorted((tmp / "out" / "0" / "shards").glob("*.manifest.json"))
            for rec in json.loads(path.read_text())["inputs"]
        )

        # 3. The command, end to end.
        cli_s = None
        if args.cli:
            tic = time.perf_counter()
            cmd = [sys.executable, "-m", "cofe_apps.cli", "curate", str(tmp / "in"), "--out", str(tmp / "cli")]
            cmd += ["--workers", str(args.workers), "--no-progress"]
            subprocess.run(cmd, check=True, capture_output=True)
            cli_s = time.perf_counter() - tic

    load = os.getloadavg()[0]
    print(f"device: CPU {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end")
    print(f"each figure: the fastest of {args.repeat} rounds")
    print(f"stages alone: {args.threads} thread(s); pipeline: {args.workers} worker(s) x 1 thread")
    print(f"git {git_revision('packages/curation')}; python {sys.version.split()[0]}")
    real_txt = ", movie-hello.mp4 8.3 s 1280x720 30 fps" if real else ""
    print(f"inputs: {len(items)} ({args.inputs} composed 3 s 320x256 16 fps{real_txt}); {seconds_in:.1f} s of video")
    print(f"{frames_in} frames analysed at {cfg.ingest.sample_fps:g} fps; {kept} clips kept")
    print(f"{'stage':<10}{'seconds':>9}{'cpu s':>8}{'video s/s':>11}{'frames/s':>10}")
    rates = {}
    rows = [*wall.items(), ("serial", serial_s), ("pipeline", pipeline_s)]
    for stage, s in rows:
        rate = seconds_in / s if s > 0 else float("inf")
        if stage not in ("serial", "pipeline"):
            rates[stage] = rate
        c = f"{cpu[stage]:>8.2f}" if stage in cpu else f"{sum(cpu.values()):>8.2f}" if stage == "serial" else " " * 8
        print(f"{stage:<10}{s:>9.2f}{c}{rate:>11.2f}{frames_in / s if s > 0 else float('inf'):>10.1f}")
    slowest = min(rates, key=rates.get)
    ratio = (seconds_in / pipeline_s) / rates[slowest]
    print(f"pipeline / slowest stage ({slowest}): {ratio:.2f}  (target >= 0.8)")
    print(f"pipeline rounds: {', '.join(f'{t:.2f}' for t in pipeline_rounds)} s (fastest of {args.repeat} counts)")
    best = pipeline_rounds.index(pipeline_s)
    cpu_s = pipeline_cpu[best]
    cores = min(os.cpu_count() or 1, max(args.workers, 1))
    ideal = cpu_s / cores
    print(
        f"pipeline CPU: {cpu_s:.2f} s in the workers over {pipeline_s:.2f} s = {cpu_s / pipeline_s:.2f} cores busy; "
        f"with {cores} cores always busy: {ideal:.2f} s (ratio {wall[slowest] / ideal:.2f})"
    )
    if cli_s is not None:
        rate = seconds_in / cli_s
        print(f"cofe curate end to end (Lightning, worker start, report): {cli_s:.2f} s, {rate:.2f} video s/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
