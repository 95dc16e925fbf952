"""The curation report counts speaking / voice-over / silent clips and shows original and refined captions."""

import json

import numpy as np
import pytest

from cofe_curation import CurationConfig, curate
from cofe_curation.speech import speech_report, speech_summary
from cofe_curation.synth import mouth_opening, speech_like, talking_clip, write_clip


def _record(key, speaking, voice_over, rule, caption, refined, source="rules"):
    facts = {"speaking": speaking, "voice_over": voice_over, "rule": rule, "caption": caption}
    return {"key": key, "speech": {**facts, "caption_refined": refined, "caption_rewriter": source}}


def test_counts_rules_and_examples():
    clips = [
        _record("a", True, False, "mouth_follows_voice", "A man sits.", "A man sits. The person is speaking."),
        _record("b", False, True, "voice_over", "A man talks.", "A man."),
        _record("c", False, True, "mouth_out_of_sync", "A man smiles.", "A man smiles."),  # unchanged: no example
        _record("d", False, False, "no_speech", "A man talks to the camera.", "A man looks at the camera."),
        _record("e", False, False, "no_audio", "A man nods as he speaks.", "A man nods.", "rules (llm answer x)"),
    ]
    report = speech_report(clips, examples=3)
    assert (report["speaking"], report["voice_over"], report["silent"]) == (1, 2, 2)
    assert report["rules"] == {"mouth_follows_voice": 1, "mouth_out_of_sync": 1, "no_audio": 1, "no_speech": 1,
                               "voice_over": 1}  # fmt: skip
    assert report["rewriters"] == {"rules": 5}
    assert [e["key"] for e in report["examples"]] == ["a", "b", "d"]  # one of each class first
    note, lines = speech_summary(report)
    assert note == "1 speaking, 2 voice-over, 2 silent"
    assert lines[0] == "captions (original -> refined):" and "    -> 'A man.'" in lines


@pytest.mark.slow
def test_a_run_reports_speaking_voice_over_and_silent(tmp_path):
    """Three clips of one real face turning: it speaks (its mouth follows a synthetic voice), a continuous voice-over
    over its still mouth, and it chews with no voice. report.json and the printed summary count and show them."""
    from cofe_apps.curate import summary_table

    fps, times = 16.0, np.arange(48) / 16.0
    voice, syllables = speech_like(3.0, pauses=True, seed=1)
    continuous, _ = speech_like(3.0, pauses=False, seed=2)
    sweep = (0.0, -0.1)  # the t1.jpg face turning from about -25 to -50 degrees, as compose("turning")
    inputs = {
        "speaks": (talking_clip("turned", mouth_opening(times, syllables), fps, sweep, (320, 256)), voice,
                   "A woman sits at a desk."),
        "voice_over": (talking_clip("turned", np.zeros(48), fps, sweep, (320, 256)), continuous,
                       "A woman in an orange suit talks to the camera about her trip."),
        "chews": (talking_clip("turned", 0.5 - 0.5 * np.cos(2 * np.pi * 1.3 * times), fps, sweep, (320, 256)),
                  np.zeros(48000, np.float32), "A woman talks and smiles."),
    }  # fmt: skip
    folder = tmp_path / "in"
    for name, (frames, audio, caption) in inputs.items():
        write_clip(folder / f"{name}.mp4", frames, fps, audio)
        (folder / f"{name}.txt").write_text(caption)
    report = curate([folder], tmp_path / "out", CurationConfig.from_dict({"write": {"max_side": 320}}))
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    speech = on_disk["counts"]["stages"]["speech"]
    assert (speech["speaking"], speech["voice_over"], speech["silent"]) == (1, 1, 1), speech
    assert speech["rules"] == {"mouth_follows_voice": 1, "mouth_moves_without_voice": 1, "voice_over": 1}
    by_source = {rec["source"].rsplit("/", 1)[-1]: rec["clips"][0]["speech"] for rec in on_disk["inputs"]}
    assert by_source["speaks.mp4"]["rule"] == "mouth_follows_voice"
    assert by_source["voice_over.mp4"]["rule"] == "voice_over" and by_source["voice_over.mp4"]["speech_ratio"] > 0.85
    assert by_source["chews.mp4"]["rule"] == "mouth_moves_without_voice"
    assert by_source["voice_over.mp4"]["caption_refined"] == "A woman in an orange suit looks at the camera."
    assert by_source["speaks.mp4"]["caption_refined"] == "A woman sits at a desk. The person is speaking."
    assert by_source["chews.mp4"]["caption_refined"] == "A woman smiles."
    assert len(speech["examples"]) == 3 and speech == report["counts"]["stages"]["speech"]
    text = summary_table(on_disk, 10.0)
    assert "1 speaking, 1 voice-over, 1 silent" in text
    assert "-> 'A woman in an orange suit looks at the camera.'" in text
