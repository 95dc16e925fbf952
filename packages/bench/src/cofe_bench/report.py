"""Dataset-level aggregation, the per-yaw-bin breakdown, the Markdown table and the plots."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cofe_bench.evaluator import FATAL, METRICS, ItemResult
from cofe_bench.fid import set_fid
from cofe_bench.protocol import BenchConfig

# Per-frame quantities that have a yaw (the generated face's), hence a bin.
FRAME_METRICS = {"facesim_arc": "arc", "facesim_cur": "cur", "fid": "fid", "id_frame_sim": "prev_sim"}
LOWER_IS_BETTER = {"fid", "fid_set", "id_drift"}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def aggregate(results: Sequence[ItemResult], config: BenchConfig) -> dict:
    """The benchmark report: overall metrics, per-yaw-bin metrics, set-level FID and problem counts.

    Overall metrics are the mean of per-video scores (ConsisID's aggregation) over items without a fatal problem.
    Per-bin metrics pool the sampled frames of all videos by the yaw bin of the generated face (frame-weighted);
    a CLIP frame takes the bin of the nearest face frame; ``detection_share`` is the bin's share of all sampled
    frames; ``motion`` is binned by each video's median |yaw|. ``fid_set`` is a real Fréchet distance between
    the Inception features of all reference-side crops (each reference file once, plus first frames) and all
    generated face crops; per bin, of the bin's generated crops against all reference-side crops.
    """
    scored = [r for r in results if r.ok]
    counts = Counter(r.status for r in results)
    issues = Counter(i for r in results for i in r.issues if not i.startswith("first_frame"))
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
    per_bin = {}
    for label in config.yaw_bins:
        frames = [(r, f) for r in scored for f in r.frames if f.face and config.yaw_bin(f.yaw) == label]
        row = {m: _mean(getattr(f, attr) for _, f in frames) for m, attr in FRAME_METRICS.items()}
        row["clipscore"] = _mean(c["score"] for r in scored for c in r.clip_frames if c["bin"] == label)
        row["detection_share"] = len(frames) / total_frames if total_frames else None
        row["motion"] = _mean(
            r.metrics.get("motion")
            for r in scored
            if r.metrics.get("yaw_abs_median") is not None and config.yaw_bin(r.metrics["yaw_abs_median"]) == label
        )
        bin_fake = [
            r.fake_features[j]
            for r in scored
            if r.fake_features is not None
            for j, f in enumerate([f for f in r.frames if f.face])
            if config.yaw_bin(f.yaw) == label
        ]
        enough = len(real_feats) >= 2 and len(bin_fake) >= 2
        row["fid_set"] = set_fid(real_feats, np.stack(bin_fake)) if enough else None
        row["frames"] = len(frames)
        per_bin[label] = row
    no_face_frames = sum(1 for r in scored for f in r.frames if not f.face)
    return {
        "protocol": config.protocol,
        "config": {"num_frames": config.num_frames, "yaw_edges": list(config.yaw_edges)},
        "items": len(results),
        "scored": len(scored),
        "status_counts": dict(counts),
        "problems": {
            **{k: counts.get(k, 0) for k in FATAL},
            "no_face_in_video": issues.get("no_face_in_video", 0),
            "prompt_truncated": issues.get("prompt_truncated", 0),
        },
        "frames": {"sampled": total_frames, "without_face": no_face_frames},
        "overall": overall,
        "per_bin": per_bin,
        "real_crops": len(real_feats),
        "fake_crops": len(fake_feats),
    }


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def markdown_table(report: dict) -> str:
    """Overall and per-yaw-bin metrics as one Markdown table, plus the problem counts."""
    cols = ["facesim_arc", "facesim_cur", "clipscore", "fid", "fid_set", "id_frame_sim", "motion"]
    head = "| bin | " + " | ".join(cols) + " | detection | frames |"
    lines = [
        f"protocol: `{report['protocol']}`, {report['scored']}/{report['items']} items scored",
        "",
        head,
        "|" + " --- |" * (len(cols) + 3),
    ]
    o = report["overall"]
    lines.append(
        "| all | "
        + " | ".join(_fmt(o.get(c)) for c in cols)
        + f" | {_fmt(o.get('detection_rate'))} | {report['frames']['sampled']} |"
    )
    for label, row in report["per_bin"].items():
        lines.append(
            f"| {label} | "
            + " | ".join(_fmt(row.get(c)) for c in cols)
            + f" | {_fmt(row.get('detection_share'))} | {row['frames']} |"
        )
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
    paths = []
    for metric in ["facesim_arc", "facesim_cur", "clipscore", "fid", "fid_set", "id_frame_sim", "detection_share"]:
        values = [report["per_bin"][b].get(metric) for b in bins]
        fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
        ax.bar(bins, [np.nan if v is None else v for v in values], color="#4C72B0")
        overall = report["overall"].get("detection_rate" if metric == "detection_share" else metric)
        if overall is not None and metric != "detection_share":
            ax.axhline(overall, color="k", ls="--", lw=1, label=f"all: {overall:.3g}")
            ax.legend(loc="best", fontsize=8)
        arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        ax.set_title(f"{metric} by yaw bin ({report['protocol']}; {arrow})", fontsize=9)
        ax.set_xlabel("|yaw| of the generated face (degrees)")
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


def flat_metrics(report: dict) -> dict[str, float]:
    """``{"facesim_arc": .., "facesim_arc/yaw_lt30": .., "problems/video_missing": ..}`` for MLflow.

    MLflow metric names allow letters, digits, ``_-./`` and spaces: bin ``|yaw|<30`` becomes ``yaw_lt30``,
    ``30-60`` becomes ``yaw_30-60``, ``>60`` becomes ``yaw_gt60``.
    """
    out = {k: v for k, v in report["overall"].items() if v is not None}
    for label, row in report["per_bin"].items():
        safe = label.replace("|yaw|", "").replace("<", "lt").replace(">", "gt")
        out.update({f"{k}/yaw_{safe}": v for k, v in row.items() if v is not None})
    out.update({f"problems/{k}": v for k, v in report["problems"].items()})
    out["items"], out["scored"] = report["items"], report["scored"]
    return {k: float(v) for k, v in out.items()}
