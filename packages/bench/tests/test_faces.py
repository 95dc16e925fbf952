"""Largest face and ConsisID's padded retry."""

import numpy as np

from cofe_bench import detect_largest, pad_image
from cofe_encoders.face import Face, FaceAnalyzer


class _NoPose:
    """A pose estimator that leaves the angles at 0 (the padding logic under test does not depend on them)."""

    def estimate(self, image, faces):
        pass

    def describe(self):
        return {"pose": "none"}


class PaddedOnly(FaceAnalyzer):
    """Finds one face only in images bigger than the original (i.e. after padding), at a fixed place."""

    pose_estimator = _NoPose()

    def __init__(self, original_shape):
        self.original_shape = original_shape

    def _detect(self, image):
        if image.shape[:2] == self.original_shape:
            return []
        kps = np.array([[50, 60], [80, 60], [65, 75], [52, 90], [78, 90]], np.float64)
        return [Face(np.array([40, 40, 90, 100], np.float64), kps, 0.9)]

    def _embed(self, image, faces):
        pass


def test_pad_image_is_consisid_pad_np_bgr_image():
    img = np.zeros((100, 60, 3), np.uint8)
    padded, (left, top) = pad_image(img)
    # top = bottom = int(h * 0.25), left = right = int(w * 0.25), gray 128
    assert (left, top) == (15, 25) and padded.shape == (150, 90, 3)
    assert padded[0, 0].tolist() == [128, 128, 128] and padded[25, 15].tolist() == [0, 0, 0]


def test_padded_retry_shifts_keypoints_back():
    img = np.zeros((120, 100, 3), np.uint8)
    det = detect_largest(PaddedOnly(img.shape[:2]), img)
    assert det is not None and det.padded and det.offset == (25, 30)
    assert det.source.shape == (180, 150, 3)
    np.testing.assert_allclose(det.kps5, det.face.kps5 - [25, 30])
    assert detect_largest(PaddedOnly(img.shape[:2]), img, pad_retry=False) is None


def test_real_faces_largest_and_padding_consistent(analyzer, t1, faces):
    det = detect_largest(analyzer, t1)
    assert det is not None and not det.padded
    areas = [f.area for f in analyzer.analyze(t1, embed=False)]
    assert det.face.area == max(areas) and len(areas) == 6
    # Detecting in the padded image and shifting back lands on the same keypoints (within a few pixels).
    face = faces["p3"]
    direct = detect_largest(analyzer, face)
    padded, (left, top) = pad_image(face)
    again = analyzer.analyze(padded, embed=False, max_faces=1)[0]
    assert np.abs(again.kps5 - [left, top] - direct.kps5).max() < 4.0
    assert detect_largest(analyzer, np.full((96, 96, 3), 90, np.uint8)) is None


def test_unexpected_error_is_recorded_not_raised(tmp_path):
    from PIL import Image

    from cofe_bench import BenchConfig, Evaluator, ManifestItem
    from cofe_bench.testing import faceless_frames, write_video

    class Broken(FaceAnalyzer):
        def _detect(self, image):
            raise RuntimeError("detector exploded")

        def _embed(self, image, faces):
            pass

    Image.fromarray(faceless_frames(1, 64)[0]).save(tmp_path / "ref.png")
    write_video(faceless_frames(4, 64), tmp_path / "v.mp4")
    res = Evaluator(BenchConfig(), Broken()).evaluate(
        ManifestItem("v", str(tmp_path / "ref.png"), "p", video="v.mp4"), tmp_path
    )
    assert res.status == "evaluation_error" and "detector exploded" in res.error and "v.mp4" in res.error
