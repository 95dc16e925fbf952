import numpy as np
import pytest

from cofe_curation import IngestConfig, InputItem, build_rewriter, decode
from cofe_curation.config import SpeechConfig
from cofe_curation.faces import detect_faces, track_main_face
from cofe_curation.speech import SpeechEvidence, decide_speaking, mouth_evidence, speech_ratio, speech_segments
from cofe_curation.synth import mouth_opening, speech_like, talking_clip, tone, write_clip


class UpperRewriter:
    def rewrite(self, caption: str, speaking: bool) -> str:
        return caption.upper()


def test_pluggable_rewriter():
    assert build_rewriter(f"{__name__}:UpperRewriter").rewrite("hi", True) == "HI"
    with pytest.raises(ValueError, match="cannot be imported"):
        build_rewriter("no_such_module_xyz:Thing")
    with pytest.raises(ValueError, match="expected 'rules'"):
        build_rewriter("gpt")


def test_vad_ignores_a_tone_and_silence():
    assert speech_segments(tone(3.0), 16000) == []
    assert speech_segments(np.zeros(32000, np.float32), 16000) == []
    assert speech_ratio([(0.5, 1.5), (2.5, 4.0)], 1.0, 3.0) == pytest.approx(0.5)


@pytest.mark.parametrize("pauses", [True, False])
def test_speech_like_audio_is_heard_as_speech(pauses):
    """The synthetic voice (synth.speech_like) is speech to silero-vad, with its pauses where they were made."""
    audio, syllables = speech_like(3.0, pauses=pauses, seed=1 if pauses else 2)
    segments = speech_segments(audio, 16000)
    ratio = speech_ratio(segments, 0.0, 3.0)
    if pauses:
        assert 0.5 < ratio < 0.8 and len(segments) >= 2, segments  # 0.68 measured: words and 0.4-0.7 s pauses
    else:
        assert ratio > 0.85 and len(segments) == 1, segments  # 0.91: one segment, no pause to compare with
    covered = sum(speech_ratio(segments, a, b) * (b - a) for a, b in syllables) / sum(b - a for a, b in syllables)
    assert covered > 0.9  # the syllables themselves are heard


def _evidence(**kw) -> SpeechEvidence:
    base = dict(mouth_motion=0.37, mouth_baseline=0.12, usable_pairs=20, usable_frames=21, tracked_frames=21)
    return SpeechEvidence(**{**base, **kw})


def test_decision_rules_and_their_evidence():
    cfg = SpeechConfig()
    speaking = decide_speaking(0.5, _evidence(voice_lock=2.4, envelope_corr=0.24), True, cfg)
    assert speaking.speaking and speaking.rule == "mouth_follows_voice" and not speaking.voice_over
    assert speaking.evidence.speech_ratio == 0.5
    # Speech throughout (no pauses): the absolute motion decides, both ways; the audio never decides alone.
    assert decide_speaking(0.94, _evidence(), True, cfg).rule == "mouth_moves_in_continuous_speech"
    still = decide_speaking(0.94, _evidence(mouth_motion=0.13), True, cfg)
    assert not still.speaking and still.voice_over and still.rule == "voice_over" and "voice-over" in still.reason
    # Twice the baseline is needed as well as the margin: a fast head turn raises both.
    assert decide_speaking(0.94, _evidence(mouth_motion=0.30, mouth_baseline=0.2), True, cfg).rule == "voice_over"
    out_of_sync = decide_speaking(0.6, _evidence(voice_lock=1.0), True, cfg)
    assert not out_of_sync.speaking and out_of_sync.voice_over and out_of_sync.rule == "mouth_out_of_sync"
    chewing = decide_speaking(0.0, _evidence(), True, cfg)
    assert not chewing.speaking and not chewing.voice_over and chewing.rule == "mouth_moves_without_voice"
    assert decide_speaking(0.0, _evidence(mouth_motion=0.1), True, cfg).rule == "no_speech"
    profile = decide_speaking(0.9, _evidence(usable_pairs=3), True, cfg)
    assert not profile.speaking and profile.rule == "mouth_not_visible" and "3 frame pairs" in profile.reason
    assert decide_speaking(0.9, None, True, cfg).rule == "mouth_not_visible"
    no_audio = decide_speaking(0.5, _evidence(), False, cfg)
    assert no_audio.reason == "no audio track" and no_audio.rule == "no_audio" and no_audio.speech_ratio == 0.0
    d = speaking.evidence.to_dict()
    assert set(d) == {
        "speech_ratio", "mouth_motion", "mouth_baseline", "voice_lock", "envelope_corr", "usable_frames",
        "usable_pairs", "voiced_pairs", "tracked_frames", "rule",
    }  # fmt: skip


def _decide(frames, audio, analyzer, fps=8.0):
    """Decide a clip of sampled frames at ``fps`` with ``audio`` (16 kHz, same start) as the pipeline does."""
    times = np.arange(len(frames)) / fps
    segments = speech_segments(audio, 16000) if audio is not None else []
    track = track_main_face(frames, detect_faces(analyzer, frames, 0.6), 0, len(frames))
    cfg = SpeechConfig()
    ev = mouth_evidence(frames, track, times, 1.5 / fps, segments, audio, 16000, 0.0, cfg.max_yaw)
    return decide_speaking(speech_ratio(segments, 0.0, len(frames) / fps), ev, audio is not None, cfg)


T8 = np.arange(24) / 8.0


@pytest.mark.slow  # 6 clips x 24 frames of face detection: 4-14 s on 2 cores
@pytest.mark.parametrize(("name", "sweep"), [("hopper", (0.0, 0.0)), ("t1-4", (-0.1, 0.1)), ("hanks", (-0.2, 0.2))])
def test_synthetic_faces_are_decided_right(name, sweep, curator):
    """Real-texture faces, frontal or turning, with a synthetic voice with and without pauses: a still mouth under
    the voice is a voice-over, a mouth that opens with the syllables speaks, a chewing mouth without a voice (or
    under a voice it does not follow) does not."""
    voice, syllables = speech_like(3.0, pauses=True, seed=1)
    continuous, syllables_c = speech_like(3.0, pauses=False, seed=2)
    still = talking_clip(name, None, sweep=sweep)
    chewing = talking_clip(name, 0.5 - 0.5 * np.cos(2 * np.pi * 1.3 * T8), sweep=sweep)  # 1.3 chews a second
    cases = {
        "still + voice with pauses": (still, voice, False, "voice_over"),
        "still + continuous voice": (still, continuous, False, "voice_over"),
        "talking + voice with pauses": (talking_clip(name, mouth_opening(T8, syllables), sweep=sweep), voice, True,
                                        "mouth_follows_voice"),
        "talking + continuous voice": (talking_clip(name, mouth_opening(T8, syllables_c), sweep=sweep), continuous,
                                       True, "mouth_moves_in_continuous_speech"),
        "chewing, silent audio": (chewing, np.zeros(48000, np.float32), False, "mouth_moves_without_voice"),
        "chewing + voice-over": (chewing, voice, False, "mouth_out_of_sync"),
    }  # fmt: skip
    for label, (frames, audio, speaking, rule) in cases.items():
        result = _decide(frames, audio, curator.analyzer)
        ev = result.evidence
        assert (result.speaking, ev.rule) == (speaking, rule), (label, ev)
        assert ev.usable_pairs >= 16 and ev.mouth_motion is not None and ev.mouth_baseline is not None, (label, ev)


def test_profile_frames_are_left_out(curator):
    """Frames beyond max_yaw do not count: with max_yaw 0 no pair is usable and the mouth is not judged."""
    voice, syllables = speech_like(3.0, pauses=True, seed=1)
    frames = talking_clip("t1-4", mouth_opening(T8, syllables))  # the t1.jpg face at about -30 degrees
    track = track_main_face(frames, detect_faces(curator.analyzer, frames, 0.6), 0, len(frames))
    segments = speech_segments(voice, 16000)
    ev = mouth_evidence(frames, track, T8, 1.5 / 8, segments, voice, 16000, 0.0, max_yaw=0.0)
    assert ev.usable_frames == 0 and ev.usable_pairs == 0 and ev.tracked_frames == 24
    result = decide_speaking(0.68, ev, True, SpeechConfig())
    assert not result.speaking and result.rule == "mouth_not_visible"
    assert mouth_evidence(frames, track, T8, 1.5 / 8, segments, voice, 16000, 0.0).usable_frames == 24


@pytest.mark.slow
def test_real_webcam_speech_is_detected_and_moves_the_mouth(movie_hello, curator):
    video = decode(InputItem(str(movie_hello)), IngestConfig())
    segments = speech_segments(video.audio, video.audio_rate)
    # The person says a few words between 0.8 s and 3.1 s (silero-vad 6.2.3), then is silent.
    assert 1 <= len(segments) <= 4 and segments[0][0] == pytest.approx(0.8, abs=0.3)
    assert speech_ratio(segments, 0.0, 5.0) > 0.3
    det = detect_faces(curator.analyzer, video.frames[:40], 0.6)
    first = track_main_face(video.frames, det, 0, 40)  # 0-5 s: speaks from 0.8 s to 3.1 s
    cfg = SpeechConfig()
    ev = mouth_evidence(video.frames, first, video.times, 0.2, segments, video.audio, video.audio_rate, 0.0)
    result = decide_speaking(speech_ratio(segments, 0.0, 5.0), ev, True, cfg)
    assert result.speaking and result.rule == "mouth_follows_voice", ev
    # Measured: motion 0.37 IOD/s over a baseline of 0.125, voice lock 2.5, envelope correlation 0.22.
    assert ev.mouth_motion - ev.mouth_baseline > 2 * cfg.min_mouth_excess
    assert ev.voice_lock > 1.5 * cfg.min_voice_lock and ev.envelope_corr > 0.1


@pytest.mark.slow
def test_the_same_real_face_silent(movie_hello, curator):
    """The speaker's silent seconds (3.2-6.2 s), under his own voice (a voice-over) and under silence."""
    video = decode(InputItem(str(movie_hello)), IngestConfig())
    keep = (video.times >= 3.2) & (video.times < 6.2)
    frames, times = video.frames[keep], video.times[keep] - video.times[keep][0]
    own_voice = video.audio[8000 : 8000 + 48000]  # 0.5-3.5 s: his words and pauses
    track = track_main_face(frames, detect_faces(curator.analyzer, frames, 0.6), 0, len(frames))
    cfg = SpeechConfig()
    for audio, rule in ((own_voice, "voice_over"), (np.zeros_like(own_voice), "no_speech")):
        segments = speech_segments(audio, 16000)
        ev = mouth_evidence(frames, track, times, 0.2, segments, audio, 16000, 0.0)
        result = decide_speaking(speech_ratio(segments, 0.0, 3.0), ev, True, cfg)
        assert not result.speaking and result.rule == rule, ev
        assert ev.mouth_motion - ev.mouth_baseline < cfg.min_mouth_excess / 2  # -0.01 measured


@pytest.mark.slow
def test_voice_over_on_a_silent_real_face_is_not_speaking(movie_hello, curator, tmp_path):
    """The real speech under a real face that does not speak (turning, mouth closed): audible, but not speaking,
    and the shard JSON records why."""
    from cofe_curation.synth import compose

    audio = decode(InputItem(str(movie_hello)), IngestConfig()).audio[8000:56000]  # 0.5-3.5 s: words and pauses
    path = write_clip(tmp_path / "voice_over.mp4", compose("turning"), 16.0, audio)
    result = curator.process(decode(InputItem(str(path)), IngestConfig()))
    (clip,) = result.clips
    assert clip.decision == "kept"
    ann = clip.annotation
    assert ann["speech_ratio"] > 0.3 and ann["speaking"] is False and ann["voice_over"] is True
    assert "voice-over" in ann["speech_reason"] and ann["speech_evidence"]["rule"] == "voice_over"
    assert ann["speech_evidence"]["speech_ratio"] == ann["speech_ratio"]
    assert clip.record()["speech"]["voice_over"] is True
