import numpy as np
import pytest

from cofe_curation import IngestConfig, InputItem, RuleBasedRewriter, build_rewriter, decode
from cofe_curation.config import SpeechConfig
from cofe_curation.faces import detect_faces, track_main_face
from cofe_curation.speech import decide_speaking, mouth_motion, speech_ratio, speech_segments
from cofe_curation.synth import tone


@pytest.mark.parametrize(
    ("caption", "speaking", "expected"),
    [
        ("A man talking to the camera in an office.", False, "A man looking at the camera in an office."),
        ("A woman sits at a desk. She is speaking about her work.", False, "A woman sits at a desk."),
        ("A woman sits at a desk, explaining her work.", False, "A woman sits at a desk."),
        ("A woman sits at a desk.", True, "A woman sits at a desk. The person is speaking."),
        ("A woman sits at a desk", True, "A woman sits at a desk. The person is speaking."),
        ("A man says hello to the viewers.", True, "A man says hello to the viewers."),
        ("", True, "The person is speaking."),
        ("A chef slices onions.", False, "A chef slices onions."),
        ("A person is talking while turning their head.", False, "A person is turning their head."),
        ("Talking, a man waves.", False, ""),
    ],
)
def test_rule_based_rewriter(caption, speaking, expected):
    assert RuleBasedRewriter().rewrite(caption, speaking) == expected


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


def test_decision_needs_voice_and_mouth():
    cfg = SpeechConfig()
    assert decide_speaking(0.5, 1.7, True, cfg).speaking
    assert "voice-over" in decide_speaking(0.5, 0.9, True, cfg).reason
    assert not decide_speaking(0.0, 1.7, True, cfg).speaking
    assert decide_speaking(0.5, 1.7, False, cfg).reason == "no audio track"
    # Speech throughout: the mouth cannot be compared with itself silent, the audio decides (and says so).
    undecided = decide_speaking(1.0, None, True, cfg)
    assert undecided.speaking and "audio decides" in undecided.reason


@pytest.mark.slow
def test_real_webcam_speech_is_detected_and_moves_the_mouth(movie_hello, curator):
    video = decode(InputItem(str(movie_hello)), IngestConfig())
    segments = speech_segments(video.audio, video.audio_rate)
    # The person says a few words between 0.8 s and 3.1 s (silero-vad 6.2.3), then is silent.
    assert 1 <= len(segments) <= 4 and segments[0][0] == pytest.approx(0.8, abs=0.3)
    assert speech_ratio(segments, 0.0, 5.0) > 0.3
    det = detect_faces(curator.analyzer, video.frames[:40], 0.6)
    first = track_main_face(video.frames, det, 0, 40)  # 0-5 s: speaks from 0.8 s to 3.1 s
    motion = mouth_motion(video.frames, first, video.times, 0.2, segments)
    assert motion > SpeechConfig().min_mouth_motion, motion  # 1.74 measured


@pytest.mark.slow
def test_voice_over_on_a_silent_real_face_is_not_speaking(movie_hello, curator, clips, tmp_path):
    """The real speech under a real face that does not speak (turning, mouth closed): audible, but not speaking."""
    from cofe_curation.synth import compose, write_clip

    audio = decode(InputItem(str(movie_hello)), IngestConfig()).audio[8000:56000]  # 0.5-3.5 s: words and pauses
    path = write_clip(tmp_path / "voice_over.mp4", compose("turning"), 16.0, audio)
    result = curator.process(decode(InputItem(str(path)), IngestConfig()))
    (clip,) = result.clips
    assert clip.decision == "kept"
    assert clip.annotation["speech_ratio"] > 0.3
    assert clip.annotation["speaking"] is False and "voice-over" in clip.annotation["speech_reason"]
