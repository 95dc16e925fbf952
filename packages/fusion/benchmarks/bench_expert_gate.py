"""Benchmark ``expert_gate``: Triton (where a GPU exists), ``torch.compile``'d reference and eager reference.

Shapes come from the cofe_dit presets' widths (Wan2.1 1.3B: 1536, Wan2.2 5B: 3072, Wan 14B: 5120) with E=3 experts:

- ``block`` mode: per-sample gates ``(B, E)`` over fused tokens ``(B, M, E, D)`` (CoFE's default, M=16);
- ``token`` mode: per-token gates ``(B, L, E)`` over ``(B, L, E, D)`` with L=32760, the tokens of a 480p 81-frame
  Wan latent (21 x 30 x 52 after the (1, 2, 2) patch), i.e. the memory-bound worst case.

Each line: case, pass (fwd or fwd+bwd), dtype, device, git revision, then per backend the median time in ms and
the achieved bandwidth (ideal bytes read + written / time), the fraction of the device's peak bandwidth where
known, and the speedup over eager measured in the same run. ``--cpu`` (automatic without CUDA) uses fewer tokens
and skips Triton (its CPU interpreter is for correctness, not speed).

Usage:
    python packages/fusion/benchmarks/bench_expert_gate.py [--cpu] [--dtype bf16] [--no-compile] [--tokens N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cofe_fusion import expert_gate

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))  # helpers shared by benchmarks
from provenance import git_revision

DIMS = {"wan2.1-t2v-1.3b": 1536, "wan2.2-ti2v-5b": 3072, "wan2.1-14b": 5120}
WAN_480P_81F_TOKENS = 21 * 30 * 52  # latent frames (81-1)/4+1, 480/8/2, 832/8/2
# Peak HBM bandwidth in GB/s by device-name substring (vendor datasheets), most specific first.
PEAK_GBPS = {"H200": 4800, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039, "A100": 1555, "L40S": 864,
             "L4": 300, "RTX 4090": 1008}  # fmt: skip
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def peak_gbps(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_GBPS.items() if k in name), None)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    """Median wall time of ``fn`` in ms (CUDA: synchronised around each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def ideal_bytes(logits: torch.Tensor, experts: torch.Tensor, backward: bool) -> int:
    """Minimal traffic: fwd reads logits + experts and writes out; bwd also reads grad_out + experts + logits
    and writes both gradients."""
    n_out = experts.numel() // experts.shape[-2]
    xb, lb = experts.element_size(), logits.element_size()
    fwd = logits.numel() * lb + experts.numel() * xb + n_out * xb
    bwd = (n_out + 2 * experts.numel()) * xb + 2 * logits.numel() * lb
    return fwd + (bwd if backward else 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="run on CPU with small shapes (default when CUDA is absent)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--tokens", type=int, default=None, help=f"L of token mode (default {WAN_480P_81F_TOKENS}, CPU 512)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd reference (slow cold start)")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable timings on a shared machine)")
    args = p.parse_args()

    cpu = args.cpu or not torch.cuda.is_available()
    device = torch.device("cpu" if cpu else "cuda")
    dtype = DTYPES[args.dtype or ("fp32" if cpu else "bf16")]
    tokens = args.tokens or (512 if cpu else WAN_480P_81F_TOKENS)
    reps = args.reps or (20 if cpu else 50)
    warmup = 3 if cpu else 10
    if cpu:
        torch.set_num_threads(args.threads)
    peak = peak_gbps(device)
    rev = git_revision("packages/fusion")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    backends = ["reference"] + ([] if args.no_compile else ["compiled"]) + ([] if cpu else ["triton"])
    cases = []
    for preset, d in DIMS.items():
        for b in (1, 2):
            cases.append((f"block B={b} M=16 E=3 D={d} ({preset})", (b, 3), (b, 16, 3, d)))
        cases.append((f"token B=1 L={tokens} E=3 D={d} ({preset})", (1, tokens, 3), (1, tokens, 3, d)))

    print(f"# expert_gate benchmark | device {dev_name} | dtype {dtype} | git {rev} | torch {torch.__version__} "
          f"| median of {reps} | peak {peak or 'unknown'} GB/s")  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    for name, lshape, xshape in cases:
        # Fresh dynamo caches per case: every case gets its own compiled graphs instead of hitting the recompile limit.
        torch._dynamo.reset()
        logits = torch.randn(lshape, generator=gen).to(device, dtype)
        experts = torch.randn(xshape, generator=gen).to(device, dtype)
        grad_out = torch.randn(*xshape[:-2], xshape[-1], generator=gen).to(device, dtype)
        for backward in (False, True):
            lg = logits.detach().requires_grad_(backward)
            x = experts.detach().requires_grad_(backward)
            nbytes = ideal_bytes(logits, experts, backward)
            results = {}
            for backend in backends:

                def run(backend=backend, lg=lg, x=x, backward=backward, grad_out=grad_out):
                    out = expert_gate(lg, x, backend=backend, check_finite=False)
                    if backward:
                        torch.autograd.grad(out, (lg, x), grad_out)

                results[backend] = time_ms(run, device, warmup, reps)
            parts = []
            for backend, ms in results.items():
                gbps = nbytes / (ms * 1e-3) / 1e9
                part = f"{backend} {ms:.3f} ms {gbps:.1f} GB/s"
                if peak:
                    part += f" ({100 * gbps / peak:.0f}% peak)"
                if backend != "reference":
                    part += f" x{results['reference'] / ms:.2f} vs eager"
                parts.append(part)
            pass_name = "fwd+bwd" if backward else "fwd"
            print(f"{name} | {pass_name} | {str(dtype).removeprefix('torch.')} | {device.type} | {rev} | "
                  + " | ".join(parts), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
