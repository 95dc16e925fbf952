import numpy as np
import pytest

from cofe_bench import BenchConfig, clip_frame_indices, face_frame_indices


def test_face_frames_are_consisid_linspace():
    # ConsisID sample_video_frames: np.linspace(0, total - 1, 16, dtype=int)
    np.testing.assert_array_equal(face_frame_indices(49), np.linspace(0, 48, 16, dtype=int))
    assert face_frame_indices(49)[[0, -1]].tolist() == [0, 48]
    assert face_frame_indices(5).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4]


def test_clip_frames_are_i_times_n_over_16():
    assert clip_frame_indices(49).tolist() == [int(i * 49 / 16) for i in range(16)]
    assert clip_frame_indices(16).tolist() == list(range(16))
    with pytest.raises(ValueError, match="at least one frame"):
        clip_frame_indices(0)


def test_presets():
    c = BenchConfig.from_name("consisid")
    assert (c.num_frames, c.pad_fraction, c.pad_value, c.align_size) == (16, 0.25, 128, 224)
    assert c.clip_bgr and not c.missing_face_as_zero
    o = BenchConfig.from_name("cofe", yaw_edges=(20, 45, 70))
    assert o.missing_face_as_zero and not o.clip_bgr
    assert o.yaw_bins == ["|yaw|<20", "20-45", "45-70", ">70"]
    with pytest.raises(ValueError, match="unknown protocol 'x'"):
        BenchConfig.from_name("x")
    with pytest.raises(ValueError, match="strictly increasing"):
        BenchConfig(yaw_edges=(60, 30))


def test_yaw_bins_use_absolute_yaw():
    c = BenchConfig()
    assert c.yaw_bins == ["|yaw|<30", "30-60", ">60"]
    assert [c.yaw_bin(y) for y in (0, -29.9, 30, -45, 60, -80)] == [
        "|yaw|<30",
        "|yaw|<30",
        "30-60",
        "30-60",
        ">60",
        ">60",
    ]
