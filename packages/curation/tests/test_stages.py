"""Each composed clip of real faces is rejected by the right stage, for the right reason, with the defaults."""

import numpy as np
import pytest

from cofe_curation import IngestConfig, InputItem, decode
from cofe_curation.config import FaceConfig, IdentityConfig
from cofe_curation.faces import FaceStats, IdentityCheck, check_faces, detect_faces, face_stats, track_main_face
from cofe_curation.identity import (
    RECOGNIZERS,
    bottleneck,
    check_identity,
    cluster_identities,
    embed_track,
    id_consistency,
    pose_compensated_similarities,
)
from cofe_encoders.face import Face

MIN_CONSISTENCY = RECOGNIZERS["sface"].min_consistency


def _track(curator, path):
    video = decode(InputItem(str(path)), IngestConfig())
    detections = detect_faces(curator.analyzer, video.frames, 0.6)
    track = track_main_face(
        video.frames, detections, 0, len(video.frames), times=video.times, identity=curator._identity_check()
    )
    return video, track, face_stats(track, video.frames.shape[1:3], video.scale)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("two_faces", "more than one face"),
        ("no_face", "no face detected"),
        ("tiny", "face too small: "),
        ("turning_frontal", "too little head pose variation"),
        ("static_profile", "too little head pose variation (static head)"),
        ("switch", "person switch: the tracked face was lost at"),
    ],
)
def test_face_stage_rejects(curator, clips, kind, reason):
    _, _, stats = _track(curator, clips[kind])
    assert reason in (check_faces(stats, FaceConfig()) or "")


def test_turning_face_passes_with_its_pose_track(curator, clips):
    video, track, stats = _track(curator, clips["turning"])
    assert check_faces(stats, FaceConfig()) is None
    assert stats.detect_fraction == 1.0 and stats.second_face_ratio == 0.0 and track.gaps == []
    assert stats.abs_yaw_p90 >= 35 and stats.yaw_range >= 15
    assert track.yaws.max() < 0  # the t1.jpg face turns to its own right throughout (negative yaw)
    assert len(track.faces) == len(video.frames)


def test_static_profile_fails_on_motion_though_its_yaw_is_large(curator, clips):
    _, _, stats = _track(curator, clips["static_profile"])
    # Large pose, no motion: the old rule (range >= 25 OR max |yaw| >= 40) kept it on its max |yaw| alone.
    assert stats.abs_yaw_p90 > 55 and stats.max_abs_yaw > 40 and stats.yaw_range < FaceConfig().min_yaw_range_deg


def test_a_turn_to_profile_and_back_keeps_its_track_through_the_lost_frames(curator, clips):
    video, track, stats = _track(curator, clips["profile_and_back"])
    assert check_faces(stats, FaceConfig()) is None
    # The detector loses the face at profile (about a fifth of the frames); the track picks it up again.
    assert track.gaps and track.reacquired >= 1 and track.switch is None
    assert 0.5 <= stats.detect_fraction < 0.9 and stats.max_gap_s <= FaceConfig().max_gap_s
    assert stats.abs_yaw_p90 > 55 and stats.yaw_range > 25
    # Before 0.3.0: 71 % of frames < min_detect_fraction=0.8 rejected it.
    assert len(track.faces) / len(video.frames) < 0.8
    pos, emb = embed_track(curator.analyzer, video.frames, track, 8, recognizer=curator.recognizer)
    assert check_identity(id_consistency(emb, track.pose_yaws[pos], IdentityConfig()), MIN_CONSISTENCY) is None


def test_person_switch_is_not_followed(curator, clips):
    video, track, stats = _track(curator, clips["switch"])
    # The track ends with the first person; the second (Grace Hopper, at the same place) is never adopted.
    assert track.indices.max() < len(video.frames) // 2
    assert "identity similarity" in track.switch and stats.switch == track.switch


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
        pos, emb = embed_track(
            curator.analyzer, video.frames, track, cfg.max_embed_frames, recognizer=curator.recognizer
        )
        assert emb.shape == (len(pos), 128)
        results[kind] = id_consistency(emb, track.pose_yaws[pos], cfg)
    assert results["swap"] < 0.35 and "identity drifts" in check_identity(results["swap"], MIN_CONSISTENCY)
    assert results["turning"] > 0.6 and check_identity(results["turning"], MIN_CONSISTENCY) is None


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
    stats.switch = "person switch: ..."
    assert check_faces(stats, FaceConfig()) == "person switch: ..."  # a switch is named before anything else


def test_pose_rule_needs_motion_and_a_wide_range_or_a_large_pose():
    def reason(yaw_range, p90):
        return check_faces(FaceStats(1.0, 100.0, 0.1, 50.0, yaw_range, p90, 0.0), FaceConfig())

    assert "static head" in reason(4.0, 70.0)  # static profile
    assert "too little head pose variation:" in reason(18.0, 12.0)  # a small swing near frontal
    assert reason(18.0, 50.0) is None  # moves, at a large pose
    assert reason(40.0, 20.0) is None  # a wide turn across frontal


# ------------------------------------------------------------------ tracking rules on hand-made detections


def _face(x: float, size: float = 40.0, yaw: float = 0.0) -> Face:
    box = np.array([x, 50.0, x + size, 50.0 + size])
    kps = np.array([[x + 12, 62], [x + 28, 62], [x + 20, 72], [x + 14, 80], [x + 26, 80]], np.float64)
    return Face(box, kps, 0.9, yaw=yaw)


def _run(detections, identity=None, **cfg):
    frames = np.zeros((len(detections), 160, 240, 3), np.uint8)
    times = np.arange(len(detections)) / 8.0
    return track_main_face(frames, detections, 0, len(detections), times, FaceConfig(**cfg), identity)


def test_track_bridges_a_short_gap_and_records_it():
    dets = [[_face(60 + i)] for i in range(6)] + [[]] * 4 + [[_face(70 + i)] for i in range(6)]
    track = _run(dets)
    assert len(track.faces) == 12 and track.reacquired == 1 and track.switch is None
    assert track.gaps == [(0.75, 1.25)]  # frames 6-9 at 8 fps: 0.5 s
    stats = face_stats(track, (160, 240), 1.0)
    assert stats.max_gap_s == 0.5 and stats.detect_fraction == 12 / 16


def test_track_does_not_jump_to_a_face_elsewhere():
    # The face is lost; another face appears far to the right and stays: a person switch, never adopted.
    dets = [[_face(20)] for _ in range(6)] + [[_face(180)] for _ in range(10)]
    track = _run(dets)
    assert track.indices.tolist() == list(range(6))
    assert "person switch" in track.switch and "face widths from where the face was lost" in track.switch
    # A short, small flash elsewhere is a spurious detection, not a switch: the track ends, the gap decides.
    track = _run([[_face(20)] for _ in range(6)] + [[_face(180, size=10)]] * 2 + [[]] * 8)
    assert track.switch is None and track.gaps[-1] == (0.75, 2.0)
    assert "face lost for 1.25 s" in check_faces(face_stats(track, (160, 240), 1.0), FaceConfig())


def test_track_checks_identity_at_similar_pose_when_reacquiring():
    # Same place after the gap; the embedding decides. Person "a" and "b" by the face's score field.
    emb = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}
    identity = IdentityCheck(lambda frame, face: emb["a" if face.score > 0.85 else "b"], threshold=0.363)
    other = [_face(64, yaw=-10.0) for _ in range(8)]
    for f in other:
        f.score = 0.8  # person b
    dets = [[_face(60, yaw=-40.0 + 5 * i)] for i in range(6)] + [[]] * 2 + [[f] for f in other]
    track = _run(dets, identity)
    assert len(track.faces) == 6 and "identity similarity 0.00" in track.switch
    same = [[_face(60, yaw=-40.0 + 5 * i)] for i in range(6)] + [[]] * 2 + [[_face(64, yaw=-10.0)] for _ in range(8)]
    assert _run(same, identity).switch is None and len(_run(same, identity).faces) == 14


def test_id_consistency_is_the_weakest_link_joining_the_frames():
    # Person A turns to profile: frontal frames and profile frames are unlike each other (0.2) but each profile
    # frame is like its neighbour in pose (0.7). One person: consistent.
    turn = np.array([[1.0, 0.7, 0.45, 0.2], [0.7, 1.0, 0.7, 0.45], [0.45, 0.7, 1.0, 0.7], [0.2, 0.45, 0.7, 1.0]])
    assert bottleneck(turn) == pytest.approx(0.7)
    # Two people (two groups, 0.25 across): the clip joins only at the best cross pair.
    two = np.full((4, 4), 0.25)
    two[:2, :2] = two[2:, 2:] = 0.9
    assert bottleneck(two) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 32))
    emb = np.stack(
        [a + 0.2 * rng.normal(size=32) for _ in range(4)] + [b + 0.2 * rng.normal(size=32) for _ in range(4)]
    )
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    yaws = np.zeros(8)
    assert id_consistency(emb, yaws, IdentityConfig()) < 0.3  # an identity swap halfway
    emb[5] = emb[0]  # one of person a among b's frames: not enough to join them either
    assert id_consistency(emb, yaws, IdentityConfig()) < 0.3
    one = np.stack([a + 0.2 * rng.normal(size=32) for _ in range(8)])
    one /= np.linalg.norm(one, axis=1, keepdims=True)
    one[3] = b / np.linalg.norm(b)  # one bad frame is left out (outliers=1)
    assert id_consistency(one, yaws, IdentityConfig()) > 0.8
    assert id_consistency(one, yaws, IdentityConfig(outliers=0)) < 0.3


def test_average_linkage_does_not_chain_identities():
    # A chain of people, each a little like the next (0.55), the ends unalike: single linkage at 0.5 makes one
    # identity of all of them, average and complete linkage keep them apart.
    n = 6
    sim = np.eye(n) + np.diag([0.55] * (n - 1), 1) + np.diag([0.55] * (n - 1), -1)
    sim[sim == 0] = 0.1
    vals, vecs = np.linalg.eigh(sim)
    emb = vecs * np.sqrt(np.clip(vals, 0, None))  # rows with exactly these cosines
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert len(set(cluster_identities(emb, 0.5, linkage="single").tolist())) == 1
    assert len(set(cluster_identities(emb, 0.5, linkage="average").tolist())) >= 3
    assert len(set(cluster_identities(emb, 0.5, linkage="complete").tolist())) >= 3


def test_linkage_matches_scipy():
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    distance = pytest.importorskip("scipy.spatial.distance")
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.normal(size=(40, 6))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for method in ("average", "complete", "single"):
            ref = hierarchy.fcluster(hierarchy.linkage(distance.pdist(x, "cosine"), method), 1 - 0.3, "distance")
            ours = cluster_identities(x, 0.3, block=7, linkage=method)
            assert ((ref[:, None] == ref[None]) == (ours[:, None] == ours[None])).all(), method
