"""CurricularFace IR-101: the TFace layout, strict loading, and ConsisID's preprocessing."""

import cv2
import numpy as np
import pytest
import torch

from cofe_bench import CurricularFace, IRBackbone, load_backbone_state


def test_ir101_layout_matches_tface_backbone():
    # TFace IR_101 = Backbone([112, 112], 100, "ir"): 3 + 13 + 30 + 3 units, 512-d embedding, ~65M parameters.
    model = IRBackbone(100)
    assert len(model.body) == 49
    keys = model.state_dict().keys()
    for k in (
        "input_layer.0.weight",
        "input_layer.2.weight",
        "body.3.shortcut_layer.0.weight",  # first unit of stage 2 (64 -> 128): a conv shortcut
        "body.0.res_layer.3.weight",
        "body.48.res_layer.5.running_var",
        "output_layer.0.weight",
        "output_layer.3.weight",
        "output_layer.4.running_mean",
    ):
        assert k in keys
    assert "body.0.shortcut_layer.0.weight" not in keys  # 64 -> 64: parameter-free MaxPool2d(1, 2) shortcut
    assert "output_layer.4.weight" not in keys  # BatchNorm1d(512, affine=False)
    assert model.state_dict()["output_layer.3.weight"].shape == (512, 512 * 7 * 7)
    assert 64e6 < sum(p.numel() for p in model.parameters()) < 66e6


def test_strict_load_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    src = IRBackbone(18).eval()
    state = {f"module.{k}": v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "backbone.bin"
    torch.save(state, path)  # DataParallel prefix and no num_batches_tracked: both accepted
    model = CurricularFace(path, num_layers=18)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x), src(x))

    bad = dict(state)
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.bin")
    with pytest.raises(ValueError, match=r"bad\.bin is not a TFace IR-18 backbone.*unexpected"):
        load_backbone_state(IRBackbone(18), tmp_path / "bad.bin")
    shaped = dict(state)
    shaped["module.output_layer.3.bias"] = torch.zeros(3)
    torch.save(shaped, tmp_path / "shape.bin")
    with pytest.raises(ValueError, match=r"output_layer\.3\.bias.*\(3,\), expected \(512,\)"):
        load_backbone_state(IRBackbone(18), tmp_path / "shape.bin")
    with pytest.raises(FileNotFoundError, match=r"nope\.bin"):
        CurricularFace(tmp_path / "nope.bin")


def test_embedding_matches_consisid_inference():
    """ConsisID ``inference``: cv2.resize to 112, CHW, /255, -0.5, /0.5, forward, L2 normalise."""
    torch.manual_seed(0)
    model = CurricularFace(None, num_layers=18)
    crop = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    img = np.transpose(cv2.resize(crop, (112, 112)), (2, 0, 1))
    x = torch.from_numpy(img).unsqueeze(0).float()
    x.div_(255).sub_(0.5).div_(0.5)
    with torch.no_grad():
        ref = model.backbone(x).numpy()[0]
    ref = ref / np.linalg.norm(ref)
    ours = model.embed([crop])[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert model.embed([]).shape == (0, 512)


@pytest.mark.slow
def test_inception_loads_torchvision_weights_and_matches_consisid_pipeline(tmp_path):
    """Same weights through ConsisID's pipeline: torchvision inception_v3 as its ImageNet weights build it
    (transform_input=True), fc = Identity, PIL Resize((299, 299)) + ToTensor."""
    from PIL import Image
    from torchvision import models, transforms

    from cofe_bench import InceptionFeatures

    torch.manual_seed(0)
    net = models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    ours = InceptionFeatures(tmp_path / "inception.pth")
    assert ours.net.transform_input
    net.fc = torch.nn.Identity()
    net.eval()
    crop = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    x = transforms.ToTensor()(transforms.Resize((299, 299))(Image.fromarray(crop))).unsqueeze(0)
    with torch.no_grad():
        ref = net(x).double().numpy()
    np.testing.assert_allclose(ours.features([crop]), ref, rtol=1e-5, atol=1e-6)

    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth is not a torchvision inception_v3 state dict"):
        InceptionFeatures(tmp_path / "bad.pth")
