"""Benchmark sets: the JSONL manifest and builders for LaFID-Bench-style and VIP-style sets.

Manifest format, one JSON object per line::

    {"id": "vip_0001_p3", "reference": "refs/0001.png", "first_frame": "first/0001.png",
     "prompt": "A man ...", "video": "vip_0001_p3.mp4"}

``reference`` and ``first_frame`` are paths relative to the manifest's folder (or absolute); ``first_frame`` may
be ``null`` (VIP gives only a portrait). ``video`` is relative to the videos folder given to ``cofe bench``
(default ``<id>.mp4``), the file ``cofe sample`` writes for that item.

The target pose, optional (the per-yaw-bin breakdown is binned by it, so a frame whose face the model lost still
counts in the bin of the pose it had to render):

* ``target_yaw``: the yaw (degrees, positive to the subject's left, as in ``cofe_encoders.face.pose``) of the
  target clip at each of its frames, a list of numbers (``null`` for a frame whose pose is unknown; the known ones
  are interpolated). A generated video of another length is mapped by relative time: its sampled frame ``i`` of
  ``T`` reads the track at ``i / (T - 1)`` of the way through.
* ``target_video``: the ground-truth clip (path relative to the manifest), whose faces are analysed at the same
  relative times when ``target_yaw`` is absent.

Other optional fields (``identity_cluster``, ``source``, ``yaw_bin``) are kept and reported.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cofe_bench.protocol import BenchConfig, interpolate_track, relative_positions
from cofe_bench.video import read_video

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class ManifestItem:
    """One benchmark item (see the module docstring for the fields)."""

    id: str
    reference: str
    prompt: str
    first_frame: str | None = None
    video: str | None = None
    target_yaw: list[float | None] | None = None
    target_video: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def video_name(self) -> str:
        return self.video or f"{self.id}.mp4"

    def to_json(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        for key in ("target_yaw", "target_video"):  # optional: written only when known
            if d[key] is None:
                d.pop(key)
        return {**d, **extra}


def _check_target_yaw(value) -> str | None:
    """Why ``value`` is not a valid ``target_yaw`` (a non-empty list of numbers or nulls, one known), else ``None``."""
    if not isinstance(value, list) or not value:
        return f"target_yaw must be a non-empty list of per-frame yaws, got {type(value).__name__}"
    bad = [v for v in value if v is not None and (isinstance(v, bool) or not isinstance(v, int | float))]
    if bad:
        return f"target_yaw holds non-numbers (e.g. {bad[0]!r})"
    known = [float(v) for v in value if v is not None]
    if not known:
        return "target_yaw holds no known yaw"
    if not all(np.isfinite(known)) or max(abs(v) for v in known) > 180:
        return "target_yaw holds values that are not finite angles within [-180, 180] degrees"
    return None


@dataclass
class ManifestProblem:
    """A manifest line that cannot be turned into an item (see :func:`scan_manifest`).

    Attributes:
        line: 1-based line number in the manifest.
        id: The line's ``id`` when it has one, else ``"<manifest name>:<line>"``; a repeated id gets
            ``"@line<N>"`` appended, so every problem has an id no item has.
        error: What is wrong, naming the file and line.
    """

    line: int
    id: str
    error: str


def scan_manifest(path: str | Path) -> tuple[list[ManifestItem], list[ManifestProblem]]:
    """Read a JSONL manifest leniently: the valid items, and one problem per line that is not a valid item.

    A line is a problem when it is not JSON, not a JSON object, lacks ``id``, ``reference`` or ``prompt``, has a
    ``target_yaw`` that is not a list of angles, or repeats an earlier id (the first occurrence stays an item).
    Relative ``reference`` / ``first_frame`` / ``target_video`` paths are resolved against the manifest's folder.
    Whether the files exist is not checked here (the evaluator
    records a missing reference per item).

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    items, problems, seen = [], [], set()

    def resolve(p: str | None) -> str | None:
        return None if p is None else str(Path(p) if Path(p).is_absolute() else path.parent / p)

    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        fallback_id = f"{path.name}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(ManifestProblem(lineno, fallback_id, f"{where}: not valid JSON ({exc})"))
            continue
        if not isinstance(obj, dict):
            problems.append(
                ManifestProblem(lineno, fallback_id, f"{where}: expected a JSON object, got {type(obj).__name__}")
            )
            continue
        item_id = None if obj.get("id") is None else str(obj["id"])
        missing = [k for k in ("id", "reference", "prompt") if obj.get(k) is None]
        if missing:
            pid = fallback_id if item_id is None or item_id in seen else item_id
            problems.append(ManifestProblem(lineno, pid, f"{where}: missing field(s) {missing}"))
            if item_id is not None:
                seen.add(item_id)  # a later line with this id must not take the place of the broken one
            continue
        if item_id in seen:
            problems.append(ManifestProblem(lineno, f"{item_id}@line{lineno}", f"{where}: duplicate id {item_id!r}"))
            continue
        seen.add(item_id)
        if obj.get("target_yaw") is not None and (why := _check_target_yaw(obj["target_yaw"])):
            problems.append(ManifestProblem(lineno, item_id, f"{where}: {why}"))
            continue
        obj.pop("id")
        items.append(
            ManifestItem(
                id=item_id,
                reference=resolve(obj.pop("reference")),
                prompt=str(obj.pop("prompt")),
                first_frame=resolve(obj.pop("first_frame", None)),
                video=obj.pop("video", None),
                target_yaw=obj.pop("target_yaw", None),
                target_video=resolve(obj.pop("target_video", None)),
                extra=obj,
            )
        )
    return items, problems


def read_manifest(path: str | Path) -> list[ManifestItem]:
    """Read a JSONL manifest strictly; relative ``reference`` / ``first_frame`` paths are resolved against its folder.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line is not JSON or lacks ``id``, ``reference`` or ``prompt``; ids repeat. The message
            names the file and line (the first such line).
    """
    items, problems = scan_manifest(path)
    if problems:
        raise ValueError(problems[0].error)
    return items


def write_manifest(items: Iterable[ManifestItem], path: str | Path) -> Path:
    """Write ``items`` as JSONL (paths written as given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
    return path


def build_vip_manifest(root: str | Path, out: str | Path, num_prompts: int = 5) -> list[ManifestItem]:
    """Manifest for the VIP challenge test layout: ``root/<identity>/`` with one portrait image and
    ``prompt1.txt`` .. ``prompt5.txt``; one item per (identity, prompt), id ``<identity>_p<k>``.

    Identities without an image or without prompts are skipped with a warning printed by the caller; the
    returned list holds the items written to ``out``.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: no identity folder holds an image and a prompt.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VIP test folder not found: {root}")
    out = Path(out)
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            continue
        for k in range(1, num_prompts + 1):
            prompt_file = folder / f"prompt{k}.txt"
            if not prompt_file.is_file():
                continue
            prompt = prompt_file.read_text(encoding="utf-8").strip()
            item_id = f"{folder.name}_p{k}"
            items.append(
                ManifestItem(
                    id=item_id,
                    reference=_relative(images[0], out.parent),
                    prompt=prompt,
                    video=f"{item_id}.mp4",
                    extra={"identity": folder.name},
                )
            )
    if not items:
        raise ValueError(f"{root}: no identity folder with an image and prompt1..{num_prompts}.txt")
    write_manifest(items, out)
    return items


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


def _iter_shard_samples(shard: Path):
    """Group a WebDataset tar's members by key: ``{key: {ext: bytes}}`` (key = name up to the first dot)."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(shard) as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name
            base = name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            prefix = name[: len(name) - len(base)]
            f = tar.extractfile(member)
            if f is not None:
                samples[prefix + key][ext] = f.read()
    return samples.items()


def build_lafid_manifest(
    shards: Sequence[str | Path],
    out_dir: str | Path,
    exclude_clusters: Iterable[str | int] = (),
    per_bin: int = 10,
    config: BenchConfig | None = None,
    prompt_field: str = "caption",
) -> list[ManifestItem]:
    """A LaFID-Bench-style set from curated shards: identity-disjoint from training, balanced over yaw bins.

    Each curated sample (``key.mp4``, ``key.json``, ``key.ref.png``; DESIGN.md section 3) is placed in the yaw
    bin of its largest per-frame ``|yaw|`` (``json["faces"][i]["yaw"]``), the pose range the model has to
    render. Samples whose ``identity_cluster`` is in ``exclude_clusters`` (the training identities) are dropped,
    and at most one sample per identity is kept, so no identity is seen twice. Then up to ``per_bin`` samples
    per bin are taken in key order (deterministic). For each, ``out_dir`` receives ``refs/<id>.png`` (the
    clip's reference frame ``ref_frame``, whole and unmasked; ``ref.png`` for annotations without one),
    ``first/<id>.png`` (the clip's first frame, the I2V condition), ``real/<id>.mp4``
    (the ground-truth clip) and a line in ``out_dir/manifest.jsonl`` with the caption as the prompt, the clip's
    per-frame yaw as ``target_yaw`` (:func:`curated_yaw_track`) and ``real/<id>.mp4`` as ``target_video``.

    Args:
        shards: Curated WebDataset tar files.
        out_dir: Output folder.
        exclude_clusters: ``identity_cluster`` values used for training.
        per_bin: Samples per yaw bin.
        config: Supplies the yaw bins (default ``BenchConfig()``).
        prompt_field: JSON field used as the prompt (``caption`` or ``caption_refined``).

    Returns:
        The manifest items, balanced over bins (a bin with fewer candidates keeps all of them).

    Raises:
        FileNotFoundError: a shard is missing.
    """
    config = config or BenchConfig()
    out_dir = Path(out_dir)
    excluded = {str(c) for c in exclude_clusters}
    by_bin: dict[str, list[tuple[str, dict, dict]]] = {b: [] for b in config.yaw_bins}
    seen_ids: set[str] = set()
    for shard in shards:
        shard = Path(shard)
        if not shard.is_file():
            raise FileNotFoundError(f"curated shard not found: {shard}")
        for key, parts in sorted(_iter_shard_samples(shard)):
            if not {"mp4", "json", "ref.png"} <= parts.keys():
                continue
            meta = json.loads(parts["json"])
            cluster = str(meta.get("identity_cluster"))
            if cluster in excluded or cluster in seen_ids:
                continue
            yaws = [abs(float(f["yaw"])) for f in meta.get("faces", []) if f.get("yaw") is not None]
            if not yaws:
                continue
            seen_ids.add(cluster)
            by_bin[config.yaw_bin(max(yaws))].append((key, meta, parts))
    items = []
    for label in config.yaw_bins:
        for key, meta, parts in by_bin[label][:per_bin]:
            item_id = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
            ref = out_dir / "refs" / f"{item_id}.png"
            real = out_dir / "real" / f"{item_id}.mp4"
            first = out_dir / "first" / f"{item_id}.png"
            for p in (ref, real, first):
                p.parent.mkdir(parents=True, exist_ok=True)
            real.write_bytes(parts["mp4"])
            frames, _ = read_video(real)
            Image.fromarray(frames[0]).save(first)
            # The reference is the clip's own reference frame, whole and unmasked, when the annotation names it:
            # recognisers align it themselves; the whitened ref.png crop would cost them identity similarity.
            ref_frame = meta.get("ref_frame")
            if isinstance(ref_frame, int) and 0 <= ref_frame < len(frames):
                Image.fromarray(frames[ref_frame]).save(ref)
            else:
                ref.write_bytes(parts["ref.png"])
            yaws = [float(f["yaw"]) for f in meta.get("faces", []) if f.get("yaw") is not None]
            items.append(
                ManifestItem(
                    id=item_id,
                    reference=f"refs/{item_id}.png",
                    first_frame=f"first/{item_id}.png",
                    prompt=str(meta.get(prompt_field) or meta.get("caption") or ""),
                    video=f"{item_id}.mp4",
                    target_yaw=curated_yaw_track(meta, len(frames), where=f"{shard}:{key}"),
                    target_video=f"real/{item_id}.mp4",
                    extra={
                        "identity_cluster": meta.get("identity_cluster"),
                        "yaw_bin": label,
                        "yaw_max_abs": round(float(np.max(np.abs(yaws))), 2),
                        "target_yaw_source": "curated faces[].yaw, interpolated to every frame",
                        "source": meta.get("source"),
                    },
                )
            )
    write_manifest(items, out_dir / "manifest.jsonl")
    return items


def curated_yaw_track(meta: dict, num_frames: int, where: str = "curated sample") -> list[float] | None:
    """The per-frame yaw of a curated clip: its ``faces[].yaw`` track interpolated to every one of its frames.

    Curation analyses a subset of the frames and may miss the face in some (a profile, a blur); those frames take
    the linear interpolation of their neighbours' yaw (held constant before the first and after the last analysed
    frame), so every frame has the pose the clip shows there. Entries without a numeric ``yaw`` are ignored.

    Args:
        meta: The curated ``key.json`` (``faces: [{frame, yaw, ...}]``; DESIGN.md section 3).
        num_frames: Frames of the clip.
        where: Named in the error.

    Returns:
        ``num_frames`` yaws rounded to 0.01 degree, or ``None`` when no face entry has a yaw.

    Raises:
        ValueError: a face entry's ``frame`` is outside the clip.
    """
    points = [
        (f["frame"], float(f["yaw"]))
        for f in meta.get("faces", [])
        if isinstance(f.get("yaw"), int | float) and not isinstance(f.get("yaw"), bool) and f.get("frame") is not None
    ]
    if not points or num_frames < 1:
        return None
    frames = np.array([p[0] for p in points], np.float64)
    if frames.min() < 0 or frames.max() > num_frames - 1:
        raise ValueError(
            f"{where}: faces[].frame spans {frames.min():g}-{frames.max():g}, outside the clip's 0-{num_frames - 1}"
        )
    every = relative_positions(np.arange(num_frames), num_frames)  # (num_frames,)
    track = interpolate_track(relative_positions(frames, num_frames), [p[1] for p in points], every)
    return [round(float(v), 2) for v in track]


def load_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB ``(H, W, 3)``; raises ``ValueError`` naming the file when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


__all__ = [
    "ManifestItem",
    "ManifestProblem",
    "build_lafid_manifest",
    "build_vip_manifest",
    "curated_yaw_track",
    "load_image_rgb",
    "read_manifest",
    "scan_manifest",
    "write_manifest",
]
