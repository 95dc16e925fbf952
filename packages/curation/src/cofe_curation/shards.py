"""Stage 6, writing: WebDataset shards per rank, committed atomically, and the run's data list, report and plots.

Layout of an output directory::

    shards/rank{r}-{i:06d}.tar             samples: key.mp4, key.json, key.ref.png
    shards/rank{r}-{i:06d}.manifest.json   the inputs (with every decision) whose clips are in that shard
    data.jsonl  report.json  plots/*.png   written by :func:`finalize`

Commit protocol, so that a run killed at any point and run again neither loses nor duplicates a clip:

1. All clips of one input go into the same shard (a shard closes only between inputs).
2. A shard is written as ``*.tar.tmp`` and renamed to ``*.tar``; then its manifest is written as ``*.tmp`` and
   renamed. The manifest is the commit record: an input is finished if and only if a manifest lists it.
3. On start, a writer deletes its rank's ``*.tmp`` files and any ``*.tar`` without a manifest (killed between the
   two renames); the inputs they held are not in any manifest, so they are processed again.

Rejected inputs (no clip) are listed in the manifest of the shard that is open when they finish; a manifest
may have no tar when none of its inputs kept a clip.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from cofe_curation.identity import cluster_identities
from cofe_curation.pipeline import InputResult

_SHARD_RE = re.compile(r"^rank(\d+)-(\d{6})\.(tar|manifest\.json)$")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    tar.addfile(info, io.BytesIO(data))


def manifests(out_dir: str | Path) -> list[Path]:
    """The committed manifests of a run, sorted."""
    shard_dir = Path(out_dir) / "shards"
    return sorted(shard_dir.glob("rank*-*.manifest.json")) if shard_dir.is_dir() else []


def done_sources(out_dir: str | Path) -> set[str]:
    """Sources already finished in ``out_dir`` (listed in a committed manifest)."""
    done = set()
    for path in manifests(out_dir):
        done.update(rec["source"] for rec in json.loads(path.read_text(encoding="utf-8"))["inputs"])
    return done


class ShardWriter:
    """Writes one rank's shards; see the module docstring for the commit protocol.

    Args:
        out_dir: Output directory.
        rank: This process's rank (shards are named ``rank{rank}-{i:06d}``).
        max_clips: Close a shard once it holds at least this many clips.
    """

    def __init__(self, out_dir: str | Path, rank: int = 0, max_clips: int = 64) -> None:
        self.dir = Path(out_dir) / "shards"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.max_clips = max_clips
        index = -1
        committed = set()
        for path in self.dir.iterdir():
            m = _SHARD_RE.match(path.name)
            if path.name.startswith(f"rank{rank}-") and path.name.endswith(".tmp"):
                path.unlink()  # a half-written shard or manifest from a killed run
            elif m and int(m.group(1)) == rank and m.group(3) == "manifest.json":
                committed.add(int(m.group(2)))
                index = max(index, int(m.group(2)))
        for path in self.dir.glob(f"rank{rank}-*.tar"):
            m = _SHARD_RE.match(path.name)
            if m and int(m.group(2)) not in committed:
                path.unlink()  # renamed but never committed: its inputs will be processed again
        self.index = index + 1
        self._tar: tarfile.TarFile | None = None
        self._inputs: list[dict[str, Any]] = []
        self._clips = 0

    @property
    def _name(self) -> str:
        return f"rank{self.rank}-{self.index:06d}"

    def add(self, result: InputResult) -> None:
        """Add one input's kept clips and its record; commits the shard when it is full."""
        now = time.time()
        kept = [c for c in result.clips if c.decision == "kept"]
        if kept and self._tar is None:
            self._tar = tarfile.open(self.dir / f"{self._name}.tar.tmp", "w")
        for clip in kept:
            _add_member(self._tar, f"{clip.key}.mp4", clip.mp4, now)
            _add_member(self._tar, f"{clip.key}.json", json.dumps(clip.annotation).encode(), now)
            _add_member(self._tar, f"{clip.key}.ref.png", clip.ref_png, now)
        rec = result.record()
        rec["shard"] = f"{self._name}.tar" if kept else None
        rec["seconds"] = {k: round(v, 4) for k, v in result.seconds.items()}
        rec["frames"] = result.frames
        self._inputs.append(rec)
        self._clips += len(kept)
        if self._clips >= self.max_clips:
            self.commit()

    def commit(self) -> None:
        """Close the open shard (tar rename, then manifest rename). No-op when nothing is pending."""
        if not self._inputs:
            return
        if self._tar is not None:
            self._tar.close()
            tmp = self.dir / f"{self._name}.tar.tmp"
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.dir / f"{self._name}.tar")
        manifest = {"rank": self.rank, "index": self.index, "clips": self._clips, "inputs": self._inputs}
        _atomic_write(self.dir / f"{self._name}.manifest.json", json.dumps(manifest, ensure_ascii=False).encode())
        self.index += 1
        self._tar, self._inputs, self._clips = None, [], 0

    def close(self) -> None:
        """Commit what is pending."""
        self.commit()


def _rewrite_clusters(tar_path: Path, clusters: dict[str, int]) -> None:
    """Set ``identity_cluster`` in the JSON of each sample of one shard (atomic: new file, then rename)."""
    with tarfile.open(tar_path) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers() if m.isfile()]
    changed = False
    out = []
    for member, data in members:
        if member.name.endswith(".json"):
            key = member.name[: -len(".json")]
            ann = json.loads(data)
            if key in clusters and ann.get("identity_cluster") != clusters[key]:
                ann["identity_cluster"] = clusters[key]
                data = json.dumps(ann).encode()
                changed = True
        out.append((member, data))
    if not changed:
        return
    tmp = tar_path.with_name(tar_path.name + ".tmp")
    with tarfile.open(tmp, "w") as dst:
        for member, data in out:
            _add_member(dst, member.name, data, member.mtime)
    os.replace(tmp, tar_path)


def finalize(out_dir: str | Path, cluster_threshold: float = 0.5, plots: bool = True) -> dict[str, Any]:
    """Cluster identities over every kept clip of the run and write ``data.jsonl``, ``report.json``, plots.

    Safe to run again (after a resumed run it re-clusters everything). Call it once, after all ranks finished.

    Returns:
        The report (also written to ``report.json``).
    """
    out_dir = Path(out_dir)
    inputs: list[dict[str, Any]] = []
    for path in manifests(out_dir):
        inputs.extend(json.loads(path.read_text(encoding="utf-8"))["inputs"])
    inputs.sort(key=lambda r: r["source"])
    kept = [(rec, clip) for rec in inputs for clip in rec["clips"] if clip["decision"] == "kept"]
    if kept:
        emb = np.array([clip["embedding"] for _, clip in kept], np.float32)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        labels = cluster_identities(emb, cluster_threshold)
    else:
        labels = np.zeros(0, np.int64)
    by_shard: dict[str, dict[str, int]] = {}
    lines = []
    for (rec, clip), label in zip(kept, labels.tolist(), strict=True):
        clip["identity_cluster"] = label
        by_shard.setdefault(rec["shard"], {})[clip["key"]] = label
        line = {"key": clip["key"], "shard": f"shards/{rec['shard']}", "source": rec["source"]}
        line.update(t0=clip["t0"], t1=clip["t1"], identity_cluster=label, **clip["summary"])
        lines.append(line)
    for shard, clusters in by_shard.items():
        _rewrite_clusters(out_dir / "shards" / shard, clusters)

    counts = _counts(inputs)
    for rec in inputs:
        for clip in rec["clips"]:
            clip.pop("embedding", None)
    report = {
        "counts": counts,
        "identities": len(set(labels.tolist())),
        "inputs": inputs,
    }
    _atomic_write(out_dir / "data.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode())
    _atomic_write(out_dir / "report.json", json.dumps(report, indent=1, ensure_ascii=False).encode())
    if plots:
        write_plots(out_dir, inputs, counts)
    return report


def _counts(inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per stage: inputs by decision, clips entering each stage and rejected by it."""
    decisions = Counter(rec["decision"] for rec in inputs)
    clips = [c for rec in inputs for c in rec["clips"]]
    rejected = Counter(c["stage"] for c in clips if c["decision"] == "rejected")
    entering = len(clips)
    per_stage = {
        "ingest": {"in": len(inputs), "rejected": decisions.get("error", 0)},
        "shots": {
            "in": len(inputs) - decisions.get("error", 0),
            "rejected": sum(1 for r in inputs if r["decision"] == "rejected" and not r["clips"]),
            "clips_out": entering,
        },
    }
    for stage in ("faces", "identity"):
        per_stage[stage] = {"in": entering, "rejected": rejected.get(stage, 0)}
        entering -= rejected.get(stage, 0)
    kept = [c for c in clips if c["decision"] == "kept"]
    per_stage["speech"] = {"in": entering, "speaking": sum(c["summary"]["speaking"] for c in kept)}
    per_stage["write"] = {"in": entering, "written": len(kept)}
    return {
        "inputs": len(inputs),
        "inputs_kept": decisions.get("kept", 0),
        "inputs_rejected": decisions.get("rejected", 0),
        "inputs_error": decisions.get("error", 0),
        "clips": len(clips),
        "clips_kept": len(kept),
        "seconds_in": round(sum(r.get("duration", 0.0) for r in inputs), 3),
        "stages": per_stage,
    }


def write_plots(out_dir: Path, inputs: list[dict[str, Any]], counts: dict[str, Any]) -> list[Path]:
    """Yaw histogram, yaw-range histogram and rejects per stage, as PNG files in ``out_dir/plots``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir = out_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    kept = [c for rec in inputs for c in rec["clips"] if c["decision"] == "kept"]
    ranges = [c["summary"]["yaw_range"] for c in kept]
    yaws = [y for c in kept for y in c.get("yaws", [])]
    paths = []
    for name, values, xlabel in (
        ("yaw_hist.png", yaws, "yaw (degrees, per annotated frame)"),
        ("yaw_range_hist.png", ranges, "yaw range per kept clip (degrees)"),
    ):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(values, bins=np.arange(-90, 91, 10) if name == "yaw_hist.png" else np.arange(0, 181, 10))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        fig.tight_layout()
        paths.append(plot_dir / name)
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)
    stages = counts["stages"]
    names = ["ingest", "shots", "faces", "identity"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(names, [stages[n]["rejected"] for n in names])
    ax.set_ylabel("rejected (inputs for ingest/shots, clips after)")
    fig.tight_layout()
    paths.append(plot_dir / "rejects_per_stage.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths
