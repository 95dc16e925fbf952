"""Sampling at real size on a GPU: seconds per solver step and peak device memory of ``CoFEPipeline`` per memory mode.

For each real preset whose model fits the device: the real-size DiT + CoFE with random weights, held as
``load_model(dtype=bf16)`` holds them (the DiT in bf16 with its fp32 islands, CoFE in fp32), and random-weight
components at the preset's geometry (``cofe_apps.specs.rehearsal_components``: the VAE family's strides and
channels, a 1-layer umT5 giving 4096-d states, the experts at their real widths: a random ArcFace-shaped ONNX
recogniser (512-d), 2 blocks of CLIP ViT-H/14 (1280-d tokens), 1 block of DINOv2 ViT-L/14 (1024-d tokens), and for
I2V a 1-block 1280-d CLIP image tower): no weights are downloaded or read. One pipeline per mode, each built the way
``CoFEPipeline.from_pretrained`` builds it after loading (the model on the device for ``none`` / ``int8``, on the
CPU for ``model`` / ``blocks``; ``int8`` is ``quantize_dit`` of the block linears, offload none), each sampling one
clip at the preset's default height x width with the frames reduced (default 21: 6 latent frames, against Wan's 81 /
121) and 3 UniPC steps at the preset's guidance (the pipeline's passes: full, text-only and negative, 3 DiT passes a
step), so a mode runs well under a minute on an H100.

Reported per mode: build seconds, seconds per solver step (each; and the mean of the steps after the first, which
also pays for warm-up), the whole call's seconds (text, experts, solver, VAE decode, offload moves), DiT passes per
step, ``torch.cuda.memory_allocated`` when the call starts (what stays resident) and ``max_memory_allocated`` during
the call (its peak; the statistics are reset right before it).

``--cpu-smoke`` runs the same code on the CPU with the tiny TI2V preset and tiny components (seconds), so the logic
is known to run where no GPU is.

Usage (gpu_check.py section 5 calls it): python apps/benchmarks/gpu_sampling.py [--presets P,...] [--modes
none,model,blocks,int8] [--frames 21] [--steps 3] [--cpu-smoke]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30
# DiT preset -> its CoFE preset (apps/configs/<preset>-cofe.yaml).
PRESETS = {"wan2.1-t2v-1.3b": "wan2.1-t2v-1.3b", "wan2.2-ti2v-5b": "wan2.2-ti2v-5b", "wan2.1-i2v-14b": "wan2.1-14b"}
MODES = ("none", "model", "blocks", "int8")  # int8: weight-only int8 DiT blocks, offload none
ALL_MODES = (*MODES, "fp8")
# `--shrink`: depth and width only, as apps/tests/test_rehearsal.py shrinks a preset (every geometry stays real).
SHRUNK_DIT = {"dim": 128, "ffn_dim": 256, "num_heads": 1, "num_layers": 2}
SHRUNK_COFE = {"dim": 128, "num_tokens": 4, "resampler_dim": 64, "resampler_heads": 4, "resampler_depth": 1,
               "gate_hidden": 32}  # fmt: skip
SMOKE = {"dit": "tiny-ti2v", "dit_overrides": {"text_dim": 16}, "cofe": "tiny", "frames": 9, "size": (64, 64)}


def components(preset: str | None, tmp: Path):
    """Random components at ``preset``'s geometry (None: the tiny ones of the smoke test)."""
    from cofe_apps.specs import ComponentsSpec, ExpertsSpec, TextSpec, VAESpec, rehearsal_components
    from cofe_apps.synthetic import arcface_like_onnx

    if preset is None:
        return ComponentsSpec(VAESpec(tiny=True), TextSpec(tiny=True, dim=16), ExpertsSpec())
    return rehearsal_components(preset, identity=str(arcface_like_onnx(tmp / "arcface.onnx")))


def model_bytes(dit_cfg, cofe_cfg, dtype) -> dict[str, int]:
    """Bytes of the DiT (in ``dtype``, fp32 islands), of one DiT block, and of CoFE (fp32), counted on ``meta``."""
    import torch

    from cofe_apps.model import CoFEModel

    with torch.device("meta"):
        model = CoFEModel(dit_cfg, cofe_cfg)
    model.dit.to(dtype)

    def size(m):
        return sum(p.numel() * p.element_size() for p in m.parameters())

    return {"dit": size(model.dit), "block": size(model.dit.blocks[0]), "layers": dit_cfg.num_layers,
            "cofe": size(model.cofe)}  # fmt: skip


def fits(sizes: dict[str, int], mode: str, device_bytes: int) -> tuple[bool, str]:
    """Whether a mode's resident weights leave a fifth of the device for activations and the components."""
    if mode in ("none", "int8", "fp8"):
        need = sizes["dit"] + sizes["cofe"]  # int8 / fp8: the bf16 model is on the device before it is quantised
    elif mode == "model":
        need = max(sizes["dit"], sizes["cofe"])
    else:  # blocks: the DiT's top level plus the running and the prefetched block
        need = sizes["dit"] - max(0, sizes["layers"] - 2) * sizes["block"]
    return need <= 0.8 * device_bytes, f"{need / GIB:.1f} GiB of weights on a {device_bytes / GIB:.0f} GiB device"


def build_model(dit_cfg, cofe_cfg, dtype, home, fill_device):
    """The real-size network on ``home`` in the loader's dtypes (the DiT in ``dtype``), filled with seeded random
    values generated on ``fill_device`` (the GPU: seconds even at 14B): N(0, 0.02) for matrices and tables, ones for
    1-D weights (norm gains), zeros for biases; the zero-initialised head and face branches get N(0, 0.02) too, so
    every path computes."""
    import torch

    from cofe_apps.model import CoFEModel

    with torch.device("meta"):
        model = CoFEModel(dit_cfg, cofe_cfg)
    model.dit.to(dtype)  # its fp32 islands stay fp32; CoFE stays fp32 (as load_model(dtype=...) holds them)
    model.to_empty(device=home)
    gen = torch.Generator(fill_device).manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.ndim >= 2:
                value = torch.empty(t.shape, device=fill_device).normal_(0, 0.02, generator=gen)
                t.copy_(value)
                del value
            else:
                t.fill_(1.0 if name.endswith("weight") else 0.0)
    return model.eval().requires_grad_(False)


def run_mode(preset: str | None, mode: str, dit_cfg, cofe_cfg, spec, *, frames: int, steps: int, size) -> dict:
    """Build one pipeline in ``mode`` and sample one clip; the timings and memory of it."""
    import numpy as np
    import torch

    from cofe_apps.components import Encoders
    from cofe_apps.pipeline import CoFEPipeline, quantize_dit

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    offload = mode if mode in ("none", "model", "blocks") else "none"
    home = device if offload == "none" else torch.device("cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    # from_pretrained's default dtypes: bf16 on CUDA, fp32 on the CPU (the components: Encoders' own choice)
    model = build_model(dit_cfg, cofe_cfg, torch.bfloat16 if cuda else torch.float32, home, device)
    if mode in ("int8", "fp8"):
        quantize_dit(model.dit, mode, device)
    enc = Encoders(spec, home, torch.bfloat16 if cuda else torch.float32)  # what the pipeline would build
    pipe = CoFEPipeline(model, spec, device=device, offload=offload, encoders=enc)
    sync()
    build_s = time.perf_counter() - start
    build_peak = torch.cuda.max_memory_allocated() if cuda else None

    rng = np.random.default_rng(0)
    crops = (rng.integers(0, 255, (112, 112, 3), dtype=np.uint8), rng.integers(0, 255, (512, 512, 3), dtype=np.uint8))
    height, width = size or pipe.output_size(None, None, None)
    first = None
    if dit_cfg.model_type in ("i2v", "ti2v"):
        first = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    marks: list[float] = []
    calls = [0]

    def on_dit(_module, _args):
        if not marks:  # the first DiT pass of the solver: step 0 starts here
            sync()
            marks.append(time.perf_counter())
        calls[0] += 1

    def on_step(_video, _step, _total):
        sync()
        marks.append(time.perf_counter())

    hook = pipe.model.dit.register_forward_pre_hook(on_dit)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated() if cuda else None
    t0 = time.perf_counter()
    video = pipe(crops[1], "a woman turns her head and smiles", first, frames=frames, height=height, width=width,
                 steps=steps, seed=0, crops=crops, callback=on_step)  # fmt: skip
    sync()
    call_s = time.perf_counter() - t0
    hook.remove()
    per_step = [b - a for a, b in itertools.pairwise(marks)]
    result = {
        "preset": preset or SMOKE["dit"],
        "mode": mode,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "video": list(video.shape),
        "latent": list(enc.geometry.latent_shape(frames, height, width)),
        "tokens": dit_cfg.num_tokens(*enc.geometry.latent_shape(frames, height, width)[1:]),
        "steps_s": per_step,
        "warm_step_s": sum(per_step[1:]) / len(per_step[1:]) if len(per_step) > 1 else per_step[0],
        "passes_per_step": calls[0] / max(1, len(per_step)),
        "call_s": call_s,
        "build_s": build_s,
        "build_peak": build_peak,
        "resident": resident,
        "peak": torch.cuda.max_memory_allocated() if cuda else None,
        "finite": bool(np.isfinite(video.astype(np.float32)).all()),
    }
    del pipe, model, enc, video
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def worker(preset: str | None, modes: list[str], frames: int, steps: int, *, shrink: bool = False,
           size: tuple[int, int] | None = None) -> None:  # fmt: skip
    """One preset, every mode in turn (a fresh model each), one ``RESULT`` line per mode (or ``SKIP`` / ``ERROR``).

    ``shrink`` keeps the preset's geometry and components but shrinks the DiT and CoFE (a CPU check of a real
    preset's code path); ``size`` overrides the preset's ``(height, width)``."""
    import torch

    from cofe_apps.model import build_configs

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        spec = components(preset, Path(tmp))
        if preset is None:
            dit, cofe, overrides, cofe_overrides = SMOKE["dit"], SMOKE["cofe"], SMOKE["dit_overrides"], None
            size = size or SMOKE["size"]
        else:
            dit, cofe = preset, PRESETS[preset]
            overrides, cofe_overrides = (SHRUNK_DIT, SHRUNK_COFE) if shrink else (None, None)
        # The configs from the preset and the components' record (expert widths, geometry), as training writes them.
        from cofe_apps.components import Encoders

        record = Encoders(spec, "cpu").describe()
        dit_cfg, cofe_cfg = build_configs(dit, overrides, cofe, cofe_overrides, record)
        sizes = model_bytes(dit_cfg, cofe_cfg, torch.bfloat16 if cuda else torch.float32)
        total = torch.cuda.get_device_properties(0).total_memory if cuda else None
        for mode in modes:
            if cuda:
                ok, why = fits(sizes, mode, total)
                if not ok:
                    print("SKIP " + json.dumps({"preset": dit, "mode": mode, "why": why}), flush=True)
                    continue
            try:
                r = run_mode(preset, mode, dit_cfg, cofe_cfg, spec, frames=frames, steps=steps, size=size)
            except Exception as exc:  # one mode failing must not hide the others
                print("ERROR " + json.dumps({"preset": dit, "mode": mode, "error": f"{type(exc).__name__}: {exc}"}))
                continue
            r["weights_gib"] = (sizes["dit"] + sizes["cofe"]) / GIB
            print("RESULT " + json.dumps(r), flush=True)


def report(lines: list[str], frames: int, steps: int) -> bool:
    """Print the table of the worker's lines; True when no mode failed."""
    ok = True
    rows = []
    for line in lines:
        kind, _, payload = line.partition(" ")
        r = json.loads(payload)
        if kind == "SKIP":
            print(f"  {r['preset']} {r['mode']}: skipped ({r['why']})")
        elif kind == "ERROR":
            ok = False
            print(f"  {r['preset']} {r['mode']}: FAILED: {r['error']}")
        else:
            rows.append(r)
            ok &= r["finite"]
    if not rows:
        return ok
    r0 = rows[0]
    print(f"  {r0['device']}; {frames} frames -> latent {tuple(r0['latent'])}, {r0['tokens']} tokens, {steps} steps")
    print("  | preset | mode | weights GiB | build s | s / step (each) | warm s / step | passes / step | call s "
          "| resident GiB | peak GiB | peak / none |")  # fmt: skip
    print("  | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    none = {r["preset"]: r for r in rows if r["mode"] == "none"}

    def gib(v):
        return "n/a (CPU)" if v is None else f"{v / GIB:.2f}"

    for r in rows:
        base = none.get(r["preset"])
        ratio = f"{r['peak'] / base['peak']:.2f}" if base and r["peak"] and base["peak"] else "-"
        each = ", ".join(f"{s:.2f}" for s in r["steps_s"])
        print(f"  | {r['preset']} | {r['mode']} | {r['weights_gib']:.2f} | {r['build_s']:.1f} | {each} | "
              f"{r['warm_step_s']:.3f} | {r['passes_per_step']:.0f} | {r['call_s']:.1f} | {gib(r['resident'])} | "
              f"{gib(r['peak'])} | {ratio} |")  # fmt: skip
    return ok


def run(presets: list[str] | None, modes: list[str], frames: int, steps: int, timeout: int = 900) -> bool:
    """Each preset in its own process (None: the CPU smoke test); prints the table; True when all passed."""
    ok = True
    lines: list[str] = []
    for preset in presets or [None]:
        args = [sys.executable, __file__, "--worker", "--modes", ",".join(modes), "--frames", str(frames), "--steps",
                str(steps)] + (["--presets", preset] if preset else ["--cpu-smoke"])  # fmt: skip
        start = time.perf_counter()
        try:
            proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"  {preset or 'smoke'}: FAILED: no result in {timeout}s")
            ok = False
            continue
        got = [ln for ln in proc.stdout.splitlines() if ln.startswith(("RESULT ", "SKIP ", "ERROR "))]
        if proc.returncode or not got:
            ok = False
            print(f"  {preset or 'smoke'}: FAILED after {time.perf_counter() - start:.0f}s\n"
                  f"{(proc.stdout + proc.stderr)[-4000:]}")  # fmt: skip
        lines += got
    return report(lines, frames, steps) and ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default=",".join(PRESETS), help="real DiT presets to sample")
    p.add_argument("--modes", default=",".join(MODES), help=f"memory modes, of {', '.join(ALL_MODES)}")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default 21; smoke 9)")
    p.add_argument("--steps", type=int, default=3, help="solver steps")
    p.add_argument("--cpu-smoke", action="store_true", help="the tiny TI2V preset on the CPU (seconds)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shrink", action="store_true", help="worker: the preset's geometry, its DiT and CoFE shrunk")
    p.add_argument("--size", help="worker: HEIGHT,WIDTH instead of the preset's")
    a = p.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    unknown = [m for m in modes if m not in ALL_MODES]
    if unknown:
        p.error(f"unknown modes {unknown}; choose from {', '.join(ALL_MODES)}")
    presets = [s for s in a.presets.split(",") if s]
    if any(s not in PRESETS for s in presets):
        p.error(f"presets must be among {', '.join(PRESETS)}, got {presets}")
    frames = a.frames or (SMOKE["frames"] if a.cpu_smoke else 21)
    if a.worker:
        size = tuple(int(v) for v in a.size.split(",")) if a.size else None
        worker(None if a.cpu_smoke else presets[0], modes, frames, a.steps, shrink=a.shrink, size=size)
        return 0
    import torch

    if not a.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA device: nothing sampled at real size (--cpu-smoke runs the tiny preset on the CPU)")
        return 0
    return 0 if run(None if a.cpu_smoke else presets, modes, frames, a.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
