"""Checkpoint loading is strict and explains itself; saving round-trips; nothing is unpickled unsafely."""

import json

import pytest
import torch
from safetensors.torch import save_file

from cofe_dit import (
    CheckpointError,
    DiT,
    DiTConfig,
    from_pretrained,
    is_fp32_parameter,
    load_into,
    read_state_dict,
    save,
)
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


# ---------------------------------------------------------------------------------------------------- lazy loading


def _randomised(name="tiny", seed=0, **kw):
    model = _tiny(seed, **kw) if name == "tiny" else DiT(DiTConfig.from_name(name, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def test_from_pretrained_loads_straight_into_the_final_dtype(tmp_path):
    src = _randomised()
    save(src, tmp_path)
    model = from_pretrained(tmp_path, dtype=torch.bfloat16)
    ref = src.state_dict()
    for name, p in model.named_parameters():
        assert not p.is_meta and p.device.type == "cpu", name
        if is_fp32_parameter(name):
            assert p.dtype == torch.float32 and torch.equal(p, ref[name]), name
        else:
            assert p.dtype == torch.bfloat16 and torch.equal(p, ref[name].bfloat16()), name
    # A bf16 checkpoint (with its fp32 islands, as a bf16 model saves) loads back bit for bit.
    save(model, tmp_path / "bf16")
    again = from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    assert again.cfg == model.cfg


def test_meta_model_gets_the_missing_face_branch_initialised(tmp_path):
    save(_randomised(), tmp_path)
    with torch.device("meta"):
        model = DiT(DiTConfig.from_name("tiny", face_dim=24))
    report = load_into(model, tmp_path)
    assert report.ok and len(report.allowed_missing) == 14 and report.loaded == len(read_state_dict(tmp_path))
    assert not any(p.is_meta for p in model.parameters())
    face = model.blocks[1].cross_attn.face
    assert torch.all(face.o.weight == 0) and torch.all(face.o.bias == 0) and torch.all(face.norm_k.weight == 1)
    bound = (6 / (24 + 32)) ** 0.5  # Xavier-uniform for the (32, 24) key projection
    assert 0 < face.k.weight.abs().max() <= bound and face.k.weight.std() > bound / 4


def test_load_into_a_materialised_model_copies_in_place(tmp_path):
    src = _randomised(seed=3)
    save(src, tmp_path)
    model = _tiny()
    before = {n: (id(p), p.data_ptr()) for n, p in model.named_parameters()}
    load_into(model, tmp_path)
    assert {n: (id(p), p.data_ptr()) for n, p in model.named_parameters()} == before
    assert _same(model, src)
    # Asking for a dtype replaces the parameters (islands stay fp32).
    load_into(model, tmp_path, dtype=torch.bfloat16)
    assert (
        model.blocks[0].ffn[0].weight.dtype == torch.bfloat16 and model.time_projection[1].weight.dtype == torch.float32
    )


def test_strict_failure_touches_nothing_and_non_strict_initialises_the_gaps(tmp_path):
    state = {k: v.clone() for k, v in _randomised().state_dict().items()}
    del state["blocks.1.ffn.2.weight"]
    save_file(state, str(tmp_path / "w.safetensors"))
    with torch.device("meta"):
        model = DiT(DiTConfig.from_name("tiny"))
    with pytest.raises(CheckpointError, match="1 missing from the checkpoint"):
        load_into(model, tmp_path / "w.safetensors")
    assert all(p.is_meta for p in model.parameters())
    report = load_into(model, tmp_path / "w.safetensors", strict=False)
    assert report.missing == ["blocks.1.ffn.2.weight"] and not any(p.is_meta for p in model.parameters())
    assert torch.isfinite(model.blocks[1].ffn[2].weight).all() and model.blocks[1].ffn[2].weight.std() > 0


def test_save_streams_a_standard_safetensors_file(tmp_path):
    from safetensors.torch import load_file

    model = _randomised(face_dim=24).to(torch.bfloat16)  # mixed dtypes: bf16 with fp32 islands
    save(model, tmp_path)
    loaded = load_file(str(tmp_path / "diffusion_pytorch_model.safetensors"))
    own = model.state_dict()
    assert set(loaded) == set(own) and all(torch.equal(loaded[k], own[k]) for k in own)
    assert loaded["time_projection.1.weight"].dtype == torch.float32 and loaded["blocks.0.ffn.0.weight"].dtype == (
        torch.bfloat16
    )
    assert not list(tmp_path.glob("*.tmp"))
    save(model, tmp_path / "face", only=[".cross_attn.face."])
    assert set(load_file(str(tmp_path / "face" / "diffusion_pytorch_model.safetensors"))) == {
        k for k in own if ".cross_attn.face." in k
    }
    with torch.device("meta"):
        lazy = DiT(DiTConfig.from_name("tiny"))
    with pytest.raises(ValueError, match="on the meta device"):
        save(lazy, tmp_path / "meta")
    assert not (tmp_path / "meta" / "diffusion_pytorch_model.safetensors").exists()


def test_sharded_model_loads_its_own_shards(tmp_path):
    """load_into fills FSDP2-sharded (DTensor) parameters with their local shard (1-process gloo group)."""
    import torch.distributed as dist

    fully_shard = pytest.importorskip("torch.distributed.fsdp").fully_shard
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    src = _randomised(seed=4)
    save(src, tmp_path / "ckpt")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = _tiny()
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        load_into(model, tmp_path / "ckpt")
        full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
        assert all(torch.equal(full[k], v) for k, v in src.state_dict().items())
    finally:
        dist.destroy_process_group()
