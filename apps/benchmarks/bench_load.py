"""Peak host memory of loading a real-size model for inference: the new loader (``cofe_apps.weights.load_model``:
built on ``meta``, allocated once in its final dtype, an export read tensor by tensor by offset) vs the old sampling
path (``CoFEModule.from_checkpoint``: the whole state read into RAM, the LightningModule built with its fp32 EMA
mirror, then loaded and cast), from a ``cofe export`` file and from the Lightning ``.ckpt`` it was exported from.

The model is the preset's (default ``wan2.1-t2v-1.3b``) at its real size with random weights, trained as its training
config (``apps/configs/<preset>-cofe.yaml``) says: CoFE's freezing policy, the frozen base stored in bf16 (the DiT's
fp32 islands stay fp32), the trained layers (every cross-attention, CoFE) in fp32, an fp32 EMA of them. The
``.ckpt`` is what Lightning saves for that run (``state_dict`` with the EMA, hyper-parameters, the ``cofe`` record,
AdamW's two fp32 moments per trained parameter); the export is written from it by ``cofe_apps.export.export``.

Each load runs in a fresh subprocess, so peaks do not mix. Peak = ``ru_maxrss`` at the end minus ``ru_maxrss``
after the imports; a sampler thread also records the largest anonymous and file-backed resident sets
(``/proc/self/status`` ``RssAnon`` / ``RssFile``), which say where a peak comes from (memory-mapped file pages count
in RSS while mapped). Before each load the source file's pages are dropped from the page cache (``fsync`` +
``POSIX_FADV_DONTNEED``), so the seconds are those of a cold read. The loaded DiT + CoFE tensors are hashed (sha1 of
their bytes) and compared between paths: the old and new loaders must give the same bits.

Target (the loader's issue): new path from the export at <= 1.15x the export's bytes.

Usage: python apps/benchmarks/bench_load.py [--preset wan2.1-t2v-1.3b] [--no-ckpt-loads] [--no-optimizer]
(about 6 GB of RAM at most per process for the 1.3B preset and ~17 GB of disk under /tmp, removed at the end)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30
# Runs in this order; (path, source, dtype). The .ckpt rows come last (largest file-backed resident sets).
RUNS = [
    ("new", "export", "bf16"),
    ("new", "export", "stored"),
    ("old", "export", "bf16"),
    ("old", "export", "stored"),
    ("new", "ckpt", "bf16"),
    ("new", "ckpt", "stored"),
    ("old", "ckpt", "bf16"),
    ("old", "ckpt", "stored"),
]


# ------------------------------------------------------------------------------------------------ memory probes


def _status_kib() -> dict[str, int]:
    """``VmRSS`` / ``RssAnon`` / ``RssFile`` of this process in KiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class _Sampler(threading.Thread):
    """Polls ``/proc/self/status`` every 5 ms for the largest anonymous and file-backed resident sets."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.max_anon = self.max_file = 0

    def run(self) -> None:
        while not self.stop.is_set():
            s = _status_kib()
            self.max_anon = max(self.max_anon, s.get("RssAnon", 0) * 1024)
            self.max_file = max(self.max_file, s.get("RssFile", 0) * 1024)
            time.sleep(0.005)

    def finish(self) -> tuple[int, int]:
        self.stop.set()
        self.join()
        return self.max_anon, self.max_file


def _digests(tensors: dict) -> dict[str, list]:
    """Per tensor: its dtype and the sha1 of its bytes (no copy: a uint8 view of the storage)."""
    import hashlib

    import torch

    out = {}
    for name, t in sorted(tensors.items()):
        t = t.detach().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy()
        out[name] = [str(t.dtype).removeprefix("torch."), hashlib.sha1(memoryview(raw)).hexdigest()]
    return out


# ------------------------------------------------------------------------------------------------------ workers


def _training_hparams(preset: str, smoke: bool = False) -> dict:
    """The ``model:`` section of the preset's training config (no base weights: random ones); ``smoke``: the same
    with the tiny DiT and CoFE (a check of this script in seconds)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "apps/configs" / f"{preset}-cofe.yaml").read_text())["model"]
    return {**cfg, "dit_weights": None, **({"dit": "tiny", "cofe": "tiny"} if smoke else {})}


def worker_write(preset: str, out: Path, optimizer: bool, smoke: bool = False) -> dict:
    """The Lightning checkpoint of a ``cofe fit`` run of ``preset`` at step 1000 (random weights)."""
    import warnings

    import lightning as L
    import torch

    from cofe_apps.module import CoFEModule

    torch.manual_seed(0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # freeze='cofe' without dit_weights: a random base is what we want
        module = CoFEModule(**_training_hparams(preset, smoke))
    module.configure_model()  # meta -> CPU, deterministic init, frozen base to bf16, EMA = trained weights
    trained = module.trainable()
    with torch.no_grad():  # an EMA that differs from the weights, so loading the wrong set would show
        for name in module.ema.names:
            module.ema.get(name).mul_(0.5)
    init_s = time.perf_counter() - start
    ckpt = {
        "epoch": 0,
        "global_step": 1000,
        "pytorch-lightning_version": L.__version__,
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
    }
    if optimizer:  # AdamW's state as Lightning saves it: two fp32 moments per trained parameter
        hp = module.hparams
        state = {
            i: {"step": torch.tensor(1000.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            for i, p in enumerate(trained.values())
        }
        groups = [{"params": list(range(len(trained))), "lr": hp.lr, "betas": tuple(hp.betas), "eps": 1e-8,
                   "weight_decay": hp.weight_decay, "amsgrad": False}]  # fmt: skip
        ckpt["optimizer_states"] = [{"state": state, "param_groups": groups}]
        ckpt["lr_schedulers"] = [{"last_epoch": 1000}]
    module.on_save_checkpoint(ckpt)  # the `cofe` record and the RNG state, as CoFEModule saves them
    torch.save(ckpt, out)
    by_dtype: dict[str, int] = {}
    for name, t in module.state_dict().items():
        if name.startswith(("dit.", "cofe.")):
            key = str(t.dtype).removeprefix("torch.")
            by_dtype[key] = by_dtype.get(key, 0) + t.numel()
    return {
        "params": sum(by_dtype.values()),
        "trained": sum(p.numel() for p in trained.values()),
        "by_dtype": by_dtype,
        "init_s": init_s,
        "write_s": time.perf_counter() - start - init_s,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def worker_export(ckpt: Path, out: Path) -> dict:
    from cofe_apps.export import export

    base = _maxrss_bytes()
    sampler = _Sampler()
    sampler.start()
    start = time.perf_counter()
    export(ckpt, out)
    seconds = time.perf_counter() - start
    anon, file = sampler.finish()
    return {"peak": _maxrss_bytes() - base, "anon": anon, "file": file, "seconds": seconds, "base": base}


def worker_load(how: str, path: Path, dtype: str) -> dict:
    import torch

    import cofe_apps.module
    import cofe_apps.weights  # both paths pay the same imports

    torch_dtype = torch.bfloat16 if dtype == "bf16" else None
    base = _maxrss_bytes()
    base_status = _status_kib()
    sampler = _Sampler()
    sampler.start()
    start = time.perf_counter()
    if how == "new":
        loaded = cofe_apps.weights.load_model(path, dtype=torch_dtype, device="cpu")
        net, held = loaded.model, loaded.model.state_dict()
    else:
        module = cofe_apps.module.CoFEModule.from_checkpoint(path, dtype=torch_dtype)
        net, held = module.net, module.state_dict()
    seconds = time.perf_counter() - start
    anon, file = sampler.finish()
    peak = _maxrss_bytes() - base
    after = _status_kib()
    weights = {k: v for k, v in net.state_dict().items() if k.startswith(("dit.", "cofe."))}
    return {
        "peak": peak,
        "anon": anon - base_status.get("RssAnon", 0) * 1024,
        "file": file - base_status.get("RssFile", 0) * 1024,
        "after": (after["VmRSS"] - base_status["VmRSS"]) * 1024,
        "base": base,
        "seconds": seconds,
        "model_bytes": sum(t.numel() * t.element_size() for t in weights.values()),
        "held_bytes": sum(t.numel() * t.element_size() for t in held.values()),
        "digests": _digests(weights),
    }


# ------------------------------------------------------------------------------------------------------- parent


def _child(args: list[str], timeout: int = 3600) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _same(a: dict, b: dict) -> str:
    da, db = a["digests"], b["digests"]
    if set(da) != set(db):
        return f"different tensor sets ({len(set(da) ^ set(db))} names differ)"
    same_dtype = sum(da[k][0] == db[k][0] for k in da)
    same_bits = sum(da[k] == db[k] for k in da)
    return f"{same_bits}/{len(da)} tensors bit-identical ({same_dtype}/{len(da)} same dtype)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="wan2.1-t2v-1.3b", help="a real preset with apps/configs/<preset>-cofe.yaml")
    p.add_argument("--no-ckpt-loads", action="store_true", help="load only the export (less memory and time)")
    p.add_argument("--no-optimizer", action="store_true", help="leave AdamW's moments out of the .ckpt")
    p.add_argument("--smoke", action="store_true", help="the tiny DiT and CoFE under the same config (seconds)")
    p.add_argument("--keep", help="write the files here and keep them (default: a temporary folder, removed)")
    p.add_argument("--worker", choices=["write", "export", "load"], help=argparse.SUPPRESS)
    p.add_argument("--how", choices=["new", "old"], help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--dtype", choices=["bf16", "stored"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker == "write":
        result = worker_write(a.preset, Path(a.out), not a.no_optimizer, a.smoke)
    elif a.worker == "export":
        result = worker_export(Path(a.path), Path(a.out))
    elif a.worker == "load":
        result = worker_load(a.how, Path(a.path), a.dtype)
    if a.worker:
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    sys.path.insert(0, str(ROOT / "tools"))
    from provenance import git_revision

    tmp = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_load_", dir="/tmp"))
    tmp.mkdir(parents=True, exist_ok=True)
    files = {"ckpt": tmp / "last.ckpt", "export": tmp / "model.safetensors"}
    try:
        t0 = time.perf_counter()
        info = _child(["--worker", "write", "--preset", a.preset, "--out", str(files["ckpt"])]
                      + (["--no-optimizer"] if a.no_optimizer else []) + (["--smoke"] if a.smoke else []))  # fmt: skip
        exp = _child(["--worker", "export", "--path", str(files["ckpt"]), "--out", str(files["export"])])
        size = {k: f.stat().st_size for k, f in files.items()}
        dtypes = ", ".join(f"{n / 1e9:.3f}B {d}" for d, n in sorted(info["by_dtype"].items()))
        smoke = " (smoke: tiny DiT + CoFE)" if a.smoke else ""
        print(f"bench_load | git {git_revision()} | torch {info['torch']} | device cpu ({os.cpu_count()} cores, "
              f"{info['threads']} torch threads) | preset {a.preset}{smoke}")  # fmt: skip
        print(f"  model: {info['params'] / 1e9:.3f}B parameters (DiT + CoFE: {dtypes}), {info['trained'] / 1e9:.3f}B "
              f"trained (freeze=cofe, fp32), fp32 EMA of them; random init {info['init_s']:.0f}s")  # fmt: skip
        print(f"  .ckpt {size['ckpt'] / GIB:.2f} GiB ({'state_dict + EMA' + ('' if a.no_optimizer else ' + AdamW')}"
              f", written in {info['write_s']:.0f}s); export {size['export'] / GIB:.2f} GiB (cofe export: "
              f"{exp['seconds']:.0f}s, peak {exp['peak'] / GIB:.2f} GiB RSS = {exp['peak'] / size['export']:.2f}x "
              f"the export; max RssAnon {exp['anon'] / GIB:.2f}, RssFile {exp['file'] / GIB:.2f} GiB)")  # fmt: skip
        results = {}
        for how, source, dtype in RUNS:
            if a.no_ckpt_loads and source == "ckpt":
                continue
            _drop_cache(files[source])
            results[how, source, dtype] = _child(["--worker", "load", "--how", how, "--path", str(files[source]),
                                                  "--dtype", dtype])  # fmt: skip
            r = results[how, source, dtype]
            print(
                f"  ran {how:3} {source:6} {dtype:6}: peak {r['peak'] / GIB:.2f} GiB in {r['seconds']:.1f}s", flush=True
            )

        print("\n| path | source | dtype | peak RSS GiB | max anon / file GiB | after GiB | file GiB | peak/file "
              "| model GiB | peak/model | held GiB | new/old | load s |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for (how, source, dtype), r in results.items():
            old = results.get(("old", source, dtype))
            ratio = f"{r['peak'] / old['peak']:.2f}" if old is not None and how == "new" else "-"
            print(f"| {how} | {source} | {dtype} | {r['peak'] / GIB:.2f} | {r['anon'] / GIB:.2f} / "
                  f"{r['file'] / GIB:.2f} | {r['after'] / GIB:.2f} | {size[source] / GIB:.2f} | "
                  f"{r['peak'] / size[source]:.2f} | {r['model_bytes'] / GIB:.2f} | "
                  f"{r['peak'] / r['model_bytes']:.2f} | {r['held_bytes'] / GIB:.2f} | {ratio} | "
                  f"{r['seconds']:.1f} |")  # fmt: skip
        print(f"(RSS after imports, subtracted: {min(r['base'] for r in results.values()) / GIB:.2f}-"
              f"{max(r['base'] for r in results.values()) / GIB:.2f} GiB)")  # fmt: skip

        print("\nweights, old vs new loader and export vs its .ckpt (sha1 of every DiT + CoFE tensor):")
        pairs = [(("new", s, d), ("old", s, d)) for s in ("export", "ckpt") for d in ("bf16", "stored")]
        pairs += [(("new", "export", d), ("new", "ckpt", d)) for d in ("bf16", "stored")]
        ok = True
        for x, y in pairs:
            if x in results and y in results:
                line = _same(results[x], results[y])
                ok &= line.startswith(f"{len(results[x]['digests'])}/")
                print(f"  {' '.join(x)} vs {' '.join(y)}: {line}")
        new = results.get(("new", "export", "stored"))
        target = new is not None and new["peak"] <= 1.15 * size["export"]
        if new is not None:
            print(f"\ntarget: new loader from the export, stored dtypes, peak {new['peak'] / size['export']:.2f}x the "
                  f"export (<= 1.15x: {'met' if target else 'MISSED'}); bf16: "
                  f"{results['new', 'export', 'bf16']['peak'] / size['export']:.2f}x")  # fmt: skip
        print(f"total {time.perf_counter() - t0:.0f}s")
        return 0 if ok and (target or a.smoke) else 1
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
