import json
import os
import tarfile
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from cofe_curation import (
    IngestConfig,
    IngestError,
    InputItem,
    decode,
    decode_windows,
    discover_inputs,
    json_name,
    synth,
)
from cofe_curation.config import ShotConfig
from cofe_curation.ingest import read_caption
from cofe_curation.media import cut_clips, span_rate
from cofe_curation.shots import shot_clips


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


# --------------------------------------------------------------- every input accounted for, whatever it is


def test_links_fifos_and_second_names_become_problem_items(tmp_path, clips):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    video = root / "a.mp4"
    video.write_bytes(clips["turning"].read_bytes())
    (root / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    (root / "loop.mp4").symlink_to(root / "loop.mp4")
    (root / "sub" / "up").symlink_to(root)  # a folder loop
    (root / "again.mp4").symlink_to(video)  # a second name of a.mp4
    os.mkfifo(root / "pipe.mp4")  # opening it would block forever
    items = {Path(i.source).name: i for i in discover_inputs([root])}
    assert items["a.mp4"].problem is None
    assert "dangling symbolic link" in items["dangling.mp4"].problem and "gone.mp4" in items["dangling.mp4"].problem
    assert "symbolic link loop" in items["loop.mp4"].problem
    assert "same folder as" in items["up"].problem
    assert "the same file as" in items["again.mp4"].problem and "a.mp4" in items["again.mp4"].problem
    assert "a FIFO, not a regular file" in items["pipe.mp4"].problem
    # Named directly, a FIFO is refused before it is opened.
    with pytest.raises(IngestError, match="a FIFO, not a regular file"):
        decode(InputItem(str(root / "pipe.mp4")), IngestConfig())


def test_tar_members_that_are_not_files_are_reported(tmp_path, clips):
    shard = tmp_path / "raw.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(clips["turning"], arcname="good.mp4")
        link = tarfile.TarInfo("link.mp4")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        hard = tarfile.TarInfo("hard.mp4")
        hard.type, hard.linkname = tarfile.LNKTYPE, "good.mp4"
        tar.addfile(hard)
        fifo = tarfile.TarInfo("fifo.mp4")
        fifo.type = tarfile.FIFOTYPE
        tar.addfile(fifo)
        note = tarfile.TarInfo("good.txt")
        note.type, note.linkname = tarfile.SYMTYPE, "../../secret.txt"
        tar.addfile(note)
    items = {i.source.split("::")[1]: i for i in discover_inputs([shard])}
    assert items["good.mp4"].problem is None and items["good.mp4"].caption_source is None  # the link is no caption
    assert items["link.mp4"].problem == "tar member is a symbolic link (-> /etc/passwd), not read"
    assert "hard link" in items["hard.mp4"].problem and items["fifo.mp4"].problem == "tar member is a FIFO, not read"
    assert "symbolic link" in items["good.txt"].problem
    assert len(decode(items["good.mp4"], IngestConfig()).frames) == 24


def test_declared_sizes_are_checked_before_reading(tmp_path, clips):
    sparse = synth.write_sparse_tar(tmp_path / "sparse.tar", declared=3 * 2**30)
    assert sparse.stat().st_size < 64 * 1024
    (item,) = discover_inputs([sparse])
    assert item.problem == "tar member is sparse (declares 3.22 GB), not read"
    liar = synth.write_lying_tar(tmp_path / "liar.tar", declared=200 * 10**9)
    shard_note, member = discover_inputs([liar])
    assert "ends after liar.mp4" in shard_note.problem
    with pytest.raises(IngestError, match=r"declares 200,000,000,000 bytes but the shard holds only 4,096"):
        decode(member, IngestConfig())
    shard = tmp_path / "raw.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(clips["turning"], arcname="v.mp4")
    with pytest.raises(IngestError, match=r"over ingest\.max_input_bytes=1,000"):
        decode(discover_inputs([shard])[0], IngestConfig(max_input_bytes=1000))
    with pytest.raises(IngestError, match=r"over ingest\.max_input_bytes=1,000"):
        decode(InputItem(str(clips["turning"])), IngestConfig(max_input_bytes=1000))


def test_shard_members_are_streamed_not_read_whole(tmp_path, clips):
    # A real video member padded with 64 MB after it: decoding reads what the demuxer needs, not the member.
    padded = tmp_path / "padded.mp4"
    padded.write_bytes(clips["turning"].read_bytes() + b"\0" * (64 * 2**20))
    shard = tmp_path / "raw.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(padded, arcname="v.mp4")
    (item,) = discover_inputs([shard])
    tracemalloc.start()
    try:
        video = decode(item, IngestConfig())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(video.frames) == 24
    assert peak < 32 * 2**20, peak  # Python-side allocations; reading the member whole took 64 MB+


def test_names_that_are_not_utf8_are_found_decoded_and_named(tmp_path, clips):
    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.mp4"  # Latin-1 bytes: not UTF-8
    with open(raw, "wb") as fh:
        fh.write(clips["turning"].read_bytes())
    listing = tmp_path / "list.txt"
    listing.write_bytes(raw + b"\n")
    (item,) = discover_inputs([folder])
    assert discover_inputs([listing]) == [item]
    assert os.fsencode(item.source) == raw
    assert json_name(item.source) == str(folder) + "/caf\\xe9.mp4"
    json.dumps(json_name(item.source), ensure_ascii=False).encode("utf-8")  # writable
    assert len(decode(item, IngestConfig()).frames) == 24


def test_oversized_caption_is_noted_not_read(tmp_path):
    big = tmp_path / "a.txt"
    big.write_bytes(b"x" * 2048)
    caption, problem = read_caption(str(big), max_bytes=1024)
    assert caption == "" and "larger than ingest.max_caption_bytes=1024" in problem


def test_vfr_pause_splits_the_shot_and_clips_keep_their_timing(tmp_path):
    frames = np.concatenate([synth.compose("turning", seconds=2.5)] * 2)  # 80 frames at 16 fps
    path = synth.write_vfr_gap(tmp_path / "gap.mp4", frames, 16.0, gap_s=100.0)
    with av.open(str(path)) as container:
        assert float(container.streams.video[0].average_rate) < 1.0  # the stream's average says 0.76 fps
    cfg = ShotConfig(min_clip_s=1.0, max_clip_s=4.0)
    videos = list(decode_windows(InputItem(str(path)), IngestConfig()))
    spans = [(v, s) for v in videos for s in shot_clips(v.frames, v.times, v.duration, 8.0, cfg)]
    assert [(round(s.t0, 3), round(s.t1, 3)) for _, s in spans] == [(0.0, 2.5), (102.5, 105.0)]
    cuts = list(cut_clips(str(path), [(s.t0, s.t1) for _, s in spans], 160, origin=videos[0].origin))
    for cut in cuts:
        assert cut.fps == 16 and cut.frames.shape[0] == 40  # 2.5 s at the source's own rate


def test_span_rate_keeps_exact_rates_and_times_variable_ones():
    assert span_rate(np.arange(10) / 29.97, Fraction(30000, 1001)) == Fraction(30000, 1001)
    assert span_rate(np.arange(10) / 16, Fraction(160000, 209921)) == 16  # the average says 0.76
    alternating = np.cumsum([0] + [0.04, 0.1] * 10)
    assert span_rate(alternating, Fraction(25)) == Fraction(1429, 100)  # 14.29 fps mean
    assert span_rate(np.arange(10) / 120, Fraction(120)) == 60  # capped
