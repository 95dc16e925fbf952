"""CoFEPipeline and `cofe sample` on a tiny trained-looking model: the network apart from its trainer, the same frames
as the trainer's own composition, each memory mode equal to none, int8 within tolerance, identity controls whose
defaults change nothing, manifest sampling that survives a kill, and bad input refused by name."""

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
from fitting import precompute_tiny

from cofe_apps.synthetic import hopper, move_off_zero_init

PROMPT = "a woman in a naval uniform turns her head"
SIZE = dict(frames=9, height=64, width=64, steps=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_curated):
    """A tiny TI2V CoFE model whose face branch, gates and head are away from their zero init (so the face matters),
    saved as a Lightning-style checkpoint (with a differing EMA) and exported."""
    from PIL import Image

    from cofe_apps.export import export
    from cofe_apps.module import CoFEModule

    tmp = tmp_path_factory.mktemp("pipeline")
    precompute_tiny(make_curated(tmp / "curated"), tmp / "train")
    module = CoFEModule(dit="tiny-ti2v", dit_overrides={"text_dim": 16}, cofe="tiny", components=str(tmp / "train" /
                        "config.json"), freeze="full", ema_decay=0.99)  # fmt: skip
    module.configure_model()
    move_off_zero_init(module.net)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "cofe": module.cofe_meta(),
            "global_step": 7}  # fmt: skip
    torch.save(ckpt, tmp / "last.ckpt")
    export(tmp / "last.ckpt", tmp / "model.safetensors")
    Image.fromarray(hopper()).save(tmp / "face.png")
    Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(tmp / "blank.png")
    return tmp


@pytest.fixture(scope="module")
def pipe(trained):
    from cofe_apps.pipeline import CoFEPipeline

    return CoFEPipeline.from_pretrained(trained / "model.safetensors", device="cpu")


@pytest.fixture(scope="module")
def face():
    from cofe_apps.components import reference_from_image

    image = hopper()
    return image, reference_from_image(image)


def trainer_path(ckpt: Path, face, *, ema: bool, face_scale: float = 1.0) -> np.ndarray:
    """What sampling was before the pipeline: the LightningModule restored whole, its DiT and face tokens composed
    with the components by hand."""
    from cofe_apps.components import Encoders
    from cofe_apps.io import image_to_tensor, resize_crop
    from cofe_apps.module import CoFEModule
    from cofe_apps.specs import ComponentsSpec
    from cofe_dit import SamplerConfig, sample

    module = CoFEModule.from_checkpoint(ckpt, ema=ema, dtype=torch.float32)
    enc = Encoders(ComponentsSpec.from_dict(module.record))
    image, (ident, head) = face
    feats = {k: torch.from_numpy(v.astype(np.float32)) for k, v in enc.experts.encode([ident], [head]).items()}
    with torch.no_grad():
        faces, _ = module.face_tokens(feats)
        cfg = module.dit.cfg
        ctx = enc.text.encode_padded([PROMPT])
        neg = enc.text.encode_padded([cfg.sampling.negative_prompt])
        first = enc.vae.encode(resize_crop(image_to_tensor(image), 64, 64)[:, :, None])
        config = SamplerConfig.from_defaults(cfg, steps=SIZE["steps"], face_scale=face_scale)
        latent = sample(module.dit, (1, *enc.geometry.latent_shape(9, 64, 64)), ctx, config=config, seed=3,
                        negative_context=neg, face_tokens=faces, negative_face_tokens=[torch.zeros_like(f) for f in
                        faces], first_frame=first)  # fmt: skip
        video = enc.vae.decode(latent)[0]
    return ((video.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


@pytest.mark.parametrize("source, ema, face_scale", [("last.ckpt", True, 1.0), ("model.safetensors", False, 2.5)])
def test_same_frames_as_the_trainer_path(trained, face, source, ema, face_scale):
    from cofe_apps.pipeline import CoFEPipeline

    pipe = CoFEPipeline.from_pretrained(trained / source, device="cpu", ema=ema)
    image, crops = face
    ours = pipe(image, PROMPT, image, crops=crops, seed=3, face_scale=face_scale, **SIZE)
    assert ours.shape == (9, 64, 64, 3) and ours.std() > 1  # a video, not a constant
    np.testing.assert_array_equal(ours, trainer_path(trained / "last.ckpt", face, ema=ema, face_scale=face_scale))


def test_the_model_is_apart_from_its_trainer(trained):
    """Importing and running the pipeline imports no Lightning, and builds no EMA: the model is the network alone."""
    code = (
        "import sys; from cofe_apps.pipeline import CoFEPipeline; from cofe_apps.model import CoFEModel\n"
        f"p = CoFEPipeline.from_pretrained({str(trained / 'last.ckpt')!r}, device='cpu', ema=True)\n"
        "assert type(p.model) is CoFEModel, type(p.model)\n"
        "assert all(not k.startswith('ema') for k in p.model.state_dict()), 'an EMA was built'\n"
        "assert not any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules), 'lightning'\n"
        "print(sum(t.numel() for t in p.model.state_dict().values()))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_export_holds_the_network_keys_and_dtypes(trained):
    from cofe_apps.model import CoFEModel
    from cofe_apps.weights import ExportReader

    with ExportReader(trained / "model.safetensors") as r:
        keys = set(r.keys())
        meta = r.metadata
    state = torch.load(trained / "last.ckpt", weights_only=True)["state_dict"]
    assert keys == {k for k in state if k.startswith(("dit.", "cofe."))}
    assert json.loads(meta["cofe"])["checkpoint_mode"] == "full" and CoFEModel.__module__ == "cofe_apps.model"


@pytest.mark.parametrize("offload", ["model", "blocks"])
def test_offload_modes_equal_none(trained, pipe, face, offload):
    from cofe_apps.pipeline import CoFEPipeline

    image, crops = face
    want = pipe(image, PROMPT, image, crops=crops, seed=1, **SIZE)
    other = CoFEPipeline.from_pretrained(trained / "model.safetensors", device="cpu", offload=offload)
    np.testing.assert_array_equal(other(image, PROMPT, image, crops=crops, seed=1, **SIZE), want)


def test_int8_within_tolerance(trained, pipe, face):
    from cofe_apps.pipeline import CoFEPipeline

    image, crops = face
    want = pipe(image, PROMPT, image, crops=crops, seed=1, **SIZE).astype(np.float64)
    q = CoFEPipeline.from_pretrained(trained / "model.safetensors", device="cpu", quantize="int8")
    linear = q.model.dit.blocks[0].self_attn.q.weight
    assert "int8" in type(linear).__name__.lower() or "Int8" in type(linear).__name__, type(linear)
    got = q(image, PROMPT, image, crops=crops, seed=1, **SIZE).astype(np.float64)
    psnr = 10 * np.log10(255**2 / max(np.mean((got - want) ** 2), 1e-12))
    assert psnr > 30, f"int8 weight-only sampling drifts: PSNR {psnr:.1f} dB against the bf16/fp32 video"


def test_control_defaults_change_nothing_and_controls_act(pipe, face):
    from cofe_apps.pipeline import IdentityControls

    image, crops = face
    n = pipe.cfg.num_layers
    base = pipe(image, PROMPT, image, crops=crops, seed=2, **SIZE)
    neutral = IdentityControls(branch_scale=tuple([1.0] * n), window=(0.0, 1.0), blocks=tuple(range(n)),
                               expert_weights={"identity": 1.0, "semantic": 1.0, "detail": 1.0})  # fmt: skip
    np.testing.assert_array_equal(pipe(image, PROMPT, image, crops=crops, seed=2, controls=neutral, **SIZE), base)
    for controls in (IdentityControls(branch_scale=0.3), IdentityControls(window=(0.5, 1.0)),
                     IdentityControls(blocks=(0,)), IdentityControls(expert_weights={"identity": 1.0, "detail": 0.0,
                                                                                     "semantic": 0.0})):  # fmt: skip
        other = pipe(image, PROMPT, image, crops=crops, seed=2, controls=controls, **SIZE)
        assert not np.array_equal(other, base), controls
    with pytest.raises(ValueError, match="blocks"):
        pipe(image, PROMPT, image, crops=crops, controls=IdentityControls(blocks=(n,)), **SIZE)
    with pytest.raises(ValueError, match="unknown experts"):
        pipe(image, PROMPT, image, crops=crops, controls=IdentityControls(expert_weights={"nose": 1.0}), **SIZE)


def test_a_batch_call_gives_each_video_as_alone(pipe, face):
    image, crops = face
    alone = [pipe(image, p, image, crops=crops, seed=s, **SIZE) for p, s in ((PROMPT, 4), ("a man smiles", 5))]
    batch = pipe(image, [PROMPT, "a man smiles"], image, crops=crops, seed=[4, 5], **SIZE)
    for a, b in zip(alone, batch, strict=True):  # the prompts meet umT5 in one batch: float rounding, at most 1 level
        diff = np.abs(a.astype(int) - b)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


# --------------------------------------------------------------------------------------------- the command line


def cofe_sample(capsys, *args: str) -> tuple[int, str]:
    """`cofe sample ARGS` in this process (the command's own main, argparse's exits included): (exit code, stderr).
    An exception would escape and fail the test: a refusal must be a message, not a traceback."""
    from cofe_apps.sample import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_manifest_killed_and_rerun_gives_every_video_once(trained, tmp_path, capsys):
    from cofe_bench import ManifestItem, write_manifest

    ids = [f"row{i}" for i in range(4)]
    items = [ManifestItem(id=i, reference=str(trained / "face.png"), prompt=f"{PROMPT} {i}",
                          first_frame=str(trained / "face.png")) for i in ids]  # fmt: skip
    items.insert(2, ManifestItem(id="noface", reference=str(trained / "blank.png"), prompt=PROMPT))
    manifest = write_manifest(items, tmp_path / "bench.jsonl")
    out = tmp_path / "videos"
    args = ["--checkpoint", str(trained / "model.safetensors"), "--manifest", str(manifest), "--out", str(out),
            "--frames", "9", "--height", "64", "--width", "64", "--steps", "3", "--device", "cpu"]  # fmt: skip
    cmd = [str(Path(sys.executable).parent / "cofe"), "sample", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / "row0.mp4").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    assert "row0.mp4" in first and len(first) < 4, f"the kill came too late to test anything: {sorted(first)}"
    assert not [p for p in out.iterdir() if ".tmp" in p.name or p.name.startswith(".")], "half-written files left"
    code, err = cofe_sample(capsys, *args)
    assert code == 1, err[-3000:]  # one row has no face
    assert "noface" in err and "no face" in err
    videos = sorted(p.name for p in out.glob("*.mp4"))
    assert videos == [f"{i}.mp4" for i in ids]
    assert all((out / n).stat().st_mtime_ns == t for n, t in first.items()), "a finished video was redone"
    assert [json.loads(line)["id"] for line in (out / "failures.jsonl").read_text().splitlines()] == ["noface"]
    from cofe_apps.io import read_mp4

    assert read_mp4(out / "row3.mp4")[0].shape == (9, 64, 64, 3)


def test_bad_input_is_refused_by_name(trained, tmp_path, capsys):
    from PIL import Image

    ckpt = str(trained / "model.safetensors")
    base = ["--checkpoint", ckpt, "--prompt", PROMPT, "--device", "cpu", *("--frames 9 --height 64 --width 64 "
            "--steps 2").split()]  # fmt: skip
    out = tmp_path / "x.mp4"
    huge = tmp_path / "huge.png"
    Image.new("1", (30000, 30000)).save(huge)  # a 1-bit PNG: small on disk, 2.7 GB once decoded to RGB
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes((trained / "model.safetensors").read_bytes()[:5000])
    other = tmp_path / "other.json"
    record = json.loads((trained / "train" / "config.json").read_text())
    record["vae"] = {**record["vae"], "family": "wan2.2", "z_dim": 48}  # the TI2V-5B preset's VAE
    record["latent"] = {**record["latent"], "channels": 48, "spatial_stride": 16}
    other.write_text(json.dumps(record))
    ref = ["--reference", str(trained / "face.png"), "--out", str(out)]
    cases = {
        "no face found": ["--reference", str(trained / "blank.png"), "--out", str(out)],
        f"image {huge} is too large to read": ["--reference", str(huge), "--out", str(out)],
        "corrupt.safetensors": [*ref, "--checkpoint", str(corrupt)],
        "48-channel latents": [*ref, "--components", str(other)],
        "flash": [*ref, "--attention", "flash"],
        "--frames: must be >= 1, got 0": [*ref, "--frames", "0"],
    }
    for needle, extra in cases.items():
        code, err = cofe_sample(capsys, *base, *extra)
        assert code == 2 and needle in err, (needle, code, err[-2000:])
        lines = err.strip().splitlines()  # one line; argparse puts its usage before it
        assert needle in lines[-1] and (len(lines) == 1 or lines[0].startswith("usage:")), err
        assert not out.exists() and not list(tmp_path.glob("x.*")), f"{needle}: something was written"


def test_a_first_frame_for_a_t2v_model_is_refused(trained, face):
    from cofe_apps.model import CoFEModel, build_configs
    from cofe_apps.pipeline import CoFEPipeline
    from cofe_apps.specs import ComponentsSpec

    record = json.loads((trained / "train" / "config.json").read_text())
    dit_cfg, cofe_cfg = build_configs("tiny", {"text_dim": 16}, "tiny", None, record)
    pipe = CoFEPipeline(CoFEModel(dit_cfg, cofe_cfg), ComponentsSpec.from_dict(record))
    image, crops = face
    with pytest.raises(ValueError, match="a first frame needs an i2v or ti2v model"):
        pipe(image, PROMPT, image, crops=crops, **SIZE)
    with pytest.raises(ValueError, match="frames must be"):
        pipe(image, PROMPT, crops=crops, **{**SIZE, "frames": 0})


def test_sweep_samples_and_benches_every_point(trained, tmp_path):
    from mlflow.tracking import MlflowClient

    from cofe_apps.sweep import main, parse_grid
    from cofe_bench import ManifestItem, write_manifest

    assert parse_grid(["branch_scale=0.5,1", "blocks=0;0-1"]) == [
        {"branch_scale": "0.5", "blocks": "0"}, {"branch_scale": "0.5", "blocks": "0-1"},
        {"branch_scale": "1", "blocks": "0"}, {"branch_scale": "1", "blocks": "0-1"},
    ]  # fmt: skip
    photo = str(trained / "face.png")
    row = ManifestItem(id="r0", reference=photo, prompt=PROMPT, first_frame=photo)
    manifest = write_manifest([row], tmp_path / "bench.jsonl")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["--checkpoint", str(trained / "model.safetensors"), "--manifest", str(manifest), "--out",
                 str(tmp_path / "sweep"), "--grid", "branch_scale=0.5,1", "--device", "cpu", "--frames", "9",
                 "--height", "64", "--width", "64", "--steps", "2", "--tracking-uri", uri, "--bench",
                 "--random-models --no-progress --recognizer dlib --num-frames 4"])  # fmt: skip
    assert code == 0
    for point in ("branch_scale-0.5", "branch_scale-1"):
        assert (tmp_path / "sweep" / point / "r0.mp4").is_file()
    md = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "sweep branch_scale-0.5" in md and "yaw coverage" in md
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 1000
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cofe-sweep").experiment_id])
    assert sorted(r.data.params.get("control.branch_scale") for r in runs) == ["0.5", "1"]
