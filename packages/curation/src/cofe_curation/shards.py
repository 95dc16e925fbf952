"""Stage 6, writing: WebDataset shards per rank, committed atomically, and the run's data list, report and plots.

Layout of an output directory::

    shards/rank{r}-{i:06d}.tar             samples: key.mp4, key.json, key.ref.png, key.ref_id.png
    shards/rank{r}-{i:06d}.manifest.json   the inputs (with every decision) whose clips are in that shard
    data.jsonl  report.json  plots/*.png   written by :func:`finalize`

Commit protocol, so that a run killed at any point and run again neither loses nor duplicates a clip:

1. All clips of one input go into the same shard (a shard closes only between inputs).
2. A shard is written as ``*.tar.tmp`` and renamed to ``*.tar``; then its manifest is written as ``*.tmp`` and
   renamed. The manifest is the commit record: an input is finished if and only if a manifest lists it.
3. On start, a writer deletes its rank's ``*.tmp`` files and any ``*.tar`` without a manifest (killed between the
   two renames); the inputs they held are not in any manifest, so they are processed again.
4. Files of ranks that the current run does not have (an earlier run with more ranks was killed) are handled by
   :func:`clean_orphans` before any rank starts: their committed shards stay and count once (their inputs are
   done, :func:`finalize` covers every manifest), their uncommitted files are deleted so that their clips are not
   read downstream next to the copies this run writes. :func:`finalize` refuses an output that still has a tar
   without a manifest.

Every rename and deletion is made durable: the file is fsynced before it is renamed, then its folder.

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

from cofe_curation.identity import RECOGNIZERS, cluster_identities
from cofe_curation.pipeline import InputResult
from cofe_curation.speech import speech_report

_SHARD_RE = re.compile(r"^rank(\d+)-(\d{6})\.(tar|manifest\.json)$")
_ANY_RE = re.compile(r"^rank(\d+)-")


def fsync_dir(folder: Path) -> None:
    """Make the renames and deletions in ``folder`` durable (POSIX: fsync the directory itself)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory
    finally:
        os.close(fd)


def _durable_replace(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` over ``path`` after flushing ``tmp`` to disk, then flush the folder: after a crash ``path``
    is the old file or the whole new one."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    _durable_replace(tmp, path)


def json_bytes(obj: Any, indent: int | None = None) -> bytes:
    """JSON as UTF-8 bytes; a name that is not UTF-8 that slipped into a record is written as its ``\\udcXX``
    escape instead of crashing the writer (records name files through :func:`cofe_curation.ingest.json_name`)."""
    return json.dumps(obj, indent=indent, ensure_ascii=False).encode("utf-8", errors="backslashreplace")


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
    """Sources already finished in ``out_dir`` (listed in a committed manifest), as written there: compare an
    item's ``json_name(item.source)`` (:func:`cofe_curation.ingest.json_name`)."""
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
        max_inputs: ... or once this many inputs are pending, so that the records of a run that keeps few clips
            (thousands of rejected inputs) are committed as it goes, not all at the end.
    """

    def __init__(self, out_dir: str | Path, rank: int = 0, max_clips: int = 64, max_inputs: int = 256) -> None:
        self.dir = Path(out_dir) / "shards"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.max_clips = max_clips
        self.max_inputs = max_inputs
        committed = _remove_uncommitted(self.dir, {rank})
        self.index = max(committed.get(rank, {-1})) + 1
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
            if clip.ref_id_png is not None:
                _add_member(self._tar, f"{clip.key}.ref_id.png", clip.ref_id_png, now)
        rec = result.record()
        rec["shard"] = f"{self._name}.tar" if kept else None
        rec["seconds"] = {k: round(v, 4) for k, v in result.seconds.items()}
        rec["frames"] = result.frames
        self._inputs.append(rec)
        self._clips += len(kept)
        if self._clips >= self.max_clips or len(self._inputs) >= self.max_inputs:
            self.commit()

    def commit(self) -> None:
        """Close the open shard (tar rename, then manifest rename). No-op when nothing is pending."""
        if not self._inputs:
            return
        if self._tar is not None:
            self._tar.close()
            _durable_replace(self.dir / f"{self._name}.tar.tmp", self.dir / f"{self._name}.tar")
        manifest = {"rank": self.rank, "index": self.index, "clips": self._clips, "inputs": self._inputs}
        _atomic_write(self.dir / f"{self._name}.manifest.json", json_bytes(manifest))
        self.index += 1
        self._tar, self._inputs, self._clips = None, [], 0

    def close(self) -> None:
        """Commit what is pending."""
        self.commit()


def _remove_uncommitted(shard_dir: Path, ranks: set[int] | None) -> dict[int, set[int]]:
    """Delete the ``*.tmp`` files and the tars without a manifest of ``ranks`` (``None``: every rank).

    Returns:
        rank -> indices of its committed shards (every rank, not only ``ranks``).
    """
    committed: dict[int, set[int]] = {}
    removed = []
    for path in shard_dir.iterdir():
        m = _SHARD_RE.match(path.name)
        if m and m.group(3) == "manifest.json":
            committed.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    for path in sorted(shard_dir.iterdir()):
        any_rank = _ANY_RE.match(path.name)
        if any_rank is None or (ranks is not None and int(any_rank.group(1)) not in ranks):
            continue
        m = _SHARD_RE.match(path.name)
        if path.name.endswith(".tmp") or (
            m and m.group(3) == "tar" and int(m.group(2)) not in committed.get(int(m.group(1)), set())
        ):
            path.unlink()  # half-written, or renamed but never committed: its inputs are processed again
            removed.append(path.name)
    if removed:
        fsync_dir(shard_dir)
    return committed


def shard_ranks(out_dir: str | Path) -> set[int]:
    """Ranks that have any file in ``out_dir/shards``."""
    shard_dir = Path(out_dir) / "shards"
    if not shard_dir.is_dir():
        return set()
    return {int(m.group(1)) for p in shard_dir.iterdir() if (m := _ANY_RE.match(p.name))}


def clean_orphans(out_dir: str | Path, world_size: int) -> list[str]:
    """Handle the files of ranks ``>= world_size`` (left by an earlier run with more ranks) before a run starts.

    Their committed shards are kept: their inputs are finished (:func:`done_sources` reads every manifest) and
    :func:`finalize` clusters and reports them with the rest, so they count once. Their uncommitted files (a tar
    renamed without its manifest, ``*.tmp``) are deleted: nothing lists them, so this run processes their inputs
    again, and left in place their clips would be read downstream a second time with no identity cluster. Call it
    only while holding the output folder's lock and before any rank writes.

    Returns:
        One line per rank that had files, saying what was kept and what was deleted (empty when none).
    """
    shard_dir = Path(out_dir) / "shards"
    if not shard_dir.is_dir():
        return []
    extra = sorted(r for r in shard_ranks(out_dir) if r >= world_size)
    notes = []
    for rank in extra:
        before = sorted(p.name for p in shard_dir.glob(f"rank{rank}-*"))
        committed = _remove_uncommitted(shard_dir, {rank}).get(rank, set())
        removed = [n for n in before if not (shard_dir / n).exists()]
        notes.append(
            f"rank {rank} (from an earlier run with more ranks than {world_size}): {len(committed)} committed "
            f"shard(s) kept and counted once"
            + (f"; uncommitted files deleted: {', '.join(removed)}" if removed else "")
        )
    return notes


def _uncommitted_tars(out_dir: Path) -> list[str]:
    committed = {p.name[: -len(".manifest.json")] for p in manifests(out_dir)}
    return sorted(p.name for p in (out_dir / "shards").glob("rank*-*.tar") if p.name[: -len(".tar")] not in committed)


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
    _durable_replace(tmp, tar_path)


def finalize(
    out_dir: str | Path,
    cluster_threshold: float | None = None,
    plots: bool = True,
    linkage: str = "average",
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Cluster identities over every kept clip of the run and write ``data.jsonl``, ``report.json``, plots.

    Safe to run again (after a resumed run it re-clusters everything). Call it once, after all ranks finished.

    Args:
        out_dir: The output folder.
        cluster_threshold: Linkage threshold of the identity clusters (``None``: the threshold of the recogniser
            profile the clips were embedded with, :data:`cofe_curation.identity.RECOGNIZERS`).
        plots: Write the PNG plots.
        linkage: ``"average"``, ``"complete"`` or ``"single"`` (:func:`cofe_curation.identity.cluster_identities`).
        notes: Lines about the run to keep in ``report.json`` (``run_notes``), such as :func:`clean_orphans`'s.

    Returns:
        The report (also written to ``report.json``).

    Raises:
        ValueError: a tar in ``shards/`` has no manifest (its clips would be read downstream without being
            counted or clustered), or the clips were embedded by different recognisers (their embeddings cannot
            be compared).
    """
    out_dir = Path(out_dir)
    stray = _uncommitted_tars(out_dir) if (out_dir / "shards").is_dir() else []
    if stray:
        raise ValueError(
            f"{out_dir}/shards has tars that no manifest commits: {', '.join(stray)} (left by an interrupted run); "
            "run the curation again on this folder, which removes them and redoes their inputs"
        )
    inputs: list[dict[str, Any]] = []
    for path in manifests(out_dir):
        inputs.extend(json.loads(path.read_text(encoding="utf-8"))["inputs"])
    inputs.sort(key=lambda r: r["source"])
    kept = [(rec, clip) for rec in inputs for clip in rec["clips"] if clip["decision"] == "kept"]
    recognizers = sorted({clip.get("recognizer", "sface") for _, clip in kept})
    if len(recognizers) > 1:
        raise ValueError(
            f"{out_dir}: clips were embedded by different recognisers ({', '.join(recognizers)}); their identity "
            "embeddings cannot be clustered together: curate into separate folders"
        )
    recognizer = recognizers[0] if recognizers else "sface"
    threshold = RECOGNIZERS[recognizer].cluster if cluster_threshold is None else float(cluster_threshold)
    if kept:
        emb = np.array([clip["embedding"] for _, clip in kept], np.float32)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        labels = cluster_identities(emb, threshold, linkage=linkage)
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
        "clustering": {"recognizer": recognizer, "linkage": linkage, "threshold": threshold},
        "yaw_coverage": yaw_coverage(inputs),
        "run_notes": list(notes or []),
        "inputs": inputs,
    }
    _atomic_write(out_dir / "data.jsonl", b"".join(json_bytes(x) + b"\n" for x in lines))
    _atomic_write(out_dir / "report.json", json_bytes(report, indent=1))
    if plots:
        write_plots(out_dir, inputs, counts)
    return report


# |yaw| bins of the coverage summary and plot (degrees): DESIGN.md's bench bins (< 30, 30-60, > 60) refined.
YAW_BINS = (0, 15, 30, 45, 60, 75, 90)


def yaw_coverage(inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """How far the kept clips turn: per-frame |yaw| of every kept clip's annotated frames, counted in
    :data:`YAW_BINS` (the last bin includes 90 and beyond), with the share at or beyond 60 degrees."""
    yaws = np.abs(
        np.array([y for rec in inputs for c in rec["clips"] if c["decision"] == "kept" for y in c.get("yaws", [])])
    )
    edges = np.array([*YAW_BINS[:-1], np.inf])
    counts = np.histogram(yaws, bins=edges)[0] if yaws.size else np.zeros(len(YAW_BINS) - 1, np.int64)
    return {
        "bins_deg": list(YAW_BINS),
        "frames": [int(c) for c in counts],
        "total": int(yaws.size),
        "at_least_60": round(float((yaws >= 60).mean()), 4) if yaws.size else 0.0,
        "p90": round(float(np.percentile(yaws, 90)), 2) if yaws.size else 0.0,
    }


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
    per_stage["speech"] = {"in": entering, **speech_report(kept)}  # speaking / voice-over / silent, captions
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
    """Yaw histogram, |yaw| coverage of the kept clips, yaw-range histogram and rejects per stage, as PNG files in
    ``out_dir/plots``."""
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
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(np.abs(yaws), bins=np.array(YAW_BINS, float))
    ax.set_xticks(YAW_BINS)
    ax.set_xlabel("|yaw| of kept clips (degrees, per annotated frame)")
    ax.set_ylabel("frames")
    share = float((np.abs(np.asarray(yaws)) >= 60).mean()) if yaws else 0.0
    ax.set_title(f"yaw coverage: {share:.0%} of frames at |yaw| >= 60", fontsize=9)
    fig.tight_layout()
    paths.append(plot_dir / "abs_yaw_hist.png")
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
