"""Loading a real-size checkpoint: cofe_dit.from_pretrained against diffusers' WanTransformer3DModel.from_pretrained,
measured in the same run, each in a fresh subprocess. Prints wall time and peak RSS of each, and the ratios.

The checkpoint is a Wan2.1-T2V-1.3B diffusers export (``transformer/`` layout: config.json + one safetensors file)
with random bf16 weights, built once and cached under ~/.cache/cofe/bench_load (2.8 GB). Both loaders are asked
for bf16; both keep their fp32 modules fp32 (ours: time embedding/projection, AdaLN tables, norms; diffusers:
``_keep_in_fp32_modules``). Peak RSS is the child's own high-water mark (``VmHWM`` in /proc/self/status), which
includes the interpreter and the imports (reported separately as the baseline); ``getrusage().ru_maxrss`` is not
used because Linux carries it across ``exec`` from the forking parent. Memory-mapped weights count in RSS only once
read, so each child also reads every parameter once (a checksum) and the peak after that is reported: the honest
footprint of a loaded model. A third child loads with cofe_dit and ``save``s the model again (streaming writer) to a
temporary folder next to the cache, deleted afterwards.

    python packages/dit/benchmarks/bench_load.py            # build the checkpoint if needed, then measure
    python packages/dit/benchmarks/bench_load.py --rebuild  # rebuild the cached checkpoint

Targets (issue 15): peak RSS <= 1.3x the checkpoint's bytes; load time within 2x diffusers' (or under 2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))  # helpers shared by benchmarks
from provenance import git_revision

CACHE = Path.home() / ".cache" / "cofe" / "bench_load" / "wan2.1-t2v-1.3b-diffusers-bf16"

# diffusers' config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers/transformer.
DIFFUSERS_CONFIG = {
    "_class_name": "WanTransformer3DModel",
    "added_kv_proj_dim": None,
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-06,
    "ffn_dim": 8960,
    "freq_dim": 256,
    "image_dim": None,
    "in_channels": 16,
    "num_attention_heads": 12,
    "num_layers": 30,
    "out_channels": 16,
    "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
    "text_dim": 4096,
}
# The same tensors under both layouts, compared to check both loaders read the same values.
PROBES = {
    "blocks.0.attn1.to_q.weight": "blocks.0.self_attn.q.weight",
    "blocks.29.ffn.net.2.weight": "blocks.29.ffn.2.weight",
    "condition_embedder.time_proj.weight": "time_projection.1.weight",
    "scale_shift_table": "head.modulation",
}


def rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """This process's RSS high-water mark (reset at exec, unlike ru_maxrss)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(folder: Path) -> None:
    """Random bf16 weights in the diffusers layout, one tensor at a time (never a full fp32 model in memory)."""
    import torch
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(DIFFUSERS_CONFIG)
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, p in model.state_dict().items():
        centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0
        state[name] = (centre + 0.02 * torch.randn(p.shape, generator=g)).to(torch.bfloat16)
    tmp = folder / "diffusion_pytorch_model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({**DIFFUSERS_CONFIG, "_diffusers_version": "0.42.1"}, indent=2))


def save_child(folder: str) -> None:
    """Load with cofe_dit (bf16), then time ``save`` into a temporary folder; print one JSON line."""
    import torch

    from cofe_dit import from_pretrained, save

    model = from_pretrained(folder, dtype=torch.bfloat16)
    out = Path(folder).parent / "save_tmp"
    shutil.rmtree(out, ignore_errors=True)
    base = rss_now_mb()
    start = time.perf_counter()
    try:
        save(model, out)
        save_s = time.perf_counter() - start
        nbytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"save_s": save_s, "baseline_mb": base, "peak_mb": peak_rss_mb(), "bytes": nbytes}))


def child(which: str, folder: str) -> None:
    """Runs in a fresh process: import, load, checksum every parameter; print one JSON line."""
    import torch

    if which == "ours":
        from cofe_dit import from_pretrained
    else:
        from diffusers import WanTransformer3DModel
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    base = rss_now_mb()
    start = time.perf_counter()
    if which == "ours":
        model = from_pretrained(folder, dtype=torch.bfloat16)
    else:
        model = WanTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16, low_cpu_mem_usage=True)
    load_s = time.perf_counter() - start
    peak_load = peak_rss_mb()
    state = model.state_dict()
    names = PROBES.values() if which == "ours" else PROBES.keys()
    probes = [float(state[n].double().sum()) for n in names]
    start = time.perf_counter()
    total = sum(float(p.float().sum()) for p in model.parameters())  # reads every weight once
    touch_s = time.perf_counter() - start
    dtypes = {}
    for p in model.parameters():
        dtypes[str(p.dtype)] = dtypes.get(str(p.dtype), 0) + p.numel()
    print(
        json.dumps(
            {
                "load_s": load_s,
                "touch_s": touch_s,
                "baseline_mb": base,
                "peak_after_load_mb": peak_load,
                "peak_after_read_mb": peak_rss_mb(),
                "probes": probes,
                "total": total,
                "numel_by_dtype": dtypes,
                "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            }
        )
    )


def run_child(which: str, folder: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", which, "--path", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{which} child failed:\n{out.stderr[-3000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached checkpoint")
    ap.add_argument("--child", choices=["ours", "diffusers", "save", "build"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "build":
        build(Path(args.path))
        return
    if args.child == "save":
        save_child(args.path)
        return
    if args.child:
        child(args.child, args.path)
        return
    weights = CACHE / "diffusion_pytorch_model.safetensors"
    if args.rebuild or not weights.exists():
        print(f"building the checkpoint in {CACHE} (once) ...", flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--child", "build", "--path", str(CACHE)], check=True)
        print(f"  built in {time.perf_counter() - start:.1f} s", flush=True)
    ckpt_bytes = weights.stat().st_size
    ckpt_mb = ckpt_bytes / 2**20
    print(f"checkpoint: Wan2.1-T2V-1.3B, diffusers layout, bf16, {ckpt_mb:.0f} MiB ({CACHE})")
    print(f"device: cpu ({os.cpu_count()} cores), load dtype: bf16, git {git_revision()}")
    results = {}
    for which in ("diffusers", "ours", "diffusers", "ours"):  # alternate: background load falls on both alike
        r = run_child(which, CACHE)
        prev = results.get(which)
        if prev is None or r["load_s"] < prev["load_s"]:
            results[which] = r
    d, o = results["diffusers"], results["ours"]
    same = [abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(o["probes"], d["probes"], strict=True)]
    print(f"same values on both sides (probe tensors): {all(same)}; total sum ours {o['total']:.6g} "
          f"vs diffusers {d['total']:.6g}")  # fmt: skip
    rows = [
        ("load time (s, best of 2)", "load_s", "{:.2f}"),
        ("peak RSS after load (MiB)", "peak_after_load_mb", "{:.0f}"),
        ("peak RSS after reading every weight", "peak_after_read_mb", "{:.0f}"),
        ("  of which baseline (imports)", "baseline_mb", "{:.0f}"),
        ("parameter bytes held (MiB)", "param_bytes", "{:.0f}"),
    ]
    print(f"{'':40s} {'ours':>10s} {'diffusers':>10s} {'ours/diffusers':>15s}")
    for title, key, fmt in rows:
        a, b = o[key], d[key]
        if key == "param_bytes":
            a, b = a / 2**20, b / 2**20
        print(f"{title:40s} {fmt.format(a):>10s} {fmt.format(b):>10s} {a / b:>15.2f}")
    print(f"ours, dtypes: {o['numel_by_dtype']}; diffusers: {d['numel_by_dtype']}")
    rss_ratio = o["peak_after_read_mb"] / ckpt_mb
    time_ok = o["load_s"] <= 2 * d["load_s"] or o["load_s"] < 2.0
    print(f"target peak RSS <= 1.3x checkpoint: ours {rss_ratio:.2f}x -> {'met' if rss_ratio <= 1.3 else 'MISSED'}")
    print(
        f"target load time within 2x diffusers' or under 2 s: ours {o['load_s']:.2f} s, "
        f"{o['load_s'] / d['load_s']:.2f}x -> {'met' if time_ok else 'MISSED'}"
    )
    sv = run_child("save", CACHE)
    print(
        f"ours save (streaming): {sv['bytes'] / 2**20:.0f} MiB written in {sv['save_s']:.1f} s; peak RSS "
        f"{sv['peak_mb']:.0f} MiB = {sv['peak_mb'] / ckpt_mb:.2f}x the checkpoint (a second copy would be >= 2x)"
    )


if __name__ == "__main__":
    main()
