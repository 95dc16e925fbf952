"""`make gpu-check`: what only a GPU can show, in one short run; on a CPU-only machine it says what it skipped.

1. The Triton kernel tests of ``cofe_fusion`` compiled for CUDA (``pytest -m gpu``).
2. The expert-gate benchmark at the shapes CoFE produces (B x 16 fused tokens x 3 experts x D for each preset's D,
   and the token mode) in bf16: Triton vs compiled vs eager, with the achieved fraction of peak bandwidth.
3. DiT parity with diffusers' ``WanTransformer3DModel`` on CUDA in bf16 (2 blocks at Wan2.1-T2V-1.3B width, random
   weights, a 480p-like latent): the bf16 error of each against the fp32 model, and between them.
4. One FSDP2 training run of a 2-block slice of each real preset (``cofe_apps.train.FSDP2Strategy``, every local
   GPU, bf16 autocast, activation checkpointing, CoFE's freezing policy) on a real-geometry batch: tokens/s, step
   time, peak memory per GPU and MFU (model FLOPs utilisation: ``6 N T`` for the linears plus ``12 L T^2 D`` for
   attention, per step, over the GPUs' peak bf16 FLOP/s).
5. Sampling with ``CoFEPipeline`` at each real preset's size that fits the device (random weights, random
   components at the preset's geometry: ``gpu_sampling.py``), one pipeline per memory mode (offload none, model,
   blocks; int8 weights): seconds per solver step and ``torch.cuda.max_memory_allocated``, on a short clip (21
   frames by default, not Wan's 81 / 121, so each mode runs well under a minute on an H100) at the preset's default
   height x width, 3 steps. On a CPU the same code runs the tiny TI2V preset as a smoke test.

Each section runs in its own process (a failure is reported and the next section runs). Prints the git revision,
devices and versions first. Exit status: 0 when every section that could run passed.

Usage: python apps/benchmarks/gpu_check.py [--sections 1,2,3,4,5] [--steps 6] [--sampling-frames 21]
       [--sampling-steps 3] [--sampling-presets P,...] [--sampling-modes none,model,blocks,int8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Dense bf16 peak FLOP/s by device-name substring (vendor datasheets), most specific first.
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "RTX 4090": 165e12}  # fmt: skip
# 2-block slices of the real presets at a latent of real geometry (480p-like, 21 latent frames).
SLICES = {
    "wan2.1-t2v-1.3b": {"cofe": "wan2.1-t2v-1.3b", "latent": (16, 21, 60, 104)},
    "wan2.2-ti2v-5b": {"cofe": "wan2.2-ti2v-5b", "latent": (48, 21, 44, 80)},
    "wan2.1-i2v-14b": {"cofe": "wan2.1-14b", "latent": (16, 21, 60, 104)},
}


def _run(args: list[str], timeout: int) -> tuple[int, str]:
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, (proc.stdout + proc.stderr)[-6000:]


def header() -> None:
    import torch

    from cofe_apps.io import git_revision

    print(f"gpu-check | git {git_revision()} | torch {torch.__version__} | cuda {torch.version.cuda}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"  cuda:{i} {p.name} {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
    else:
        print("  no CUDA device: the GPU sections are skipped (each says so); the CPU-able parts still run")


def section_triton(cuda: bool) -> bool:
    print("\n[1] Triton kernel tests on CUDA (packages/fusion, -m gpu)")
    if not cuda:
        print("  skipped: no CUDA device (the interpreter runs of the same kernels are in `make test`)")
        return True
    code, out = _run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "packages/fusion/tests", "-p",
                      "no:cacheprovider"], 900)  # fmt: skip
    print("  " + out.strip().splitlines()[-1] if out.strip() else "  (no output)")
    if code:
        print(out)
    return code == 0


def section_gate(cuda: bool) -> bool:
    print("\n[2] expert-gate benchmark at CoFE's shapes (bf16)")
    if not cuda:
        print("  skipped: no CUDA device (`python packages/fusion/benchmarks/bench_expert_gate.py --cpu` runs on CPU)")
        return True
    code, out = _run([sys.executable, "packages/fusion/benchmarks/bench_expert_gate.py", "--dtype", "bf16"], 900)
    print("\n".join("  " + line for line in out.strip().splitlines()))
    return code == 0


def section_parity(cuda: bool) -> bool:
    print("\n[3] DiT vs diffusers WanTransformer3DModel on CUDA, bf16 (2 blocks at 1.3B width)")
    if not cuda:
        print("  no CUDA device: the same comparison on the CPU at a small latent, as a smoke test")
    code, out = _run([sys.executable, __file__, "--parity-worker"], 900)
    print("\n".join("  " + line for line in out.strip().splitlines()[-6:]))
    return code == 0


def parity_worker() -> None:
    import tempfile

    import torch
    from diffusers import WanTransformer3DModel

    from cofe_dit import DiT, DiTConfig, load_into

    torch.manual_seed(0)
    ref = WanTransformer3DModel(num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=2)  # fmt: skip
    for p in ref.parameters():  # non-zero everywhere (the head starts at zero in both)
        torch.nn.init.normal_(p, std=0.02)
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = DiT(DiTConfig.from_name("wan2.1-t2v-1.3b", num_layers=2))
        load_into(ours, tmp)
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    grid = (21, 30, 52) if cuda else (3, 8, 8)  # 21 x 15 x 26 = 8190 tokens (CPU smoke: 48)
    x = torch.randn(1, 16, *grid, device=dev)
    t = torch.tensor([500.0], device=dev)
    ctx = torch.randn(1, 512 if cuda else 16, 4096, device=dev)
    with torch.no_grad():
        ours32, ref32 = ours.to(dev).float(), ref.to(dev).float()
        truth = ours32(x, t, ctx)
        diff32 = (ref32(x, t, ctx, return_dict=False)[0] - truth).abs().max().item()
        o16 = ours.to(torch.bfloat16)(x.bfloat16(), t, ctx.bfloat16()).float()
        r16 = ref.to(torch.bfloat16)(x.bfloat16(), t, ctx.bfloat16(), return_dict=False)[0].float()
    scale = truth.abs().max().item()
    print(f"{dev.type}, {ours.cfg.num_tokens(*grid)} tokens")
    print(f"fp32 ours vs diffusers: max abs {diff32:.2e} (output max {scale:.2f})")
    print(f"bf16 ours vs fp32: max abs {(o16 - truth).abs().max().item():.3e}, "
          f"rel RMS {((o16 - truth).pow(2).mean().sqrt() / truth.pow(2).mean().sqrt()).item():.3e}")  # fmt: skip
    print(f"bf16 diffusers vs fp32: max abs {(r16 - truth).abs().max().item():.3e}, "
          f"rel RMS {((r16 - truth).pow(2).mean().sqrt() / truth.pow(2).mean().sqrt()).item():.3e}")  # fmt: skip
    assert diff32 < 1e-3 * max(scale, 1), "fp32 parity lost on CUDA"


def section_fsdp(cuda: bool, steps: int) -> bool:
    import torch

    print("\n[4] FSDP2 training step of a 2-block slice of each real preset")
    ok = True
    if not cuda:
        print("  no CUDA device: running the same code on 2 CPU processes (gloo) at a small latent, as a smoke test")
    gpus = torch.cuda.device_count() if cuda else 2
    for preset in SLICES:
        start = time.perf_counter()
        code, out = _run([sys.executable, __file__, "--fsdp-worker", preset, "--steps", str(steps),
                          "--devices", str(gpus)], 1800)  # fmt: skip
        result = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if code or not result:
            ok = False
            print(f"  {preset}: FAILED after {time.perf_counter() - start:.0f}s\n{out}")
            continue
        r = json.loads(result[-1][len("RESULT ") :])
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a (CPU)"
        print(f"  {preset}: {r['world']} x {r['device']}, {r['tokens']} tokens/sample, {r['params'] / 1e9:.2f}B "
              f"params ({r['trainable'] / 1e9:.2f}B trained), step {r['step_s']:.3f}s, {r['tokens_per_s']:.0f} "
              f"tokens/s, peak {r['peak_gib']:.1f} GiB/GPU, MFU {mfu}")  # fmt: skip
    return ok


def fsdp_worker(preset: str, steps: int, devices: int) -> None:
    """Runs under Lightning's launcher (it re-executes this command for the other ranks)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    from cofe_apps.module import CoFEModule
    from cofe_apps.specs import EXPERT_KEYS
    from cofe_apps.train import FSDP2Strategy
    from cofe_dit import DiTConfig
    from cofe_fusion import CoFEConfig

    cuda = torch.cuda.is_available()
    spec = SLICES[preset]
    latent = spec["latent"] if cuda else (spec["latent"][0], 3, 8, 8)
    overrides = {"num_layers": 2}
    if not cuda:  # the smoke test keeps every width but shrinks the tokens
        overrides.update(text_len=16)
    cfg = DiTConfig.from_name(preset, **overrides)
    widths = CoFEConfig.from_name(spec["cofe"]).experts
    text_len = 512 if cuda else 16

    class Synthetic(IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            while True:
                batch = {"keys": ["x"], "latent": torch.randn(1, *latent, generator=g),
                         "txt": torch.randn(1, text_len, cfg.text_dim, generator=g)}  # fmt: skip
                for e in widths:
                    key = EXPERT_KEYS[e.name]
                    shape = (1, e.width) if e.name == "identity" else (1, 257, e.width)
                    batch[key] = torch.randn(*shape, generator=g)
                if cfg.model_type == "i2v":
                    batch["clip"] = torch.randn(1, 257, cfg.image_dim, generator=g)
                    batch["cond"] = torch.randn(1, *latent, generator=g)
                yield batch

    class Timer(L.Callback):
        def __init__(self):
            self.times = []

        def on_train_batch_start(self, *args):
            if cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *args):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)

    module = CoFEModule(dit=preset, dit_overrides=overrides, cofe=spec["cofe"], freeze="cofe", frozen_dtype="bfloat16",
                        gradient_checkpointing=True, ema_decay=0.999, warmup_steps=1,
                        cofe_overrides={"experts": [(e.name, e.width, e.projector) for e in widths]})  # fmt: skip
    timer = Timer()
    # bf16 autocast on the CPU smoke test too: the frozen base is stored in bf16 beside fp32 trained layers, which only
    # autocast reconciles (under "32-true" the first cross-attention fails: mat1 BFloat16, mat2 Float).
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=devices, strategy=FSDP2Strategy(),
                        precision="bf16-mixed", max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], gradient_clip_val=1.0)  # fmt: skip
    trainer.fit(module, DataLoader(Synthetic(), batch_size=None))
    if trainer.global_rank != 0:
        return
    step = sorted(timer.times[1:])[len(timer.times[1:]) // 2] if len(timer.times) > 1 else timer.times[0]
    world = trainer.world_size
    tokens = cfg.num_tokens(*latent[1:])
    n = sum(p.numel() for p in module.dit.parameters()) + sum(p.numel() for p in module.cofe.parameters())
    trainable = sum(p.numel() for p in module.trainable().values())
    flops = (6 * n * tokens + 12 * cfg.num_layers * tokens**2 * cfg.dim) * world  # per step, all ranks
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None) if cuda else None
    result = {
        "world": world, "device": name, "tokens": tokens, "params": n, "trainable": trainable, "step_s": step,
        "tokens_per_s": tokens * world / step, "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        "mfu": flops / step / (peak * world) if peak else None,
    }  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)


def section_sampling(cuda: bool, presets: list[str], modes: list[str], frames: int, steps: int) -> bool:
    import gpu_sampling

    print(f"\n[5] CoFEPipeline sampling at real size per memory mode ({', '.join(modes)})")
    if not cuda:
        print("  no CUDA device: the real presets are skipped; the same code on the CPU with the tiny TI2V preset "
              "(9 frames, 64 x 64), as a smoke test")  # fmt: skip
        return gpu_sampling.run(None, modes, gpu_sampling.SMOKE["frames"], steps)
    print(f"  random weights and components; {frames} frames at each preset's default height x width (Wan samples "
          f"81 or 121: fewer, so each mode runs in well under a minute), {steps} UniPC steps")  # fmt: skip
    return gpu_sampling.run(presets, modes, frames, steps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default="1,2,3,4,5", help="which sections to run")
    p.add_argument("--steps", type=int, default=6, help="training steps per FSDP run (the first is not timed)")
    p.add_argument("--sampling-frames", type=int, default=21, help="frames of each clip of section 5")
    p.add_argument("--sampling-steps", type=int, default=3, help="solver steps of each clip of section 5")
    p.add_argument("--sampling-presets", default=",".join(SLICES), help="real presets section 5 samples")
    p.add_argument("--sampling-modes", default="none,model,blocks,int8", help="memory modes section 5 runs")
    p.add_argument("--parity-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fsdp-worker", help=argparse.SUPPRESS)
    p.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    if a.parity_worker:
        parity_worker()
        return 0
    if a.fsdp_worker:
        fsdp_worker(a.fsdp_worker, a.steps, a.devices)
        return 0
    import torch

    header()
    cuda = torch.cuda.is_available()
    wanted = {int(s) for s in a.sections.split(",")}
    results = {}
    for number, fn in ((1, section_triton), (2, section_gate), (3, section_parity)):
        if number in wanted:
            results[number] = fn(cuda)
    if 4 in wanted:
        results[4] = section_fsdp(cuda, a.steps)
    if 5 in wanted:
        results[5] = section_sampling(cuda, a.sampling_presets.split(","), a.sampling_modes.split(","),
                                      a.sampling_frames, a.sampling_steps)  # fmt: skip
    failed = [n for n, ok in results.items() if not ok]
    print(f"\ngpu-check: {'sections ' + ', '.join(map(str, failed)) + ' FAILED' if failed else 'all passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
