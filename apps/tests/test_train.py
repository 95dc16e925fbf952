"""Training system end to end: curated shards -> precompute -> fit -> MLflow -> resume -> sample; DDP; faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from mlflow import MlflowClient
from PIL import Image

from cofe_apps.components import ExpertsSpec, TextSpec, VAESpec
from cofe_apps.data import ShardDataModule, TooManyBadSamples
from cofe_apps.io import npy_bytes, read_mp4
from cofe_apps.precompute import PrecomputeConfig, precompute

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "apps/configs/tiny.yaml")
COFE = str(Path(sys.executable).parent / "cofe")


def _precompute(curated: list[str], out: Path) -> list[str]:
    cfg = PrecomputeConfig(
        frames=9, height=64, width=64, vae=VAESpec(tiny=True), text=TextSpec(tiny=True, dim=16), experts=ExpertsSpec()
    )
    counts = precompute(curated, out, cfg, log=lambda *_: None)
    assert counts["samples"] == sum(1 for s in curated for _ in wds.WebDataset(s, shardshuffle=False))
    return sorted(str(p) for p in out.glob("*.tar"))


def _fit_cmd(tmp: Path, shards: list[str], *extra: str) -> tuple[list[str], dict]:
    """The `cofe fit` command line on the tiny config, and its environment (MLflow store in ``tmp``)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "PYTHONWARNINGS": "ignore"}
    cmd = [COFE, "fit", "--config", TINY, "--data.train_shards", json.dumps(shards), "--trainer.default_root_dir",
           str(tmp / "fit"), "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip
    return cmd, env


def _fit(tmp: Path, shards: list[str], *extra: str, check=True) -> subprocess.CompletedProcess:
    cmd, env = _fit_cmd(tmp, shards, *extra)
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=500)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory, make_curated) -> list[str]:
    tmp = tmp_path_factory.mktemp("train")
    return _precompute(make_curated(tmp / "curated", shards=2, per_shard=3), tmp / "train")


def test_precompute_writes_training_samples_and_resumes(tmp_path, curated_shards):
    out = tmp_path / "train"
    shards = _precompute(curated_shards, out)
    sample = next(iter(wds.WebDataset(shards[0], shardshuffle=False)))
    assert {"json", "ref.png", "latent.npy", "txt.npy", "id.npy", "sem.npy", "det.npy"} <= set(sample)
    mtimes = {p: Path(p).stat().st_mtime_ns for p in shards}
    cfg = PrecomputeConfig(frames=9, height=64, width=64)
    assert precompute(curated_shards, out, cfg, log=lambda *_: None)["samples"] == 0  # finished shards are skipped
    assert {p: Path(p).stat().st_mtime_ns for p in shards} == mtimes
    assert not list(out.glob("*.partial"))


def test_precompute_records_bad_samples_and_continues(tmp_path, curated_shards):
    bad = tmp_path / "bad.tar"
    with wds.TarWriter(str(bad)) as sink:
        sink.write({"__key__": "broken", "mp4": b"not a video", "json": b"{}", "ref.png": b""})
        sink.write({"__key__": "noref", "mp4": b"x", "json": b"{}"})
    cfg = PrecomputeConfig(frames=9, height=64, width=64, vae=VAESpec(tiny=True), text=TextSpec(tiny=True))
    counts = precompute([*curated_shards, str(bad)], tmp_path / "out", cfg, log=lambda *_: None)
    assert counts["skipped"] == 2 and counts["samples"] == 6
    reasons = [json.loads(line) for line in (tmp_path / "out" / "report.jsonl").read_text().splitlines()]
    assert {r["key"] for r in reasons} == {"broken", "noref"} and all(r["reason"] for r in reasons)


def _fit_here(tmp: Path, shards: list[str], *extra: str, monkeypatch) -> None:
    """`cofe fit` in this process (no second start-up of Lightning and MLflow)."""
    from cofe_apps.train import main as fit_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    monkeypatch.chdir(tmp)
    fit_main(
        [
            "--config",
            TINY,
            "--data.train_shards",
            json.dumps(shards),
            "--trainer.default_root_dir",
            str(tmp / "fit"),
            "--trainer.enable_progress_bar",
            "false",
            *extra,
        ]
    )


@pytest.mark.slow
def test_fit_killed_resume_mlflow_and_sample(tmp_path, train_shards, monkeypatch):
    """End to end: fit in a process that is SIGKILLed after its step-4 checkpoint; resume from it (no optimiser
    step lost or repeated); the MLflow run holds metrics, config, versions, weights and checkpoints; sample from the
    checkpoint to a playable mp4 logged in the run."""
    cmd, env = _fit_cmd(
        tmp_path, train_shards, "--trainer.max_steps", "100000", "--checkpoint.every_n_train_steps", "2"
    )
    log = tmp_path / "killed.log"  # a file, not a pipe: an unread pipe that fills up would block the child
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 400
    try:
        while not list((tmp_path / "fit").rglob("*step=6.ckpt")):  # step 4 is complete once step 6 is being made
            assert proc.poll() is None, f"training exited before it was killed: {log.read_text()[-3000:]}"
            assert time.time() < deadline, "no checkpoint after 400 s"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = sorted((tmp_path / "fit").rglob("*step=4.ckpt"))[0]
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4 and saved["ema"]

    _fit_here(
        tmp_path,
        train_shards,
        "--trainer.max_steps",
        "8",
        "--checkpoint.every_n_train_steps",
        "2",
        "--ckpt_path",
        str(ckpt),
        monkeypatch=monkeypatch,
    )
    last = sorted((tmp_path / "fit").rglob("*step=8.ckpt"))[0]
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 8
    assert {int(s["step"]) for s in state["optimizer_states"][0]["state"].values()} == {8}  # 4 before + 4 after
    assert state["lr_schedulers"][0]["last_epoch"] == 8
    assert any(not torch.equal(state["ema"][k], saved["ema"][k]) for k in saved["ema"])  # the EMA went on

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cofe").experiment_id], order_by=["start_time DESC"])
    run = runs[0]  # the resumed run
    for metric in (
        "train/loss",
        "train/grad_norm",
        "train/lr",
        "train/samples_per_s",
        "train/tokens_per_s",
        "gates/block00/identity",
    ):
        assert metric in run.data.metrics, metric
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [4, 5, 6, 7]
    assert run.data.params["version/cofe-dit"] == __import__("cofe_dit").__version__
    assert run.data.params["git_revision"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "weights", "gates"} <= artifacts
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert "max_steps: 8" in Path(config).read_text()
    weights = {a.path for a in client.list_artifacts(run.info.run_id, "weights")}
    assert weights == {"weights/trained.safetensors", "weights/trained_ema.safetensors"}

    from cofe_apps.sample import main as sample_main
    from cofe_apps.synthetic import hopper, reference_crop

    Image.fromarray(reference_crop()).save(tmp_path / "ref.png")
    Image.fromarray(hopper()[:360, 60:420]).save(tmp_path / "first.png")
    out = tmp_path / "sample.mp4"
    code = sample_main(
        [
            "--checkpoint",
            str(last),
            "--components",
            str(Path(train_shards[0]).parent / "config.json"),
            "--reference",
            str(tmp_path / "ref.png"),
            "--first-frame",
            str(tmp_path / "first.png"),
            "--prompt",
            "a woman in a space suit",
            "--out",
            str(out),
            "--frames",
            "9",
            "--steps",
            "3",
            "--ema",
            "--mlflow-run-id",
            run.info.run_id,
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ]
    )
    frames, fps = read_mp4(out)
    assert code == 0 and frames.shape == (9, 64, 64, 3) and fps == 16
    assert "samples" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_ddp_two_processes_see_every_sample_once(tmp_path_factory, make_curated):
    """2 CPU ranks, 4 shards: one epoch covers each of the 12 samples exactly once; logged losses are rank means."""
    tmp = tmp_path_factory.mktemp("ddp")
    shards = _precompute(make_curated(tmp / "curated", shards=4, per_shard=3), tmp / "train")
    keys_dir = tmp / "keys"
    _fit(
        tmp,
        shards,
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.max_steps",
        "3",
        "--data.batch_size",
        "2",
        "--model.record_keys",
        str(keys_dir),
        "--checkpoint.every_n_train_steps",
        "0",
    )
    seen = [line.split("\t")[1] for f in sorted(keys_dir.glob("rank*.txt")) for line in f.read_text().splitlines()]
    assert len(list(keys_dir.glob("rank*.txt"))) == 2
    expected = {k for s in shards for k in (x["__key__"] for x in wds.WebDataset(s, shardshuffle=False))}
    assert sorted(seen) == sorted(expected) and len(expected) == 12
    losses = {}
    for f in keys_dir.glob("loss_rank*.txt"):
        for line in f.read_text().splitlines():
            step, value = line.split("\t")
            losses.setdefault(int(step), []).append(float(value))
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cofe").experiment_id])
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert set(logged) == set(losses) == {0, 1, 2}
    for step, values in losses.items():
        assert len(values) == 2 and logged[step] == pytest.approx(np.mean(values), rel=1e-5)


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


def test_uneven_shards_over_ranks_is_an_error(train_shards):
    dm = ShardDataModule(train_shards[:1], batch_size=1)
    with pytest.raises(ValueError, match="1 shards do not split evenly over 2 ranks"):
        dm.pipeline(rank=0, world_size=2)


def test_config_typo_names_the_key(tmp_path, train_shards, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _fit_here(tmp_path, train_shards, "--model.lerning_rate", "0.1", monkeypatch=monkeypatch)
    assert "lerning_rate" in capsys.readouterr().err


def test_checkpoint_of_another_preset_is_a_clear_error(tmp_path, train_shards, monkeypatch):
    from cofe_dit import CheckpointError, DiT, DiTConfig, save

    save(DiT(DiTConfig.from_name("tiny-i2v")), tmp_path / "i2v")
    with pytest.raises(CheckpointError, match="different architecture: model_type=i2v"):
        _fit_here(tmp_path, train_shards, "--model.dit_weights", str(tmp_path / "i2v"), monkeypatch=monkeypatch)


@pytest.mark.parametrize("config", ["wan2.1-t2v-1.3b-cofe.yaml", "wan2.2-ti2v-5b-cofe.yaml"])
def test_gpu_configs_parse(config, capsys):
    """The GPU configs (FSDP per DiT block, bf16, activation checkpointing) parse and resolve their classes."""
    from cofe_apps.train import main as fit_main

    with pytest.raises(SystemExit) as info:
        fit_main(["--config", str(ROOT / "apps/configs" / config), "--data.train_shards", "x.tar", "--print_config"])
    assert info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "FSDPStrategy" in printed and "DiTBlock" in printed and "bf16-mixed" in printed


def test_raw_clip_mode_trains_from_curated_shards(tmp_path, curated_shards, train_shards):
    """Raw mode decodes curated clips to the bucket and the module encodes them with the recorded components."""
    dm = ShardDataModule(curated_shards, batch_size=2, shuffle_buffer=0, mode="raw", frames=9, height=64, width=64)
    batch = next(iter(dm.pipeline()))
    assert batch["video"].shape == (2, 3, 9, 64, 64) and batch["video"].abs().max() <= 1
    assert len(batch["ref"]) == 2 and batch["ref"][0].shape == (112, 112, 3)
    from cofe_apps.module import CoFEModule

    module = CoFEModule(
        dit_overrides={"text_dim": 16},
        cofe_overrides={"experts": EXPERTS},
        freeze="full",
        components=str(Path(train_shards[0]).parent / "config.json"),
        raw_text_len=16,
    )
    loss, extra = module(batch)
    loss.backward()
    assert torch.isfinite(loss) and extra["gates"].shape == (2, 2, 3)
    with pytest.raises(ValueError, match="needs CoFEModule\\(components="):
        CoFEModule(dit_overrides={"text_dim": 16}, cofe_overrides={"experts": EXPERTS}, freeze="full")(batch)


EXPERTS = {"identity": [128, "mlp"], "semantic": [64, "perceiver"], "detail": [48, "perceiver"]}
