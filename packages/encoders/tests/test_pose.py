"""Head-pose estimators: conventions, the offline yaw correction, insightface 1k3d68, 6DRepNet, smoothing."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from cofe_encoders.face import (
    Face,
    InsightFace3D68Pose,
    SixDRepNetPose,
    build_face_analyzer,
    build_pose_estimator,
    correct_yaw,
    estimate_head_pose,
    matrix_to_angles,
    rotation_matrix,
    smooth_pose,
)
from cofe_encoders.face.estimators import YAW_CORRECTION, pose_from_landmarks3d
from cofe_encoders.face.pose import MEAN_FACE_68, fit_weak_perspective
from cofe_encoders.face.sixdrepnet import SixDRepNet, angles_from_6drepnet, load_sixdrepnet, rotation_from_6d

POSES = [(0, 0, 0), (30, 0, 0), (-45, 10, 5), (10, -20, -25), (70, 5, 0), (-85, 0, 10)]


@pytest.mark.parametrize("yaw,pitch,roll", POSES)
def test_rotation_round_trip_and_mean_face_fit(yaw, pitch, roll):
    rot = rotation_matrix(yaw, pitch, roll)
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(matrix_to_angles(rot), [yaw, pitch, roll], atol=1e-9)
    pts = 80.0 * (MEAN_FACE_68 @ rot.T)[:, :2] + [200.0, 150.0]
    fit = fit_weak_perspective(pts, MEAN_FACE_68)
    np.testing.assert_allclose(matrix_to_angles(fit.rotation), [yaw, pitch, roll], atol=1e-4)
    assert abs(fit.scale - 80.0) < 1e-4 and fit.rmse < 1e-6
    if yaw > 0:  # convention: yaw to the subject's left moves the nose tip (point 30) image-right
        assert pts[30, 0] > pts[[39, 42], 0].mean()


def test_yaw_correction_is_odd_monotone_and_capped():
    raw = np.linspace(-120, 120, 481)
    out = correct_yaw(raw)
    np.testing.assert_allclose(out, -correct_yaw(-raw))
    assert np.all(np.diff(out) >= 0) and np.abs(out).max() <= 90.0
    assert correct_yaw(0.0) == 0.0
    xs, ys = np.array(YAW_CORRECTION).T
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) >= 0)
    # The correction expands large angles (YuNet's keypoints compress them) and leaves small ones nearly alone.
    assert correct_yaw(60.0) > 70.0 and correct_yaw(-50.0) < -55.0
    assert abs(correct_yaw(10.0) - 10.0) < 2.0


def test_offline_estimators_mark_pitch_unreliable(analyzer, astronaut):
    face = analyzer.largest(astronaut, embed=False)
    assert face.pose_source == "offline" and face.pitch_reliable is False
    raw = build_face_analyzer("offline", pose="offline-raw").largest(astronaut, embed=False)
    assert raw.pose_source == "offline-raw"
    assert raw.yaw == pytest.approx(estimate_head_pose(raw.kps5).yaw)
    assert face.yaw == pytest.approx(correct_yaw(raw.yaw), abs=1e-6)
    assert analyzer.describe()["pose"] == "offline" and analyzer.describe()["pitch_reliable"] is False
    with pytest.raises(ValueError, match="unknown pose estimator 'hopenet'"):
        build_face_analyzer("offline", pose="hopenet")


# ----------------------------------------------------------------------------------------------- insightface


def _constant_3d68_onnx(path, landmarks_norm: np.ndarray) -> None:
    """A graph of the 1k3d68 shape ((1, 3, 192, 192) -> (1, 3309)) that always outputs the given landmarks
    (normalised crop coordinates, last 68 of 1103 points), so the pose it implies is known."""
    full = np.zeros((1103, 3), np.float32)
    full[-68:] = landmarks_norm
    const = full.reshape(1, -1)
    nodes = [
        helper.make_node("ReduceMean", ["data"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["const", "z"], ["fc1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "lmk3d",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3309])],
        [numpy_helper.from_array(const, "const"), numpy_helper.from_array(np.zeros(1, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _posed_landmarks(yaw, pitch, roll):
    """The mean face at a pose in insightface's landmark frame: x right, y down (pixels), z towards the camera,
    in 192-crop normalised coordinates (centre 0, half-size 1)."""
    rot = rotation_matrix(yaw, pitch, roll)
    pts = (MEAN_FACE_68 @ rot.T) * 0.5  # face about half the crop
    return (pts * np.array([1.0, 1.0, -1.0])).astype(np.float32)


@pytest.mark.parametrize("yaw,pitch,roll", POSES[:5])
def test_insightface_3d68_pose_convention_and_parity(tmp_path, yaw, pitch, roll):
    path = tmp_path / "1k3d68.onnx"
    _constant_3d68_onnx(path, _posed_landmarks(yaw, pitch, roll))
    est = build_pose_estimator("insightface", weights=tmp_path)  # a pack directory holding 1k3d68.onnx
    image = np.zeros((300, 400, 3), np.uint8)
    face = Face(bbox=np.array([120.0, 80.0, 240.0, 220.0]), kps5=np.zeros((5, 2)), score=0.9)
    est.estimate(image, [face])
    assert face.pose_source == "insightface" and face.pitch_reliable
    np.testing.assert_allclose([face.yaw, face.pitch, face.roll], [yaw, pitch, roll], atol=0.05)
    # Parity with insightface's own Landmark.get on the same file: same landmarks, same pose (its [pitch, yaw, roll]).
    insightface = pytest.importorskip("insightface")
    from insightface.app.common import Face as IFace

    model = insightface.model_zoo.get_model(str(path), providers=["CPUExecutionProvider"])
    iface = IFace(bbox=face.bbox, kps=None, det_score=0.9)
    ref = model.get(image[..., ::-1].copy(), iface)
    np.testing.assert_allclose(est.landmarks(image, face), ref, atol=1e-3)
    # (insightface keeps its mean face in float32 at full precision; ours is rounded to 4 decimals.)
    np.testing.assert_allclose([face.pitch, face.yaw, face.roll], iface["pose"], atol=0.02)


def test_insightface_pose_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"1k3d68\.onnx"):
        InsightFace3D68Pose(tmp_path)
    with pytest.raises(ValueError, match="needs pose_weights"):
        build_pose_estimator("insightface")
    with pytest.raises(ValueError, match=r"\(68, 3\)"):
        pose_from_landmarks3d(np.zeros((5, 3)))


# ----------------------------------------------------------------------------------------------- 6DRepNet


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.fixture(scope="module")
def repnet_train():
    torch.manual_seed(0)
    model = SixDRepNet(deploy=False).eval()
    _randomize_bn(model)
    return model


@pytest.mark.parametrize("cin,cout,stride,groups", [(8, 8, 1, 2), (8, 16, 2, 1), (3, 8, 2, 1)])
def test_repvgg_block_fusion_is_exact(cin, cout, stride, groups):
    """The fused 3x3 conv equals the three training branches (with and without identity, groupwise)."""
    from cofe_encoders.face.sixdrepnet import RepVGGBlock

    torch.manual_seed(0)
    block = RepVGGBlock(cin, cout, stride, groups).eval()
    _randomize_bn(block)
    assert (block.rbr_identity is not None) == (cin == cout and stride == 1)
    x = torch.randn(2, cin, 13, 13)
    with torch.no_grad():
        ref = block(x)
        block.fuse()
        assert block.fused and not hasattr(block, "rbr_dense")
        torch.testing.assert_close(block(x), ref, atol=1e-5, rtol=1e-5)


def test_sixdrepnet_layout():
    """RepVGG-B1g2 + 6D head with the release's module names (so its state dict loads as is)."""
    model = SixDRepNet(deploy=True)
    blocks = [model.layer0, *model.layer1, *model.layer2, *model.layer3, *model.layer4]
    assert len(blocks) == 28 and [b.cout for b in blocks][::9] == [64, 256, 512, 2048]
    assert [i for i, b in enumerate(blocks) if b.groups == 2] == list(range(2, 27, 2))
    keys = model.state_dict().keys()
    assert "layer0.rbr_reparam.weight" in keys and "layer3.15.rbr_reparam.bias" in keys
    assert model.linear_reg.weight.shape == (6, 2048)


@pytest.mark.slow
def test_sixdrepnet_architecture_and_fusion(repnet_train, tmp_path):
    """RepVGG-B1g2 shapes; fusing the three branches changes no output; both checkpoint layouts load."""
    model = repnet_train
    blocks = [model.layer0, *model.layer1, *model.layer2, *model.layer3, *model.layer4]
    assert len(blocks) == 28 and [b.cout for b in blocks][::9] == [64, 256, 512, 2048]
    assert [i for i, b in enumerate(blocks) if b.groups == 2] == list(range(2, 27, 2))
    assert model.linear_reg.in_features == 2048
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(ref @ ref.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(ref), torch.ones(2), atol=1e-5, rtol=0)
    train_file = tmp_path / "train.pth"
    torch.save(model.state_dict(), train_file)
    fused = load_sixdrepnet(train_file)  # training layout: fused on load
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref, atol=1e-4, rtol=1e-4)
    deploy_file = tmp_path / "6DRepNet_300W_LP_AFLW2000.pth"
    torch.save(fused.state_dict(), deploy_file)
    keys = torch.load(deploy_file, weights_only=True).keys()
    assert "layer0.rbr_reparam.weight" in keys and "layer3.15.rbr_reparam.bias" in keys and "linear_reg.weight" in keys
    again = load_sixdrepnet(deploy_file)
    with torch.no_grad():
        torch.testing.assert_close(again(x), ref, atol=1e-4, rtol=1e-4)
    wrong = tmp_path / "wrong.pth"
    torch.save({"layer0.rbr_reparam.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match=r"wrong\.pth.*RepVGG-B1g2"):
        load_sixdrepnet(wrong)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_sixdrepnet(tmp_path / "missing.pth")


def _release_rotation(pitch, yaw, roll):
    """The release's ``get_R`` (degrees here): Rz(roll) Ry(yaw) Rx(pitch), right-handed."""
    x, y, z = np.radians([pitch, yaw, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


def test_sixdrepnet_angles_follow_project_convention(repnet_train, astronaut):
    """A head that outputs a fixed rotation: the estimator reports it in this project's conventions."""
    rot = torch.tensor(_release_rotation(pitch=10.0, yaw=-35.0, roll=5.0), dtype=torch.float32)[None]
    # 6D = the first two columns; Gram-Schmidt gives the rotation back.
    d6 = torch.cat([rot[:, :, 0], rot[:, :, 1]], 1)
    torch.testing.assert_close(rotation_from_6d(d6), rot, atol=1e-6, rtol=0)
    # Release yaw -35 = the face turned to the image's right = the subject's left = our +35.
    np.testing.assert_allclose(angles_from_6drepnet(rot)[0].numpy(), [35.0, 10.0, 5.0], atol=1e-4)
    model = SixDRepNet(deploy=True).eval()
    with torch.no_grad():
        model.linear_reg.weight.zero_()
        model.linear_reg.bias.copy_(d6[0])
    analyzer = build_face_analyzer("offline", pose=SixDRepNetPose(model=model))
    face = analyzer.largest(astronaut, embed=False)
    assert face.pose_source == "6drepnet" and face.pitch_reliable
    np.testing.assert_allclose([face.yaw, face.pitch, face.roll], [35.0, 10.0, 5.0], atol=1e-3)
    crop = SixDRepNetPose.crop(astronaut, face.bbox)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8


def test_sixdrepnet_needs_local_weights():
    with pytest.raises(ValueError, match=r"6DRepNet_300W_LP_AFLW2000\.pth"):
        build_face_analyzer("offline", pose="6drepnet")


# ----------------------------------------------------------------------------------------------- smoothing


def test_smooth_pose_reduces_noise_keeps_nan_and_peaks():
    rng = np.random.default_rng(0)
    t = np.arange(64) / 16.0  # 4 s at 16 fps
    true = np.c_[70 * np.sin(2 * np.pi * t / 4.0), 10 * np.cos(t), np.zeros_like(t)]  # turn to 70 and back
    noisy = true + rng.normal(0, 3.0, true.shape)
    noisy[20] += [40.0, 0.0, 0.0]  # one frame where the keypoints snapped
    noisy[30:33] = np.nan  # detection lost for three frames
    out = smooth_pose(t, noisy, window_s=0.75)
    assert out.shape == noisy.shape
    assert np.isnan(out[30:33]).all() and np.isfinite(np.delete(out, [30, 31, 32], 0)).all()
    ok = np.isfinite(noisy[:, 0])
    err_in = np.abs(noisy[ok] - true[ok]).mean()
    err_out = np.abs(out[ok] - true[ok]).mean()
    assert err_out < 0.6 * err_in, (err_in, err_out)
    assert abs(out[20, 0] - true[20, 0]) < 6.0  # the outlier is rejected, not averaged in
    assert out[:, 0][ok].max() > 64.0  # the peak of the turn survives (a moving average flattens it)
    filled = smooth_pose(t, noisy, window_s=0.75, fill_gaps=True)
    assert np.isfinite(filled[30:33]).all() and np.abs(filled[30:33, 0] - true[30:33, 0]).max() < 8.0
    np.testing.assert_allclose(filled[ok], out[ok])
    # Nothing is extrapolated past the ends of the evidence.
    edge = noisy.copy()
    edge[:5] = np.nan
    assert np.isnan(smooth_pose(t, edge, window_s=0.75, fill_gaps=True)[:5]).all()


def test_smooth_pose_inputs():
    t = np.array([0.3, 0.0, 0.1, 0.2])  # any order
    a = np.array([3.0, 0.0, 1.0, 2.0])  # a straight line is kept exactly (local linear fit)
    np.testing.assert_allclose(smooth_pose(t, a, window_s=0.5), a, atol=1e-9)
    np.testing.assert_array_equal(smooth_pose(t, a, window_s=0.0), a)
    assert np.isnan(smooth_pose(t, np.full(4, np.nan))).all()
    with pytest.raises(ValueError, match=r"N = 4"):
        smooth_pose(t, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="finite"):
        smooth_pose(np.array([0.0, np.nan]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="window_s"):
        smooth_pose(t, a, window_s=-1.0)
