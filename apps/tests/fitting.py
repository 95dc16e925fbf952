"""Helpers of the training tests: precompute tiny shards, run `cofe fit` as a user would (a subprocess with its own
MLflow store, every batch recorded by ``cofe_test_callbacks.RecordBatches``), kill it, read what it trained on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import webdataset as wds

from cofe_apps.precompute import PrecomputeConfig, precompute
from cofe_apps.specs import ExpertsSpec, TextSpec, VAESpec

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "apps/configs/tiny.yaml")
COFE = str(Path(sys.executable).parent / "cofe")
HERE = str(Path(__file__).resolve().parent)
RECORD = "--trainer.callbacks+=cofe_test_callbacks.RecordBatches"


def precompute_tiny(curated: list[str], out: Path, frames: int = 9) -> list[str]:
    cfg = PrecomputeConfig(
        frames=frames, height=64, width=64, vae=VAESpec(tiny=True), text=TextSpec(tiny=True, dim=16),
        experts=ExpertsSpec(),
    )  # fmt: skip
    counts = precompute(curated, out, cfg, log=lambda *_: None)
    assert counts["samples"] == sum(1 for s in curated for _ in wds.WebDataset(s, shardshuffle=False))
    return sorted(str(p) for p in out.glob("*.tar"))


def fit_cmd(tmp: Path, shards: list[str], *extra: str, config: str = TINY) -> tuple[list[str], dict]:
    """The `cofe fit` command line and its environment (MLflow store in ``tmp``, batches recorded in tmp/keys)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]),
           "COFE_TEST_RECORD": str(tmp / "keys")}  # fmt: skip
    cmd = [COFE, "fit", "--config", config, "--data.train_shards", json.dumps(shards), "--trainer.default_root_dir",
           str(tmp / "fit"), "--trainer.enable_progress_bar", "false", RECORD, *extra]  # fmt: skip
    return cmd, env


def run_fit(tmp: Path, shards: list[str], *extra: str, check=True, config: str = TINY) -> subprocess.CompletedProcess:
    cmd, env = fit_cmd(tmp, shards, *extra, config=config)
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=500)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def kill_after(tmp: Path, shards: list[str], pattern: str, *extra: str, config: str = TINY) -> None:
    """Start `cofe fit` (every rank in one process group), SIGKILL the group once ``pattern`` exists in the run's
    checkpoint folder and last.ckpt has been written after it."""
    cmd, env = fit_cmd(tmp, shards, *extra, config=config)
    log = tmp / "killed.log"  # a file, not a pipe: an unread pipe that fills up would block the child
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    deadline = time.time() + 400
    try:
        while True:
            found = list((tmp / "fit").rglob(pattern))
            last = [p for p in (tmp / "fit").rglob("last.ckpt")]
            if found and last and last[0].stat().st_mtime >= found[0].stat().st_mtime:
                time.sleep(0.5)
                break
            assert proc.poll() is None, f"training exited before it was killed: {log.read_text()[-3000:]}"
            assert time.time() < deadline, "no checkpoint after 400 s"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def recorded(tmp: Path, rank: int = 0) -> dict[int, list[str]]:
    """Step -> the keys rank ``rank`` trained on at that step (a resumed run redoes steps: its records win)."""
    out: dict[int, list[str]] = {}
    owner: dict[int, str] = {}
    for line in (tmp / "keys" / f"rank{rank}.txt").read_text().splitlines():
        step, _, pid, key = line.split("\t")
        if owner.get(int(step)) != pid:  # a later process redid this step: its batch replaces the earlier one
            out[int(step)], owner[int(step)] = [], pid
        out[int(step)].append(key)
    return out
