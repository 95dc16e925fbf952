import json
import tarfile

import numpy as np
import pytest

from cofe_curation import IngestConfig, IngestError, InputItem, decode, discover_inputs
from cofe_curation.ingest import read_caption


def test_decode_samples_by_time_and_keeps_audio(clips):
    video = decode(InputItem(str(clips["turning"])), IngestConfig(sample_fps=8.0))
    assert video.frames.shape == (24, 256, 320, 3)  # 3 s at 8 fps, already under analysis_max_side
    np.testing.assert_allclose(np.diff(video.times), 0.125, atol=1e-6)
    assert video.fps == pytest.approx(16.0)
    assert video.duration == pytest.approx(3.0, abs=0.07)
    assert video.audio is not None and video.audio.size == pytest.approx(48000, rel=0.05)
    assert video.rotation == 0 and video.scale == 1.0


def test_discover_names_a_file_the_same_however_it_is_spelled(tmp_path, monkeypatch):
    # A rerun that names the inputs relatively (or from another directory) must recognise finished inputs.
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.mp4").write_bytes(b"")
    absolute = discover_inputs([tmp_path / "raw"])
    monkeypatch.chdir(tmp_path)
    assert discover_inputs(["raw"]) == discover_inputs(["./raw/../raw"]) == absolute
    assert absolute[0].source == str(tmp_path / "raw" / "a.mp4")


def test_discover_folder_list_and_shard(tmp_path, clips):
    (tmp_path / "a.mp4").write_bytes(clips["turning"].read_bytes())
    (tmp_path / "a.txt").write_text("a caption")
    (tmp_path / "notes.md").write_text("not a video")
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# comment\na.mp4\n{clips['tiny']}\n")
    shard = tmp_path / "raw-000.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(clips["no_face"], arcname="clip1.mp4")
        caption = tmp_path / "c.json"
        caption.write_text(json.dumps({"caption": "a person is speaking"}))
        tar.add(caption, arcname="clip1.json")
    items = discover_inputs([tmp_path / "a.mp4", listing, shard])
    assert [i.source for i in items] == [str(tmp_path / "a.mp4"), str(clips["tiny"]), f"{shard}::clip1.mp4"]
    assert items[0].caption_source == str(tmp_path / "a.txt")
    assert read_caption(items[2].caption_source) == ("a person is speaking", None)
    video = decode(items[2], IngestConfig())  # decoded straight from the shard
    assert video.caption == "a person is speaking" and len(video.frames) == 24


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("corrupt", "not a readable media file"),
        ("truncated", "not a readable media file"),
        ("empty", "zero-length file"),
        ("audio_only", "no video stream"),
    ],
)
def test_unusable_inputs_raise_with_reason(bad_inputs, name, reason):
    with pytest.raises(IngestError, match=reason) as info:
        decode(InputItem(str(bad_inputs[name])), IngestConfig())
    assert str(bad_inputs[name]) in str(info.value)


def test_missing_file_and_too_many_pixels(tmp_path, bad_inputs):
    with pytest.raises(IngestError, match="file not found"):
        decode(InputItem(str(tmp_path / "nope.mp4")), IngestConfig())
    with pytest.raises(IngestError, match="resolution 3840x2160 exceeds max_pixels"):
        decode(InputItem(str(bad_inputs["large"])), IngestConfig(max_pixels=1920 * 1080))


def test_large_is_downscaled_in_the_decoder(bad_inputs):
    video = decode(InputItem(str(bad_inputs["large"])), IngestConfig(analysis_max_side=640))
    assert video.frames.shape[1:] == (360, 640, 3)
    assert (video.width, video.height) == (3840, 2160) and video.scale == pytest.approx(1 / 6)


def test_rotated_phone_video_is_upright(bad_inputs, clips):
    rotated = decode(InputItem(str(bad_inputs["rotated"])), IngestConfig())
    upright = decode(InputItem(str(clips["turning"])), IngestConfig())
    assert rotated.rotation == 90
    assert rotated.frames.shape == upright.frames.shape
    assert (rotated.width, rotated.height) == (320, 256)
    diff = np.abs(rotated.frames.astype(int) - upright.frames.astype(int)).mean()
    assert diff < 6, diff  # same picture, up to coding noise


def test_vfr_is_sampled_evenly_in_time(bad_inputs):
    video = decode(InputItem(str(bad_inputs["vfr"])), IngestConfig(sample_fps=4.0))
    assert any("variable frame rate" in n for n in video.notes)
    # Sample k is the first frame at or after k x 0.25 s: at most one source gap (100 ms) late, never early.
    late = video.times - 0.25 * np.arange(len(video.times))
    assert late.min() >= -1e-6 and late.max() <= 0.1 + 1e-6, late


def test_no_audio_bad_caption_and_non_ascii(bad_inputs):
    video = decode(InputItem(str(bad_inputs["no_audio"])), IngestConfig())
    assert video.audio is None and "no audio track" in video.notes
    items = discover_inputs([bad_inputs["bad_caption"]])
    video = decode(items[0], IngestConfig())
    assert video.caption == "" and "does not parse as JSON" in video.notes[0]
    assert len(decode(InputItem(str(bad_inputs["non_ascii"])), IngestConfig()).frames) == 24
