"""Each composed clip of real faces is rejected by the right stage, for the right reason, with the defaults."""

import numpy as np
import pytest

from cofe_curation import IngestConfig, InputItem, decode
from cofe_curation.config import FaceConfig, IdentityConfig
from cofe_curation.faces import FaceStats, check_faces, detect_faces, face_stats, track_main_face
from cofe_curation.identity import (
    check_identity,
    cluster_identities,
    embed_track,
    id_consistency,
    pose_compensated_similarities,
)


def _track(curator, path):
    video = decode(InputItem(str(path)), IngestConfig())
    detections = detect_faces(curator.analyzer, video.frames, 0.6)
    track = track_main_face(video.frames, detections, 0, len(video.frames))
    return video, track, face_stats(track, video.frames.shape[1:3], video.scale)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("two_faces", "more than one face"),
        ("no_face", "no face detected"),
        ("tiny", "face too small: "),
        ("turning_frontal", "too little head pose variation"),
    ],
)
def test_face_stage_rejects(curator, clips, kind, reason):
    _, _, stats = _track(curator, clips[kind])
    assert reason in (check_faces(stats, FaceConfig()) or "")


def test_turning_face_passes_with_its_pose_track(curator, clips):
    video, track, stats = _track(curator, clips["turning"])
    assert check_faces(stats, FaceConfig()) is None
    assert stats.detect_fraction == 1.0 and stats.second_face_ratio == 0.0
    assert stats.max_abs_yaw >= 40 and stats.yaw_range >= 15
    assert track.yaws.max() < 0  # the t1.jpg face turns to its own right throughout (negative yaw)
    assert len(track.faces) == len(video.frames)


def test_sharpness_floor_rejects_a_blurred_face(curator, clips):
    import cv2

    video, _, stats = _track(curator, clips["turning"])
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 3.0) for f in video.frames])
    det = detect_faces(curator.analyzer, blurred, 0.6)
    blur_stats = face_stats(track_main_face(blurred, det, 0, len(blurred)), blurred.shape[1:3], 1.0)
    assert blur_stats.sharpness < FaceConfig().min_sharpness < stats.sharpness
    assert "face too blurred" in check_faces(blur_stats, FaceConfig())


def test_identity_stage_rejects_a_swap_and_keeps_a_turning_face(curator, clips):
    cfg = IdentityConfig()
    results = {}
    for kind in ("swap", "turning"):
        video, track, stats = _track(curator, clips[kind])
        assert check_faces(stats, FaceConfig()) is None  # both pass the face stage
        pos, emb = embed_track(curator.analyzer, video.frames, track, cfg.max_embed_frames)
        assert emb.shape == (len(pos), 128)
        results[kind] = id_consistency(emb, track.yaws[pos], cfg)
    assert results["swap"] < 0.35 and "identity drifts" in check_identity(results["swap"], cfg)
    assert results["turning"] > 0.6 and check_identity(results["turning"], cfg) is None


def test_pose_compensation_and_clustering():
    emb = np.eye(3, dtype=np.float32)[[0, 0, 1]]  # frames 0, 1 same person, frame 2 another
    yaws = np.array([0.0, 60.0, 0.0])
    sims = pose_compensated_similarities(emb, yaws, window=20.0, slope=0.005)
    np.testing.assert_allclose(sims, [1.0, 0.0, 0.2])  # pairs (0,1), (0,2), (1,2): only (1,2) gets credit
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    x = np.concatenate([c + 0.1 * rng.normal(size=(4, 16)) for c in centres])[[0, 4, 8, 1, 5, 9, 2, 3, 6, 7, 10, 11]]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = cluster_identities(x, 0.8, block=5)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 0, 1, 1, 2, 2]


def test_face_stats_of_an_empty_track_and_check_order():
    stats = FaceStats(1.0, 100.0, 0.1, 50.0, 0.0, 10.0, second_face_ratio=0.5)
    assert "more than one face" in check_faces(stats, FaceConfig())
