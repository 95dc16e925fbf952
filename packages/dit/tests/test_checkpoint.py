"""Checkpoint loading is strict and explains itself; saving round-trips; nothing is unpickled unsafely."""

import json

import pytest
import torch
from safetensors.torch import save_file

from cofe_dit import CheckpointError, DiT, DiTConfig, from_pretrained, load_into, read_state_dict, save
from cofe_dit.checkpoint import infer_config


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return DiT(DiTConfig.from_name("tiny", **kw))


def _same(a: DiT, b: DiT) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def test_save_and_load_round_trip(tmp_path):
    model = _tiny()
    save(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["name"] == "tiny"
    loaded = from_pretrained(tmp_path)
    assert loaded.cfg == model.cfg and _same(model, loaded)


def test_sharded_save_writes_an_index_and_loads(tmp_path):
    model = _tiny()
    save(model, tmp_path, max_shard_bytes=20_000)
    shards = sorted(tmp_path.glob("diffusion_pytorch_model-*-of-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "diffusion_pytorch_model.safetensors.index.json").exists()
    assert _same(model, from_pretrained(tmp_path))


def test_checkpoint_of_another_preset_is_a_clear_error(tmp_path):
    save(DiT(DiTConfig.from_name("tiny", dim=64, num_heads=4, num_layers=3)), tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_into(_tiny(), tmp_path)
    message = str(info.value)
    assert "shape mismatches" in message and "checkpoint (64, 4, 1, 2, 2) vs model (32, 4, 1, 2, 2)" in message
    assert "unexpected in the checkpoint: blocks.2." in message
    assert "different architecture: dim=64 (model: 32), num_layers=3 (model: 2)" in message


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = {k: v.clone() for k, v in _tiny().state_dict().items()}
    del state["blocks.1.ffn.2.weight"]
    state["blocks.0.extra.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 missing from the checkpoint: blocks\.1\.ffn\.2\.weight"):
        load_into(_tiny(), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"1 unexpected in the checkpoint: blocks\.0\.extra\.weight"):
        load_into(_tiny(), tmp_path / "w.safetensors")
    # Non-strict loading fills what matches and reports the rest.
    model = _tiny(seed=1)
    report = load_into(model, tmp_path / "w.safetensors", strict=False)
    assert not report.ok and report.missing == ["blocks.1.ffn.2.weight"]
    assert torch.equal(model.blocks[0].ffn[0].weight, state["blocks.0.ffn.0.weight"])


def test_pretrained_wan_loads_into_a_model_with_face_branches(tmp_path):
    """The face branch is absent from released checkpoints: it is reported and stays zero, nothing else is."""
    base = _tiny()
    save(base, tmp_path)
    model = from_pretrained(tmp_path, face_dim=24)
    report = load_into(model, tmp_path)
    assert report.ok and len(report.allowed_missing) == 2 * 7  # per block: k, v, o (weight, bias), norm_k
    assert all(torch.all(p == 0) for b in model.blocks for p in b.cross_attn.face.o.parameters())
    x, t, ctx = torch.randn(1, 4, 1, 4, 4), torch.tensor([300.0]), torch.randn(1, 3, 16)
    with torch.no_grad():
        faces = [torch.randn(1, 2, 24)] * 2
        torch.testing.assert_close(model.eval()(x, t, ctx, face_tokens=faces), base.eval()(x, t, ctx))


def test_config_is_inferred_from_shapes_when_there_is_no_config_json(tmp_path):
    save_file(dict(DiT(DiTConfig.from_name("tiny-i2v")).state_dict()), str(tmp_path / "m.safetensors"))
    cfg = infer_config(read_state_dict(tmp_path / "m.safetensors"), num_heads=2)
    assert (cfg.model_type, cfg.dim, cfg.num_layers, cfg.in_dim, cfg.out_dim, cfg.image_dim) == (
        "i2v",
        32,
        2,
        12,
        4,
        24,
    )
    with pytest.raises(CheckpointError, match="cannot infer the head count for width 32"):
        from_pretrained(tmp_path / "m.safetensors")
    assert from_pretrained(tmp_path / "m.safetensors", "tiny-i2v").cfg.model_type == "i2v"


def test_corrupt_truncated_and_missing_files(tmp_path):
    save(_tiny(), tmp_path / "good")
    blob = (tmp_path / "good" / "diffusion_pytorch_model.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"cannot read .*trunc\.safetensors"):
        load_into(_tiny(), tmp_path / "trunc.safetensors")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_into(_tiny(), tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
        load_into(_tiny(), tmp_path / "empty")
    index = tmp_path / "x.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "shard-1.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="names shards that do not exist"):
        load_into(_tiny(), index)
    index.write_text("{not json")
    with pytest.raises(CheckpointError, match="is not a sharded-checkpoint index"):
        load_into(_tiny(), index)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="is not a weight file"):
        load_into(_tiny(), tmp_path / "notes.txt")


def test_torch_files_load_with_weights_only(tmp_path):
    model = _tiny()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "m.pt")
    assert _same(model, from_pretrained(tmp_path / "m.pt", "tiny"))

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"state_dict": model.state_dict(), "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        from_pretrained(tmp_path / "evil.pt", "tiny")


def test_original_wan_config_json_is_understood(tmp_path):
    """The config.json shipped in the original Wan-AI/Wan2.1-* repositories (WanModel), verbatim but tiny sizes."""
    from cofe_dit.checkpoint import config_from_wan

    wan_cfg = {
        "_class_name": "WanModel",
        "_diffusers_version": "0.30.0",
        "dim": 32,
        "eps": 1e-06,
        "ffn_dim": 64,
        "freq_dim": 32,
        "in_dim": 4,
        "model_type": "t2v",
        "num_heads": 2,
        "num_layers": 2,
        "out_dim": 4,
        "text_len": 512,
        "text_dim": 16,
    }
    model = _tiny()
    save_file(dict(model.state_dict()), str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(wan_cfg))
    assert _same(model, from_pretrained(tmp_path))
    i2v = config_from_wan({**wan_cfg, "model_type": "i2v", "in_dim": 36, "out_dim": 16, "dim": 5120, "num_heads": 40})
    assert i2v.image_dim == 1280
    with pytest.raises(CheckpointError, match="model_type='flf2v' is not supported"):
        config_from_wan({**wan_cfg, "model_type": "flf2v"})
