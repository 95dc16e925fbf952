"""Face analysis on real photographs (shipped in registry wheels): detection, identity, pose, crops."""

import cv2
import numpy as np
import pytest

from cofe_encoders.face import Face, build_face_analyzer, estimate_head_pose, reference_crop
from cofe_encoders.face.pose import FACE_MODEL_3D


def _centre(face: Face) -> np.ndarray:
    return (face.bbox[:2] + face.bbox[2:]) / 2


def _nearest(faces: list[Face], point: np.ndarray) -> Face:
    return min(faces, key=lambda f: float(np.linalg.norm(_centre(f) - point)))


def _cos(a: Face, b: Face) -> float:
    return float(np.dot(a.embedding, b.embedding))


def test_single_real_face(analyzer, astronaut):
    faces = analyzer.analyze(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.8 and 60 < face.width < 160
    x1, y1, x2, y2 = face.bbox
    assert all(x1 < x < x2 and y1 < y < y2 for x, y in face.kps5)
    assert face.kps5[0, 0] < face.kps5[2, 0] < face.kps5[1, 0]  # subject's right eye is image-left
    assert abs(face.yaw) < 15 and abs(face.roll) < 15  # a frontal portrait
    assert face.embedding.shape == (128,) and np.isclose(np.linalg.norm(face.embedding), 1.0, atol=1e-4)
    assert set(face.to_dict()) == {"bbox", "kps5", "score", "yaw", "pitch", "roll"}


def test_no_face(analyzer):
    assert analyzer.analyze(np.full((200, 300, 3), 127, np.uint8)) == []
    assert analyzer.largest(np.zeros((64, 64, 3), np.uint8)) is None


def test_multi_face_photo_and_identity(analyzer, group_photo):
    """Four real faces of two people; same-person pairs (other scale, mirrored) beat different-person pairs."""
    image, expected = group_photo
    faces = analyzer.analyze(image)
    assert len(faces) == expected
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)
    by_x = sorted(faces, key=lambda f: _centre(f)[0])  # astro, grace, grace (small, mirrored), astro (big)
    same = [_cos(by_x[0], by_x[3]), _cos(by_x[1], by_x[2])]
    different = [_cos(by_x[i], by_x[j]) for i, j in [(0, 1), (0, 2), (3, 1), (3, 2)]]
    assert min(same) > 0.6, same
    assert max(different) < 0.35, different


def test_identity_under_augmentation(analyzer, astronaut, hopper):
    a = analyzer.largest(astronaut)
    variants = {
        "flip": astronaut[:, ::-1],
        "crop": astronaut[30:330, 100:380],
        "darker": (astronaut * 0.6).astype(np.uint8),
        "smaller": cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA),
    }
    for name, img in variants.items():
        other = analyzer.largest(np.ascontiguousarray(img))
        assert other is not None, name
        assert _cos(a, other) > 0.6, (name, _cos(a, other))
    assert _cos(a, analyzer.largest(hopper)) < 0.35


@pytest.mark.parametrize("which", ["astronaut", "hopper"])
def test_flip_negates_yaw_and_roll(analyzer, which, request):
    image = request.getfixturevalue(which)
    face = analyzer.largest(image, embed=False)
    mirrored = analyzer.largest(np.ascontiguousarray(image[:, ::-1]), embed=False)
    # Limit: YuNet's keypoints are not exactly mirror-equivariant (2-5 px on these faces).
    assert abs(face.yaw + mirrored.yaw) < 6.0
    assert abs(face.roll + mirrored.roll) < 6.0
    assert abs(face.pitch - mirrored.pitch) < 15.0


@pytest.mark.parametrize("which", ["astronaut", "hopper"])
def test_in_plane_rotation_changes_roll(analyzer, which, request):
    image = request.getfixturevalue(which)
    h, w = image.shape[:2]
    face = analyzer.largest(image, embed=False)
    for theta in (-30.0, -15.0, 15.0, 30.0):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), theta, 1.0)  # counter-clockwise on screen
        rotated = cv2.warpAffine(image, m, (w, h))
        faces = analyzer.analyze(rotated, embed=False)
        turned = _nearest(faces, m[:, :2] @ _centre(face) + m[:, 2])
        # Convention (cofe_encoders.face.pose): counter-clockwise by theta changes roll by -theta.
        assert abs((turned.roll - face.roll) + theta) < 6.0  # measured max 4.8, (theta, face.roll, turned.roll)
        assert abs(turned.yaw - face.yaw) < 8.0


def test_pose_convention_on_synthetic_keypoints():
    """Project the 3D face model with known angles: yaw to the subject's left puts the nose image-right."""

    def project(yaw, pitch, roll):
        def rx(a):
            c, s = np.cos(a), np.sin(a)
            return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])

        def ry(a):
            c, s = np.cos(a), np.sin(a)
            return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])

        def rz(a):
            c, s = np.cos(a), np.sin(a)
            return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])

        r = rz(np.radians(roll)) @ ry(np.radians(-yaw)) @ rx(np.radians(-pitch))
        return 3.0 * (FACE_MODEL_3D @ r.T)[:, :2] + [300.0, 200.0]

    for yaw, pitch, roll in [(0, 0, 0), (30, 0, 0), (-45, 10, 5), (10, -20, -25)]:
        kps = project(yaw, pitch, roll)
        pose = estimate_head_pose(kps)
        np.testing.assert_allclose([pose.yaw, pose.pitch, pose.roll], [yaw, pitch, roll], atol=1e-3)
    turned_left = project(30, 0, 0)
    assert turned_left[2, 0] > (turned_left[0, 0] + turned_left[1, 0]) / 2  # nose moved to the image right


def test_reference_crop_whitens_background(analyzer, astronaut):
    face = analyzer.largest(astronaut, embed=False)
    crop = reference_crop(astronaut, face, size=256)
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    assert (crop[:8] == 255).all() and (crop[:, :8] == 255).all()  # corners and borders are white
    centre = crop[96:160, 96:160]
    assert centre.mean() < 230 and centre.std() > 10  # the face itself is kept
    again = analyzer.largest(crop)  # still a detectable, same-identity face
    assert again is not None and _cos(analyzer.largest(astronaut), again) > 0.6


def test_backend_selection():
    with pytest.raises(ValueError, match="unknown face analysis backend"):
        build_face_analyzer("dlib")


def test_insightface_backend_needs_package_or_files(tmp_path):
    try:
        import insightface  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="cofe-encoders\\[insightface\\]"):
            build_face_analyzer("insightface", model_dir=tmp_path)
        pytest.skip("insightface is not installed: only its import error is checked")
    with pytest.raises(FileNotFoundError, match="no face detection model"):
        build_face_analyzer("insightface", model_dir=tmp_path)


def test_insightface_group_photo(analyzer, insightface_group_photo):
    """insightface's t1.jpg, six people (runs only where that file is available)."""
    faces = analyzer.analyze(insightface_group_photo)
    assert len(faces) == 6
    sims = np.array([[_cos(a, b) for b in faces] for a in faces])
    assert sims[~np.eye(6, dtype=bool)].max() < 0.4
