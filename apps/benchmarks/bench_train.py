"""Training-step throughput with the real WebDataset shard loader vs the same batches from memory (one run), and
samples/s of `cofe sample`. Target: loader / memory >= 0.9 (the loader is never the bottleneck).

    python apps/benchmarks/bench_train.py [--steps 30] [--workers 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from cofe_apps.data import ShardDataModule
from cofe_apps.io import git_revision
from cofe_apps.module import CoFEModule
from cofe_apps.pipeline import CoFEPipeline
from cofe_apps.precompute import PrecomputeConfig, precompute
from cofe_apps.specs import ComponentsSpec, ExpertsSpec, TextSpec, VAESpec
from cofe_apps.synthetic import hopper, make_curated_shards, reference_crop
from cofe_dit import SamplerConfig

EXPERTS = {"identity": [128, "mlp"], "semantic": [64, "perceiver"], "detail": [48, "perceiver"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--samples", type=int, default=3, help="videos for the cofe sample timing")
    a = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        curated = make_curated_shards(tmp / "curated", shards=4, per_shard=8, frames=a.frames, size=a.size)
        cfg = PrecomputeConfig(
            frames=a.frames,
            height=a.size,
            width=a.size,
            vae=VAESpec(tiny=True),
            text=TextSpec(tiny=True, dim=16),
            experts=ExpertsSpec(),
        )
        precompute(curated, tmp / "train", cfg, log=lambda *_: None)
        shards = sorted(str(s) for s in (tmp / "train").glob("*.tar"))
        dm = ShardDataModule(
            shards,
            batch_size=a.batch,
            num_workers=a.workers,
            shuffle_buffer=16,
            resampled=True,
            epoch_samples=10**6,
            text_len=16,
        )
        loader = torch.utils.data.DataLoader(dm.pipeline(), batch_size=None, num_workers=a.workers)
        module = CoFEModule(
            dit="tiny-ti2v",
            dit_overrides={"text_dim": 16},
            cofe="tiny",
            cofe_overrides={"experts": EXPERTS},
            freeze="full",
            ema_decay=0.0,
        )
        module.configure_model()  # what Lightning calls before training: builds the DiT and CoFE
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

        def step(batch: dict) -> None:
            loss, _ = module(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        it = iter(loader)
        for _ in range(3):  # warm-up: workers started, first batches decoded
            step(next(it))
        cached = [next(it) for _ in range(a.steps)]
        # Interleave loader steps and in-memory steps so background load on the machine falls on both alike.
        t_loader = t_memory = 0.0
        for batch in cached:
            start = time.perf_counter()
            step(next(it))
            t_loader += time.perf_counter() - start
            start = time.perf_counter()
            step(batch)
            t_memory += time.perf_counter() - start

        components = ComponentsSpec(VAESpec(tiny=True), TextSpec(tiny=True, dim=16, text_len=16), ExpertsSpec())
        sampler = CoFEPipeline(module.net, components)
        ref, first = reference_crop(), hopper()[:360, 60:420]
        sampler(ref, "warm up", first, frames=a.frames, height=a.size, width=a.size, config=SamplerConfig(steps=2))
        solve = SamplerConfig(steps=20)
        start = time.perf_counter()
        for i in range(a.samples):
            sampler(
                ref,
                "a woman in a naval uniform",
                first,
                frames=a.frames,
                height=a.size,
                width=a.size,
                config=solve,
                seed=i,
            )
        t_sample = time.perf_counter() - start
        latent = sampler.enc.geometry.latent_shape(a.frames, a.size, a.size)

    print(
        f"git {git_revision()} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
        f"workers {a.workers} | batch {a.batch} x latent {tuple(latent)}"
    )
    print(f"train step, shard loader: {a.steps / t_loader:7.2f} steps/s ({a.steps * a.batch / t_loader:.1f} samples/s)")
    print(f"train step, from memory : {a.steps / t_memory:7.2f} steps/s")
    print(f"ratio loader / memory = {t_memory / t_loader:.3f} (target >= 0.9)")
    print(
        f"cofe sample ({solve.steps} {solve.solver} steps, CFG text + face, {a.frames} frames {a.size}px): "
        f"{a.samples / t_sample:.2f} videos/s"
    )


if __name__ == "__main__":
    main()
