"""Real-geometry rehearsals of the three base models through the user's commands: `cofe precompute --rehearse`
-> `cofe fit` with the preset's own config and strategy (FSDP2, bf16 autocast, frozen bf16 base, activation
checkpointing) -> `cofe sample`. Each keeps its preset's VAE strides and channels, patch size, umT5's 4096-d text,
the experts' real widths (ArcFace 512, CLIP ViT-H 1280, DINOv2 ViT-L 1024) and its conditioning (T2V text only;
Wan 2.2 TI2V the given first frame and per-token timesteps; Wan 2.1 I2V the CLIP image tokens and the mask +
[first frame, zeros] latent); only depth and width of the networks shrink so that it runs on 2 cores."""

from __future__ import annotations

import json

import pytest
import torch
from fitting import ROOT, recorded, run_fit
from PIL import Image

from cofe_apps.io import read_mp4, read_npy
from cofe_apps.synthetic import arcface_like_onnx

SHRUNK_DIT = {"dim": 128, "ffn_dim": 256, "num_heads": 1, "num_layers": 2}  # head width 128, as every Wan
SHRUNK_COFE = {"dim": 128, "num_tokens": 4, "resampler_dim": 64, "resampler_heads": 4, "resampler_depth": 1,
               "gate_hidden": 32}  # fmt: skip
CASES = {
    # preset: (config, latent of a 9 x 64 x 64 clip, first frame given, ranks)
    "wan2.1-t2v-1.3b": ("wan2.1-t2v-1.3b-cofe.yaml", (16, 3, 8, 8), False, 1),
    "wan2.2-ti2v-5b": ("wan2.2-ti2v-5b-cofe.yaml", (48, 3, 4, 4), True, 2),
    "wan2.1-i2v-14b": ("wan2.1-i2v-14b-cofe.yaml", (16, 3, 8, 8), True, 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(CASES))
def test_real_geometry_rehearsal(preset, tmp_path, make_curated):
    from cofe_apps.precompute import main as precompute_main
    from cofe_apps.sample import main as sample_main
    from cofe_apps.synthetic import hopper
    from cofe_dit import DiT, DiTConfig, save

    config, latent, first_frame, ranks = CASES[preset]
    curated = make_curated(tmp_path / "curated", shards=2, per_shard=2)
    arcface = arcface_like_onnx(tmp_path / "arcface.onnx")
    train = tmp_path / "train"
    assert precompute_main([*curated, "--out", str(train), "--rehearse", preset, "--identity", str(arcface),
                            "--frames", "9", "--height", "64", "--width", "64", "--text-len", "32",
                            "--device", "cpu"]) == 0  # fmt: skip
    record = json.loads((train / "config.json").read_text())
    assert tuple(record["latent"]["shape"]) == latent and record["text_dim"] == 4096
    widths = {name: out["width"] for name, out in record["expert_outputs"].items()}
    assert widths == {"identity": 512, "semantic": 1280, "detail": 1024}
    import webdataset as wds

    sample = next(iter(wds.WebDataset(str(train / "000.tar"), shardshuffle=False)))
    assert read_npy(sample["latent.npy"]).shape == latent
    if preset == "wan2.1-i2v-14b":
        assert read_npy(sample["clip.npy"]).shape == (257, 1280) and read_npy(sample["cond.npy"]).shape == latent

    base = tmp_path / "base"  # a "pretrained" shrunk Wan: random, with a live head so CoFE gets gradients
    with torch.random.fork_rng():
        torch.manual_seed(1)
        dit = DiT(DiTConfig.from_name(preset, **SHRUNK_DIT))
        torch.nn.init.normal_(dit.head.head.weight, std=0.02)
    save(dit, base)
    run_fit(
        tmp_path, sorted(str(p) for p in train.glob("*.tar")),
        "--trainer.accelerator", "cpu", "--trainer.devices", str(ranks), "--trainer.max_steps", "2",
        "--checkpoint.every_n_train_steps", "2", "--model.dit_weights", str(base),
        "--model.dit_overrides", json.dumps(SHRUNK_DIT), "--model.cofe_overrides", json.dumps(SHRUNK_COFE),
        "--data.num_workers", "0", "--data.batch_size", "1", "--data.epoch_samples", "2", "--data.text_len", "32",
        "--data.shuffle_buffer", "4", config=str(ROOT / "apps/configs" / config),
    )  # fmt: skip
    assert len(recorded(tmp_path)) == 2
    last = next((tmp_path / "fit").rglob("last.ckpt"))
    assert last.is_dir()  # the preset's strategy: a distributed checkpoint
    Image.fromarray(hopper()).save(tmp_path / "face.png")
    out = tmp_path / "video.mp4"
    args = [
        "--checkpoint",
        str(last),
        "--reference",
        str(tmp_path / "face.png"),
        "--prompt",
        "a woman smiles",
        "--out",
        str(out),
        "--frames",
        "9",
        "--height",
        "64",
        "--width",
        "64",
        "--steps",
        "2",
        "--device",
        "cpu",
    ]
    if first_frame:
        args += ["--first-frame", str(tmp_path / "face.png")]
    assert sample_main(args) == 0  # fmt: skip
    frames, fps = read_mp4(out)
    assert frames.shape == (9, 64, 64, 3)
    assert fps == DiTConfig.from_name(preset).sampling.fps
