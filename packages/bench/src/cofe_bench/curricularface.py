"""CurricularFace IR-101 (Huang et al., "CurricularFace: Adaptive Curriculum Learning Loss for Deep Face
Recognition", CVPR 2020) as a plain PyTorch module, loading the public Glint360K backbone state dict
(``glint360k_curricular_face_r101_backbone.bin``, the file ConsisID's FaceSim-Cur uses) from a local path.

The layout is Tencent TFace's ``torchkit/backbone/model_irse.py`` ``Backbone(input_size, 100, "ir")`` (that file
is what ConsisID copies): module names match the checkpoint's keys (``input_layer.*``, ``body.N.*``,
``output_layer.*``), so the file loads with a strict key check.

Legend: B batch, C channels, H x W spatial size (112 -> 56 -> 28 -> 14 -> 7 through the four stages).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

# Residual units per stage for the IResNet depths TFace defines ("IR_101" is built with num_layers=100:
# 3 + 13 + 30 + 3 units of two 3x3 convolutions, plus stem and head, ~101 layers).
STAGE_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)


class BasicBlockIR(nn.Module):
    """Pre-activation IR unit: BN-Conv-BN-PReLU-Conv-BN plus a (strided) shortcut (TFace ``BasicBlockIR``)."""

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)  # parameter-free subsampling
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)  # (B, depth, H/stride, W/stride)


class IRBackbone(nn.Module):
    """TFace IResNet backbone for 112x112 faces; ``forward`` returns the raw 512-d embedding.

    Args:
        num_layers: 18, 34, 50 or 100 (``IR_101``, the CurricularFace Glint360K model).
    """

    def __init__(self, num_layers: int = 100) -> None:
        super().__init__()
        if num_layers not in STAGE_UNITS:
            raise ValueError(f"num_layers must be one of {sorted(STAGE_UNITS)}, got {num_layers}")
        self.num_layers = num_layers
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        in_ch = 64
        for width, n in zip(STAGE_WIDTHS, STAGE_UNITS[num_layers], strict=True):
            units.append(BasicBlockIR(in_ch, width, 2))  # every stage starts by halving H and W
            units += [BasicBlockIR(width, width, 1) for _ in range(n - 1)]
            in_ch = width
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(0.4),
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, 512),
            nn.BatchNorm1d(512, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_layer(x)  # (B, 64, 112, 112)
        x = self.body(x)  # (B, 512, 7, 7)
        return self.output_layer(x)  # (B, 512)


def load_backbone_state(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a TFace backbone state dict with a strict key and shape check.

    A ``module.`` prefix (``DataParallel`` checkpoints) is stripped. ``num_batches_tracked`` buffers may be
    absent from the file (they do not change inference); every other key must match exactly.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: keys or shapes differ; the message names the file and the first differing keys.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"CurricularFace backbone file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a TFace IR-{model.num_layers} backbone state dict: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"{path}: key {k!r} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    merged = {**{k: v for k, v in expected.items() if k.endswith("num_batches_tracked")}, **state}
    model.load_state_dict(merged, strict=True)
    return model


class CurricularFace(nn.Module):
    """Frozen CurricularFace recogniser with ConsisID's preprocessing (``inference`` in its eval script).

    Input: aligned RGB crops (any size, 224 in the protocol), resized to 112x112 with ``cv2.resize``
    (bilinear), scaled ``(x / 255 - 0.5) / 0.5``. Output: L2-normalised 512-d embeddings.

    Args:
        weights: Local backbone file (``glint360k_curricular_face_r101_backbone.bin``), or ``None`` for random
            weights (tests).
        num_layers: IResNet depth (100 for the public file).
        device: Compute device.
    """

    def __init__(self, weights: str | Path | None = None, num_layers: int = 100, device: str = "cpu") -> None:
        super().__init__()
        self.backbone = IRBackbone(num_layers)
        if weights is not None:
            load_backbone_state(self.backbone, weights)
        self.weights = str(weights) if weights is not None else None
        self.to(device).eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, crops: list[np.ndarray]) -> torch.Tensor:
        """uint8 RGB crops -> ``(B, 3, 112, 112)`` float in [-1, 1]."""
        arr = np.stack([c if c.shape[:2] == (112, 112) else cv2.resize(c, (112, 112)) for c in crops])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()  # (B, 3, 112, 112)
        return x.div(255.0).sub(0.5).div(0.5).to(self.device)

    @torch.no_grad()
    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """L2-normalised embeddings ``(B, 512)`` (float32 numpy) of aligned RGB crops."""
        if not crops:
            return np.zeros((0, 512), np.float32)
        emb = self.backbone(self.preprocess(crops)).float()  # (B, 512)
        return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()
