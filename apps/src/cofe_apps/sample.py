"""`cofe sample`: reference face + first frame + prompt -> H.264 mp4, from a training checkpoint.

The frozen components (VAE, text encoder, experts) are those the training data were made with: pass the
``config.json`` that ``cofe precompute`` wrote (``--components``), or ``--tiny``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cofe_apps.components import ExpertsSpec, FaceExperts, TextEncoder, TextSpec, VAESpec, build_vae
from cofe_apps.io import resize_crop, write_mp4
from cofe_apps.module import CoFEModule
from cofe_dit import SamplerConfig, sample


@dataclass
class Components:
    vae: VAESpec = field(default_factory=VAESpec)
    text: TextSpec = field(default_factory=TextSpec)
    experts: ExpertsSpec = field(default_factory=ExpertsSpec)

    @classmethod
    def from_json(cls, path: str | Path) -> Components:
        """The components recorded by ``cofe precompute`` (its ``config.json``)."""
        data = json.loads(Path(path).read_text())
        return cls(VAESpec(**data["vae"]), TextSpec(**data["text"]), ExpertsSpec(**data["experts"]))


def load_module(checkpoint: str | Path, ema: bool = False, device: str = "cpu") -> CoFEModule:
    """A ``CoFEModule`` from a Lightning checkpoint; with ``ema`` the trained weights are their EMA."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    module = CoFEModule.load_from_checkpoint(str(path), map_location="cpu", weights_only=False)
    if ema:
        if not module.ema:
            raise ValueError(f"{path} holds no EMA weights (ema_decay was 0?)")
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in module.ema.items():
                params[name].copy_(value)
    return module.to(device).eval()


def load_image(path: str | Path) -> np.ndarray:
    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


class Sampler:
    """Holds a trained module and its frozen components."""

    def __init__(self, module: CoFEModule, components: Components, device: str = "cpu"):
        self.module = module
        self.device = device
        self.vae = build_vae(components.vae, device)
        self.text = TextEncoder(components.text, device)
        self.experts = FaceExperts(components.experts, device)

    @torch.no_grad()
    def __call__(
        self,
        reference: np.ndarray,
        prompt: str,
        first_frame: np.ndarray | None = None,
        *,
        frames: int = 17,
        height: int = 64,
        width: int = 64,
        negative_prompt: str = "",
        config: SamplerConfig | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """Returns ``(frames, height, width, 3)`` uint8 RGB."""
        dit = self.module.dit
        if (frames - 1) % 4 or height % 16 or width % 16:
            raise ValueError(f"{frames} frames at {height}x{width}: need 1 + 4k frames and sizes divisible by 16")
        feats = self.experts.encode([reference])
        batch = {k: torch.from_numpy(v.astype(np.float32)).to(self.device) for k, v in feats.items()}
        faces, _ = self.module.face_tokens(batch)  # num_layers x (1, M, D)
        zero_faces = [torch.zeros_like(f) for f in faces]  # what training's face dropout shows the model
        ctx = self.text.encode_padded([prompt]).to(self.device)  # (1, T, text_dim)
        neg = (
            self.text.encode_padded([negative_prompt]).to(self.device) if negative_prompt else torch.zeros_like(ctx)
        )  # training's text dropout is all-zero text
        shape = (1, self.vae.z_dim, 1 + (frames - 1) // 4, height // 8, width // 8)
        first = None
        if first_frame is not None:
            if dit.cfg.model_type != "ti2v":
                raise ValueError(f"a first frame needs a ti2v model; this DiT is {dit.cfg.model_type!r}")
            img = torch.from_numpy(np.array(first_frame)).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, H0, W0)
            img = resize_crop(img, height, width)  # (1, 3, H, W)
            first = self.vae.encode(img[:, :, None])  # (1, z, 1, h, w)
        latent = sample(
            dit,
            shape,
            ctx,
            config=config or SamplerConfig(),
            seed=seed,
            negative_context=neg,
            face_tokens=faces,
            negative_face_tokens=zero_faces,
            first_frame=first,
        )
        video = self.vae.decode(latent)[0]  # (3, F, H, W) in [-1, 1]
        return ((video.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().cpu().numpy()


def main(argv: list[str]) -> int:
    """`cofe sample --checkpoint CKPT --reference FACE --prompt TEXT --out OUT.mp4 [...]`."""
    p = argparse.ArgumentParser(prog="cofe sample", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a Lightning checkpoint of `cofe fit` (e.g. last.ckpt)")
    p.add_argument("--reference", required=True, help="reference face image")
    p.add_argument("--first-frame", help="first frame image (ti2v models)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--components", help="config.json written by `cofe precompute` (VAE, text encoder, experts)")
    p.add_argument("--tiny", action="store_true", help="tiny components (as `cofe precompute --tiny`)")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--fps", type=float, default=16.0)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--solver", default="dpmpp_2m", choices=["euler", "dpmpp_2m"])
    p.add_argument("--text-scale", type=float, default=5.0)
    p.add_argument("--face-scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema", action="store_true", help="sample with the EMA weights")
    p.add_argument("--mlflow-run-id", help="also log the video to this MLflow run")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    if a.components:
        components = Components.from_json(a.components)
    elif a.tiny:
        components = Components(VAESpec(tiny=True), TextSpec(tiny=True), ExpertsSpec())
    else:
        p.error("give --components (precompute's config.json) or --tiny")
    module = load_module(a.checkpoint, ema=a.ema, device=a.device)
    if a.tiny:
        components.text = TextSpec(tiny=True, dim=module.dit.cfg.text_dim, text_len=512)
    start = time.perf_counter()
    video = Sampler(module, components, a.device)(
        load_image(a.reference),
        a.prompt,
        load_image(a.first_frame) if a.first_frame else None,
        frames=a.frames,
        height=a.height,
        width=a.width,
        negative_prompt=a.negative_prompt,
        config=SamplerConfig(
            steps=a.steps, shift=a.shift, solver=a.solver, text_scale=a.text_scale, face_scale=a.face_scale
        ),
        seed=a.seed,
    )
    path = write_mp4(video, a.out, fps=a.fps)
    print(f"wrote {path} ({video.shape[0]} frames, {time.perf_counter() - start:.1f}s)")
    if a.mlflow_run_id:
        from mlflow import MlflowClient

        MlflowClient(a.tracking_uri).log_artifact(a.mlflow_run_id, str(path), "samples")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
