import json
import os
import tarfile

import numpy as np
import pytest

from cofe_curation import ClipResult, InputResult, ShardWriter, clean_orphans, done_sources, finalize, json_name


def _result(source: str, n_kept: int, emb: np.ndarray | None = None, rejected: int = 0) -> InputResult:
    clips = []
    for i in range(n_kept):
        ann = {"yaw_range": 30.0, "abs_yaw_p90": 40.0, "id_consistency": 0.8, "speaking": False, "speech_ratio": 0.0}
        ann.update(face_ratio=0.1, num_frames=4, identity_cluster=-1, faces=[{"frame": 0, "yaw": 10.0 * i}])
        e = emb if emb is not None else np.ones(4, np.float32) / 2
        clips.append(ClipResult(f"{source}_{i:03d}", i, i + 1, "kept", "write", "kept", ann, e, b"mp4", b"png"))
    for i in range(rejected):
        clips.append(ClipResult(f"{source}_r{i}", 0, 1, "rejected", "faces", "no face detected"))
    decision = "kept" if n_kept else "rejected"
    return InputResult(source, decision, "test", clips=clips, duration=2.0)


def test_commit_protocol_survives_a_kill(tmp_path):
    writer = ShardWriter(tmp_path, rank=0, max_clips=2)
    writer.add(_result("a", 1))
    writer.add(_result("b", 1))  # 2 clips: shard 0 committed
    writer.add(_result("c", 0, rejected=1))
    writer.add(_result("d", 1))  # shard 1 is open (tar.tmp) when the process dies: no close()
    shards = tmp_path / "shards"
    assert sorted(p.name for p in shards.iterdir()) == [
        "rank0-000000.manifest.json",
        "rank0-000000.tar",
        "rank0-000001.tar.tmp",
    ]
    assert done_sources(tmp_path) == {"a", "b"}
    # A tar renamed whose manifest never landed (killed between the two renames) is not committed either.
    (shards / "rank0-000007.tar").write_bytes(b"")
    again = ShardWriter(tmp_path, rank=0, max_clips=2)
    assert sorted(p.name for p in shards.iterdir()) == ["rank0-000000.manifest.json", "rank0-000000.tar"]
    assert again.index == 1
    for source in ("c", "d"):  # the rerun processes only what is not done
        again.add(_result(source, 0 if source == "c" else 1, rejected=int(source == "c")))
    again.close()
    assert done_sources(tmp_path) == {"a", "b", "c", "d"}
    with tarfile.open(shards / "rank0-000001.tar") as tar:
        assert tar.getnames() == ["d_000.mp4", "d_000.json", "d_000.ref.png"]


def test_rank_files_are_independent(tmp_path):
    ShardWriter(tmp_path, rank=1, max_clips=1).add(_result("x", 1))
    (tmp_path / "shards" / "rank0-000000.tar.tmp").write_bytes(b"")  # another rank's open shard
    ShardWriter(tmp_path, rank=1)
    assert (tmp_path / "shards" / "rank0-000000.tar.tmp").exists()  # rank 1 leaves rank 0's files alone


def test_finalize_clusters_across_shards_and_writes_outputs(tmp_path):
    a, b = np.array([1, 0, 0, 0], np.float32), np.array([0, 1, 0, 0], np.float32)
    for rank, (source, emb) in enumerate([("p1", a), ("p2", b), ("p1again", a * 0.9 + b * 0.1)]):
        writer = ShardWriter(tmp_path, rank=rank, max_clips=8)
        writer.add(_result(source, 1, emb))
        writer.close()
    ShardWriter(tmp_path, rank=3).add(_result("nothing", 0, rejected=2))
    report = finalize(tmp_path, cluster_threshold=0.5)
    ShardWriter(tmp_path, rank=3).close()
    lines = [json.loads(x) for x in (tmp_path / "data.jsonl").read_text().splitlines()]
    clusters = {x["source"]: x["identity_cluster"] for x in lines}
    assert clusters["p1"] == clusters["p1again"] != clusters["p2"]
    assert report["identities"] == 2
    for line in lines:  # the shard JSON carries the run-wide cluster id
        with tarfile.open(tmp_path / line["shard"]) as tar:
            ann = json.loads(tar.extractfile(f"{line['key']}.json").read())
        assert ann["identity_cluster"] == line["identity_cluster"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["counts"]["clips_kept"] == 3 and saved["counts"]["inputs"] == 3
    assert all("embedding" not in c for rec in saved["inputs"] for c in rec["clips"])
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "yaw_hist.png",
        "abs_yaw_hist.png",
        "yaw_range_hist.png",
        "rejects_per_stage.png",
    }
    # |yaw| of the kept clips' frames (0 and 0 and 0 degrees here: one frame each) per bin
    assert saved["yaw_coverage"]["frames"][0] == 3 and saved["yaw_coverage"]["total"] == 3
    assert finalize(tmp_path, 0.5)["identities"] == 2  # idempotent


def test_yaw_coverage_counts_per_frame_abs_yaw_of_kept_clips(tmp_path):
    result = _result("p", 1)
    result.clips[0].annotation["faces"] = [{"frame": i, "yaw": y} for i, y in enumerate([-80, -65, -40, 5, 31, 95])]
    writer = ShardWriter(tmp_path, max_clips=8)
    writer.add(result)
    writer.add(_result("q", 0, rejected=1))  # rejected clips do not count
    writer.close()
    coverage = finalize(tmp_path, 0.5, plots=False)["yaw_coverage"]
    assert coverage["bins_deg"] == [0, 15, 30, 45, 60, 75, 90]
    assert coverage["frames"] == [1, 0, 2, 0, 1, 2] and coverage["total"] == 6
    assert coverage["at_least_60"] == 0.5


def test_orphan_rank_files_are_merged_or_removed(tmp_path):
    # A --devices 2 run killed: rank 1 committed one shard, renamed a second without its manifest, and had a
    # third open. A rerun with one rank keeps the committed shard, deletes the rest, and finalize counts it once.
    w1 = ShardWriter(tmp_path, rank=1, max_clips=1)
    w1.add(_result("r1a", 1))  # committed: rank1-000000
    shards = tmp_path / "shards"
    with tarfile.open(shards / "rank1-000001.tar", "w"):
        pass  # renamed, never committed
    (shards / "rank1-000002.tar.tmp").write_bytes(b"half")
    assert done_sources(tmp_path) == {"r1a"}
    with pytest.raises(ValueError, match=r"rank1-000001\.tar"):  # left in place, its clips would be read twice
        finalize(tmp_path, 0.5, plots=False)

    notes = clean_orphans(tmp_path, world_size=1)
    assert len(notes) == 1 and "1 committed shard(s) kept" in notes[0], notes
    assert "rank1-000001.tar" in notes[0] and "rank1-000002.tar.tmp" in notes[0]
    assert sorted(p.name for p in shards.iterdir()) == ["rank1-000000.manifest.json", "rank1-000000.tar"]
    w0 = ShardWriter(tmp_path, rank=0, max_clips=1)
    w0.add(_result("r0a", 1))
    w0.close()
    report = finalize(tmp_path, 0.5, plots=False, notes=notes)
    assert report["counts"]["inputs"] == 2 and report["counts"]["clips_kept"] == 2
    assert report["run_notes"] == notes
    assert clean_orphans(tmp_path, world_size=2) == []  # rank 1 is a current rank now: nothing to do


def test_names_that_are_not_utf8_are_written_escaped(tmp_path):
    source = os.fsdecode(b"/data/caf\xe9.mp4")  # a Latin-1 file name
    writer = ShardWriter(tmp_path, max_clips=8)
    writer.add(_result(source, 0, rejected=1))
    writer.close()
    (manifest,) = sorted((tmp_path / "shards").glob("*.manifest.json"))
    assert json.loads(manifest.read_text(encoding="utf-8"))["inputs"][0]["source"] == "/data/caf\\xe9.mp4"
    assert done_sources(tmp_path) == {json_name(source)}
    report = finalize(tmp_path, 0.5, plots=False)
    assert report["inputs"][0]["source"] == "/data/caf\\xe9.mp4"


def test_finalize_refuses_mixed_recognisers(tmp_path):
    a, b = _result("a", 1), _result("b", 1)
    b.clips[0].annotation["recognizer"] = "arcface"
    a.clips[0].annotation["recognizer"] = "sface"
    writer = ShardWriter(tmp_path, max_clips=8)
    writer.add(a)
    writer.add(b)
    writer.close()
    with pytest.raises(ValueError, match="different recognisers"):
        finalize(tmp_path, plots=False)


def test_records_of_rejected_inputs_are_committed_as_the_run_goes(tmp_path):
    writer = ShardWriter(tmp_path, max_clips=64, max_inputs=3)
    for name in ("a", "b", "c", "d"):
        writer.add(_result(name, 0, rejected=1))
    # No close(): a kill now loses only "d" (its input is done again), not the records of the first three.
    assert done_sources(tmp_path) == {"a", "b", "c"}
    assert not list((tmp_path / "shards").glob("*.tar"))  # a manifest without a tar: nothing was kept
