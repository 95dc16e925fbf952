"""Sampling step time of cofe_dit against diffusers' WanPipeline (same config, same weights, same UniPC schedule and
guidance), measured in the same run; then the step cache's speed-up and drift, and batched guidance.

(a) Denoising-loop step time: ``sample`` vs ``WanPipeline(prompt_embeds=..., output_type="latent")``, text encoding
    and VAE excluded (prompt states given, latents returned). Each step is two model evaluations (text guidance) and
    one UniPC step; a step's time is the interval between consecutive step callbacks (``callback`` /
    ``callback_on_step_end``), so pipeline set-up is excluded; median over steps and repeats, the two alternating run
    by run. Also timed: ours with the 0.2 forward (finiteness checks and a q/k/v weight concatenation every call).
(b) ``SamplerConfig.cache_threshold`` (First Block Cache): loop time, speed-up, passes cached / computed, and the
    drift of the final latent from the uncached one as PSNR over the uncached latent's range.
(c) ``SamplerConfig.batch_guidance``: step time of three guidance passes (text 5, face 2) batched vs one by one.

    python packages/dit/benchmarks/bench_sampling.py                 # CPU default, under 2 minutes on 2 cores
    python packages/dit/benchmarks/bench_sampling.py --device cuda --dim 1536 --heads 12 --ffn 8960 --layers 4 \
        --frames 21 --height 60 --width 104 --text-len 512 --dtype bf16
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from cofe_dit import DiT, DiTConfig, SamplerConfig, StepCache, sample

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))  # helpers shared by benchmarks
# bench_dit.py (beside this script, on sys.path when it runs) builds the diffusers transformer and our DiT with the
# same random weights; both come back in training mode.
from bench_dit import build_pair
from provenance import git_revision


def scheduler(shift: float):
    """diffusers' flow UniPC as Wan uses it (our `solver="unipc"`, `schedule="diffusers"` is step-for-step equal)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
        solver_order=2, solver_type="bh2", lower_order_final=True,
    )  # fmt: skip


class StepClock:
    """Records the wall time at every step callback; ``steps()`` are the intervals between consecutive ones."""

    def __init__(self, device: torch.device):
        self.device, self.stamps = device, []

    def __call__(self, *args):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return args[-1] if args and isinstance(args[-1], dict) else None  # diffusers' callback returns its kwargs

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR of ``x`` against ``ref`` over ``ref``'s range, in dB."""
    mse = (x.double() - ref.double()).square().mean().item()
    span = (ref.max() - ref.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(span**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--frames", type=int, default=3, help="latent frames")
    parser.add_argument("--height", type=int, default=16, help="latent height")
    parser.add_argument("--width", type=int, default=16, help="latent width")
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--face-tokens", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="sampling runs per implementation in (a)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.25, 0.4])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast, fp32 weights")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()

    from diffusers import WanPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    cfg = DiTConfig(
        name="bench", dim=args.dim, num_heads=args.heads, ffn_dim=args.ffn, num_layers=args.layers,
        text_dim=args.dim, freq_dim=args.dim,
    )  # fmt: skip
    ref, ours = (m.eval() for m in build_pair(cfg, device))
    shift, text_scale = 5.0, 5.0
    g = torch.Generator().manual_seed(0)
    shape = (1, cfg.out_dim, args.frames, args.height, args.width)
    noise = torch.randn(shape, generator=g)
    ctx = torch.randn(1, args.text_len, cfg.text_dim, generator=g).to(device)
    neg = torch.randn(1, args.text_len, cfg.text_dim, generator=g).to(device)
    tokens = cfg.num_tokens(*shape[2:])
    vae_t, vae_s = cfg.vae_stride[0], cfg.vae_stride[1]

    print(
        f"git {git_revision('packages/dit')} | device {device} "
        f"({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}) | torch {torch.__version__} | "
        f"threads {torch.get_num_threads()} | dtype {args.dtype}"
    )
    print(
        f"config dim={cfg.dim} heads={cfg.num_heads} ffn={cfg.ffn_dim} layers={cfg.num_layers} | latent {shape} = "
        f"{tokens} tokens | text {args.text_len} | {args.steps} UniPC steps, shift {shift}, text scale {text_scale}"
    )

    # ---------------------------------------------------------------------------------------- (a) vs diffusers
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler(shift), transformer=ref)
    pipe.set_progress_bar_config(disable=True)
    config = SamplerConfig(steps=args.steps, shift=shift, text_scale=text_scale, schedule="diffusers")

    def run_diffusers() -> tuple[torch.Tensor, list[float]]:
        clock = StepClock(device)
        with amp():
            out = pipe(
                prompt_embeds=ctx, negative_prompt_embeds=neg, height=args.height * vae_s, width=args.width * vae_s,
                num_frames=(args.frames - 1) * vae_t + 1, num_inference_steps=args.steps, guidance_scale=text_scale,
                latents=noise.to(device), output_type="latent", return_dict=False, callback_on_step_end=clock,
            )[0]  # fmt: skip
        return out, clock.steps()

    def run_ours(model: DiT) -> tuple[torch.Tensor, list[float]]:
        clock = StepClock(device)
        with amp():
            out = sample(model, shape, ctx, negative_context=neg, noise=noise, config=config, callback=clock)
        return out, clock.steps()

    # The 0.2 forward, for comparison: a finiteness check (host sync) per input, the q/k/v concatenation per call.
    # Training mode concatenates the q/k/v weights on every call, as 0.2 did in every mode (no dropout: the same
    # function); sampling runs under no_grad either way.
    legacy = DiT(cfg).to(device).train()
    legacy.load_state_dict(ours.state_dict())
    legacy.debug_checks = True
    runs = {"diffusers": run_diffusers, "cofe_dit": lambda: run_ours(ours), "cofe_dit 0.2": lambda: run_ours(legacy)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    latents = {}
    with torch.no_grad():
        for name, fn in runs.items():  # warm-up
            latents[name] = fn()[0]
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name] += fn()[1]
    rel = (latents["cofe_dit"].float() - latents["diffusers"].float()).abs().max() / latents["diffusers"].abs().max()
    print(f"\n(a) denoising step ({2} model evaluations + UniPC), median of {len(times['cofe_dit'])} steps:")
    for name, ts in times.items():
        print(f"  {name:>13}: {median(ts) * 1e3:8.2f} ms/step")
    print(f"  max |ours - diffusers| / max |diffusers| on the final latent = {rel.item():.2e}")
    print(f"  ratio diffusers_time / cofe_dit_time = {median(times['diffusers']) / median(times['cofe_dit']):.3f}")
    print(
        f"  ratio cofe_dit_0.2_time / cofe_dit_time = {median(times['cofe_dit 0.2']) / median(times['cofe_dit']):.3f}"
    )

    # ---------------------------------------------------------------------------------------- (b) step cache
    fcfg = DiTConfig(**{**cfg.__dict__, "face_dim": cfg.dim})
    face_model = DiT(fcfg).to(device).eval()
    missing, _ = face_model.load_state_dict(ours.state_dict(), strict=False)
    assert all(".cross_attn.face." in k for k in missing)
    with torch.no_grad():
        for p in face_model.face_parameters():
            p.copy_(0.02 * torch.randn(p.shape, generator=g))
    faces = [torch.randn(1, args.face_tokens, cfg.dim, generator=g).to(device) for _ in range(cfg.num_layers)]
    zeros = [torch.zeros_like(f) for f in faces]
    guided = dict(negative_context=neg, face_tokens=faces, negative_face_tokens=zeros, noise=noise)
    base = dict(steps=args.steps, shift=shift, text_scale=text_scale, face_scale=2.0)

    def timed(threshold: float) -> tuple[torch.Tensor, float, StepCache | None]:
        cache = StepCache(threshold) if threshold else None
        clock = StepClock(device)
        clock()
        with torch.no_grad(), amp():
            config = SamplerConfig(**base, cache_threshold=threshold)
            out = sample(face_model, shape, ctx, config=config, callback=clock, step_cache=cache, **guided)
        return out, clock.stamps[-1] - clock.stamps[0], cache

    # Uncached first, then each threshold, round-robin (the first round warms up): medians of the loop time.
    loops: dict[float, list[float]] = {th: [] for th in (0.0, *args.thresholds)}
    results: dict[float, tuple[torch.Tensor, StepCache | None]] = {}
    for i in range(args.repeats + 1):
        for th in loops:
            out, seconds, cache = timed(th)
            results[th] = (out, cache)
            if i:
                loops[th].append(seconds)
    ref_latent, ref_time = results[0.0][0], median(loops[0.0])
    print(
        f"\n(b) step cache, {args.steps} steps x 3 passes (text 5, face 2), median of {args.repeats} loops; uncached "
        f"{ref_time * 1e3:.1f} ms:"
    )
    for threshold in args.thresholds:
        (out, cache), seconds = results[threshold], median(loops[threshold])
        changes = sorted(c for *_, c in cache.changes)
        print(
            f"  threshold {threshold:<5}: loop {seconds * 1e3:8.1f} ms  speed-up {ref_time / seconds:5.2f}x  "
            f"passes cached {cache.cached:3d} / computed {cache.computed:3d}  "
            f"latent PSNR {psnr(out, ref_latent):6.1f} dB  (median first-block change {median(changes):.3f})"
        )

    # ---------------------------------------------------------------------------------------- (c) batched guidance
    step_times: dict[bool, list[float]] = {False: [], True: []}
    outs = {}
    with torch.no_grad(), amp():
        for i in range(args.repeats + 1):
            for batched in (False, True):
                clock = StepClock(device)
                outs[batched] = sample(
                    face_model,
                    shape,
                    ctx,
                    callback=clock,
                    config=SamplerConfig(**base, batch_guidance=batched),
                    **guided,
                )
                if i:  # the first round warms up
                    step_times[batched] += clock.steps()
    drift = ((outs[True] - outs[False]).abs().max() / outs[False].abs().max()).item()
    t_sep, t_bat = median(step_times[False]), median(step_times[True])
    print(
        f"\n(c) batched guidance, 3 passes per step: separate {t_sep * 1e3:.2f} ms/step, "
        f"batched {t_bat * 1e3:.2f} ms/step"
    )
    print(
        f"  ratio separate_time / batched_time = {t_sep / t_bat:.3f}   max relative difference of the latent "
        f"{drift:.1e}"
    )


if __name__ == "__main__":
    main()
