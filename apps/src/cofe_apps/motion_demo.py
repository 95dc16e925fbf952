"""`cofe motion-demo`: the tiny DiT learns a small video distribution on the CPU, then samples it to H.264 mp4 files.

The data are synthetic latent videos (4 channels: RGB of the frame, and a ball mask) of a coloured ball crossing a
grey field from a random position, in the direction the prompt names. Generation is Wan 2.2 TI2V style: the first
latent frame is given (its tokens see timestep 0 and are left out of the loss), the prompt says where the ball goes.
(A Wan DiT has only relative, rotary positions, so a fixed absolute layout is not something it can learn; motion
relative to a given frame is.) The prompt is embedded by a toy, seeded word-embedding table (a real run embeds with
umT5). Training is the library's flow-matching loss with 10% prompt dropout, so sampling can use classifier-free
guidance against the empty prompt. Each sample is then checked: the ball must move the way its prompt says.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch and the DiT are imported where they run: `cofe motion-demo --help` stays fast
    import torch

COLOURS = {"red": (0.9, -0.6, -0.6), "blue": (-0.6, -0.4, 0.9)}
DIRECTIONS = {"right": (0.0, 1.0), "down": (1.0, 0.0)}
PROMPTS = [f"a {c} ball moves {d}" for c in COLOURS for d in DIRECTIONS]


@dataclass(frozen=True)
class DemoConfig:
    frames: int = 5
    size: int = 16
    speed: float = 2.0  # latent pixels per frame: one 2x2 patch, a constant the model can learn from relative positions
    text_len: int = 6
    train_steps: int = 1000
    batch: int = 6
    lr: float = 3e-3
    sample_steps: int = 20
    text_scale: float = 2.0
    seed: int = 0


def embed_prompt(prompt: str, text_len: int, dim: int) -> torch.Tensor:
    """Toy text encoder: one seeded random vector per word, zero-padded to ``text_len`` (as Wan pads umT5)."""
    import torch

    out = torch.zeros(text_len, dim)
    for i, word in enumerate(prompt.lower().split()[:text_len]):
        seed = sum((j + 1) * ord(ch) for j, ch in enumerate(word))
        out[i] = torch.randn(dim, generator=torch.Generator().manual_seed(seed))
    return out


def make_clip(prompt: str, cfg: DemoConfig, rng: np.random.Generator) -> torch.Tensor:
    """One latent clip ``(4, F, S, S)`` for a prompt, with a random start position along the motion."""
    import torch

    _, colour, _, _, direction = prompt.split()
    dy, _ = DIRECTIONS[direction]
    s, f = cfg.size, cfg.frames
    start = rng.uniform(3.0, s - 3.0 - cfg.speed * (f - 1))
    across = rng.uniform(3.0, s - 3.0)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    video = np.zeros((4, f, s, s), np.float32)
    for t in range(f):
        along = start + t * cfg.speed
        cy, cx = (along, across) if dy else (across, along)
        mask = 1 / (1 + np.exp(np.clip(((yy - cy) ** 2 + (xx - cx) ** 2 - 6.0) * 1.5, -50, 50)))  # disc, r ~2.5
        for c in range(3):
            video[c, t] = mask * COLOURS[colour][c]
        video[3, t] = 2 * mask - 1
    return torch.from_numpy(video)


def to_frames(latent: torch.Tensor, scale: int = 16) -> np.ndarray:
    """``(4, F, S, S)`` latent -> ``(F, S*scale, S*scale, 3)`` uint8 (grey field = 0, channels 0-2 are RGB)."""
    import torch.nn.functional as F

    rgb = latent[:3].permute(1, 0, 2, 3)  # (F, 3, S, S)
    rgb = F.interpolate(rgb, scale_factor=scale, mode="bilinear", align_corners=False)
    rgb = ((rgb.clamp(-1, 1) + 1) * 127.5).round().byte()
    return rgb.permute(0, 2, 3, 1).numpy()


def check_motion(latent: torch.Tensor, prompt: str) -> dict:
    """Where the ball is (mask-weighted centroid) in the first and last frame, and its mean colour."""
    import torch

    mask = ((latent[3] + 1) / 2).clamp(0, 1)  # (F, S, S)
    s = mask.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
    w = mask / mask.sum(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    cy, cx = (w * yy).sum(dim=(1, 2)), (w * xx).sum(dim=(1, 2))
    moved = (float(cy[-1] - cy[0]), float(cx[-1] - cx[0]))
    _, colour, _, _, direction = prompt.split()
    expect = DIRECTIONS[direction]
    along = moved[0] * expect[0] + moved[1] * expect[1]
    across = moved[0] * expect[1] + moved[1] * expect[0]
    rgb = (latent[:3] * mask).sum(dim=(1, 2, 3)) / mask.sum().clamp_min(1e-6)
    colour_ok = int(torch.argmax(rgb)) == int(np.argmax(COLOURS[colour])) and float(rgb.abs().max()) > 0.4
    # One ball per frame: the mask covers about a disc of radius 2.5 (~20 of 256 latent pixels), not a haze.
    area = mask.sum(dim=(1, 2))  # (F,)
    ball_ok = bool(((area > 8) & (area < 40)).all())
    return {
        "moved_along": round(along, 2),
        "moved_across": round(across, 2),
        "mean_rgb": [round(float(v), 2) for v in rgb],
        "ball_area": [round(float(a), 1) for a in area],
        "direction_ok": bool(along > 3.0 and abs(across) < along / 2),
        "colour_ok": bool(colour_ok),
        "ball_ok": ball_ok,
    }


def run_demo(out: str | Path, cfg: DemoConfig | None = None, log=print) -> dict:
    """Train the tiny DiT on the synthetic clips, sample every prompt, write mp4s and ``summary.json``."""
    import torch

    from cofe_apps.io import write_mp4
    from cofe_dit import (
        DiT,
        DiTConfig,
        FlowMatching,
        SamplerConfig,
        first_frame_mask,
        per_token_timesteps,
        sample,
        save,
    )

    cfg = cfg or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model_cfg = DiTConfig.from_name("tiny-ti2v", dim=96, ffn_dim=256, num_heads=2, num_layers=3, text_len=cfg.text_len)
    model = DiT(model_cfg)
    texts = {p: embed_prompt(p, cfg.text_len, model_cfg.text_dim) for p in PROMPTS}
    empty = embed_prompt("", cfg.text_len, model_cfg.text_dim)
    flow = FlowMatching(shift=1.0, sampling="logit_normal")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.train_steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    grid = (cfg.frames, cfg.size // 2, cfg.size // 2)
    mask = first_frame_mask((cfg.batch, 4, cfg.frames, cfg.size, cfg.size))
    start, losses = time.perf_counter(), []
    log(f"training tiny DiT ({sum(p.numel() for p in model.parameters()):,} parameters) for {cfg.train_steps} steps")
    for step in range(cfg.train_steps):
        prompts = [PROMPTS[i] for i in rng.integers(0, len(PROMPTS), cfg.batch)]
        x0 = torch.stack([make_clip(p, cfg, rng) for p in prompts])  # (B, 4, F, S, S)
        ctx = torch.stack([empty if rng.random() < 0.1 else texts[p] for p in prompts])  # (B, T, text_dim)
        xt, t, target = flow.prepare(x0, flow.sample_sigmas(cfg.batch, gen), generator=gen)
        xt[:, :, :1] = x0[:, :, :1]  # the first latent frame is given clean ...
        t = per_token_timesteps(t, grid, given_frames=1)  # ... at timestep 0
        loss = flow.loss(model(xt, t, ctx), target, mask)  # ... and is not scored
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == cfg.train_steps - 1:
            log(f"  step {step:4d}  loss {np.mean(losses[-50:]):.4f}")
    train_s = time.perf_counter() - start
    model.eval()
    save(model, out / "checkpoint")
    sampler = SamplerConfig(steps=cfg.sample_steps, shift=3.0, solver="dpmpp_2m", text_scale=cfg.text_scale)
    results = {}
    for i, prompt in enumerate(PROMPTS):
        first = make_clip(prompt, cfg, rng)[None, :, :1]  # (1, 4, 1, S, S): the given frame, a fresh position
        latent = sample(
            model,
            (1, 4, cfg.frames, cfg.size, cfg.size),
            texts[prompt][None],
            negative_context=empty[None],
            first_frame=first,
            config=sampler,
            seed=cfg.seed + i,
        )[0]
        path = write_mp4(to_frames(latent), out / f"{prompt.replace(' ', '_')}.mp4", fps=8)
        results[prompt] = {"video": str(path), **check_motion(latent, prompt)}
        log(f"  {prompt!r}: {results[prompt]}")
    summary = {
        "train_seconds": round(train_s, 1),
        "loss_first_50": float(np.mean(losses[:50])),
        "loss_last_50": float(np.mean(losses[-50:])),
        "sampler": sampler.__dict__,
        "samples": results,
        "prompts_correct": sum(r["direction_ok"] and r["colour_ok"] and r["ball_ok"] for r in results.values()),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log(
        f"{summary['prompts_correct']}/{len(PROMPTS)} samples move and look as their prompt says; "
        f"videos and summary.json in {out}"
    )
    return summary


def build_parser():
    """The arguments of `cofe motion-demo`."""
    import argparse

    from cofe_apps.helptext import HelpFormatter

    parser = argparse.ArgumentParser(prog="cofe motion-demo", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", default="outputs/motion-demo", help="output folder (mp4s and summary.json)")
    parser.add_argument("--train-steps", type=int, default=DemoConfig.train_steps, help="training steps")
    parser.add_argument("--sample-steps", type=int, default=DemoConfig.sample_steps, help="sampler steps per video")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the model and the sampler")
    return parser


def main(argv: list[str]) -> int:
    """`cofe motion-demo [--out DIR] [--train-steps N] [--sample-steps N] [--seed S]`."""
    args = build_parser().parse_args(argv)
    summary = run_demo(
        args.out, DemoConfig(train_steps=args.train_steps, sample_steps=args.sample_steps, seed=args.seed)
    )
    return 0 if summary["prompts_correct"] > 0 else 1
