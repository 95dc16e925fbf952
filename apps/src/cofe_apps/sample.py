"""`cofe sample`: reference face (+ first frame) + prompt -> H.264 mp4, from a training checkpoint.

``--checkpoint`` takes any of: a Lightning checkpoint file of `cofe fit` (``last.ckpt``), the distributed-checkpoint
directory of a sharded run, or a ``cofe export`` safetensors file. The checkpoint is self-contained: it holds the
components record of the training data (VAE, text encoder, experts, CLIP image encoder; pass ``--components`` to
use another copy of precompute's ``config.json``, e.g. with the weights at other paths), so the geometry of the
video (latent channels, VAE strides) is the training data's, and the base Wan folder is never read.

The reference photo goes through face detection: the largest face is aligned to the ArcFace template for the
identity expert and cut as the whitened head crop for the semantic and detail experts, exactly as curation does;
both crops are saved beside the video (``OUT.ref_id.png``, ``OUT.ref.png``). Defaults (steps, shift, guidance,
solver, negative prompt, frames, size, fps) are those of the DiT preset (Wan's own).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cofe_apps.components import Encoders
    from cofe_apps.module import CoFEModule
    from cofe_apps.specs import ComponentsSpec


class Sampler:
    """Holds a trained module and its frozen components."""

    def __init__(self, module: CoFEModule, components: ComponentsSpec | None = None, device: str = "cpu"):
        from cofe_apps.components import Encoders
        from cofe_apps.specs import ComponentsSpec

        if components is None:
            if not module.record:
                raise ValueError("the checkpoint records no components: pass --components (precompute's config.json)")
            components = ComponentsSpec.from_dict(module.record)
        self.module = module
        self.device = device
        self.enc: Encoders = Encoders(components, device)
        cfg = module.dit.cfg
        g = self.enc.geometry
        if g.channels != cfg.out_dim or (g.temporal_stride, g.spatial_stride, g.spatial_stride) != tuple(
            cfg.vae_stride
        ):
            raise ValueError(
                f"the VAE gives {g.channels}-channel latents at {g.temporal_stride}x/{g.spatial_stride}x; the model "
                f"was trained on {cfg.out_dim} channels at {tuple(cfg.vae_stride)}"
            )
        if self.enc.text.dim != cfg.text_dim:
            raise ValueError(f"the text encoder gives {self.enc.text.dim}-d states; the model reads {cfg.text_dim}")

    def output_size(self, first_frame: np.ndarray | None, height: int | None, width: int | None) -> tuple[int, int]:
        """``(height, width)``: given, else the preset's (Wan's rule: with a conditioning image its aspect ratio at
        the preset's area, e.g. Wan 2.2's ``best_output_size`` for TI2V)."""
        from cofe_dit import output_size

        cfg = self.module.dit.cfg
        if first_frame is not None and cfg.model_type != "t2v":
            w, h = output_size(cfg, first_frame.shape[1], first_frame.shape[0])
        else:
            w, h = output_size(cfg)
        return height or h, width or w

    def __call__(
        self,
        reference: np.ndarray,
        prompt: str,
        first_frame: np.ndarray | None = None,
        *,
        frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        negative_prompt: str | None = None,
        config=None,
        seed: int = 0,
        crops: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Returns ``(frames, height, width, 3)`` uint8 RGB. ``crops`` are ``(identity 112, head)`` crops if
        already made (else found in ``reference``)."""
        import torch

        from cofe_apps.components import reference_from_image
        from cofe_apps.io import image_to_tensor, resize_crop
        from cofe_dit import SamplerConfig, i2v_condition, sample

        with torch.no_grad():
            module, enc = self.module, self.enc
            dit = module.dit
            cfg = dit.cfg
            frames = frames or cfg.sampling.num_frames
            height, width = self.output_size(first_frame, height, width)
            enc.geometry.check(frames, height, width, cfg.patch_size)
            if cfg.model_type == "i2v" and first_frame is None:
                raise ValueError(f"the {cfg.name!r} model is I2V: give a first frame (--first-frame)")
            if cfg.model_type == "t2v" and first_frame is not None:
                raise ValueError(f"a first frame needs an i2v or ti2v model; this DiT is {cfg.model_type!r}")
            ident, head = crops if crops is not None else reference_from_image(reference)
            feats = enc.experts.encode([ident], [head])
            batch = {k: torch.from_numpy(v.astype(np.float32)).to(self.device) for k, v in feats.items()}
            faces, _ = module.face_tokens(batch)  # num_layers x (1, M, D)
            zero_faces = [torch.zeros_like(f) for f in faces]  # what training's face dropout shows the model
            ctx = enc.text.encode_padded([prompt]).to(self.device)  # (1, T, text_dim)
            if negative_prompt is None:
                negative_prompt = cfg.sampling.negative_prompt  # Wan's own, encoded by the same text encoder
            neg = enc.text.encode_padded([negative_prompt]).to(self.device)
            shape = (1, *enc.geometry.latent_shape(frames, height, width))
            first = cond = clip = None
            if first_frame is not None:
                img = resize_crop(image_to_tensor(first_frame), height, width).to(self.device)  # (1, 3, H, W)
                if cfg.model_type == "ti2v":
                    first = enc.vae.encode(img[:, :, None])  # (1, z, 1, h, w)
                else:  # i2v: mask + VAE latent of [first frame, zeros], and the frame's CLIP tokens
                    cond = i2v_condition(enc.i2v_latent(img, frames), shape[2], cfg.vae_stride[0])
                    clip = enc.image.encode(img)
            config = config or SamplerConfig.from_defaults(cfg)
            latent = sample(
                dit,
                shape,
                ctx,
                config=config,
                seed=seed,
                negative_context=neg,
                face_tokens=faces,
                negative_face_tokens=zero_faces,
                first_frame=first,
                cond=cond,
                clip_tokens=clip,
            )
            video = enc.vae.decode(latent)[0]  # (3, F, H, W) in [-1, 1]
            return ((video.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().cpu().numpy()


def sampler_config(cfg, *, steps=None, shift=None, solver=None, text_scale=None, face_scale=None):
    """The preset's sampler settings (Wan's) with the given ones overriding them."""
    from cofe_dit import SamplerConfig

    given = {"steps": steps, "shift": shift, "solver": solver, "text_scale": text_scale, "face_scale": face_scale}
    return SamplerConfig.from_defaults(cfg, **{k: v for k, v in given.items() if v is not None})


def build_parser() -> argparse.ArgumentParser:
    """The arguments of `cofe sample` (built without importing torch: ``--help`` stays fast)."""
    from cofe_apps.helptext import HelpFormatter

    p = argparse.ArgumentParser(prog="cofe sample", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--checkpoint", required=True, help="last.ckpt of `cofe fit`, a sharded checkpoint dir, or an export"
    )
    p.add_argument("--reference", required=True, help="a photo of the person (the largest face is used)")
    p.add_argument(
        "--first-frame", help="first frame image (required for i2v, optional for ti2v models; default: none)"
    )
    p.add_argument("--prompt", required=True, help="what the video shows")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (default: the preset's, Wan's own)")
    p.add_argument("--out", required=True, help="output .mp4 (the reference crops are saved beside it)")
    p.add_argument("--components", help="another copy of precompute's config.json (default: the checkpoint's)")
    p.add_argument("--dit-weights", help="the base Wan folder, for slim checkpoints only (default: none)")
    p.add_argument("--frames", type=int, default=None, help="frames, 1 + 4k (default: the preset's)")
    p.add_argument("--height", type=int, default=None, help="height in pixels (default: the preset's)")
    p.add_argument("--width", type=int, default=None, help="width in pixels (default: the preset's)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of the mp4 (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: the preset's)")
    p.add_argument("--shift", type=float, default=None, help="timestep shift (default: the preset's)")
    p.add_argument(
        "--solver", default=None, choices=["unipc", "dpmpp_2m", "euler"], help="sampler (default: the preset's)"
    )
    p.add_argument("--text-scale", type=float, default=None, help="text guidance scale (default: the preset's)")
    p.add_argument("--face-scale", type=float, default=1.0, help="face guidance scale (1: no extra face guidance)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--ema", action="store_true", help="sample with the EMA weights")
    p.add_argument("--mlflow-run-id", help="also log the video to this MLflow run (default: none)")
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="MLflow store of --mlflow-run-id ($MLFLOW_TRACKING_URI when set, as for cofe fit)",
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float32"],
        default=None,
        help="DiT compute dtype (default: bf16 on CUDA, fp32 on CPU)",
    )
    return p


def main(argv: list[str]) -> int:
    """`cofe sample --checkpoint CKPT --reference FACE --prompt TEXT --out OUT.mp4 [...]`."""
    p = build_parser()
    a = p.parse_args(argv)

    import torch

    from cofe_apps.components import ReferenceError, reference_from_image
    from cofe_apps.io import load_image, png_bytes, write_mp4
    from cofe_apps.module import CoFEModule, read_components
    from cofe_apps.specs import ComponentsSpec

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dtype = getattr(torch, a.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
        module = CoFEModule.from_checkpoint(
            a.checkpoint, ema=a.ema, device=device, dit_weights=a.dit_weights, dtype=dtype
        )
        components = ComponentsSpec.from_dict(read_components(a.components)) if a.components else None
        sampler = Sampler(module, components, device)
        reference = load_image(a.reference)
        crops = reference_from_image(reference)
        first = load_image(a.first_frame) if a.first_frame else None
        cfg = module.dit.cfg
        config = sampler_config(
            cfg, steps=a.steps, shift=a.shift, solver=a.solver, text_scale=a.text_scale, face_scale=a.face_scale
        )
    except (ValueError, FileNotFoundError, ReferenceError) as exc:
        print(f"cofe sample: {exc}", file=sys.stderr)
        return 2
    out = Path(a.out)
    start = time.perf_counter()
    try:
        video = sampler(
            reference,
            a.prompt,
            first,
            frames=a.frames,
            height=a.height,
            width=a.width,
            negative_prompt=a.negative_prompt,
            config=config,
            seed=a.seed,
            crops=crops,
        )
    except ValueError as exc:
        print(f"cofe sample: {exc}", file=sys.stderr)
        return 2
    fps = a.fps or cfg.sampling.fps
    path = write_mp4(video, out, fps=fps)
    for crop, suffix in zip(crops, (".ref_id.png", ".ref.png"), strict=True):
        out.with_name(out.stem + suffix).write_bytes(png_bytes(crop))
    print(f"wrote {path} ({video.shape[0]} frames at {video.shape[2]}x{video.shape[1]}, "
          f"{time.perf_counter() - start:.1f}s)")  # fmt: skip
    if a.mlflow_run_id:
        from mlflow import MlflowClient

        MlflowClient(a.tracking_uri).log_artifact(a.mlflow_run_id, str(path), "samples")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
