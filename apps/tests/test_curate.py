"""`cofe curate`: bad inputs never stop a run, and a run killed midway resumes without losing or duplicating."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from cofe_apps.cli import main as cofe
from cofe_curation.pipeline import clip_key
from cofe_curation.synth import compose, tone, write_bad_inputs, write_clip


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


@pytest.mark.slow
def test_bad_inputs_are_recorded_and_the_run_goes_on(tmp_path, turning, capsys):
    paths = write_bad_inputs(tmp_path / "in", base=turning)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([str(tmp_path / "in"), str(tmp_path / "missing.mp4")]) + "\n")
    rc = cofe(["curate", str(listing), "--out", str(tmp_path / "out"), "--preset", "tiny", "--no-progress"])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
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
    assert report["counts"]["inputs_error"] == 5 and report["counts"]["clips_kept"] == 6
    assert not list((tmp_path / "out").rglob("*.tmp"))  # nothing half-written
    printed = capsys.readouterr().out
    assert "stage" in printed and "identity" in printed and "inputs 11: 6 kept, 0 rejected, 5 errors" in printed


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
    common = ["--preset", "tiny", "--workers", "0", "--no-progress"]

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
