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
        clip_frames=[{"index": 0, "score": 25.0, "bin": "|yaw|<30", "bin_generated": "|yaw|<30"}],
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
    assert bins["|yaw|<30"]["frame_share"] == pytest.approx(3 / 8)
    assert bins["|yaw|<30"]["detection_rate"] == 1.0  # no target pose: only frames with a face have a bin
    assert report["binning"] == {
        "by": "detected",
        "items_target_yaw": 0,
        "items_target_video": 0,
        "items_detected": 2,
        "unbinned_frames": 1,
    }
    assert "no target pose" in report["notes"][0] and report["per_bin_generated"] == bins
    assert report["overall"]["fid_set"] is not None and report["real_crops"] == 4  # r0 and r1, 2 crops each

    md = markdown_table(report)
    assert "| 30-60 |" in md and "| video_missing | 1 |" in md
    assert "NO TARGET POSE KNOWN" in md and "note: 2 of 2 scored item(s) have no target pose" in md
    files = write_report(report, results, tmp_path)
    assert json.loads(files["json"].read_text())["per_item"][2]["status"] == "video_missing"
    assert files["facesim_arc_by_yaw"].stat().st_size > 1000
    flat = flat_metrics(report)
    assert {"facesim_arc", "facesim_arc/yaw_lt30", "facesim_arc/yaw_30-60", "problems/video_missing"} <= set(flat)


def _target_item(i, yaws, targets, arc, protocol="cofe"):
    """An item whose frames have a target pose; ``None`` in ``yaws`` is a frame where the face was lost."""
    frames = [
        FrameRecord(index=k, face=y is not None, yaw=y, target_yaw=t, arc=None if y is None else arc)
        for k, (y, t) in enumerate(zip(yaws, targets, strict=True))
    ]
    n_face = sum(f.face for f in frames)
    cfg = BenchConfig.from_name(protocol)
    return ItemResult(
        id=f"t{i}",
        protocol=protocol,
        pose_source="target_yaw",
        frames=frames,
        metrics={
            "facesim_arc": cfg.facesim_mean([arc] * n_face, len(frames)),
            "detection_rate": n_face / len(frames),
            "motion": 0.02,
            "target_yaw_abs_median": float(np.median(np.abs(targets))),
        },
    )


@pytest.mark.parametrize("protocol", ["cofe", "consisid"])
def test_bins_by_target_pose_count_lost_faces(protocol):
    """A model that keeps the face near frontal but loses it where the target turns past 60 degrees."""
    cfg = BenchConfig.from_name(protocol)
    targets = [0, 20, 45, 70, 80, 85]
    # the face is found (and read as ~frontal, the model did not turn it) until the target passes 60 degrees
    item = _target_item(0, [1, 5, 10, None, None, 40], targets, 0.9, protocol)
    report = aggregate([item], cfg)
    bins, gen = report["per_bin"], report["per_bin_generated"]
    assert report["binning"]["by"] == "target" and report["notes"] == []
    assert [bins[b]["frames"] for b in cfg.yaw_bins] == [2, 1, 3]  # every sampled frame has its target bin
    assert bins[">60"]["detection_rate"] == pytest.approx(1 / 3)
    if protocol == "cofe":
        assert bins[">60"]["facesim_arc"] == pytest.approx(0.9 / 3)  # two lost faces count as 0
    else:
        assert bins[">60"]["facesim_arc"] == pytest.approx(0.9)  # ConsisID skips frames without a face
    # secondary breakdown by the generated face's own yaw: the lost frames are nowhere, the >60 bin is empty
    assert [gen[b]["frames"] for b in cfg.yaw_bins] == [3, 1, 0] and gen[">60"]["facesim_arc"] is None
    flat = flat_metrics(report)
    assert flat["detection_rate/yaw_gt60"] == pytest.approx(1 / 3) and flat["binning/items_target_yaw"] == 1
    assert "by_generated_yaw/facesim_arc/yaw_lt30" in flat and "protocol_exact" in flat
    assert "yaw bins by the target pose" in markdown_table(report)


def test_approximate_protocol_is_labelled():
    from cofe_bench import ProtocolCheck

    cfg = BenchConfig.from_name("consisid")
    check = ProtocolCheck("consisid", exact=False, reasons=("faces detected by OfflineFaceAnalyzer",))
    report = aggregate([_item(0, [0, 10], 0.8, cofe=False)], cfg, check=check, recognizer="sface.onnx")
    assert report["protocol"] == "consisid-approx" and report["protocol_requested"] == "consisid"
    assert report["protocol_exact"] is False and "OfflineFaceAnalyzer" in report["warnings"][0]
    md = markdown_table(report)
    assert md.startswith("protocol: `consisid-approx` (APPROXIMATE: `consisid` asked)")
    assert "**warning**: protocol 'consisid' was asked for" in md and "identity recogniser: `sface.onnx`" in md
    assert flat_metrics(report)["protocol_exact"] == 0.0
