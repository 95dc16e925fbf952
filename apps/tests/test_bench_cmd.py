"""`cofe bench` and `cofe compare` end to end on face videos made from real photos (offline, random stand-ins)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cofe_apps.cli import main as cofe
from cofe_bench.testing import T1_BOXES, face_crop, faceless_frames, load_photo, moving_face_frames, write_video


@pytest.fixture(scope="module")
def bench_set(tmp_path_factory):
    """Six items: two good videos, a face-less one, a missing and a broken file, a reference without a face."""
    root = tmp_path_factory.mktemp("benchset")
    t1 = load_photo("t1.jpg")
    faces = {k: face_crop(t1, T1_BOXES[k]) for k in ("p0", "p3")}
    (root / "refs").mkdir()
    vids = root / "videos"
    for k, face in faces.items():
        Image.fromarray(face).save(root / "refs" / f"{k}.png")
        write_video(moving_face_frames(face, 8), vids / f"{k}.mp4")
    Image.fromarray(faceless_frames(1)[0]).save(root / "refs" / "blank.png")
    write_video(faceless_frames(8), vids / "noface.mp4")
    (vids / "broken.mp4").write_bytes(b"\x00\x01 not a video")
    items = [
        {"id": "p0", "reference": "refs/p0.png", "prompt": "a woman smiles"},
        {"id": "p3", "reference": "refs/p3.png", "prompt": "a man turns his head"},
        {"id": "noface", "reference": "refs/p0.png", "prompt": "a woman"},
        {"id": "missing", "reference": "refs/p0.png", "prompt": "a woman"},
        {"id": "broken", "reference": "refs/p0.png", "prompt": "a woman"},
        {"id": "refblank", "reference": "refs/blank.png", "prompt": "a man", "video": "p3.mp4"},
    ]
    (root / "manifest.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    return root


@pytest.mark.slow
def test_bench_then_compare(bench_set, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # MLflow's sqlite store and artifacts land in the working directory
    common = ["--manifest", str(bench_set / "manifest.jsonl"), "--videos", str(bench_set / "videos")]
    rc = cofe(["bench", *common, "--random-models", "--num-frames", "4", "--out", "run_a", "--run-name", "a"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| |yaw|<30 |" in out and "mlflow ui --backend-store-uri sqlite:///mlflow.db" in out

    report = json.loads((tmp_path / "run_a" / "metrics.json").read_text())
    assert report["items"] == 6 and report["scored"] == 3
    assert report["problems"] == {
        "video_missing": 1,
        "video_unreadable": 1,
        "reference_missing": 0,
        "reference_unreadable": 0,
        "reference_no_face": 1,
        "evaluation_error": 0,
        "no_face_in_video": 1,
        "prompt_truncated": 0,
    }
    by_id = {it["id"]: it for it in report["per_item"]}
    assert by_id["p0"]["metrics"]["facesim_arc"] > 0.6 and by_id["noface"]["metrics"]["facesim_arc"] == 0.0
    assert report["overall"]["clipscore"] is not None and report["overall"]["fid"] is not None
    assert (tmp_path / "run_a" / "metrics.md").read_text().startswith("protocol: `cofe`, 3/6 items scored")
    assert (tmp_path / "run_a" / "plots" / "facesim_arc_by_yaw.png").stat().st_size > 1000

    # Second run: the ConsisID protocol with the ArcFace-family model only (no Inception, no CLIP).
    rc = cofe(["bench", *common, "--protocol", "consisid", "--num-frames", "4", "--out", "run_b", "--run-name", "b"])
    assert rc == 0
    capsys.readouterr()

    from mlflow.tracking import MlflowClient

    client = MlflowClient("sqlite:///mlflow.db")
    exp = client.get_experiment_by_name("cofe-bench")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.run_name for r in runs] == ["a", "b"]
    a, b = runs
    assert a.data.params["protocol"] == "cofe" and b.data.params["protocol"] == "consisid"
    assert a.data.metrics["problems/video_missing"] == 1.0 and "facesim_arc/yaw_lt30" in a.data.metrics
    assert "fid" not in b.data.metrics  # no Inception weights given: the metric is absent, not faked
    artifacts = {f.path for f in client.list_artifacts(a.info.run_id)}
    assert {"metrics.json", "metrics.md", "plots"} <= artifacts

    assert cofe(["compare", "--out", "cmp"]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| a ") or line.startswith("| b ")]
    assert len(rows) == 2 and "| cofe |" in rows[0] and "| consisid |" in rows[1]
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    assert np.isfinite(a.data.metrics["facesim_arc"])


def test_bad_arguments(bench_set, tmp_path, capsys):
    assert cofe(["bench", "--manifest", str(tmp_path / "nope.jsonl"), "--videos", str(tmp_path)]) == 2
    assert "manifest not found" in capsys.readouterr().err
    manifest = str(bench_set / "manifest.jsonl")
    assert cofe(["bench", "--manifest", manifest, "--videos", str(tmp_path / "none")]) == 2
    assert "videos folder not found" in capsys.readouterr().err
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    assert cofe(["compare", "--tracking-uri", uri, "--experiment", "nothing"]) == 2
    assert "no MLflow experiment 'nothing'" in capsys.readouterr().err
