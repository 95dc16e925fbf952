"""`cofe curate`: bad inputs never stop a run, and a run killed midway resumes without losing or duplicating."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import av
import numpy as np
import pytest

from cofe_apps.cli import main as cofe
from cofe_apps.io import OutputLock
from cofe_curation.media import encode_mp4
from cofe_curation.pipeline import clip_key
from cofe_curation.synth import (
    compose,
    tone,
    write_bad_inputs,
    write_clip,
    write_lying_tar,
    write_sparse_tar,
    write_vfr_gap,
)
from cofe_encoders.face import build_face_analyzer


def _keys(out: Path) -> list[str]:
    """Every sample key in every committed shard (duplicates kept, so they can be counted)."""
    keys = []
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            keys += [n[: -len(".json")] for n in tar.getnames() if n.endswith(".json")]
    return keys


@pytest.fixture(scope="module")
def turning() -> object:
    return compose("turning")


def _awkward_inputs(folder: Path, turning) -> dict[str, str]:
    """Beside write_bad_inputs: names that are not UTF-8, a VFR pause, shards that declare more than they hold,
    links and FIFOs. Returns name -> the source as report.json names it."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = os.fsencode(folder) + b"/caf\xe9.mp4"  # Latin-1: not UTF-8
    with open(raw, "wb") as fh:
        fh.write(encode_mp4(turning, 16.0, tone(3.0), crf=23))
    both = np.concatenate([compose("turning", seconds=2.5)] * 2)  # 80 frames at 16 fps around a 100 s pause
    write_vfr_gap(folder / "gap.mp4", both, 16.0, gap_s=100.0)
    write_sparse_tar(folder / "sparse.tar", "huge.mp4", declared=3 * 2**30)  # 10 KB on disk
    write_lying_tar(folder / "liar.tar", "liar.mp4", declared=200 * 10**9)
    with tarfile.open(folder / "members.tar", "w") as tar:
        for name, kind, target in (("link.mp4", tarfile.SYMTYPE, "/etc/passwd"), ("fifo.mp4", tarfile.FIFOTYPE, "")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    (folder / "dangling.mp4").symlink_to(folder / "gone.mp4")
    (folder / "loop.mp4").symlink_to(folder / "loop.mp4")
    os.mkfifo(folder / "pipe.mp4")
    return {
        "latin1": f"{folder}/caf\\xe9.mp4",
        "gap": str(folder / "gap.mp4"),
        "sparse": f"{folder / 'sparse.tar'}::huge.mp4",
        "liar_shard": str(folder / "liar.tar"),
        "liar": f"{folder / 'liar.tar'}::liar.mp4",
        "link_member": f"{folder / 'members.tar'}::link.mp4",
        "fifo_member": f"{folder / 'members.tar'}::fifo.mp4",
        "dangling": str(folder / "dangling.mp4"),
        "loop": str(folder / "loop.mp4"),
        "fifo": str(folder / "pipe.mp4"),
    }


# Runs `cofe curate` in a child process and prints the child's peak RSS (all work in that process: --workers 0).
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child forked from a large pytest
# process would report the parent's size.
_MEASURED = (
    "import re, sys; from cofe_apps.cli import main; rc = main(sys.argv[1:]); "
    "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1); "
    "print('MAXRSS_KB', hwm); sys.exit(rc)"
)


@pytest.mark.slow
def test_every_input_is_accounted_for_whatever_it_is(tmp_path, turning):
    paths = write_bad_inputs(tmp_path / "in", base=turning)
    awkward = _awkward_inputs(tmp_path / "in", turning)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([str(tmp_path / "in"), str(tmp_path / "missing.mp4")]) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", _MEASURED, "curate", str(listing), "--out", str(out), "--preset", "tiny"]
    cmd += ["--no-progress", "--workers", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    by_path = {rec["source"]: rec for rec in report["inputs"]}
    reasons = {
        "corrupt": "not a readable media file",
        "truncated": "not a readable media file",
        "empty": "zero-length file",
        "audio_only": "no video stream",
    }
    for name, reason in reasons.items():
        rec = by_path[str(paths[name])]
        assert rec["decision"] == "error" and reason in rec["reason"], rec
    assert "file not found" in by_path[str(tmp_path / "missing.mp4")]["reason"]
    for name in ("no_audio", "vfr", "rotated", "non_ascii", "bad_caption", "large"):
        assert by_path[str(paths[name])]["decision"] == "kept", by_path[str(paths[name])]
    assert "no audio track" in by_path[str(paths["no_audio"])]["notes"]
    assert any("does not parse" in n for n in by_path[str(paths["bad_caption"])]["notes"])
    assert any("variable frame rate" in n for n in by_path[str(paths["vfr"])]["notes"])

    # Links, FIFOs, special tar members and lying sizes: each an error input with its reason, nothing opened.
    expected = {
        "sparse": "tar member is sparse (declares 3.22 GB), not read",
        "liar": "declares 200,000,000,000 bytes but the shard holds only 4,096 after its header",
        "liar_shard": "ends after liar.mp4",
        "link_member": "tar member is a symbolic link (-> /etc/passwd), not read",
        "fifo_member": "tar member is a FIFO, not read",
        "dangling": "dangling symbolic link",
        "loop": "symbolic link loop",
        "fifo": "a FIFO, not a regular file",
    }
    for name, reason in expected.items():
        rec = by_path[awkward[name]]
        assert rec["decision"] == "error" and reason in rec["reason"], rec
    # Memory is bounded by what is read: the 3 GB and 200 GB declarations were refused before reading (before,
    # the sparse member alone took the process to 4.1 GB).
    rss = int(proc.stdout.split("MAXRSS_KB")[1].split()[0]) * 1024
    assert rss < 2 * 2**30, f"peak RSS {rss / 2**30:.2f} GiB"

    # A name that is not UTF-8 is escaped, curated, and recognised as done on a rerun.
    assert by_path[awkward["latin1"]]["decision"] == "kept"
    # The VFR pause: one clip each side of it, each written at its own rate, its JSON matching its video.
    gap = by_path[awkward["gap"]]
    assert [(c["decision"], c["t0"], c["t1"]) for c in gap["clips"]] == [("kept", 0.0, 2.5), ("kept", 102.5, 105.0)]
    analyzer = build_face_analyzer("offline")
    for clip in gap["clips"]:
        with tarfile.open(out / "shards" / gap["shard"]) as tar:
            ann = json.loads(tar.extractfile(f"{clip['key']}.json").read())
            mp4 = tar.extractfile(f"{clip['key']}.mp4").read()
        with av.open(io.BytesIO(mp4)) as container:
            stream = container.streams.video[0]
            video = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            assert float(stream.average_rate) == pytest.approx(ann["fps"], abs=1e-3)
        assert ann["fps"] == 16.0 and ann["num_frames"] == len(video) == 40  # was 3 frames at 0.78 fps
        assert len(ann["faces"]) == 20 and ann["faces"][-1]["frame"] < len(video)
        for face in ann["faces"][::5]:  # each face entry is where its frame shows a face
            assert face["frame"] == round(face["time"] * ann["fps"])
            found = analyzer.largest(video[face["frame"]], embed=False)
            assert found is not None and _iou(found.bbox, np.array(face["bbox"])) > 0.7, face
    assert report["counts"]["inputs"] == 21 and report["counts"]["inputs_error"] == 13
    assert report["counts"]["clips_kept"] == 9
    assert not list(out.rglob("*.tmp"))  # nothing half-written
    assert "inputs 21: 8 kept, 0 rejected, 13 errors" in proc.stdout

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "21 of 21 inputs already finished" in again.stderr
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["counts"] == report["counts"]


def _iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.slow
def test_resume_after_kill_neither_loses_nor_duplicates(tmp_path, turning):
    inputs = tmp_path / "in"
    for i in range(6):  # six inputs with one kept clip each, and one rejected input
        write_clip(inputs / f"person{i}.mp4", turning, 16.0, tone(3.0))
    write_clip(inputs / "nobody.mp4", compose("no_face", seconds=2.0), 16.0)
    config = tmp_path / "curate.yaml"
    config.write_text("preset: tiny\nwrite:\n  shard_max_clips: 1\n")  # one shard per kept input

    expected = sorted(clip_key(str(inputs / f"person{i}.mp4"), 0) for i in range(6))  # one kept clip each

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cofe_apps.cli", "curate", str(inputs), "--out", str(out), "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list((out / "shards").glob("*.manifest.json")) if (out / "shards").is_dir() else True:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no shard committed within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its DataLoader worker, mid-way
        proc.wait()
    partial = _keys(out)
    assert 1 <= len(partial) < 6, partial  # killed mid-way: some inputs done, not all
    assert not (out / "report.json").exists()

    assert cofe(["curate", str(inputs), "--out", str(out), "--config", str(config), "--no-progress"]) == 0
    assert sorted(_keys(out)) == expected  # nothing lost, nothing twice
    assert not list(out.rglob("*.tmp"))
    report = json.loads((out / "report.json").read_text())
    assert sorted(r["source"].rsplit("/", 1)[-1] for r in report["inputs"]) == sorted(p.name for p in inputs.iterdir())
    lines = (out / "data.jsonl").read_text().splitlines()
    assert len(lines) == 6 and len({json.loads(x)["identity_cluster"] for x in lines}) == 1  # one person


def test_config_errors_are_reported(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("faces:\n  min_face: 3\n")
    assert cofe(["curate", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(bad)]) == 2
    assert "unknown key faces.min_face" in capsys.readouterr().err


def _manifest_sources(out: Path, rank: int) -> list[str]:
    return [
        rec["source"]
        for path in sorted((out / "shards").glob(f"rank{rank}-*.manifest.json"))
        for rec in json.loads(path.read_text())["inputs"]
    ]


@pytest.mark.slow
def test_two_ranks_split_the_inputs_and_rank0_finalizes_both(tmp_path, turning):
    inputs = tmp_path / "in"
    for i in range(3):
        write_clip(inputs / f"person{i}.mp4", turning[:32], 16.0, tone(2.0))  # 2 s: one kept clip each
    write_clip(inputs / "nobody.mp4", compose("no_face", seconds=2.0), 16.0)
    config = tmp_path / "curate.yaml"
    config.write_text("preset: tiny\nwrite:\n  shard_max_clips: 1\n")  # one shard per kept input
    common = ["--config", str(config), "--workers", "0", "--no-progress"]

    # Two ranks: Lightning's DDP launcher (gloo on CPU) starts rank 1 as a second `python -m cofe_apps.cli`.
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "cofe_apps.cli", "curate", str(inputs), "--out", str(two), "--devices", "2", *common]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [set(_manifest_sources(two, r)) for r in (0, 1)]
    assert ranks[0] and ranks[1] and not ranks[0] & ranks[1]  # each rank took its own, disjoint inputs
    assert ranks[0] | ranks[1] == {str(p) for p in inputs.iterdir()}
    assert {p.name.split("-")[0] for p in (two / "shards").glob("*.tar")} == {"rank0", "rank1"}

    one = tmp_path / "one"
    assert cofe(["curate", str(inputs), "--out", str(one), *common]) == 0
    keys = _keys(two)
    assert len(keys) == len(set(keys)) == 3 and sorted(keys) == sorted(_keys(one))  # no duplicates, none lost

    # Rank 0's finalize covers both ranks: report, data list and identity clusters over all shards.
    report = json.loads((two / "report.json").read_text())
    assert report["counts"]["inputs"] == 4 and report["counts"]["clips_kept"] == 3 and report["identities"] == 1
    lines = [json.loads(x) for x in (two / "data.jsonl").read_text().splitlines()]
    assert sorted(x["key"] for x in lines) == sorted(keys)
    assert {x["shard"].split("/")[1].split("-")[0] for x in lines} == {"rank0", "rank1"}
    for shard in (two / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            for name in (n for n in tar.getnames() if n.endswith(".json")):
                assert json.loads(tar.extractfile(name).read())["identity_cluster"] == 0, (shard, name)

    # The same run killed between rank 1's last tar rename and its manifest, then rerun with --devices 1: the
    # orphan rank1 tar must not stay beside the rank-0 copy of its clips (counted twice, cluster -1).
    manifests = sorted((two / "shards").glob("rank1-*.manifest.json"))
    assert len(manifests) == 2  # rank 1 kept two inputs, one shard each
    lost = [r["source"] for r in json.loads(manifests[-1].read_text())["inputs"]]
    manifests[-1].unlink()
    assert len(_keys(two)) == 3  # the orphan tar still holds its clip
    assert cofe(["curate", str(inputs), "--out", str(two), *common]) == 0
    keys = _keys(two)
    assert len(keys) == len(set(keys)) == 3 and sorted(keys) == sorted(_keys(one))  # once each
    committed = {p.name[: -len(".manifest.json")] for p in (two / "shards").glob("*.manifest.json")}
    assert {p.name[: -len(".tar")] for p in (two / "shards").glob("*.tar")} <= committed  # every tar committed
    assert set(lost) <= set(_manifest_sources(two, 0))  # rank 0 redid the lost inputs
    report = json.loads((two / "report.json").read_text())
    assert report["counts"]["inputs"] == 4 and report["counts"]["clips_kept"] == 3
    (note,) = report["run_notes"]
    assert note.startswith("rank 1 (from an earlier run with more ranks than 1): 1 committed shard(s) kept")
    assert manifests[-1].name.replace(".manifest.json", ".tar") in note  # the deleted orphan is named
    assert {json.loads(x)["identity_cluster"] for x in (two / "data.jsonl").read_text().splitlines()} == {0}


def test_an_output_folder_overlapping_the_inputs_is_refused(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    assert cofe(["curate", str(inputs), "--out", str(inputs / "curated")]) == 2
    assert "is inside the input folder" in capsys.readouterr().err
    (tmp_path / "out" / "shards").mkdir(parents=True)
    assert cofe(["curate", str(tmp_path / "out" / "shards"), "--out", str(tmp_path / "out")]) == 2
    assert "is inside --out" in capsys.readouterr().err
    listing = tmp_path / "list.txt"
    (tmp_path / "out" / "shards" / "rank0-000000.tar").write_bytes(b"")
    listing.write_text(str(tmp_path / "out" / "shards" / "rank0-000000.tar") + "\n")
    assert cofe(["curate", str(listing), "--out", str(tmp_path / "out")]) == 2  # found through a list file
    assert "is inside --out" in capsys.readouterr().err


@pytest.mark.slow
def test_a_second_curate_on_the_same_folder_is_refused(tmp_path, turning, capsys):
    inputs = tmp_path / "in"
    for i in range(4):
        write_clip(inputs / f"person{i}.mp4", turning, 16.0, tone(3.0))
    out = tmp_path / "out"
    common = ["--preset", "tiny", "--workers", "0", "--no-progress"]
    cmd = [sys.executable, "-m", "cofe_apps.cli", "curate", str(inputs), "--out", str(out), *common]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = out / ".cofe.lock"
    deadline = time.monotonic() + 120
    while not (lock.is_file() and f'"pid": {first.pid}' in lock.read_text()):
        assert first.poll() is None, first.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the first run did not take the lock"
        time.sleep(0.05)
    assert cofe(["curate", str(inputs), "--out", str(out), *common]) == 2  # while the first one runs
    err = capsys.readouterr().err
    assert f"is in use by cofe curate (pid {first.pid} on" in err and "choose another output folder" in err
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    expected = sorted(clip_key(str(inputs / f"person{i}.mp4"), 0) for i in range(4))
    assert sorted(_keys(out)) == expected  # nothing lost, nothing twice
    report = json.loads((out / "report.json").read_text())
    assert sorted(r["source"] for r in report["inputs"]) == sorted(str(p) for p in inputs.iterdir())
    with OutputLock(out, "test"):  # the lock went with the first run (the kernel drops it at exit)
        pass
