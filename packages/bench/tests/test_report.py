"""Aggregation over items, per-yaw-bin breakdown, the table, plots and MLflow-ready metric names."""

import json

import numpy as np
import pytest

from cofe_bench import BenchConfig, FrameRecord, ItemResult, aggregate, flat_metrics, markdown_table, write_report


def _item(i, yaws, arc, cofe=True, status="ok", ref_key="r0"):
    rng = np.random.default_rng(i)
    frames = [
        FrameRecord(
            index=k, face=y is not None, yaw=y, arc=None if y is None else arc, fid=None if y is None else 100.0
        )
        for k, y in enumerate(yaws)
    ]
    n_face = sum(f.face for f in frames)
    return ItemResult(
        id=f"v{i}",
        protocol="cofe" if cofe else "consisid",
        status=status,
        frames=frames,
        clip_frames=[{"index": 0, "score": 25.0, "bin": "|yaw|<30"}],
        metrics={
            "facesim_arc": arc * n_face / len(frames),
            "detection_rate": n_face / len(frames),
            "motion": 0.02,
            "yaw_abs_median": float(np.median([abs(y) for y in yaws if y is not None])) if n_face else None,
        },
        reference_key=ref_key,
        fake_features=rng.normal(size=(n_face, 8)),
        real_features=rng.normal(size=(2, 8)),
    )


def test_aggregate_bins_and_counts(tmp_path):
    cfg = BenchConfig()
    results = [
        _item(0, [0, 10, 40, None], 0.8),
        _item(1, [-70, -65, 5, 50], 0.4, ref_key="r1"),
        ItemResult(id="gone", protocol="cofe", status="video_missing"),
        ItemResult(id="noref", protocol="cofe", status="reference_no_face"),
    ]
    report = aggregate(results, cfg)
    assert report["items"] == 4 and report["scored"] == 2
    assert report["problems"]["video_missing"] == 1 and report["problems"]["reference_no_face"] == 1
    assert report["overall"]["facesim_arc"] == pytest.approx((0.6 + 0.4) / 2)
    bins = report["per_bin"]
    assert [bins[b]["frames"] for b in cfg.yaw_bins] == [3, 2, 2]
    assert bins["|yaw|<30"]["facesim_arc"] == pytest.approx((0.8 + 0.8 + 0.4) / 3)
    assert bins[">60"]["facesim_arc"] == pytest.approx(0.4)
    assert bins["|yaw|<30"]["detection_share"] == pytest.approx(3 / 8)
    assert report["overall"]["fid_set"] is not None and report["real_crops"] == 4  # r0 and r1, 2 crops each

    md = markdown_table(report)
    assert "| 30-60 |" in md and "| video_missing | 1 |" in md
    files = write_report(report, results, tmp_path)
    assert json.loads(files["json"].read_text())["per_item"][2]["status"] == "video_missing"
    assert files["facesim_arc_by_yaw"].stat().st_size > 1000
    flat = flat_metrics(report)
    assert {"facesim_arc", "facesim_arc/yaw_lt30", "facesim_arc/yaw_30-60", "problems/video_missing"} <= set(flat)
