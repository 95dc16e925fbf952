"""`cofe bench` and `cofe compare` end to end on face videos made from real photos (offline, random stand-ins)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cofe_apps.bench import build_parser, merge_rank_parts, write_rank_part
from cofe_apps.cli import main as cofe
from cofe_bench import ItemResult, ManifestItem
from cofe_bench.testing import T1_BOXES, face_crop, faceless_frames, load_photo, moving_face_frames, write_video


class Payload:
    """Unpickling this creates ``path``: a harmless stand-in for code an attacker plants in a part file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


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
    captured = capsys.readouterr()
    # The offline backend (YuNet + SFace), no CurricularFace, 4 frames: not ConsisID's set-up, and it says so.
    assert captured.out.startswith("protocol: `consisid-approx` (APPROXIMATE: `consisid` asked)")
    assert "cofe bench: warning: protocol 'consisid' was asked for" in captured.err
    report_b = json.loads((tmp_path / "run_b" / "metrics.json").read_text())
    assert report_b["protocol"] == "consisid-approx" and report_b["protocol_exact"] is False
    assert any("OfflineFaceAnalyzer" in r for r in report_b["protocol_differences"])

    from mlflow.tracking import MlflowClient

    client = MlflowClient("sqlite:///mlflow.db")
    exp = client.get_experiment_by_name("cofe-bench")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.run_name for r in runs] == ["a", "b"]
    a, b = runs
    assert a.data.params["protocol"] == "cofe" and b.data.params["protocol"] == "consisid-approx"
    assert b.data.params["protocol_requested"] == "consisid" and b.data.metrics["protocol_exact"] == 0.0
    assert "not comparable with papers" in b.data.tags["cofe.warning"] and b.data.tags["protocol"] == "consisid-approx"
    assert a.data.metrics["problems/video_missing"] == 1.0 and "facesim_arc/yaw_lt30" in a.data.metrics
    assert a.data.metrics["problems/manifest_invalid"] == 2.0 and a.data.metrics["timing/predict_s"] > 0
    assert "fid" not in b.data.metrics  # no Inception weights given: the metric is absent, not faked
    artifacts = {f.path for f in client.list_artifacts(a.info.run_id)}
    assert {"metrics.json", "metrics.md", "plots"} <= artifacts

    assert cofe(["compare", "--out", "cmp"]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| a ") or line.startswith("| b ")]
    assert len(rows) == 2 and "| cofe |" in rows[0] and "| consisid-approx |" in rows[1]
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
    marker = tmp_path / "payload-ran"
    if strategy == "ddp_fork":
        two = tmp_path / "two"
        two.mkdir()
        write_rank_part(two / ".rank0-0123456789ab.npz", [stale])  # a part of an interrupted run
        (two / ".rank1-0123456789ab.npz.tmp").write_bytes(b"half a part")  # a rank killed while writing
        (two / ".rank1-0123456789ab.pkl").write_bytes(pickle.dumps(Payload(marker)))  # an older version's part
        assert cofe([*common, "--out", str(two), "--devices", "2", "--strategy", "ddp_fork"]) == 0
        assert not marker.exists()
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
        results = [ItemResult(id=i, protocol="cofe", fake_features=np.full((2, 4), rank, np.float32)) for i in ids]
        return write_rank_part(tmp_path / f".rank{rank}-n.npz", results)

    with pytest.raises(RuntimeError, match=r"rank1-n\.npz is missing"):
        merge_rank_parts([part(0, ["a", "c"]), tmp_path / ".rank1-n.npz"], items)
    with pytest.raises(RuntimeError, match="'a' was scored twice"):
        merge_rank_parts([part(0, ["a", "c"]), part(1, ["a"])], items)
    with pytest.raises(RuntimeError, match=r"missing \['b'\]"):
        merge_rank_parts([part(0, ["a", "c"]), part(1, [])], items)
    parts = [part(0, ["a", "c"]), part(1, ["b"])]
    merged = merge_rank_parts(parts, items)
    assert [r.id for r in merged] == ["a", "b", "c"]
    assert merged[1].fake_features.dtype == np.float32 and merged[1].fake_features.tolist() == [[1.0] * 4] * 2
    assert not any(p.exists() for p in parts)


def test_planted_part_files_never_run(tmp_path):
    """A part swapped for a pickle, or an .npz holding a pickled object array, is refused and its payload never runs."""
    items = [ManifestItem("a", "r.png", "p")]
    marker = tmp_path / "payload-ran"
    planted = tmp_path / ".rank0-n.npz"
    planted.write_bytes(pickle.dumps([Payload(marker)]))
    with pytest.raises(RuntimeError, match=r"rank0-n\.npz is not a part file this run wrote.*never pickles"):
        merge_rank_parts([planted], items)
    np.savez(planted, results=np.array([Payload(marker)], dtype=object))  # np.savez pickles object arrays
    with pytest.raises(RuntimeError, match="is not a part file"):
        merge_rank_parts([planted], items)
    np.savez(planted, results=np.array('[{"id": "a", "protocol": "cofe", "shell": "rm -rf /"}]'))
    with pytest.raises(RuntimeError, match=r"unknown fields \['shell'\]"):
        merge_rank_parts([planted], items)
    assert not marker.exists() and planted.exists()  # nothing ran, nothing was deleted


def test_second_bench_on_the_same_out_is_refused(bench_set, tmp_path, capsys):
    """Another `cofe bench` (here: a process holding the same lock a running `cofe bench` holds) owns --out."""
    out = tmp_path / "shared"
    holder = textwrap.dedent(
        f"""
        import sys
        from cofe_apps.io import OutputLock
        lock = OutputLock({str(out)!r}, "cofe bench").acquire()
        print("held", flush=True)
        sys.stdin.read()  # hold the lock until the test closes our stdin
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "COFE_HELD_LOCKS"}
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        args = ["bench", "--manifest", str(bench_set / "manifest.jsonl"), "--videos", str(bench_set / "videos")]
        assert cofe([*args, "--out", str(out), "--no-mlflow"]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by cofe bench (pid {proc.pid} on" in err and "choose another output folder" in err
        assert not (out / "metrics.json").exists()
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_help_is_light_and_documents_every_option():
    """`cofe bench --help` imports neither torch nor Lightning nor webdataset, and shows each option's default."""
    code = (
        "import sys\n"
        "from cofe_apps.cli import main\n"
        "try:\n    main(['bench', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'webdataset', 'mlflow') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("HEAVY []"), proc.stdout[-500:]
    assert "cuda when available" in proc.stdout and "{cofe,consisid,opens2v}" in proc.stdout
    assert "``" not in proc.stdout and ":class:" not in proc.stdout  # plain text, no reST
    parser = build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.dest == "help":
            continue
        text = formatter._get_help_string(action)
        assert action.help, f"--{action.dest} has no help"
        assert "default" in text or "(required)" in text, f"--{action.dest} shows no default: {text!r}"


@pytest.fixture(scope="module")
def turning_set(tmp_path_factory):
    """One item whose target turns from 0 to 88 degrees while the video keeps a frontal face, then loses it."""
    root = tmp_path_factory.mktemp("turning")
    face = face_crop(load_photo("t1.jpg"), T1_BOXES["p0"])
    Image.fromarray(face).save(root / "ref.png")
    frames = np.concatenate([moving_face_frames(face, 8, angle=6), faceless_frames(4)])  # faces lost past 60 degrees
    write_video(frames, root / "videos" / "turn.mp4")
    item = {
        "id": "turn",
        "reference": "ref.png",
        "prompt": "a woman turns away",
        "target_yaw": np.linspace(0, 88, 12).tolist(),
    }
    (root / "manifest.jsonl").write_text(json.dumps(item) + "\n")
    return root


def test_face_lost_at_large_target_yaw_scores_zero_through_the_command(turning_set, tmp_path, capsys):
    """The demo's setting (--protocol cofe --recognizer dlib): the > 60 bin of the target pose scores 0."""
    common = ["bench", "--manifest", str(turning_set / "manifest.jsonl"), "--videos", str(turning_set / "videos")]
    common += ["--num-frames", "12", "--no-mlflow", "--no-progress"]
    assert cofe([*common, "--recognizer", "dlib", "--out", str(tmp_path / "cofe")]) == 0
    out = capsys.readouterr().out
    assert (
        "identity recogniser: `dlib_face_recognition_resnet_model_v1`" in out and "yaw bins by the target pose" in out
    )
    report = json.loads((tmp_path / "cofe" / "metrics.json").read_text())
    bins = report["per_bin"]
    assert report["binning"]["by"] == "target" and [bins[b]["frames"] for b in bins] == [4, 4, 4]
    assert bins[">60"]["facesim_dlib"] == 0.0 and bins[">60"]["detection_rate"] == 0.0
    assert bins["|yaw|<30"]["facesim_dlib"] > 0.5 and report["overall"]["facesim_arc"] is None
    assert report["per_bin_generated"][">60"]["frames"] == 0  # by the generated face's yaw the failure is invisible
    assert report["protocol"] == "cofe" and report["recognizer"] == "dlib_face_recognition_resnet_model_v1"

    # the same video under opens2v with the offline models: labelled approximate, 32 frames
    assert (
        cofe([*common[:-4], "--no-mlflow", "--no-progress", "--protocol", "opens2v", "--out", str(tmp_path / "o")]) == 0
    )
    captured = capsys.readouterr()
    report = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert report["protocol"] == "opens2v-approx" and report["config"]["num_frames"] == 32
    assert "opens2v-approx" in captured.out and "warning: protocol 'opens2v'" in captured.err
