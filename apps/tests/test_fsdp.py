"""The sharded path on 2 CPU processes (FSDP2 through ModelParallelStrategy, as the GPU configs): train, SIGKILL,
resume, export, sample; the same run under DDP gives the same weights. Restore and sample without the base folder;
slim checkpoints; broken checkpoints fail clearly and `cofe export` leaves nothing behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from fitting import ROOT, kill_after, precompute_tiny, recorded, run_fit
from PIL import Image
from safetensors.torch import load_file

from cofe_apps.export import main as export_main
from cofe_apps.sample import main as sample_main
from cofe_apps.synthetic import hopper

FSDP = str(ROOT / "apps/configs/tiny-fsdp.yaml")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, make_curated) -> list[str]:
    tmp = tmp_path_factory.mktemp("fsdp-data")
    return precompute_tiny(make_curated(tmp / "curated", shards=4, per_shard=2), tmp / "train")


@pytest.fixture(scope="module")
def face(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("face") / "face.png"
    Image.fromarray(hopper()).save(path)
    return str(path)


def _sample(ckpt: Path, face: str, out: Path, *extra: str) -> int:
    return sample_main(["--checkpoint", str(ckpt), "--reference", face, "--first-frame", face, "--prompt", "a woman",
                        "--out", str(out), "--frames", "9", "--height", "64", "--width", "64", "--steps", "2",
                        "--device", "cpu", *extra])  # fmt: skip


STEPS = ("--checkpoint.every_n_train_steps", "2", "--model.gradient_checkpointing", "true")


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory, shards) -> Path:
    """A tiny-fsdp run on 2 processes, SIGKILLed after its step-2 checkpoint and resumed to step 4."""
    fsdp = tmp_path_factory.mktemp("fsdp")
    kill_after(fsdp, shards, "*step=2.ckpt", "--trainer.max_steps", "100000", *STEPS, config=FSDP)
    last = next((fsdp / "fit").rglob("last.ckpt"))
    assert last.is_dir() and {p.name for p in last.iterdir()} >= {"__0_0.distcp", "__1_0.distcp", "meta.pt"}
    run_fit(fsdp, shards, "--trainer.max_steps", "4", *STEPS, "--ckpt_path", "last", config=FSDP)
    return fsdp


@pytest.mark.slow
def test_fsdp_kill_resume_export_equals_ddp(tmp_path, shards, fsdp, face):
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    run_fit(ddp, shards, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_steps", "4", *STEPS)
    last = next((fsdp / "fit").rglob("last.ckpt"))
    assert torch.load(last / "meta.pt", map_location="cpu", weights_only=True)["global_step"] == 4
    assert recorded(fsdp, 0)[3] == recorded(ddp, 0)[3] and recorded(fsdp, 1)[3] == recorded(ddp, 1)[3]

    exports = {}
    for name, ckpt in (("ddp", next((ddp / "fit").rglob("last.ckpt"))), ("fsdp", last)):
        for ema in (False, True):
            out = tmp_path / f"{name}{'_ema' if ema else ''}.safetensors"
            assert export_main(["--checkpoint", str(ckpt), "--out", str(out), *(["--ema"] if ema else [])]) == 0
            exports[name, ema] = load_file(out)
    assert exports["ddp", False].keys() == exports["fsdp", False].keys()
    for key, value in exports["ddp", False].items():
        torch.testing.assert_close(exports["fsdp", False][key], value, atol=1e-5, rtol=1e-4, msg=key)
    moved = [k for k in exports["fsdp", False] if not torch.equal(exports["fsdp", False][k], exports["fsdp", True][k])]
    assert moved and all(k.startswith(("dit.", "cofe.")) for k in moved)  # the EMA lags the trained weights

    # The periodic export of the trained weights gathers every shard (not rank 0's).
    trained = load_file(next((fsdp / "fit").rglob("trained.safetensors")))
    for key, value in trained.items():
        torch.testing.assert_close(value, exports["fsdp", False][key], msg=key)

    for ckpt in (last, tmp_path / "fsdp.safetensors"):
        assert _sample(ckpt, face, tmp_path / f"{Path(ckpt).stem}.mp4") == 0
    assert _sample(last, face, tmp_path / "ema.mp4", "--ema") == 0


@pytest.mark.slow
def test_restore_without_the_base_folder_and_slim_checkpoints(tmp_path, shards, face, capsys):
    from cofe_dit import DiT, DiTConfig, save

    base = tmp_path / "base"
    with torch.random.fork_rng():
        torch.manual_seed(1)
        dit = DiT(DiTConfig.from_name("tiny-ti2v", text_dim=16))
        torch.nn.init.normal_(dit.head.head.weight, std=0.02)  # a "pretrained" head, so CoFE gets gradients
    save(dit, base)
    common = ("--model.dit_weights", str(base), "--model.freeze", "cofe", "--trainer.max_steps", "2",
              "--checkpoint.every_n_train_steps", "2")  # fmt: skip
    run_fit(tmp_path, shards, *common)
    run_fit(tmp_path, shards, *common, "--name", "slim", "--model.checkpoint_mode", "slim")
    full = next((tmp_path / "fit").rglob("tiny/checkpoints/last.ckpt"))
    slim = next((tmp_path / "fit").rglob("slim/checkpoints/last.ckpt"))
    kept = {name: set(torch.load(c, map_location="cpu", weights_only=True)["state_dict"]) for name, c in
            (("full", full), ("slim", slim))}  # fmt: skip
    assert "dit.blocks.0.ffn.0.weight" in kept["full"] and "dit.blocks.0.ffn.0.weight" not in kept["slim"]
    assert "dit.blocks.0.cross_attn.face.k.weight" in kept["slim"] and kept["slim"] < kept["full"]
    moved = tmp_path / "base-moved"
    shutil.move(base, moved)
    assert _sample(full, face, tmp_path / "full.mp4") == 0  # self-contained: the base is not read
    assert _sample(slim, face, tmp_path / "slim.mp4") == 2  # slim: the base is needed, and it moved
    assert "no checkpoint at" in capsys.readouterr().err
    assert _sample(slim, face, tmp_path / "slim.mp4", "--dit-weights", str(moved)) == 0
    weights = next(moved.glob("*.safetensors"))
    state = load_file(weights)
    state["head.head.bias"] += 1
    from safetensors.torch import save_file

    save_file(state, str(weights))
    assert _sample(slim, face, tmp_path / "slim2.mp4", "--dit-weights", str(moved)) == 2
    assert "sha256" in capsys.readouterr().err


def test_broken_checkpoints_are_clear_errors_and_export_leaves_nothing(tmp_path, capsys):
    sharded = tmp_path / "last.ckpt"
    sharded.mkdir()
    (sharded / "meta.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "x.safetensors"
    assert export_main(["--checkpoint", str(sharded), "--out", str(out)]) == 2
    assert "cannot read the sharded checkpoint" in capsys.readouterr().err and not list(tmp_path.glob("*.safetensors"))
    (tmp_path / "bad.ckpt").write_bytes(b"\x00" * 64)
    assert export_main(["--checkpoint", str(tmp_path / "bad.ckpt"), "--out", str(out)]) == 2
    assert "bad.ckpt" in capsys.readouterr().err
    assert export_main(["--checkpoint", str(tmp_path / "absent.ckpt"), "--out", str(out)]) == 2
    assert not list(tmp_path.glob("*safetensors*"))


@pytest.mark.slow
def test_sharded_checkpoint_with_a_rank_missing_or_truncated(tmp_path, fsdp, capsys):
    last = next((fsdp / "fit").rglob("last.ckpt"))
    broken = tmp_path / "broken.ckpt"
    shutil.copytree(last, broken)
    (broken / "__1_0.distcp").unlink()
    out = tmp_path / "out.safetensors"
    assert export_main(["--checkpoint", str(broken), "--out", str(out)]) == 2
    assert "__1_0.distcp" in capsys.readouterr().err and not out.exists()
    shutil.rmtree(broken)
    shutil.copytree(last, broken)
    part = broken / "__0_0.distcp"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    assert export_main(["--checkpoint", str(broken), "--out", str(out)]) == 2
    assert "broken.ckpt" in capsys.readouterr().err and not out.exists()
