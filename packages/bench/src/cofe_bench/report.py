"""Dataset-level aggregation, the per-yaw-bin breakdown, the Markdown table and the plots."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cofe_bench.evaluator import FATAL, METRICS, FrameRecord, ItemResult
from cofe_bench.fid import set_fid
from cofe_bench.protocol import BenchConfig, ProtocolCheck

# Per-frame quantities binned by yaw: metric -> FrameRecord attribute.
FRAME_METRICS = {
    "facesim_arc": "arc",
    "facesim_cur": "cur",
    "facesim_dlib": "dlib",
    "fid": "fid",
    "id_frame_sim": "prev_sim",
}
FACESIM = {"facesim_arc": "arc", "facesim_cur": "cur", "facesim_dlib": "dlib"}
LOWER_IS_BETTER = {"fid", "fid_set", "id_drift"}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _bin_yaw(frame: FrameRecord) -> float | None:
    """The yaw a frame is binned by: its target pose when known, else its generated face's yaw (or none)."""
    return frame.target_yaw if frame.target_yaw is not None else frame.yaw


def _bin_rows(
    scored: Sequence[ItemResult],
    config: BenchConfig,
    real_feats: np.ndarray,
    frame_yaw,
    clip_key: str,
    motion_key,
    total_frames: int,
) -> dict[str, dict]:
    """One row per yaw bin; ``frame_yaw(frame)`` gives the yaw a frame is binned by (``None``: no bin)."""
    rows = {}
    for label in config.yaw_bins:
        frames = [
            (r, f) for r in scored for f in r.frames if (y := frame_yaw(f)) is not None and config.yaw_bin(y) == label
        ]
        face = [(r, f) for r, f in frames if f.face]
        row: dict = {}
        for metric, attr in FRAME_METRICS.items():
            if metric in FACESIM:
                # The protocol's own rule over the bin's frames of the items this metric scores (its model and
                # reference exist): under cofe a frame whose face was lost scores 0.
                mine = [f for r, f in frames if r.metrics.get(metric) is not None]
                vals = [getattr(f, attr) for f in mine if f.face and getattr(f, attr) is not None]
                row[metric] = config.facesim_mean(vals, len(mine), attr) if mine else None
            else:
                row[metric] = _mean(getattr(f, attr) for _, f in face)
        row["clipscore"] = _mean(c["score"] for r in scored for c in r.clip_frames if c.get(clip_key) == label)
        row["detection_rate"] = len(face) / len(frames) if frames else None
        row["frame_share"] = len(frames) / total_frames if total_frames else None
        row["motion"] = _mean(
            r.metrics.get("motion") for r in scored if (y := motion_key(r)) is not None and config.yaw_bin(y) == label
        )
        bin_fake = [
            r.fake_features[j]
            for r in scored
            if r.fake_features is not None
            for j, f in enumerate([f for f in r.frames if f.face])
            if (y := frame_yaw(f)) is not None and config.yaw_bin(y) == label
        ]
        enough = len(real_feats) >= 2 and len(bin_fake) >= 2
        row["fid_set"] = set_fid(real_feats, np.stack(bin_fake)) if enough else None
        row["frames"] = len(frames)
        row["face_frames"] = len(face)
        rows[label] = row
    return rows


def aggregate(
    results: Sequence[ItemResult],
    config: BenchConfig,
    check: ProtocolCheck | None = None,
    recognizer: str | None = None,
) -> dict:
    """The benchmark report: overall metrics, per-yaw-bin metrics, set-level FID and problem counts.

    Overall metrics are the mean of per-video scores (ConsisID's aggregation) over items without a fatal problem.

    ``per_bin`` pools the sampled frames of all videos by the yaw bin of the **target** pose (the pose the frame
    should show: the manifest's ``target_yaw`` or the ground-truth clip's), so a frame whose face the model lost
    counts in its bin: as 0 in FaceSim under ``cofe``, and in the bin's ``detection_rate`` under every protocol.
    An item without a target pose falls back to the generated face's own yaw (its face-less frames then have no
    bin); ``binning`` says how many items took each route. ``per_bin_generated`` is the secondary breakdown by the
    generated face's yaw (face frames only). A CLIP frame takes the target pose at its frame (else the bin of the
    nearest face frame); ``motion`` is binned by each video's median |binning yaw|; ``frame_share`` is the bin's
    share of all sampled frames. ``fid_set`` is a real Fréchet distance between the Inception features of all
    reference-side crops (each reference file once, plus first frames) and all generated face crops; per bin, of
    the bin's generated crops against all reference-side crops.

    Args:
        results: One per manifest item (fatal ones are counted, not scored).
        config: The protocol.
        check: :meth:`Evaluator.check_protocol`'s verdict; an approximate run is labelled ``<protocol>-approx``.
        recognizer: The network that scored identity (:attr:`Evaluator.recognizer_name`), named in the report.
    """
    check = check or ProtocolCheck(config.protocol)
    scored = [r for r in results if r.ok]
    counts = Counter(r.status for r in results)
    issues = Counter(i for r in results for i in r.issues if not i.startswith(("first_frame", "target_video")))
    overall = {m: _mean(r.metrics.get(m) for r in scored) for m in METRICS}

    real, seen = [], set()
    for r in scored:
        if r.real_features is not None and r.reference_key not in seen:
            seen.add(r.reference_key)
            real.append(r.real_features)
    real_feats = np.concatenate(real) if real else np.zeros((0, 0))
    fakes = [r.fake_features for r in scored if r.fake_features is not None and len(r.fake_features)]
    fake_feats = np.concatenate(fakes) if fakes else np.zeros((0, 0))
    overall["fid_set"] = set_fid(real_feats, fake_feats) if len(real_feats) >= 2 and len(fake_feats) >= 2 else None

    total_frames = sum(len(r.frames) for r in scored)

    def video_bin_yaw(r: ItemResult) -> float | None:
        return (
            r.metrics.get("target_yaw_abs_median") if r.pose_source != "detected" else r.metrics.get("yaw_abs_median")
        )

    per_bin = _bin_rows(scored, config, real_feats, _bin_yaw, "bin", video_bin_yaw, total_frames)
    per_bin_generated = _bin_rows(
        scored,
        config,
        real_feats,
        lambda f: f.yaw,
        "bin_generated",
        lambda r: r.metrics.get("yaw_abs_median"),
        total_frames,
    )
    sources = Counter(r.pose_source for r in scored)
    with_target = sources.get("target_yaw", 0) + sources.get("target_video", 0)
    without = sources.get("detected", 0)
    binning = {
        "by": "target" if not without else ("detected" if not with_target else "mixed"),
        "items_target_yaw": sources.get("target_yaw", 0),
        "items_target_video": sources.get("target_video", 0),
        "items_detected": without,
        "unbinned_frames": sum(1 for r in scored for f in r.frames if _bin_yaw(f) is None),
    }
    notes = []
    if without:
        notes.append(
            f"{without} of {len(scored)} scored item(s) have no target pose (no target_yaw or target_video in the "
            "manifest): their frames are binned by the generated face's own yaw, so their frames without a face "
            f"({binning['unbinned_frames']}) fall in no bin and their large-pose failures are not counted per bin"
        )
    warnings = [check.warning] if check.warning else []
    no_face_frames = sum(1 for r in scored for f in r.frames if not f.face)
    return {
        "protocol": check.label,
        "protocol_requested": check.requested,
        "protocol_exact": check.exact,
        "protocol_differences": list(check.reasons),
        "warnings": warnings,
        "notes": notes,
        "recognizer": recognizer,
        "config": {
            "num_frames": config.num_frames,
            "yaw_edges": list(config.yaw_edges),
            "recognizer": config.recognizer,
            "missing_face_as_zero": config.missing_face_as_zero,
            "drop_zero_cur": config.drop_zero_cur,
        },
        "items": len(results),
        "scored": len(scored),
        "status_counts": dict(counts),
        "problems": {
            **{k: counts.get(k, 0) for k in FATAL},
            "no_face_in_video": issues.get("no_face_in_video", 0),
            "prompt_truncated": issues.get("prompt_truncated", 0),
        },
        "frames": {"sampled": total_frames, "without_face": no_face_frames},
        "binning": binning,
        "overall": overall,
        "per_bin": per_bin,
        "per_bin_generated": per_bin_generated,
        "real_crops": len(real_feats),
        "fake_crops": len(fake_feats),
    }


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


BINNED_BY = {
    "target": "the target pose (the manifest's target_yaw or the ground-truth clip)",
    "mixed": "the target pose where known, else the generated face's yaw (see notes)",
    "detected": "the generated face's own yaw: NO TARGET POSE KNOWN, so frames without a face fall in no bin",
}


def _columns(report: dict) -> list[str]:
    """The table's metric columns: FaceSim-dlib only when the run scored it."""
    cols = ["facesim_arc", "facesim_cur", "facesim_dlib", "clipscore", "fid", "fid_set", "id_frame_sim", "motion"]
    return [c for c in cols if c != "facesim_dlib" or report["overall"].get("facesim_dlib") is not None]


def _rows(rows: dict, cols: list[str]) -> list[str]:
    return [
        f"| {label} | "
        + " | ".join(_fmt(row.get(c)) for c in cols)
        + f" | {_fmt(row.get('detection_rate'))} | {row['frames']} |"
        for label, row in rows.items()
    ]


def markdown_table(report: dict) -> str:
    """Overall and per-yaw-bin metrics (by target pose), the secondary breakdown by generated yaw, the problems.

    An approximate run says so in its first line and in a warning line; the binning is named above the table.
    """
    cols = _columns(report)
    head = "| bin | " + " | ".join(cols) + " | detection | frames |"
    rule = "|" + " --- |" * (len(cols) + 3)
    exact = "" if report.get("protocol_exact", True) else f" (APPROXIMATE: `{report['protocol_requested']}` asked)"
    recognizer = report.get("recognizer")
    lines = [f"protocol: `{report['protocol']}`{exact}, {report['scored']}/{report['items']} items scored"]
    if recognizer:
        lines.append(f"identity recogniser: `{recognizer}`")
    lines += [f"**warning**: {w}" for w in report.get("warnings", [])]
    lines += [f"note: {n}" for n in report.get("notes", [])]
    by = report.get("binning", {}).get("by", "detected")
    lines += ["", f"yaw bins by {BINNED_BY[by]}:", "", head, rule]
    o = report["overall"]
    lines.append(
        "| all | "
        + " | ".join(_fmt(o.get(c)) for c in cols)
        + f" | {_fmt(o.get('detection_rate'))} | {report['frames']['sampled']} |"
    )
    lines += _rows(report["per_bin"], cols)
    if "per_bin_generated" in report:
        lines += ["", "secondary: yaw bins by the generated face's own yaw (frames with a face only):", "", head, rule]
        lines += _rows(report["per_bin_generated"], cols)
    lines += ["", "| problem | items |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in report["problems"].items()]
    return "\n".join(lines) + "\n"


def plot_by_yaw(report: dict, out_dir: str | Path) -> list[Path]:
    """One PNG per metric: its value in each yaw bin (bars) with the overall value (dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bins = list(report["per_bin"])
    by = report.get("binning", {}).get("by", "detected")
    xlabel = {"target": "|yaw| of the target pose", "mixed": "|yaw|: target pose, else generated face"}.get(
        by, "|yaw| of the generated face (no target pose)"
    )
    paths = []
    metrics = [c for c in _columns(report) if c != "motion"] + ["detection_rate"]
    for metric in metrics:
        values = [report["per_bin"][b].get(metric) for b in bins]
        fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
        ax.bar(bins, [np.nan if v is None else v for v in values], color="#4C72B0")
        overall = report["overall"].get(metric)
        if overall is not None:
            ax.axhline(overall, color="k", ls="--", lw=1, label=f"all: {overall:.3g}")
            ax.legend(loc="best", fontsize=8)
        arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        ax.set_title(f"{metric} by yaw bin ({report['protocol']}; {arrow})", fontsize=9)
        ax.set_xlabel(f"{xlabel} (degrees)", fontsize=8)
        ax.set_ylabel(metric)
        fig.tight_layout()
        path = out_dir / f"{metric}_by_yaw.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(report: dict, results: Sequence[ItemResult], out_dir: str | Path) -> dict[str, Path]:
    """Write ``metrics.json`` (report + per-item records), ``metrics.md`` and the plots into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "metrics.json", "markdown": out_dir / "metrics.md"}
    payload = {**report, "per_item": [r.to_json() for r in results]}
    files["json"].write_text(json.dumps(payload, indent=2, default=float), encoding="utf-8")
    files["markdown"].write_text(markdown_table(report), encoding="utf-8")
    for p in plot_by_yaw(report, out_dir / "plots"):
        files[p.stem] = p
    return files


def _safe_bin(label: str) -> str:
    return "yaw_" + label.replace("|yaw|", "").replace("<", "lt").replace(">", "gt")


def flat_metrics(report: dict) -> dict[str, float]:
    """``{"facesim_arc": .., "facesim_arc/yaw_lt30": .., "problems/video_missing": ..}`` for MLflow.

    MLflow metric names allow letters, digits, ``_-./`` and spaces: bin ``|yaw|<30`` becomes ``yaw_lt30``,
    ``30-60`` becomes ``yaw_30-60``, ``>60`` becomes ``yaw_gt60``. ``<metric>/<bin>`` is the breakdown by target
    pose (``per_bin``), ``by_generated_yaw/<metric>/<bin>`` the secondary one; ``binning/*`` counts the items
    binned by each pose source and ``protocol_exact`` is 1 or 0.
    """
    out = {k: v for k, v in report["overall"].items() if v is not None}
    for label, row in report["per_bin"].items():
        out.update({f"{k}/{_safe_bin(label)}": v for k, v in row.items() if v is not None})
    for label, row in report.get("per_bin_generated", {}).items():
        out.update({f"by_generated_yaw/{k}/{_safe_bin(label)}": v for k, v in row.items() if v is not None})
    out.update({f"problems/{k}": v for k, v in report["problems"].items()})
    out.update({f"binning/{k}": v for k, v in report.get("binning", {}).items() if k != "by"})
    out["items"], out["scored"] = report["items"], report["scored"]
    out["protocol_exact"] = float(bool(report.get("protocol_exact", True)))
    return {k: float(v) for k, v in out.items()}
