"""Training through `cofe fit`: MLflow, the README's resume command after a kill, DDP, the loader at scale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from fitting import ROOT, TINY, kill_after, precompute_tiny, recorded, run_fit
from mlflow import MlflowClient
from PIL import Image

from cofe_apps.data import ShardDataModule, TooManyBadSamples
from cofe_apps.io import npy_bytes, read_mp4
from cofe_apps.train import resolve_last


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory, make_curated) -> list[str]:
    tmp = tmp_path_factory.mktemp("train")
    return precompute_tiny(make_curated(tmp / "curated", shards=2, per_shard=3), tmp / "train")


@pytest.mark.slow
def test_kill_then_the_readme_resume_command_continues(tmp_path, train_shards):
    """`cofe fit ... --ckpt_path last` after a SIGKILL: the same step, optimiser, scheduler and EMA, the same MLflow
    run, no replayed batch (the batches after the checkpoint are those of an uninterrupted run); starting again
    without --ckpt_path is refused; sampling from the checkpoint gives a playable mp4 logged in the run."""
    base = ("--checkpoint.every_n_train_steps", "2")
    kill_after(tmp_path, train_shards, "*step=4.ckpt", "--trainer.max_steps", "100000", *base)
    resumes = resolve_last(tmp_path / "fit" / "tiny" / "checkpoints")  # the kill may land between two writes
    saved = torch.load(resumes, map_location="cpu", weights_only=True)
    at = saved["global_step"]
    assert at >= 4 and any(k.startswith("ema.") for k in saved["state_dict"])
    refused = run_fit(tmp_path, train_shards, "--trainer.max_steps", "8", *base, check=False)
    assert refused.returncode == 2 and "--ckpt_path last" in refused.stderr

    run_fit(tmp_path, train_shards, "--trainer.max_steps", str(at + 4), *base, "--ckpt_path", "last")
    last = sorted((tmp_path / "fit").rglob("last.ckpt"))[0]
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == at + 4
    assert {int(s["step"]) for s in state["optimizer_states"][0]["state"].values()} == {at + 4}
    assert state["lr_schedulers"][0]["last_epoch"] == at + 4
    assert any(not torch.equal(state["state_dict"][k], saved["state_dict"][k]) for k in saved["state_dict"]
               if k.startswith("ema."))  # fmt: skip
    assert len(list((tmp_path / "fit").rglob("epoch=*.ckpt"))) <= 3  # bounded retention
    resumed = recorded(tmp_path)

    reference = tmp_path / "reference"
    reference.mkdir()
    run_fit(reference, train_shards, "--trainer.max_steps", str(at + 4), *base)
    uninterrupted = recorded(reference)
    assert {s: resumed[s] for s in range(at, at + 4)} == {s: uninterrupted[s] for s in range(at, at + 4)}

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cofe").experiment_id])  # one run, continued
    assert run.info.run_name == "tiny"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    # Every step logged once, except perhaps the one whose checkpoint was written just before the kill: Lightning
    # saves a step's checkpoint before logging that step's metrics (docs/choices.md, Resume).
    assert max(steps) == at + 3, (at, sorted(steps))
    assert set(range(at - 1)) | set(range(at, at + 4)) <= set(steps) <= set(range(at + 4)), (at, sorted(steps))
    for metric in (
        "train/grad_norm",
        "train/lr",
        "train/samples_per_s",
        "train/tokens_per_s",
        "gates/block00/identity",
    ):
        assert metric in run.data.metrics, metric
    assert run.data.params["version/cofe-dit"] == __import__("cofe_dit").__version__
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "weights", "gates"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "weights")} == {
        "weights/trained.safetensors", "weights/trained_ema.safetensors"}  # fmt: skip

    from cofe_apps.sample import main as sample_main
    from cofe_apps.synthetic import hopper

    Image.fromarray(hopper()).save(tmp_path / "face.png")
    out = tmp_path / "sample.mp4"
    code = sample_main(
        ["--checkpoint", str(last), "--reference", str(tmp_path / "face.png"), "--first-frame",
         str(tmp_path / "face.png"), "--prompt", "a woman in a naval uniform", "--out", str(out), "--frames", "9",
         "--height", "64", "--width", "64", "--steps", "3", "--ema", "--mlflow-run-id", run.info.run_id,
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--device", "cpu"]
    )  # fmt: skip
    frames, _ = read_mp4(out)
    assert code == 0 and frames.shape == (9, 64, 64, 3)
    assert (tmp_path / "sample.ref_id.png").is_file() and (tmp_path / "sample.ref.png").is_file()
    assert "samples" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_ddp_two_processes_see_every_sample_once(tmp_path_factory, make_curated):
    """2 CPU ranks, 4 shards: one epoch covers each of the 12 samples exactly once; logged losses are rank means."""
    tmp = tmp_path_factory.mktemp("ddp")
    shards = precompute_tiny(make_curated(tmp / "curated", shards=4, per_shard=3), tmp / "train")
    run_fit(tmp, shards, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_steps", "3",
            "--data.batch_size", "2", "--checkpoint.every_n_train_steps", "0")  # fmt: skip
    seen = [
        line.split("\t")[3] for f in sorted((tmp / "keys").glob("rank*.txt")) for line in f.read_text().splitlines()
    ]
    expected = {k for s in shards for k in (x["__key__"] for x in wds.WebDataset(s, shardshuffle=False))}
    assert sorted(seen) == sorted(expected) and len(expected) == 12
    losses: dict[int, list[float]] = {}
    for f in (tmp / "keys").glob("loss_rank*.txt"):
        for line in f.read_text().splitlines():
            step, value = line.split("\t")
            losses.setdefault(int(step), []).append(float(value))
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cofe").experiment_id])
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert set(logged) == set(losses) == {0, 1, 2}
    for step, values in losses.items():
        assert len(values) == 2 and logged[step] == pytest.approx(np.mean(values), rel=1e-5)


# ----------------------------------------------------------------------------------------------------- the loader


def _keys(stream) -> list[list[str]]:
    return [b["keys"] for b in stream]


def test_loader_skips_and_counts_broken_samples(tmp_path, train_shards):
    import shutil

    good = tmp_path / "good.tar"
    shutil.copy(train_shards[0], good)
    broken = tmp_path / "broken.tar"
    with wds.TarWriter(str(broken)) as sink:
        sink.write(
            {
                "__key__": "nan",
                "json": b"{}",
                **{f"{a}.npy": npy_bytes(np.full(3, np.nan)) for a in ("latent", "txt", "id", "sem", "det")},
            }
        )
        sink.write({"__key__": "partial", "json": b"{}", "latent.npy": b"garbage"})
    missing = tmp_path / "missing.tar"
    dm = ShardDataModule(
        [str(good), str(broken), str(missing)], batch_size=1, shuffle_buffer=0, text_len=16, max_bad_fraction=0.5
    )
    with pytest.warns(UserWarning, match="skipping a broken sample"):
        batches = list(dm.pipeline())
    assert len(batches) == 3 and dm.counter.bad == 3 and dm.counter.good == 3  # nan, partial, missing shard
    strict = ShardDataModule([str(broken)] * 12, batch_size=1, shuffle_buffer=0, text_len=16, max_bad_fraction=0.1)
    with pytest.raises(TooManyBadSamples, match=r"more than max_bad_fraction=0\.1"), pytest.warns(UserWarning):
        list(strict.pipeline())


def test_uneven_shards_give_every_rank_the_same_batch_count(tmp_path, make_curated):
    """3 shards of 3, 3 and 1 samples over 2 ranks x 2 workers... and over 2 ranks: equal batch counts, so DDP cannot
    hang; too few shards for ranks x workers is a clear error."""
    shards = precompute_tiny(make_curated(tmp_path / "c", shards=2, per_shard=3), tmp_path / "t")
    small = precompute_tiny(make_curated(tmp_path / "c1", shards=1, per_shard=1), tmp_path / "t1")
    urls = [*shards, *small]
    dm = ShardDataModule(urls, batch_size=1, shuffle_buffer=0, text_len=16)
    per_rank = [_keys(dm.stream(rank, 2, epoch)) for epoch in (0, 1, 2) for rank in (0, 1)]
    for e in range(3):
        assert len(per_rank[2 * e]) == len(per_rank[2 * e + 1]) >= 1
    with pytest.raises(ValueError, match="3 shards cannot feed 2 ranks x 2 workers"):
        ShardDataModule(urls, batch_size=1, num_workers=2).stream(0, 2)


def test_shard_order_and_shuffle_are_seeded_per_epoch(tmp_path, make_curated):
    shards = precompute_tiny(make_curated(tmp_path / "c", shards=4, per_shard=2), tmp_path / "t")
    dm = ShardDataModule(shards, batch_size=1, shuffle_buffer=4, text_len=16, seed=3)
    first = [_keys(dm.stream(0, 1, epoch)) for epoch in (0, 1)]
    again = [_keys(ShardDataModule(shards, batch_size=1, shuffle_buffer=4, text_len=16, seed=3).stream(0, 1, e))
             for e in (0, 1)]  # fmt: skip
    assert first == again  # reproducible
    flat = [sorted(k for batch in epoch for k in batch) for epoch in first]
    assert first[0] != first[1] and flat[0] == flat[1]  # reshuffled, same data
    resampled = ShardDataModule(shards, batch_size=2, text_len=16, resampled=True, epoch_samples=6, seed=3)
    draws = _keys(resampled.stream(0, 1, 0))
    assert len(draws) == 3 and draws == _keys(resampled.stream(0, 1, 0))


def test_resumed_stream_skips_exactly_what_was_trained(tmp_path, make_curated):
    shards = precompute_tiny(make_curated(tmp_path / "c", shards=2, per_shard=4), tmp_path / "t")
    dm = ShardDataModule(shards, batch_size=2, shuffle_buffer=4, text_len=16)
    full = _keys(dm.stream(0, 1, 1))
    dm.load_state_dict({"epoch": 1, "batches": 3})
    assert _keys(dm.stream(0, 1, 1)) == full[3:]


# ----------------------------------------------------------------------------------------------- config problems


def _fit_here(tmp: Path, shards: list[str], *extra: str, monkeypatch) -> None:
    """`cofe fit` in this process (no second start-up of Lightning and MLflow)."""
    from cofe_apps.train import main as fit_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    monkeypatch.chdir(tmp)
    fit_main(["--config", TINY, "--data.train_shards", json.dumps(shards), "--trainer.default_root_dir",
              str(tmp / "fit"), "--trainer.enable_progress_bar", "false", *extra])  # fmt: skip


def test_config_typo_names_the_key(tmp_path, train_shards, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _fit_here(tmp_path, train_shards, "--model.lerning_rate", "0.1", monkeypatch=monkeypatch)
    assert "lerning_rate" in capsys.readouterr().err


def test_checkpoint_of_another_preset_is_a_clear_error(tmp_path, train_shards, monkeypatch):
    from cofe_dit import CheckpointError, DiT, DiTConfig, save

    save(DiT(DiTConfig.from_name("tiny-i2v", text_dim=16)), tmp_path / "i2v")
    with pytest.raises(CheckpointError, match=r"different architecture: .*in_dim=12"):
        _fit_here(tmp_path, train_shards, "--model.dit_weights", str(tmp_path / "i2v"), monkeypatch=monkeypatch)


def test_components_that_disagree_with_the_preset_fail_before_training(tmp_path, train_shards):
    from cofe_apps.module import CoFEModule

    components = str(Path(train_shards[0]).parent / "config.json")
    with pytest.raises(ValueError, match=r"4-channel latents; the 'wan2\.1-t2v-1\.3b' DiT predicts 16"):
        CoFEModule(dit="wan2.1-t2v-1.3b", components=components, freeze="full")
    with pytest.raises(ValueError, match="16-d text states; the 'tiny-ti2v' DiT reads text_dim=32"):
        CoFEModule(dit_overrides={"text_dim": 32}, components=components, freeze="full")
    with pytest.raises(ValueError, match=r"identity expert width 16; .* produces 128-d pooled"):
        CoFEModule(dit_overrides={"text_dim": 16}, components=components, freeze="full",
                   cofe_overrides={"experts": {"identity": [16, "mlp"], "semantic": 64, "detail": 48}})  # fmt: skip
    with pytest.raises(ValueError, match="strides \\(4, 8, 8\\); the 'tiny-ti2v' DiT is trained on latents of a "
                                         "\\(4, 16, 16\\) VAE"):  # fmt: skip
        CoFEModule(dit_overrides={"text_dim": 16, "vae_stride": (4, 16, 16)}, components=components, freeze="full")


@pytest.mark.parametrize(
    "config", ["wan2.1-t2v-1.3b-cofe.yaml", "wan2.2-ti2v-5b-cofe.yaml", "wan2.1-i2v-14b-cofe.yaml", "tiny-fsdp.yaml"]
)
def test_sharded_configs_parse(config, capsys):
    """The GPU configs (FSDP2 per DiT block, bf16, activation checkpointing) and the CPU FSDP one parse."""
    from cofe_apps.train import main as fit_main

    with pytest.raises(SystemExit) as info:
        fit_main(["--config", str(ROOT / "apps/configs" / config), "--data.train_shards", "x.tar", "--print_config"])
    assert info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "FSDP2Strategy" in printed and "gradient_checkpointing: true" in printed


def test_raw_clip_mode_trains_from_curated_shards(curated_shards, train_shards):
    """Raw mode decodes curated clips to the bucket and the module encodes them with the recorded components."""
    dm = ShardDataModule(curated_shards, batch_size=2, shuffle_buffer=0, mode="raw", frames=9, height=64, width=64)
    batch = next(iter(dm.pipeline()))
    assert batch["video"].shape == (2, 3, 9, 64, 64) and batch["video"].abs().max() <= 1
    assert batch["ref_id"][0].shape == (112, 112, 3) and len(batch["ref"]) == 2
    from cofe_apps.module import CoFEModule

    module = CoFEModule(dit_overrides={"text_dim": 16}, freeze="full", raw_text_len=16,
                        components=str(Path(train_shards[0]).parent / "config.json"))  # fmt: skip
    module.configure_model()
    loss, extra = module(batch)
    loss.backward()
    assert torch.isfinite(loss) and extra["gates"].shape == (2, 2, 3)
    bare = CoFEModule(dit_overrides={"text_dim": 16}, freeze="full",
                      cofe_overrides={"experts": {"identity": [128, "mlp"], "semantic": 64, "detail": 48}})  # fmt: skip
    bare.configure_model()
    with pytest.raises(ValueError, match="needs CoFEModule\\(components="):
        bare(batch)


def test_resume_picks_the_checkpoint_that_got_furthest_and_tidies_half_written_ones(tmp_path):
    """A kill between the step checkpoint and last.ckpt resumes from the step checkpoint; a half-written
    checkpoint (file or sharded folder) is never chosen and is removed by the starting process only."""
    for name, step in (("last.ckpt", 8), ("epoch=1-step=6.ckpt", 6), ("epoch=2-step=10.ckpt", 10)):
        torch.save({"global_step": step}, tmp_path / name)
    whole = (tmp_path / "epoch=2-step=10.ckpt").read_bytes()
    (tmp_path / "epoch=3-step=12.ckpt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "epoch=3-step=14.ckpt").mkdir()  # a sharded checkpoint without its metadata
    (tmp_path / "epoch=3-step=14.ckpt" / "__0_0.distcp").write_bytes(b"x")

    assert resolve_last(tmp_path).name == "epoch=2-step=10.ckpt"
    assert (tmp_path / "epoch=3-step=12.ckpt").exists()  # another rank's view: nothing changed
    assert (tmp_path / "last.ckpt").read_bytes() != whole
    assert resolve_last(tmp_path, tidy=True).name == "last.ckpt"  # the starting process brings last.ckpt forward
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=1-step=6.ckpt", "epoch=2-step=10.ckpt", "last.ckpt"]
    assert (tmp_path / "last.ckpt").read_bytes() == whole

    (tmp_path / "last.ckpt").unlink()  # a last.ckpt that is not whole (new files replace old ones by rename)
    (tmp_path / "last.ckpt").write_bytes(whole[:100])
    assert resolve_last(tmp_path).name == "epoch=2-step=10.ckpt"
    torch.save({"global_step": 16}, tmp_path / "epoch=4-step=16.ckpt")
    sharded = tmp_path / "epoch=4-step=16.ckpt"
    sharded.unlink()
    sharded.mkdir()  # a complete sharded checkpoint: its meta.pt gives the step
    torch.save({"global_step": 16}, sharded / "meta.pt")
    (sharded / ".metadata").write_bytes(b"m")
    assert resolve_last(tmp_path, tidy=True).name == "last.ckpt"
    assert (tmp_path / "last.ckpt").is_dir() and (tmp_path / "last.ckpt" / ".metadata").read_bytes() == b"m"
