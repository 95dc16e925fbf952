"""Long inputs: analysed whole, window by window, with the same frames, times and audio as in one piece."""

import numpy as np
import pytest

from cofe_curation import CurationConfig, Curator, IngestConfig, InputItem, decode, decode_windows
from cofe_curation.identity import Recognizer, build_recognizer, fold_weight_dequantization
from cofe_curation.media import read_clip, read_clips
from cofe_curation.synth import compose, tone, write_clip


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """24 s: the turning face eight times over (3 s each), 16 fps, with a tone."""
    frames = np.concatenate([compose("turning")] * 8)
    return write_clip(tmp_path_factory.mktemp("long") / "long.mp4", frames, 16.0, tone(24.0))


def test_windows_match_one_piece(long_clip):
    item = InputItem(str(long_clip))
    whole = decode(item, IngestConfig())
    windows = list(decode_windows(item, IngestConfig(window_s=10.0)))
    assert [w.start for w in windows] == [0.0, 10.0, 20.0] and [w.complete for w in windows] == [False, False, True]
    assert whole.complete and windows[-1].duration == pytest.approx(whole.duration)
    np.testing.assert_array_equal(np.concatenate([w.times for w in windows]), whole.times)
    np.testing.assert_array_equal(np.concatenate([w.frames for w in windows]), whole.frames)
    audio = np.concatenate([w.audio for w in windows])
    assert abs(audio.size - whole.audio.size) <= 16  # within 1 ms at 16 kHz
    n = min(audio.size, whole.audio.size)
    assert np.abs(audio[:n] - whole.audio[:n]).max() < 1e-3


def test_a_cap_is_noted_and_respected(long_clip):
    video = decode(InputItem(str(long_clip)), IngestConfig(max_duration_s=5.0))
    assert video.complete and video.duration == pytest.approx(5.0) and video.times[-1] < 5.0
    assert any("only the first 5 s of 24.0 s were analysed" in n for n in video.notes), video.notes


def test_clips_are_cut_in_one_pass_with_seeks(long_clip):
    spans = [(1.0, 2.5), (3.0, 4.0), (20.0, 21.5)]  # the last one is reached by seeking
    origin = decode(InputItem(str(long_clip)), IngestConfig(window_s=1.0)).origin
    cuts = list(read_clips(str(long_clip), spans, 160, origin=origin))
    for (t0, t1), (frames, fps) in zip(spans, cuts, strict=True):
        alone, _ = read_clip(str(long_clip), t0, t1, 160)
        assert fps == 16.0 and frames.shape == (round((t1 - t0) * 16), 128, 160, 3)
        np.testing.assert_array_equal(frames, alone)


@pytest.mark.slow
def test_a_long_input_is_curated_window_by_window(long_clip):
    cfg = CurationConfig.from_dict({"preset": "tiny", "ingest": {"window_s": 12.0}})
    result = Curator(cfg).curate_input(InputItem(str(long_clip)))
    assert result.windows == 2 and result.duration == pytest.approx(24.0, abs=0.1)
    assert [(c.t0, c.t1) for c in result.clips] == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (20, 24.0)]
    assert len({c.key for c in result.clips}) == 6 and result.decision == "kept", result.reason
    assert result.record()["analysed_s"] == [0.0, 24.0]


def test_config_rejects_impossible_windows():
    with pytest.raises(ValueError, match=r"ingest\.window_s must hold at least two sampled frames"):
        CurationConfig.from_dict({"ingest": {"window_s": 0.1}})
    with pytest.raises(ValueError, match=r"ingest\.max_duration_s must be > 0 or null"):
        IngestConfig(max_duration_s=0)


def test_curation_recognizer_gives_the_encoders_embeddings(curator, clips):
    video = decode(InputItem(str(clips["turning"])), IngestConfig())
    faces = [curator.analyzer.largest(f, embed=False) for f in video.frames[:4]]
    reference = curator.analyzer.recognizer.encode(list(video.frames[:4]), kps5=[f.kps5 for f in faces]).pooled
    ours = build_recognizer(curator.analyzer)
    assert isinstance(ours, Recognizer)
    got = ours.encode(list(video.frames[:4]), kps5=[f.kps5 for f in faces]).pooled
    np.testing.assert_allclose(got.numpy(), reference.numpy(), atol=1e-4)
    assert fold_weight_dequantization(ours._model) == 0  # already folded: nothing quantised is left
