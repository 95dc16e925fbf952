"""`cofe bench` and `cofe compare` end to end on face videos made from real photos (offline, random stand-ins)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cofe_apps.bench import merge_rank_parts
from cofe_apps.cli import main as cofe
from cofe_bench import ItemResult, ManifestItem
from cofe_bench.testing import T1_BOXES, face_crop, faceless_frames, load_photo, moving_face_frames, write_video


@pytest.fixture(scope="module")
def bench_set(tmp_path_factory):
    """Ten manifest lines: two good videos, a face-less one, a missing and a broken file, a reference without a face,
    a missing and a broken reference file, a line without a reference and a line that is not JSON."""
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
    (root / "refs" / "broken.png").write_bytes(b"\x89PNG not really")
    items = [
        {"id": "p0", "reference": "refs/p0.png", "prompt": "a woman smiles"},
        {"id": "p3", "reference": "refs/p3.png", "prompt": "a man turns his head"},
        {"id": "noface", "reference": "refs/p0.png", "prompt": "a woman"},
        {"id": "missing", "reference": "refs/p0.png", "prompt": "a woman"},
        {"id": "broken", "reference": "refs/p0.png", "prompt": "a woman"},
        {"id": "refblank", "reference": "refs/blank.png", "prompt": "a man", "video": "p3.mp4"},
        {"id": "refmissing", "reference": "refs/nobody.png", "prompt": "a man", "video": "p3.mp4"},
        {"id": "refbroken", "reference": "refs/broken.png", "prompt": "a man", "video": "p3.mp4"},
        {"id": "noref", "prompt": "a man", "video": "p3.mp4"},
    ]
    lines = [json.dumps(i) for i in items] + ['{"id": "cut", "reference": "refs/p0.png", "prom']
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _comparable(metrics_json: Path) -> dict:
    """A metrics.json without its timings (the only part that differs between runs of the same inputs)."""
    report = json.loads(metrics_json.read_text())
    report.pop("timing")
    for item in report["per_item"]:
        item.pop("timings")
    return report


@pytest.mark.slow
def test_bench_then_compare(bench_set, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # MLflow's sqlite store and artifacts land in the working directory
    common = ["--manifest", str(bench_set / "manifest.jsonl"), "--videos", str(bench_set / "videos")]
    rc = cofe(["bench", *common, "--random-models", "--num-frames", "4", "--out", "run_a", "--run-name", "a"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| |yaw|<30 |" in out and "mlflow ui --backend-store-uri sqlite:///mlflow.db" in out

    report = json.loads((tmp_path / "run_a" / "metrics.json").read_text())
    assert report["items"] == 10 and report["scored"] == 3
    assert report["problems"] == {
        "manifest_invalid": 2,
        "video_missing": 1,
        "video_unreadable": 1,
        "reference_missing": 1,
        "reference_unreadable": 1,
        "reference_no_face": 1,
        "evaluation_error": 0,
        "no_face_in_video": 1,
        "prompt_truncated": 0,
    }
    by_id = {it["id"]: it for it in report["per_item"]}
    assert by_id["p0"]["metrics"]["facesim_arc"] > 0.6 and by_id["noface"]["metrics"]["facesim_arc"] == 0.0
    assert report["overall"]["clipscore"] is not None and report["overall"]["fid"] is not None
    assert (tmp_path / "run_a" / "metrics.md").read_text().startswith("protocol: `cofe`, 3/10 items scored")
    assert [it["id"] for it in report["per_item"]][-2:] == ["noref", "manifest.jsonl:10"]  # after the items
    assert "manifest.jsonl:9: missing field(s) ['reference']" in by_id["noref"]["error"]
    assert by_id["refmissing"]["status"] == "reference_missing"
    assert by_id["refbroken"]["status"] == "reference_unreadable"
    assert report["timing"]["devices"] == 1 and report["timing"]["items"] == 8
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
    assert a.data.metrics["problems/manifest_invalid"] == 2.0 and a.data.metrics["timing/predict_s"] > 0
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


@pytest.mark.parametrize("strategy", ["ddp_fork", pytest.param("ddp", marks=pytest.mark.slow)])
def test_two_ranks_match_one(bench_set, tmp_path, strategy):
    """Five items on two ranks (3 + 2, Lightning's unrepeated predict sampler): the same report as one process.

    ``ddp_fork`` runs the real DDP predict loop (gloo, two processes) without a second interpreter start; ``ddp``
    (the default, as on GPUs) starts ``cofe bench`` as a command whose rank 1 Lightning launches as a new process,
    with the default output folder (rank 0's name must win). A stale, conflicting part from an interrupted run sits
    in the output folder and must be neither read nor left behind.
    """
    keep = ["p0", "noface", "broken", "p3", "refblank"]  # odd, and two of them fail: each rank gets a mix
    lines = {}
    for line in (bench_set / "manifest.jsonl").read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if item["id"] in keep:
            item["reference"] = str(bench_set / item["reference"])
            lines[item["id"]] = json.dumps(item)
    manifest = tmp_path / "five.jsonl"
    manifest.write_text("\n".join(lines[k] for k in keep) + "\n")
    common = ["bench", "--manifest", str(manifest), "--videos", str(bench_set / "videos"), "--num-frames", "4"]
    common += ["--no-mlflow", "--no-progress"]

    assert cofe([*common, "--out", str(tmp_path / "one")]) == 0
    stale = ItemResult(id="p0", protocol="cofe", status="evaluation_error", error="from an interrupted run")
    if strategy == "ddp_fork":
        two = tmp_path / "two"
        two.mkdir()
        (two / ".rank0-0123456789ab.pkl").write_bytes(pickle.dumps([stale]))
        (two / ".rank1-0123456789ab.pkl.tmp").write_bytes(b"half a pickle")  # a rank killed while writing
        assert cofe([*common, "--out", str(two), "--devices", "2", "--strategy", "ddp_fork"]) == 0
    else:
        work = tmp_path / "work"
        work.mkdir()
        # Where no bytecode may be written (PYTHONDONTWRITEBYTECODE), both ranks would compile every module: let the
        # first write a private cache that rank 1 then reads.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(tmp_path / "pycache")
        cmd = [sys.executable, "-m", "cofe_apps.cli", *common, "--devices", "2"]
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (two,) = work.iterdir()  # one folder, named by rank 0, though each rank computed a default name
        assert two.name.startswith("bench-cofe-")

    one_report, two_report = _comparable(tmp_path / "one" / "metrics.json"), _comparable(two / "metrics.json")
    assert [it["id"] for it in two_report["per_item"]] == keep  # each once, in manifest order
    assert two_report == one_report
    assert two_report["scored"] == 3 and two_report["problems"]["video_unreadable"] == 1
    assert json.loads((two / "metrics.json").read_text())["timing"]["devices"] == 2
    assert not list(two.glob(".rank*"))  # parts merged and removed, the stale one too


def test_merge_refuses_incomplete_or_duplicated_parts(tmp_path):
    items = [ManifestItem(k, "r.png", "p") for k in ("a", "b", "c")]

    def part(rank: int, ids: list[str]) -> Path:
        path = tmp_path / f".rank{rank}-n.pkl"
        path.write_bytes(pickle.dumps([ItemResult(id=i, protocol="cofe") for i in ids]))
        return path

    with pytest.raises(RuntimeError, match=r"rank1-n\.pkl is missing"):
        merge_rank_parts([part(0, ["a", "c"]), tmp_path / ".rank1-n.pkl"], items)
    with pytest.raises(RuntimeError, match="'a' was scored twice"):
        merge_rank_parts([part(0, ["a", "c"]), part(1, ["a"])], items)
    with pytest.raises(RuntimeError, match=r"missing \['b'\]"):
        merge_rank_parts([part(0, ["a", "c"]), part(1, [])], items)
    parts = [part(0, ["a", "c"]), part(1, ["b"])]
    assert [r.id for r in merge_rank_parts(parts, items)] == ["a", "b", "c"]
    assert not any(p.exists() for p in parts)
