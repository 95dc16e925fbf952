"""`cofe weights check` on folders built here: tiny safetensors files with the real key names, laid out as the
public repositories are, checked against a tiny DiT preset (the real shapes would be gigabytes)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from cofe_apps.catalog import (
    BENCH,
    DETAIL,
    IDENTITY,
    PRESETS,
    SafetensorsError,
    check_component,
    main,
    report_text,
    safetensors_header,
)

PRESET = "wan2.1-t2v-1.3b"


def _part(key: str, preset: str = PRESET):
    return next(dataclasses.replace(c, size=None) for c in PRESETS[preset] if c.key == key)


def _tiny():
    from cofe_dit import DiTConfig

    return DiTConfig.from_name("tiny")


def _zeros(*shape):
    return np.zeros(shape, np.float16)


def write_wan_folder(root, cfg, *, blocks=None, shard=True, vocab=32):
    """A Wan -Diffusers folder for ``cfg``: transformer (sharded, with an index), vae, text_encoder, tokenizer."""
    repo = root / "Wan2.1-T2V-1.3B-Diffusers"
    t = repo / "transformer"
    t.mkdir(parents=True)
    (t / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", "num_layers": cfg.num_layers}))
    tensors = {
        "patch_embedding.weight": _zeros(cfg.dim, cfg.in_dim, *cfg.patch_size),
        "condition_embedder.text_embedder.linear_1.weight": _zeros(cfg.dim, cfg.text_dim),
    }
    for i in range(cfg.num_layers if blocks is None else blocks):
        tensors[f"blocks.{i}.attn1.to_q.weight"] = _zeros(cfg.dim, cfg.dim)
    names = sorted(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]] if shard else [names]
    weight_map = {}
    for i, part in enumerate(halves):
        file = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(halves):05d}.safetensors"
        save_file({k: tensors[k] for k in part}, str(t / file))
        weight_map.update(dict.fromkeys(part, file))
    (t / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    v = repo / "vae"
    v.mkdir()
    (v / "config.json").write_text(json.dumps({"z_dim": cfg.out_dim, "scale_factor_temporal": cfg.vae_stride[0],
                                               "scale_factor_spatial": cfg.vae_stride[1]}))  # fmt: skip
    save_file({"encoder.conv_in.weight": _zeros(8, 3, 3, 3, 3)}, str(v / "diffusion_pytorch_model.safetensors"))
    e = repo / "text_encoder"
    e.mkdir()
    (e / "config.json").write_text(json.dumps({"d_model": cfg.text_dim, "vocab_size": vocab}))
    save_file({"shared.weight": _zeros(vocab, cfg.text_dim)}, str(e / "model-00001-of-00001.safetensors"))
    (e / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"shared.weight": "model-00001-of-00001.safetensors"}})
    )
    k = repo / "tokenizer"
    k.mkdir()
    (k / "tokenizer_config.json").write_text("{}")
    (k / "spiece.model").write_bytes(b"\0" * 16)
    return repo


def test_a_whole_wan_folder_passes_and_each_defect_is_named(tmp_path):
    cfg = _tiny()
    repo = write_wan_folder(tmp_path, cfg)
    for key in ("dit", "vae", "text", "tokenizer"):
        r = check_component(_part(key), tmp_path, cfg if key != "tokenizer" else None)
        assert r.ok, (key, r.problems)
    # a missing shard, named by the index
    (repo / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    r = check_component(_part("dit"), tmp_path, cfg)
    assert not r.ok and any("00002-of-00002.safetensors" in p and "missing" in p for p in r.problems)


def test_shapes_and_configs_are_checked_against_the_preset(tmp_path):
    cfg = _tiny()
    write_wan_folder(tmp_path, cfg, blocks=cfg.num_layers - 1, vocab=32)
    r = check_component(_part("dit"), tmp_path, cfg)
    assert any(f"{cfg.num_layers - 1} DiT blocks" in p for p in r.problems), r.problems
    other = dataclasses.replace(cfg, text_dim=cfg.text_dim * 2, name="other")
    r = check_component(_part("text"), tmp_path, other)
    assert any("d_model" in p for p in r.problems), r.problems
    r = check_component(_part("dit"), tmp_path, dataclasses.replace(cfg, dim=cfg.dim * 2))
    assert any("patch_embedding.weight is" in p and "the preset needs" in p for p in r.problems), r.problems
    r = check_component(_part("vae"), tmp_path, dataclasses.replace(cfg, out_dim=48, vae_stride=(4, 16, 16)))
    assert any("z_dim" in p for p in r.problems) and any("strides" in p for p in r.problems), r.problems


def test_a_truncated_safetensors_file_is_wrong(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"patch_embed.proj.weight": _zeros(4, 3, 14, 14)}, str(path))
    assert safetensors_header(path)["patch_embed.proj.weight"]["shape"] == [4, 3, 14, 14]
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(SafetensorsError, match="truncated"):
        safetensors_header(path)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(SafetensorsError):
        safetensors_header(path)


def test_experts_sizes_checksums_and_nested_zips(tmp_path):
    # DINOv2: the key shapes of ViT-L/14 at 518 px, and the published size
    folder = tmp_path / DETAIL.folder
    folder.mkdir()
    save_file({"patch_embed.proj.weight": _zeros(1024, 3, 14, 14), "pos_embed": _zeros(1, 1370, 1024)},
              str(folder / "model.safetensors"))  # fmt: skip
    assert check_component(dataclasses.replace(DETAIL, size=None), tmp_path).ok
    r = check_component(DETAIL, tmp_path)  # 4 MB where 1.22 GB are published: a partial download
    assert not r.ok and "published (incomplete?)" in r.problems[0]
    save_file({"patch_embed.proj.weight": _zeros(768, 3, 14, 14)}, str(folder / "model.safetensors"))
    r = check_component(dataclasses.replace(DETAIL, size=None), tmp_path)
    assert any("the preset needs (1024, 3, 14, 14)" in p for p in r.problems) and any("pos_embed" in p for p in
                                                                                       r.problems)  # fmt: skip
    # ArcFace pack unzipped into a folder of its own name (antelopev2/antelopev2/glintr100.onnx)
    nested = tmp_path / "antelopev2" / "antelopev2"
    nested.mkdir(parents=True)
    (nested / "glintr100.onnx").write_bytes(b"\0" * 1000)
    r = check_component(dataclasses.replace(IDENTITY[0], size=None), tmp_path)
    assert r.ok and r.folder == tmp_path / "antelopev2" / "antelopev2"
    # a published checksum: InceptionV3's file is named after its sha256
    inception = next(c for c in BENCH if c.key == "inception")
    (tmp_path / "inception").mkdir()
    (tmp_path / "inception" / inception.files[0]).write_bytes(b"not the weights")
    r = check_component(dataclasses.replace(inception, size=None), tmp_path)
    assert any("sha256 starts" in p for p in r.problems)
    good = hashlib.sha256(b"not the weights").hexdigest()[:8]
    r = check_component(dataclasses.replace(inception, size=None, sha256_prefix=good), tmp_path)
    assert r.ok and "matches the published checksum" in r.notes[0]


def test_check_command_prints_what_is_missing_with_the_fetch_command(tmp_path, capsys):
    assert main(["check", str(tmp_path), "--preset", PRESET]) == 1
    out = capsys.readouterr().out
    assert "dit            Wan2.1-T2V-1.3B-Diffusers/transformer" in out and "MISSING" in out
    assert "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in out and f"--local-dir {tmp_path}" in out
    assert "or curl -L" in out  # the second identity pack is an alternative, not a second requirement
    assert main(["check", str(tmp_path / "absent")]) == 2
    assert "no weights folder" in capsys.readouterr().err


def test_a_complete_preset_prints_the_arguments_for_the_commands(tmp_path):
    cfg = _tiny()
    write_wan_folder(tmp_path, cfg)
    (tmp_path / "buffalo_l").mkdir()
    (tmp_path / "buffalo_l" / "w600k_r50.onnx").write_bytes(b"\0" * 100)
    (tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K").mkdir()
    (tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K" / "open_clip_pytorch_model.bin").write_bytes(b"\0" * 100)
    (tmp_path / DETAIL.folder).mkdir()
    save_file({"patch_embed.proj.weight": _zeros(1024, 3, 14, 14), "pos_embed": _zeros(1, 1370, 1024)},
              str(tmp_path / DETAIL.folder / "model.safetensors"))  # fmt: skip
    parts = [dataclasses.replace(c, size=None) for c in [*PRESETS[PRESET]]]
    from cofe_apps.catalog import EXPERTS

    experts = [dataclasses.replace(c, size=None) for c in EXPERTS]
    results = [check_component(c, tmp_path, cfg if c.key in ("dit", "vae", "text") else None) for c in parts]
    results += [check_component(c, tmp_path) for c in experts]
    text = report_text(tmp_path, [(PRESET, results)], complete=True)
    assert "not needed (an alternative is present)" in text  # antelopev2 absent, buffalo_l there
    assert f"cofe fit --model.dit_weights {tmp_path}/Wan2.1-T2V-1.3B-Diffusers/transformer" in text
    assert f"cofe precompute --identity {tmp_path}/buffalo_l/w600k_r50.onnx" in text
    assert f"cofe precompute --text-encoder {tmp_path}/Wan2.1-T2V-1.3B-Diffusers\n" in text
