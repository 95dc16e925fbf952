"""The linear codec (the CPU demo's stand-in for the Wan VAE) and precompute's codec fitting and identity hold-out."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds

from cofe_apps.components import LinearCodec, build_vae
from cofe_apps.io import decode_clip
from cofe_apps.precompute import main as precompute_main
from cofe_apps.specs import VAESpec


def _videos(n: int = 3, frames: int = 9, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, frames, size, size, generator=g) * 2 - 1 for _ in range(n)]


def test_full_rank_codec_is_lossless_on_key_frames_and_interpolates_between():
    videos = _videos(n=3, size=64)  # 3 x 3 x 8 x 8 = 576 blocks >= 192 components
    codec = LinearCodec.fit(videos, z_dim=192)
    v = torch.stack(videos)  # (3, 3, 9, 64, 64)
    z = codec.encode(v)
    assert z.shape == (3, 192, 3, 8, 8)
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 0.01  # unit-variance latents
    out = codec.decode(z)
    assert out.shape == v.shape
    torch.testing.assert_close(out[:, :, ::4], v[:, :, ::4], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[:, :, 2], (v[:, :, 0] + v[:, :, 4]) / 2, atol=1e-4, rtol=0)


def test_sixteen_components_keep_a_real_face_clip(tmp_path, curated_shards):
    sample = next(iter(wds.WebDataset(curated_shards[0], shardshuffle=False)))
    video = decode_clip(sample["mp4"], 9, 64, 64)  # (3, 9, 64, 64): Grace Hopper's photo, panning

    def rmse(codec: LinearCodec) -> float:
        rec = codec.decode(codec.encode(video[None]))[0]
        return float((rec[:, ::4] - video[:, ::4]).pow(2).mean().sqrt())

    codec = LinearCodec.fit([video], z_dim=16)
    one = rmse(LinearCodec.fit([video], z_dim=1))  # about each block's mean colour
    assert rmse(codec) < 0.15 and rmse(codec) < 0.5 * one, (rmse(codec), one)
    path = codec.save(tmp_path / "codec.npz")
    again = build_vae(VAESpec(linear=str(path)))
    torch.testing.assert_close(again.encode(video[None]), codec.encode(video[None]))


def test_codec_errors_name_the_problem(tmp_path):
    codec = LinearCodec.fit(_videos(size=64), z_dim=4)
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        codec.encode(torch.zeros(1, 3, 8, 64, 64))
    with pytest.raises(ValueError, match="latent has 5 channels"):
        codec.decode(torch.zeros(1, 5, 2, 8, 8))
    with pytest.raises(ValueError, match="cannot fit 192 components"):
        LinearCodec.fit(_videos(n=1, frames=1, size=8), z_dim=192)
    (tmp_path / "bad.npz").write_bytes(b"not a codec")
    with pytest.raises(ValueError, match=r"bad\.npz"):
        LinearCodec.load(tmp_path / "bad.npz")


def test_precompute_fits_the_codec_and_holds_identities_out(tmp_path, make_curated):
    shards = make_curated(tmp_path / "curated", shards=2, per_shard=2)
    # Give the second shard's clips another identity, to hold out.
    held = tmp_path / "curated" / "held.tar"
    with wds.TarWriter(str(held)) as sink:
        for s in wds.WebDataset(shards[1], shardshuffle=False):
            meta = json.loads(s["json"])
            meta["identity_cluster"] = 7
            s = {**s, "__key__": s["__key__"] + "h", "json": json.dumps(meta)}
            sink.write({k: s[k] for k in ("__key__", "mp4", "json", "ref.png")})
    out = tmp_path / "train"
    args = [shards[0], str(held), "--out", str(out), "--tiny", "--fit-linear-vae", "8", "--frames", "9"]
    assert precompute_main([*args, "--exclude-clusters", "7", "--device", "cpu"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vae"]["linear"] == str((out / "linear_vae.npz").resolve())
    kept = [s for p in sorted(out.glob("*.tar")) for s in wds.WebDataset(str(p), shardshuffle=False, empty_check=False)]
    assert len(kept) == 2 and all(json.loads(s["json"])["identity_cluster"] == 0 for s in kept)
    latent = np.load(io.BytesIO(kept[0]["latent.npy"]))
    assert latent.shape == (8, 3, 8, 8)  # (z, 1 + 8 / 4, 64 / 8, 64 / 8)
