import numpy as np
import pytest

from cofe_encoders.align import (
    ARCFACE_TEMPLATE,
    align_crop,
    alignment_matrix,
    norm_crop,
    template,
    transform_points,
    umeyama_similarity,
)


def _similarity(scale, angle_deg, tx, ty):
    a = np.radians(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def test_umeyama_matches_skimage_similarity_transform():
    """insightface's norm_crop estimates with skimage's SimilarityTransform: same matrix on noisy points."""
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(0)
    src = ARCFACE_TEMPLATE * 2.3 + rng.normal(0, 3, (5, 2)) + 40
    ref = SimilarityTransform.from_estimate(src, ARCFACE_TEMPLATE).params[:2]
    np.testing.assert_allclose(umeyama_similarity(src, ARCFACE_TEMPLATE), ref, atol=1e-9)


def test_exact_similarity_is_recovered():
    m = _similarity(1.7, 23.0, 12.0, -5.0)
    src = ARCFACE_TEMPLATE
    dst = transform_points(src, m)
    np.testing.assert_allclose(umeyama_similarity(src, dst), m, atol=1e-9)


def test_norm_crop_puts_keypoints_on_template():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    m = _similarity(0.4, -15.0, 30.0, 20.0)  # template -> image
    kps = transform_points(ARCFACE_TEMPLATE, np.vstack([m, [0, 0, 1]])[:2])
    crop = norm_crop(image, kps)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    np.testing.assert_allclose(transform_points(kps, alignment_matrix(kps)), ARCFACE_TEMPLATE, atol=1e-6)
    # 224 with expand=1 is the 112 template scaled by 2 (insightface's image_size=224 convention)
    np.testing.assert_allclose(template(224), ARCFACE_TEMPLATE * 2, atol=1e-9)
    wide = align_crop(image, kps, size=256, expand=2.0)
    assert wide.shape == (256, 256, 3)


def test_bad_keypoints():
    with pytest.raises(ValueError, match=r"\(5, 2\).*\(4, 2\)"):
        alignment_matrix(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="finite"):
        alignment_matrix(np.full((5, 2), np.nan))
