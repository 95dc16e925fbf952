"""InceptionV3 pool features of aligned faces, as ConsisID's face "FID" computes them.

ConsisID: ``torchvision.models.inception_v3(weights=Inception_V3_Weights.DEFAULT)`` with ``fc`` replaced by
``Identity`` (2048-d average-pool features), input the aligned 224 crop resized to 299x299 by PIL
(``transforms.Resize((299, 299))``, bilinear with antialiasing) and ``ToTensor()`` only. Loading torchvision's
ImageNet weights turns on ``transform_input=True`` (torchvision ``inception_v3``), so the network re-maps its
[0, 1] input as if it were ImageNet-normalised; we build the same network so the numbers match.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.models import inception_v3
from torchvision.transforms.functional import pil_to_tensor

FEATURE_DIM = 2048  # InceptionV3 average-pool width (Szegedy et al., CVPR 2016)
INPUT_SIZE = 299


class InceptionFeatures(nn.Module):
    """Frozen torchvision InceptionV3 without its classifier.

    Args:
        weights: Local torchvision checkpoint (``inception_v3_google-0cc3c7bd.pth``), or ``None`` for random
            weights (tests). Strict key check.
        transform_input: torchvision's input re-mapping; ``True`` whenever its ImageNet weights are used
            (and therefore in ConsisID's protocol).
        device: Compute device.
        input_size: Resize side (the protocol's 299; InceptionV3 accepts >= 75, smaller only for fast tests).
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        transform_input: bool = True,
        device: str = "cpu",
        input_size: int = INPUT_SIZE,
    ) -> None:
        super().__init__()
        if input_size < 75:
            raise ValueError(f"InceptionV3 needs inputs of at least 75x75 pixels, got input_size={input_size}")
        self.input_size = int(input_size)
        # init_weights=False: torchvision's truncated-normal init is slow and irrelevant for loaded or test weights.
        net = inception_v3(weights=None, aux_logits=True, transform_input=transform_input, init_weights=False)
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"InceptionV3 weights file not found: {path}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ValueError(f"{path} is not a torchvision inception_v3 state dict: {exc}") from exc
        net.fc = nn.Identity()
        self.net = net
        self.weights = str(weights) if weights is not None else None
        self.to(device).eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @staticmethod
    def preprocess(crops: list[np.ndarray]) -> torch.Tensor:
        """uint8 RGB crops -> ``(B, 3, 299, 299)`` in [0, 1] (PIL bilinear resize, then ``ToTensor``)."""
        tensors = [
            pil_to_tensor(Image.fromarray(c).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)) for c in crops
        ]
        return torch.stack(tensors).float().div(255.0)  # (B, 3, 299, 299)

    @torch.no_grad()
    def features(self, crops: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """``(B, 2048)`` float64 pool features of aligned RGB crops."""
        if not crops:
            return np.zeros((0, FEATURE_DIM), np.float64)
        out = []
        for i in range(0, len(crops), batch_size):
            x = self.preprocess(crops[i : i + batch_size]).to(self.device)
            out.append(self.net(x).double().cpu())  # (b, 2048); eval mode returns logits only (no aux)
        return torch.cat(out).numpy()
