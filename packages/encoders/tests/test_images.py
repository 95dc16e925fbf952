import numpy as np
import pytest
import torch
from PIL import Image

from cofe_encoders.images import resize_center_crop, to_float_list, to_uint8, to_uint8_list


def test_accepted_forms_agree():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    from_pil = to_uint8(Image.fromarray(arr))
    from_tensor = to_uint8(torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    np.testing.assert_array_equal(from_pil, arr)
    np.testing.assert_array_equal(from_tensor, arr)
    assert len(to_uint8_list(np.stack([arr, arr]))) == 2
    assert len(to_float_list(torch.rand(3, 3, 8, 8))) == 3
    assert len(to_uint8_list([arr, arr[:10]])) == 2  # mixed sizes in a list


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([], "empty"),
        (np.zeros((10, 10), np.uint8), r"RGB array \(H, W, 3\).*\(10, 10\)"),
        (np.zeros((10, 10, 4), np.uint8), r"\(10, 10, 4\)"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((0, 10, 3), np.uint8), "empty image"),
        (Image.new("L", (8, 8)), "mode 'L'"),
        (Image.new("RGBA", (8, 8)), "convert"),
        (torch.full((3, 8, 8), 255.0), r"\[0, 1\]"),
        (torch.zeros(1, 8, 8), r"\(3, H, W\)"),
    ],
)
def test_bad_images_name_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        to_uint8_list(bad)


def test_unsupported_type():
    with pytest.raises(TypeError, match="str"):
        to_uint8_list("face.png")


def test_resize_center_crop_keeps_centre():
    img = torch.zeros(3, 40, 80)
    img[:, :, 20:60] = 1.0  # the central square is white, the sides black
    out = resize_center_crop(img, 20)
    assert out.shape == (3, 20, 20)
    assert out[:, :, 1:-1].min() > 0.95  # only the outermost columns see the antialiasing filter's tail


def test_cover_crop_fills_any_aspect_and_keeps_leading_dims():
    from cofe_encoders.images import cover_crop

    clip = torch.zeros(2, 5, 3, 30, 60)  # (batch, frames, C, H, W)
    clip[..., :, 15:45] = 1.0  # a white centre square between black sides
    out = cover_crop(clip, 20, 20)
    assert out.shape == (2, 5, 3, 20, 20) and out[..., 1:-1].min() > 0.95  # the centre, scaled to cover
    wide = cover_crop(torch.rand(3, 40, 40), 10, 30)  # upscaled to cover 30 px of width, 10 of height kept
    assert wide.shape == (3, 10, 30)
    same = torch.rand(3, 8, 8)
    assert torch.equal(cover_crop(same, 8, 8), same)  # no resize: the values as they are
