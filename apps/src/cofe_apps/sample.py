"""`cofe sample`: reference face (+ first frame) + prompt -> H.264 mp4, or a benchmark manifest -> one mp4 per row.

A thin shell over :class:`cofe_apps.pipeline.CoFEPipeline` (the Python API: the same options by name).

``--checkpoint`` takes any of: a Lightning checkpoint file of `cofe fit` (``last.ckpt``), the distributed-checkpoint
directory of a sharded run, or a ``cofe export`` safetensors file. The checkpoint is self-contained: it holds the
components record of the training data (VAE, text encoder, experts, CLIP image encoder; pass ``--components`` to
use another copy of precompute's ``config.json``, e.g. with the weights at other paths), so the geometry of the
video (latent channels, VAE strides) is the training data's, and the base Wan folder is never read.

The reference photo goes through face detection: the largest face is aligned to the ArcFace template for the
identity expert and cut as the whitened head crop for the semantic and detail experts, exactly as curation does;
both crops are saved beside the video (``OUT.ref_id.png``, ``OUT.ref.png``). Defaults (steps, shift, guidance,
solver, negative prompt, frames, size, fps) are those of the DiT preset (Wan's own).

``--manifest bench.jsonl --out DIR`` generates every row (reference, prompt, first frame, optional seed) as
``DIR/<id>.mp4``, the folder ``cofe bench --videos DIR`` reads. Each video is written through a temporary file, so a
killed run leaves only whole videos, and a rerun skips them. A row that fails (an unreadable image, no face) is
reported in ``DIR/failures.jsonl`` and the others go on (exit 1 if any failed). Across GPUs, launch it with
torchrun (``torchrun --nproc-per-node 8 -m cofe_apps.sample ...``): rank r takes rows r, r + world, ...
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


def parse_floats(text: str, what: str) -> float | tuple[float, ...]:
    """``"0.8"`` -> 0.8; ``"1,1,0.5"`` -> a tuple (one per block)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{what} {text!r}: give a number or comma-separated numbers") from None
    return values[0] if len(values) == 1 else values


def parse_expert_weights(text: str) -> dict[str, float]:
    """``"identity=1,semantic=0.5,detail=0"`` -> a dict."""
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--expert-weights {text!r}: give name=weight pairs, e.g. identity=1,detail=0.5") from None
    return out


def parse_window(text: str) -> tuple[float, float]:
    """``"0.2:1"`` -> (0.2, 1.0)."""
    start, _, end = text.partition(":")
    try:
        return float(start), float(end)
    except ValueError:
        raise ValueError(f"--face-window {text!r}: give START:END fractions of the steps, e.g. 0.2:1") from None


def parse_blocks(text: str) -> tuple[int, ...]:
    """``"0-9,20"`` -> (0, 1, ..., 9, 20)."""
    blocks: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.partition("-")
            blocks.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise ValueError(f"--face-blocks {text!r}: give block indices and ranges, e.g. 0-9,20") from None
    return tuple(blocks)


def identity_controls(a: argparse.Namespace):
    """The :class:`cofe_apps.pipeline.IdentityControls` the options name."""
    from cofe_apps.pipeline import IdentityControls

    return IdentityControls(
        branch_scale=parse_floats(a.branch_scale, "--branch-scale"),
        expert_weights=parse_expert_weights(a.expert_weights) if a.expert_weights else None,
        window=parse_window(a.face_window),
        blocks=parse_blocks(a.face_blocks) if a.face_blocks else None,
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The arguments of `cofe sample` (built without importing torch: ``--help`` stays fast)."""
    from cofe_apps.helptext import HelpFormatter

    p = argparse.ArgumentParser(prog="cofe sample", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--checkpoint", required=True, help="a `cofe export` file, last.ckpt of `cofe fit` or a sharded checkpoint dir"
    )
    p.add_argument(
        "--reference", help="a photo of the person, the largest face is used (required), except with --manifest"
    )
    p.add_argument(
        "--first-frame", help="first frame image (required for i2v, optional for ti2v models; default: none)"
    )
    p.add_argument("--prompt", help="what the video shows (required), except with --manifest")
    p.add_argument(
        "--manifest",
        help="a `cofe bench` manifest (JSONL: id, reference, prompt, first_frame, optional seed): one video per row "
        "into the folder --out, as `cofe bench --videos` reads it; finished rows are skipped on a rerun; under "
        "torchrun each rank takes rows rank, rank + world, ... (default: one video)",
    )
    p.add_argument("--negative-prompt", default=None, help="negative prompt (default: the preset's, Wan's own)")
    p.add_argument(
        "--out", required=True, help="output .mp4 (the reference crops are saved beside it); with --manifest a folder"
    )
    p.add_argument("--components", help="another copy of precompute's config.json (default: the checkpoint's)")
    p.add_argument("--dit-weights", help="the base Wan folder, for slim checkpoints only (default: none)")
    p.add_argument("--frames", type=positive_int, default=None, help="frames, 1 + 4k (default: the preset's)")
    p.add_argument("--height", type=positive_int, default=None, help="height in pixels (default: the preset's)")
    p.add_argument("--width", type=positive_int, default=None, help="width in pixels (default: the preset's)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of the mp4 (default: the preset's)")
    p.add_argument("--steps", type=positive_int, default=None, help="solver steps (default: the preset's)")
    p.add_argument("--shift", type=float, default=None, help="timestep shift (default: the preset's)")
    p.add_argument(
        "--solver", default=None, choices=["unipc", "dpmpp_2m", "euler"], help="sampler (default: the preset's)"
    )
    p.add_argument("--text-scale", type=float, default=None, help="text guidance scale (default: the preset's)")
    p.add_argument("--face-scale", type=float, default=1.0, help="face guidance scale (1: no extra face guidance)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (with --manifest: for rows without a seed)")
    p.add_argument("--ema", action="store_true", help="sample with the EMA weights (training checkpoints)")
    ident = p.add_argument_group("identity controls (defaults: as trained)")
    ident.add_argument(
        "--branch-scale", default="1", help="face-branch strength, one number or one per block (comma-separated)"
    )
    ident.add_argument(
        "--expert-weights",
        help="weights on the learned expert gates, renormalised, e.g. identity=1,detail=0.5 (default: as learned)",
    )
    ident.add_argument("--face-window", default="0:1", help="START:END fractions of the steps that see the face")
    ident.add_argument("--face-blocks", help="the DiT blocks that see the face, e.g. 0-19 (default: all)")
    mem = p.add_argument_group("memory and speed")
    mem.add_argument(
        "--offload",
        choices=["none", "model", "blocks"],
        default="none",
        help="none: all on the GPU; model: each component on the GPU only while it runs; blocks: also stream the "
        "DiT's blocks (24-48 GB cards); see the apps README's table",
    )
    mem.add_argument(
        "--quantize",
        choices=["int8", "fp8"],
        default=None,
        help="weight-only DiT quantisation with torchao; fp8 on CUDA >= 8.9 (default: none)",
    )
    mem.add_argument(
        "--attention", choices=["sdpa", "flash", "sage"], default="sdpa", help="attention kernels (flash, sage: "
        "their packages must be installed)"
    )  # fmt: skip
    mem.add_argument(
        "--batch-guidance", action="store_true", help="run the guidance passes of a step as one batched forward "
        "(faster on a GPU with memory to spare; default: off)"
    )  # fmt: skip
    mem.add_argument(
        "--step-cache", type=float, default=0.0, metavar="THRESHOLD", help="First-Block-Cache: reuse the blocks' "
        "output on steps whose first-block change is below THRESHOLD, e.g. 0.05 (default: 0, off)"
    )  # fmt: skip
    mem.add_argument(
        "--compile", action="store_true", help="torch.compile each DiT block, regional compilation (default: off)"
    )
    mem.add_argument(
        "--vae-tiling", action="store_true", help="decode the video tile by tile, less memory (default: off)"
    )
    mem.add_argument(
        "--batch",
        type=positive_int,
        default=1,
        help="with --manifest: rows per pipeline call, sharing each component's residency (default: 1)",
    )
    p.add_argument("--mlflow-run-id", help="also log the video(s) to this MLflow run (default: none)")
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="MLflow store of --mlflow-run-id ($MLFLOW_TRACKING_URI when set, as for cofe fit)",
    )
    p.add_argument(
        "--device", default=None, help="cuda or cpu (default: cuda when present; under torchrun cuda:LOCAL_RANK)"
    )
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float32"],
        default=None,
        help="DiT compute dtype (default: bf16 on CUDA, fp32 on CPU)",
    )
    return p


def _fail(msg: str) -> int:
    print(f"cofe sample: {msg}", file=sys.stderr)
    return 2


def _steps_bar(total_videos: int):
    """A tqdm bar over the solver steps of the current video, and the callback that moves it."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc="steps", unit="step", leave=False, disable=None)

    def callback(video: int, step: int, steps: int) -> None:
        if step == 0:
            bar.reset(total=steps)
            bar.set_description(f"video {video + 1}/{total_videos}" if total_videos > 1 else "steps")
        bar.update(1)

    return bar, callback


def main(argv: list[str]) -> int:
    """`cofe sample --checkpoint CKPT --reference FACE --prompt TEXT --out OUT.mp4 [...]`, or ``--manifest M --out
    DIR`` for a benchmark set."""
    p = build_parser()
    a = p.parse_args(argv)
    if a.manifest:
        if a.reference or a.prompt or a.first_frame:
            p.error(
                "--manifest gives each row's reference, prompt and first frame: drop --reference/--prompt/--first-frame"
            )
    elif not (a.reference and a.prompt):
        p.error("give --reference and --prompt (or --manifest)")

    from cofe_apps.components import ReferenceError, reference_from_image
    from cofe_apps.io import load_image
    from cofe_apps.weights import TrainingCheckpointError

    errors = (ValueError, FileNotFoundError, ReferenceError, TrainingCheckpointError)
    try:
        controls = identity_controls(a)
        if not a.manifest:  # inputs first: a bad image costs no model load
            reference = load_image(a.reference)
            crops = reference_from_image(reference)
            first = load_image(a.first_frame) if a.first_frame else None
            out = Path(a.out)
            if out.suffix != ".mp4":
                raise ValueError(f"--out {out}: the video is an .mp4 file")
        else:
            from cofe_bench import read_manifest

            items = read_manifest(a.manifest)
    except errors as exc:
        return _fail(str(exc))
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    pipe = _load(a, rank, world)
    if isinstance(pipe, int):
        return pipe
    if a.manifest:
        return _sample_manifest(pipe, a, items, controls, rank, world)
    start = time.perf_counter()
    bar, callback = _steps_bar(1)
    try:
        video = pipe(reference, a.prompt, first, crops=crops, seed=a.seed, controls=controls, callback=callback,
                     **_sampling_args(a))  # fmt: skip
    except errors as exc:
        return _fail(str(exc))
    finally:
        bar.close()
    path = _write(video, out, crops, a.fps or pipe.cfg.sampling.fps)
    print(f"wrote {path} ({video.shape[0]} frames at {video.shape[2]}x{video.shape[1]}, "
          f"{time.perf_counter() - start:.1f}s)")  # fmt: skip
    if a.mlflow_run_id:
        from mlflow import MlflowClient

        MlflowClient(a.tracking_uri).log_artifact(a.mlflow_run_id, str(path), "samples")
    return 0


def _sampling_args(a: argparse.Namespace) -> dict:
    extra = {}
    if a.batch_guidance:
        extra["batch_guidance"] = True
    if a.step_cache:
        extra["cache_threshold"] = a.step_cache
    return dict(
        negative_prompt=a.negative_prompt, frames=a.frames, height=a.height, width=a.width, steps=a.steps,
        shift=a.shift, solver=a.solver, text_scale=a.text_scale, face_scale=a.face_scale, **extra,
    )  # fmt: skip


def _load(a: argparse.Namespace, rank: int, world: int):
    """The pipeline, or an exit code after printing why not."""
    import torch

    from cofe_apps.components import ReferenceError
    from cofe_apps.pipeline import CoFEPipeline
    from cofe_apps.weights import TrainingCheckpointError

    device = a.device
    if device is None:
        cuda = torch.cuda.is_available()
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda and world > 1 else ("cuda" if cuda else "cpu")
    try:
        return CoFEPipeline.from_pretrained(
            a.checkpoint, dtype=a.dtype, device=device, offload=a.offload, ema=a.ema, components=a.components,
            dit_weights=a.dit_weights, quantize=a.quantize, attention=a.attention, compile=a.compile,
            vae_tiling=a.vae_tiling,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, ReferenceError, TrainingCheckpointError) as exc:
        return _fail(str(exc))


def _write(video: np.ndarray, out: Path, crops, fps: float) -> Path:
    """The mp4 and the reference crops beside it, each written whole (a temporary file renamed into place)."""
    from cofe_apps.io import atomic_write_bytes, png_bytes, write_mp4

    out.parent.mkdir(parents=True, exist_ok=True)
    for crop, suffix in zip(crops, (".ref_id.png", ".ref.png"), strict=True):
        atomic_write_bytes(out.with_name(out.stem + suffix), png_bytes(crop))
    return write_mp4(video, out, fps=fps)  # last: the mp4's presence marks the row done


def _sample_manifest(pipe, a: argparse.Namespace, items, controls, rank: int, world: int) -> int:
    """Every row of the manifest not yet written, this rank's share; per-row failures are reported, not fatal."""
    import json

    from tqdm import tqdm

    from cofe_apps.components import ReferenceError, reference_from_image
    from cofe_apps.io import atomic_write_text, load_image

    out = Path(a.out)
    if out.suffix == ".mp4":
        return _fail(f"--out {out}: with --manifest, --out is a folder (one <id>.mp4 per row)")
    out.mkdir(parents=True, exist_ok=True)
    mine = items[rank::world]
    todo = [it for it in mine if not (out / it.video_name).is_file()]
    print(f"cofe sample: {len(items)} rows, {len(mine)} on rank {rank}/{world}, {len(mine) - len(todo)} already "
          f"written, {len(todo)} to go", file=sys.stderr)  # fmt: skip
    failures: list[dict] = []
    fps = a.fps or pipe.cfg.sampling.fps
    rows = tqdm(total=len(todo), desc="manifest", unit="video", disable=None)
    bar, callback = _steps_bar(1)
    errors = (ValueError, FileNotFoundError, ReferenceError, OSError, RuntimeError)

    def run(chunk) -> None:
        prepared = []
        for it in chunk:
            try:
                ref = load_image(it.reference)
                prepared.append((it, ref, load_image(it.first_frame) if it.first_frame else None,
                                 reference_from_image(ref)))  # fmt: skip
            except errors as exc:
                failures.append({"id": it.id, "error": f"{type(exc).__name__}: {exc}"})
                rows.update(1)
        if not prepared:
            return
        try:
            videos = pipe(
                [r for _, r, _, _ in prepared], [it.prompt for it, *_ in prepared], [f for _, _, f, _ in prepared],
                crops=[c for *_, c in prepared], seed=[int(it.extra.get("seed", a.seed)) for it, *_ in prepared],
                controls=controls, callback=callback, **_sampling_args(a),
            )  # fmt: skip
        except errors as exc:
            if len(prepared) > 1:  # find the row that fails: each alone
                for it, *_ in prepared:
                    run([it])
                return
            failures.append({"id": prepared[0][0].id, "error": f"{type(exc).__name__}: {exc}"})
            rows.update(1)
            return
        for (it, *_rest, crops), video in zip(prepared, videos, strict=True):
            _write(video, out / it.video_name, crops, fps)
            rows.update(1)

    try:
        for i in range(0, len(todo), a.batch):
            run(todo[i : i + a.batch])
    finally:
        bar.close()
        rows.close()
    report = out / (f"failures.rank{rank}.jsonl" if world > 1 else "failures.jsonl")
    if failures:
        atomic_write_text(report, "".join(json.dumps(f) + "\n" for f in failures))
        for f in failures:
            print(f"cofe sample: row {f['id']}: {f['error']}", file=sys.stderr)
    else:
        report.unlink(missing_ok=True)
    done = sum(1 for it in mine if (out / it.video_name).is_file())
    print(f"wrote {done}/{len(mine)} videos of rank {rank} into {out}" + (f"; {len(failures)} failed (see {report})"
          if failures else ""))  # fmt: skip
    if a.mlflow_run_id:
        from mlflow import MlflowClient

        MlflowClient(a.tracking_uri).log_artifacts(a.mlflow_run_id, str(out), "samples")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
