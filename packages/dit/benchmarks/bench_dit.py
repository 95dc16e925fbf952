"""Forward + backward throughput of cofe_dit's DiT against diffusers' WanTransformer3DModel, same config and weights,
measured in the same run. Prints tokens/s for both, the ratio (ours / diffusers) and peak memory.

On CUDA, peak memory is ``torch.cuda.max_memory_allocated``; on CPU (no allocator statistics) it is the bytes of
tensors saved for backward, the part of training memory an implementation controls.

    python packages/dit/benchmarks/bench_dit.py                      # CPU-sized default
    python packages/dit/benchmarks/bench_dit.py --device cuda --preset wan2.1-t2v-1.3b --layers 4 --frames 21 \
        --height 60 --width 104 --dtype bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from cofe_dit import DiT, DiTConfig
from cofe_dit.checkpoint import to_wan_layout

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))  # helpers shared by benchmarks
from provenance import git_revision


def build_pair(cfg: DiTConfig, device: torch.device, seed: int = 0):
    """diffusers reference with random weights, and our model loaded with exactly those weights."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    ref = WanTransformer3DModel(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim,
        out_channels=cfg.out_dim,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=cfg.cross_attn_norm,
        eps=cfg.eps,
    )
    with torch.no_grad():
        for p in ref.parameters():  # diffusers' init leaves some tables at zero/one: make every weight matter
            p.add_(0.02 * torch.randn_like(p))
    ours = DiT(cfg)
    ours.load_state_dict(to_wan_layout(ref.state_dict()), strict=True)
    return ref.to(device).train(), ours.to(device).train()


def saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.float().square().mean().backward()
    return total


def time_interleaved(fns: dict, device: torch.device, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of one forward + backward per implementation, alternating them step by step so that any
    background load on the machine falls on both alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn().float().square().mean().backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset", default=None, help="take the block architecture from a preset (e.g. wan2.1-t2v-1.3b)"
    )
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4, help="blocks (also overrides the preset's)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=5, help="latent frames")
    parser.add_argument("--height", type=int, default=32, help="latent height")
    parser.add_argument("--width", type=int, default=32, help="latent width")
    parser.add_argument("--text-len", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast, fp32 weights")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    if args.preset:
        cfg = DiTConfig.from_name(args.preset, num_layers=args.layers)
    else:
        cfg = DiTConfig(
            name="bench",
            dim=args.dim,
            num_heads=args.heads,
            ffn_dim=args.ffn,
            num_layers=args.layers,
            text_dim=args.dim,
        )
    device = torch.device(args.device)
    ref, ours = build_pair(cfg, device)
    ours.check_inputs = False  # the reference validates nothing; time the same work
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, cfg.in_dim, args.frames, args.height, args.width, generator=g).to(device)
    t = torch.rand(args.batch, generator=g).mul(1000).to(device)
    ctx = torch.randn(args.batch, args.text_len, cfg.text_dim, generator=g).to(device)
    tokens = args.batch * cfg.num_tokens(args.frames, args.height, args.width)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def run_ref():
        with amp:
            return ref(x, t, ctx, return_dict=False)[0]

    def run_ours():
        with amp:
            return ours(x, t, ctx)

    with torch.no_grad():
        diff = (run_ours().float() - run_ref().float()).abs().max().item()
    peaks = {}
    for name, fn, model in (("diffusers", run_ref, ref), ("cofe_dit", run_ours, ours)):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            fn().float().square().mean().backward()
            peaks[name] = torch.cuda.max_memory_allocated()
        else:
            peaks[name] = saved_bytes(fn)
        model.zero_grad(set_to_none=True)
    seconds = time_interleaved({"diffusers": run_ref, "cofe_dit": run_ours}, device, args.repeats, args.warmup)
    results = {name: (seconds[name], peaks[name]) for name in seconds}

    mem_kind = "peak allocated" if device.type == "cuda" else "saved for backward"
    print(
        f"git {git_revision()} | device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'})"
        f" | torch {torch.__version__} | threads {torch.get_num_threads()}"
    )
    print(
        f"config dim={cfg.dim} heads={cfg.num_heads} ffn={cfg.ffn_dim} layers={cfg.num_layers} | latent "
        f"({args.batch}, {cfg.in_dim}, {args.frames}, {args.height}, {args.width}) = {tokens} tokens | "
        f"text {args.text_len} | dtype {args.dtype} | max |ours - diffusers| = {diff:.2e}"
    )
    for name, (seconds, peak) in results.items():
        print(
            f"{name:>10}: fwd+bwd {seconds * 1e3:8.1f} ms  {tokens / seconds:10.0f} tokens/s  "
            f"{mem_kind} {peak / 2**20:8.1f} MiB"
        )
    ratio = results["diffusers"][0] / results["cofe_dit"][0]
    mem_ratio = results["cofe_dit"][1] / results["diffusers"][1]
    print(
        f"ratio (cofe_dit tokens/s / diffusers tokens/s) = {ratio:.3f}   memory ratio (ours / diffusers) = "
        f"{mem_ratio:.3f}"
    )


if __name__ == "__main__":
    main()
