"""6DRepNet head-pose network (Hempel, Abdelrahman and Al-Hamadi, "6D Rotation Representation for Unconstrained
Head Pose Estimation", ICIP 2022), built here so that the public release's weights load without its package.

Architecture (from the paper and the release's layout, which the state-dict keys must match):

* **Backbone: RepVGG-B1g2** (Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021): five
  stages of 3x3 RepVGG blocks, ``[1, 4, 6, 16, 1]`` blocks, widths ``[64, 128, 256, 512, 2048]`` (B1: width
  multipliers 2, 2, 2, 4), the first block of each stage with stride 2, and groupwise (``groups=2``) 3x3
  convolutions on the even-numbered blocks 2, 4, ..., 26 (the "g2" variant). A training-time block sums a 3x3
  conv + BN, a 1x1 conv + BN and (when shapes allow) an identity BN, then ReLU; at deployment the three branches
  are fused into one 3x3 conv with bias (``rbr_reparam``), which is what the released file holds.
* **Head**: global average pooling, ``Linear(2048, 6)``: two 3-vectors turned into a rotation matrix by
  Gram-Schmidt (Zhou et al., "On the Continuity of Rotation Representations in Neural Networks", CVPR 2019):
  ``x = a1/|a1|``, ``z = (x × a2)/|x × a2|``, ``y = z × x``, ``R = [x y z]`` (columns).

Weights: the authors' 300W-LP model fine-tuned on AFLW2000 is the file ``6DRepNet_300W_LP_AFLW2000.pth`` of
their GitHub release (github.com/thohemp/6DRepNet, "Pretrained weights"); fetch it yourself and pass its path.
Nothing is downloaded here. Both the deploy (fused) layout and the training layout load; training weights are
fused on load.

Input: an RGB face crop (the detector box grown by 20 % of its other side on every side, as the release's demo
does), shorter side resized to 224 and centre-cropped to 224x224, ImageNet mean/std normalisation.

Angles: the network is trained on 300W-LP's ``Pose_Para`` labels and its rotation is ``Rz(roll) Ry(yaw)
Rx(pitch)`` (the release's ``get_R``), decomposed back as ``pitch = atan2(R21, R22)``, ``yaw = atan2(-R20,
sqrt(R00² + R10²))``, ``roll = atan2(R10, R00)``. In that convention (as the release's ``draw_axis`` shows the
face direction as ``(-sin yaw, -cos yaw sin pitch)`` on screen) positive yaw turns the face towards the image's
*left*, i.e. the subject's right: this project's yaw is its negative; pitch (up) and roll (clockwise on
screen) have this project's signs (:func:`angles_from_6drepnet`).
"""

from __future__ import annotations

import torch
from torch import nn

# RepVGG-B1g2: blocks per stage (after stage 0), widths, and the block indices with groups=2.
B1G2_BLOCKS = (4, 6, 16, 1)
B1G2_WIDTHS = (128, 256, 512, 2048)
B1G2_GROUPWISE = frozenset(range(2, 27, 2))
STEM_WIDTH = 64
IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(cout))
    return seq


class RepVGGBlock(nn.Module):
    """One RepVGG block: three branches while training (3x3, 1x1, identity BN), one 3x3 conv once fused."""

    def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 1, deploy: bool = False) -> None:
        super().__init__()
        self.cin, self.cout, self.stride, self.groups = cin, cout, stride, groups
        self.act = nn.ReLU()
        if deploy:
            self.rbr_reparam = nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=True)
        else:
            self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
            self.rbr_dense = _conv_bn(cin, cout, 3, stride, groups)
            self.rbr_1x1 = _conv_bn(cin, cout, 1, stride, groups)

    @property
    def fused(self) -> bool:
        return hasattr(self, "rbr_reparam")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self.act(self.rbr_reparam(x))
        identity = self.rbr_identity(x) if self.rbr_identity is not None else 0.0
        return self.act(self.rbr_dense(x) + self.rbr_1x1(x) + identity)

    @staticmethod
    def _fold(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        # BN(conv(x)) = gamma (Wx - mu) / sigma + beta  ->  W' = W gamma / sigma, b' = beta - mu gamma / sigma.
        std = (bn.running_var + bn.eps).sqrt()
        scale = bn.weight / std
        return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale

    @torch.no_grad()
    def fuse(self) -> None:
        """Replace the three branches by the single equivalent 3x3 conv (Ding et al. 2021, section 3.3)."""
        if self.fused:
            return
        k3, b3 = self._fold(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        k1, b1 = self._fold(self.rbr_1x1.conv.weight, self.rbr_1x1.bn)
        kernel = k3 + nn.functional.pad(k1, [1, 1, 1, 1])
        bias = b3 + b1
        if self.rbr_identity is not None:
            per_group = self.cin // self.groups
            ident = torch.zeros(self.cin, per_group, 3, 3, dtype=kernel.dtype, device=kernel.device)
            ident[torch.arange(self.cin), torch.arange(self.cin) % per_group, 1, 1] = 1.0
            ki, bi = self._fold(ident, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        conv = nn.Conv2d(self.cin, self.cout, 3, self.stride, 1, groups=self.groups, bias=True)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        self.rbr_reparam = conv.to(kernel.device)
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity


class SixDRepNet(nn.Module):
    """RepVGG-B1g2 + 6D rotation head; ``forward`` maps ``(B, 3, 224, 224)`` normalised RGB to ``(B, 3, 3)``.

    Module names (``layer0`` ... ``layer4``, ``linear_reg``) follow the release so its state dict loads as is.

    Args:
        deploy: Build fused blocks (the released weights' layout) instead of three-branch training blocks.
    """

    def __init__(self, deploy: bool = True) -> None:
        super().__init__()
        self.layer0 = RepVGGBlock(3, STEM_WIDTH, stride=2, deploy=deploy)
        cin, index = STEM_WIDTH, 1
        for stage, (n, width) in enumerate(zip(B1G2_BLOCKS, B1G2_WIDTHS, strict=True), start=1):
            blocks = []
            for i in range(n):
                groups = 2 if index in B1G2_GROUPWISE else 1
                blocks.append(RepVGGBlock(cin, width, stride=2 if i == 0 else 1, groups=groups, deploy=deploy))
                cin, index = width, index + 1
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear_reg = nn.Linear(cin, 6)

    def fuse(self) -> SixDRepNet:
        """Fuse every block (a no-op for deploy-layout models); returns ``self``."""
        for m in self.modules():
            if isinstance(m, RepVGGBlock):
                m.fuse()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer0(x)  # (B, 64, 112, 112)
        x = self.layer1(x)  # (B, 128, 56, 56)
        x = self.layer2(x)  # (B, 256, 28, 28)
        x = self.layer3(x)  # (B, 512, 14, 14)
        x = self.layer4(x)  # (B, 2048, 7, 7)
        x = self.gap(x).flatten(1)  # (B, 2048)
        return rotation_from_6d(self.linear_reg(x))  # (B, 3, 3)


def rotation_from_6d(d6: torch.Tensor) -> torch.Tensor:
    """``(B, 6)`` -> ``(B, 3, 3)`` rotation matrices by Gram-Schmidt (Zhou et al. 2019), columns ``x, y, z``."""
    a1, a2 = d6[:, :3], d6[:, 3:]
    x = nn.functional.normalize(a1, dim=1, eps=1e-8)
    z = nn.functional.normalize(torch.cross(x, a2, dim=1), dim=1, eps=1e-8)
    y = torch.cross(z, x, dim=1)
    return torch.stack([x, y, z], dim=2)


def angles_from_6drepnet(rot: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` network rotations -> ``(B, 3)`` (yaw, pitch, roll) in degrees, this project's conventions."""
    sy = torch.sqrt(rot[:, 0, 0] ** 2 + rot[:, 1, 0] ** 2)
    pitch = torch.atan2(rot[:, 2, 1], rot[:, 2, 2])
    yaw = torch.atan2(-rot[:, 2, 0], sy)
    roll = torch.atan2(rot[:, 1, 0], rot[:, 0, 0])
    # Gimbal lock (|yaw| = 90): roll is undefined; put the whole in-plane angle into pitch, as the release does.
    singular = sy < 1e-6
    pitch = torch.where(singular, torch.atan2(-rot[:, 1, 2], rot[:, 1, 1]), pitch)
    roll = torch.where(singular, torch.zeros_like(roll), roll)
    return torch.rad2deg(torch.stack([-yaw, pitch, roll], dim=1))


def load_sixdrepnet(path, map_location="cpu") -> SixDRepNet:
    """Build :class:`SixDRepNet` and load a local checkpoint (deploy or training layout), fused, in eval mode.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a 6DRepNet state dict (missing or unexpected keys, wrong shapes).
    """
    from cofe_encoders.weights import load_state_dict_file

    state = load_state_dict_file(path, "6DRepNet")
    for key in ("model_state_dict",):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    deploy = any(k.endswith("rbr_reparam.weight") for k in state)
    model = SixDRepNet(deploy=deploy)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"6DRepNet weights {path} do not match RepVGG-B1g2 + 6D head: {exc}") from exc
    return model.fuse().eval().requires_grad_(False)
