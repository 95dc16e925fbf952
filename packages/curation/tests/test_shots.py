import numpy as np
import pytest

from cofe_curation.config import ShotConfig
from cofe_curation.shots import detect_cuts, shot_clips, split_clips
from cofe_curation.synth import compose


def test_hard_cut_between_two_real_clips_is_found():
    a, b = compose("turning", seconds=2.0, fps=8.0), compose("two_faces", seconds=2.0, fps=8.0)
    frames = np.concatenate([a, b])  # (32, 256, 320, 3)
    assert detect_cuts(frames, 8.0) == [16]
    times = np.arange(32) / 8.0
    clips = shot_clips(frames, times, 4.0, 8.0, ShotConfig(min_clip_s=1.0, max_clip_s=5.0))
    assert [(c.start, c.stop, c.t0, c.t1) for c in clips] == [(0, 16, 0.0, 2.0), (16, 32, 2.0, 4.0)]


def test_no_cut_inside_a_smooth_clip_or_an_identity_swap():
    assert detect_cuts(compose("turning", fps=8.0), 8.0) == []
    assert detect_cuts(compose("swap", fps=8.0), 8.0) == []  # only the face changes: not a shot cut


def test_long_shots_are_cut_and_short_pieces_dropped():
    times = np.arange(0, 12.0, 0.125)  # one 12 s shot at 8 fps
    clips = split_clips(times, 12.0, [], ShotConfig(min_clip_s=2.5, max_clip_s=5.0))
    assert [(c.t0, c.t1) for c in clips] == [(0.0, 5.0), (5.0, 10.0)]  # the 2 s remainder is dropped
    assert all(c.stop - c.start == 40 for c in clips)
    # A cut at 1 s: the 1 s first shot is too short; the 11 s second shot gives 5 + 5 s (+ a dropped 1 s).
    clips = split_clips(times, 12.0, [8], ShotConfig(min_clip_s=1.5, max_clip_s=5.0))
    assert [(c.t0, c.t1) for c in clips] == [(1.0, 6.0), (6.0, 11.0)]
    assert clips[0].duration == pytest.approx(5.0)
