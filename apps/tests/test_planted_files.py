"""No file a user or a neighbour with write access can plant runs code: a crafted checkpoint (pickle payload), a shard
named like a `pipe:` command next to real shards."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from PIL import Image

from cofe_apps.io import expand_shards


class Payload:
    """Unpickling this creates a file: the harmless stand-in for an attacker's command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_never_runs(tmp_path, capsys):
    from cofe_apps.export import main as export_main
    from cofe_apps.sample import main as sample_main
    from cofe_apps.synthetic import hopper

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "cofe": {}, "hyper_parameters": Payload(marker)}, evil)
    with open(tmp_path / "evil.pkl", "wb") as f:  # a bare pickle renamed as a checkpoint
        pickle.dump(Payload(marker), f)
    Image.fromarray(hopper()).save(tmp_path / "face.png")
    for ckpt in (evil, tmp_path / "evil.pkl"):
        args = ["--checkpoint", str(ckpt), "--reference", str(tmp_path / "face.png"), "--prompt", "x", "--out",
                str(tmp_path / "o.mp4"), "--device", "cpu"]  # fmt: skip
        assert sample_main(args) == 2
        assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the checkpoint" in err and not marker.exists()


def test_a_shard_named_like_a_pipe_command_is_a_file(tmp_path, monkeypatch, curated_shards):
    from cofe_apps.precompute import PrecomputeConfig, precompute
    from cofe_apps.specs import ExpertsSpec, TextSpec, VAESpec

    folder = tmp_path / "shards"
    folder.mkdir()
    marker = folder / "PWNED"
    for s in curated_shards:
        (folder / Path(s).name).write_bytes(Path(s).read_bytes())
    planted = folder / "pipe:touch PWNED #.tar"  # what webdataset would run as a shell command
    planted.write_bytes(b"")
    monkeypatch.chdir(folder)
    urls = expand_shards("*.tar")
    assert all(u.startswith(str(folder)) for u in urls) and len(urls) == 3
    cfg = PrecomputeConfig(frames=9, height=64, width=64, vae=VAESpec(tiny=True), text=TextSpec(tiny=True, dim=16),
                           experts=ExpertsSpec())  # fmt: skip
    counts = precompute(["*.tar"], tmp_path / "out", cfg, log=lambda *_: None)
    assert counts["samples"] == 6 and not marker.exists()
    # An explicit URL the user writes stays one.
    assert expand_shards("pipe:cat a.tar") == ["pipe:cat a.tar"]
