"""`cofe motion-demo` end to end at a few steps, and the mp4 writer."""

import json

import numpy as np
import pytest

from cofe_apps.cli import main
from cofe_apps.io import read_mp4, write_mp4
from cofe_apps.motion_demo import DemoConfig, check_motion, make_clip, run_demo
from cofe_dit import from_pretrained


def test_demo_writes_playable_videos_checkpoint_and_summary(tmp_path):
    summary = run_demo(tmp_path, DemoConfig(train_steps=3, sample_steps=2), log=lambda *_: None)
    assert summary["loss_first_50"] > 0 and len(summary["samples"]) == 4
    for result in summary["samples"].values():
        frames, fps = read_mp4(result["video"])
        assert frames.shape == (5, 256, 256, 3) and fps == 8
    assert json.loads((tmp_path / "summary.json").read_text())["samples"] == summary["samples"]
    assert from_pretrained(tmp_path / "checkpoint").cfg.model_type == "ti2v"


def test_motion_check_reads_the_ground_truth_correctly():
    rng = np.random.default_rng(0)
    for prompt in ("a red ball moves right", "a blue ball moves down"):
        clip = make_clip(prompt, DemoConfig(), rng)
        result = check_motion(clip, prompt)
        assert result["direction_ok"] and result["colour_ok"] and result["ball_ok"]
        assert result["moved_along"] == pytest.approx(8, abs=0.3)
    # A still clip, or one moving the other way, fails the check.
    still = make_clip("a red ball moves right", DemoConfig(), rng)
    still[:, 1:] = still[:, :1]
    assert not check_motion(still, "a red ball moves right")["direction_ok"]
    haze = still.clone()
    haze[3] = 0.0  # a mask at 0.5 everywhere: no ball
    assert not check_motion(haze, "a red ball moves right")["ball_ok"]
    assert not check_motion(make_clip("a red ball moves down", DemoConfig(), rng), "a red ball moves right")[
        "direction_ok"
    ]


def test_cli_demo_runs(tmp_path):
    # Three training steps learn nothing: no sample may pass the check, and the command then exits with 1.
    assert main(["motion-demo", "--out", str(tmp_path), "--train-steps", "3", "--sample-steps", "2"]) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["prompts_correct"] == 0
    assert len(list(tmp_path.glob("*.mp4"))) == 4


def test_write_mp4_round_trip_and_errors(tmp_path):
    frames = np.zeros((3, 32, 48, 3), np.uint8)
    frames[:, :, :24, 0] = 255
    path = write_mp4(frames, tmp_path / "a" / "clip.mp4", fps=10)
    back, fps = read_mp4(path)
    assert back.shape == frames.shape and fps == 10
    assert abs(int(back[1, 16, 10, 0]) - 255) < 8 and back[1, 16, 40, 0] < 8
    assert not list(tmp_path.glob("a/*.partial.mp4"))
    with pytest.raises(ValueError, match=r"frames must be \(T, H, W, 3\), got shape \(3, 32, 48\)"):
        write_mp4(frames[..., 0], tmp_path / "b.mp4")
    with pytest.raises(ValueError, match="frames must be uint8, got float32"):
        write_mp4(frames.astype(np.float32), tmp_path / "b.mp4")
    with pytest.raises(ValueError, match="even height and width, got 31x48"):
        write_mp4(frames[:, :31], tmp_path / "b.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(Exception, match=r"empty\.mp4"):
        read_mp4(tmp_path / "empty.mp4")
