"""End to end on composed clips of real faces, and on the real speaking webcam clip."""

import io
import json
import tarfile

import av
import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from cofe_curation import CurationConfig, curate

CONTRACT = {
    "fps",
    "num_frames",
    "width",
    "height",
    "caption",
    "caption_refined",
    "speaking",
    "speech_ratio",
    "faces",
    "face_ratio",
    "yaw_range",
    "id_consistency",
    "identity_cluster",
    "source",
}


@pytest.mark.slow
def test_composed_clips_are_kept_or_rejected_by_the_right_stage(clips, tmp_path):
    (tmp_path / "in").mkdir()
    for path in clips.values():
        (tmp_path / "in" / path.name).write_bytes(path.read_bytes())
    (tmp_path / "in" / "turning.txt").write_text("A person is talking while turning their head.")
    cfg = CurationConfig.from_dict({"write": {"max_side": 320, "ref_size": 128}})
    report = curate([tmp_path / "in"], tmp_path / "out", cfg)
    by_name = {rec["source"].rsplit("/", 1)[-1]: rec for rec in report["inputs"]}
    stages = {name: [c["stage"] for c in rec["clips"]] for name, rec in by_name.items()}
    assert stages == {
        "turning.mp4": ["write"],
        "turning_frontal.mp4": ["faces"],
        "two_faces.mp4": ["faces"],
        "swap.mp4": ["identity"],
        "no_face.mp4": ["faces"],
        "tiny.mp4": ["faces"],
    }
    counts = report["counts"]
    assert counts["stages"]["faces"] == {"in": 6, "rejected": 4}
    assert counts["stages"]["identity"] == {"in": 2, "rejected": 1}
    assert counts["clips_kept"] == 1

    (line,) = [json.loads(x) for x in (tmp_path / "out" / "data.jsonl").read_text().splitlines()]
    shard = tmp_path / "out" / line["shard"]
    (sample,) = list(wds.WebDataset(str(shard), shardshuffle=False, empty_check=False))
    ann = json.loads(sample["json"])
    assert CONTRACT <= set(ann) and ann["identity_cluster"] == 0
    assert ann["caption_refined"] == "A person is turning their head."  # silent: the speaking claim is removed
    assert ann["caption_rewriter"] == "rules"
    assert ann["speaking"] is False and ann["num_frames"] == 48 and (ann["width"], ann["height"]) == (320, 256)
    assert len(ann["faces"]) == 24 and {"frame", "bbox", "kps5", "score", "yaw", "pitch", "roll"} <= set(
        ann["faces"][0]
    )
    yaws = np.array([f["yaw"] for f in ann["faces"]])
    assert ann["yaw_range"] >= 15 and np.abs(yaws).max() >= 40
    with av.open(io.BytesIO(sample["mp4"])) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and container.streams.audio
        assert sum(1 for _ in container.decode(stream)) == 48
    ref = np.array(Image.open(io.BytesIO(sample["ref.png"])))
    assert ref.shape == (128, 128, 3) and ref[:6, :6].min() >= 250  # whitened background
    assert not list((tmp_path / "out" / "shards").glob("*.tmp"))


@pytest.mark.slow
def test_real_webcam_clip(movie_hello, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "movie-hello.mp4").write_bytes(movie_hello.read_bytes())
    (tmp_path / "in" / "movie-hello.txt").write_text("A man talking to the camera in an office.")
    report = curate([tmp_path / "in"], tmp_path / "out", CurationConfig.from_dict({"write": {"max_side": 320}}))
    (rec,) = report["inputs"]
    assert rec["decision"] == "kept" and [c["decision"] for c in rec["clips"]] == ["kept", "kept"]
    with tarfile.open(tmp_path / "out" / "shards" / "rank0-000000.tar") as tar:
        anns = [json.loads(tar.extractfile(n).read()) for n in sorted(tar.getnames()) if n.endswith(".json")]
    first, second = anns
    # 0-5 s: the person speaks (VAD 0.8-3.1 s) and the mouth moves with the voice.
    assert first["speaking"] is True and first["speech_ratio"] > 0.3
    assert first["caption_refined"] == "A man talking to the camera in an office."
    # 5-8.4 s: silent; the caption no longer claims speech.
    assert second["speaking"] is False
    assert second["caption_refined"] == "A man looking at the camera in an office."
    assert first["identity_cluster"] == second["identity_cluster"] == 0  # one person across the two clips
    assert first["yaw_range"] > 25 and first["id_consistency"] > 0.45
