"""Model weights at real size: build on ``meta``, initialise deterministically whatever the sharding, fingerprint the
pretrained base, and read back every kind of training checkpoint (pretrained Wan weights are read by
``cofe_dit.load_into``, tensor by tensor from memory-mapped safetensors, each rank its own shard).

No Lightning here: ``CoFEModule.configure_model`` calls these, and so do ``cofe sample`` and ``cofe export``.

Deterministic initialisation: a model built on ``meta`` is materialised unit by unit (the DiT's top level, each
DiT block, CoFE) from a template of that unit built on the CPU with a seed derived from the run seed and the
unit's index, then copied in (each rank copies only its shard of a sharded parameter). So a run under FSDP starts
from exactly the weights the same run has under DDP or on one process, and no rank ever holds more than one block
of unsharded weights.

Checkpoints a user may hold (:func:`read_checkpoint`):
    * a Lightning checkpoint file (``last.ckpt``) of a DDP or single-process run,
    * a distributed-checkpoint directory of a sharded run (``last.ckpt/``: ``__R_0.distcp`` per rank + ``meta.pt``),
    * a ``.safetensors`` file written by ``cofe export`` (full model weights + the run's config in its metadata).
Every read uses safetensors or ``torch.load(weights_only=True)``: nothing a neighbour can plant runs code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

# ------------------------------------------------------------------------------------------- DTensor-aware copy


def _is_dtensor(t: Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def local_region(t: Tensor) -> tuple[slice, ...] | None:
    """For a sharded parameter, the slice of the full tensor this rank holds (None for an ordinary tensor)."""
    if not _is_dtensor(t):
        return None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))


def local_view(t: Tensor) -> Tensor:
    """The tensor this process stores: the local shard of a DTensor, else the tensor itself."""
    return t.to_local() if _is_dtensor(t) else t


@torch.no_grad()
def copy_full_into(target: Tensor, full: Tensor) -> None:
    """Copy a full (unsharded) value into ``target``; a sharded target takes only its own region."""
    if tuple(full.shape) != tuple(target.shape):
        raise ValueError(f"shape {tuple(full.shape)} does not fit {tuple(target.shape)}")
    region = local_region(target)
    src = full[region] if region is not None else full
    local_view(target).copy_(src.to(dtype=target.dtype))


# ------------------------------------------------------------------------------------------------ initialisation


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _copy_module(target: nn.Module, template: nn.Module, prefix: str = "") -> None:
    own = dict(target.named_parameters()) | dict(target.named_buffers())
    for name, value in (dict(template.named_parameters()) | dict(template.named_buffers())).items():
        if name not in own:
            raise KeyError(f"{prefix}{name}: in the template but not in the model")
        copy_full_into(own[name], value.detach())


def materialize(module: nn.Module, device: torch.device | str) -> None:
    """Allocate a ``meta`` module's storage on ``device`` (uninitialised: :func:`init_dit` / :func:`init_cofe`
    fill it)."""
    if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        module.to_empty(device=device)


def init_dit(dit: nn.Module, seed: int, *, blocks: bool = True, face_only: bool = False) -> None:
    """Initialise a materialised DiT exactly as ``DiT(cfg)`` would under a per-unit seed.

    Args:
        dit: the (possibly sharded) model.
        seed: run seed; unit ``u`` uses ``seed * 1000 + u`` (top level 0, block ``i`` ``1 + i``).
        blocks: initialise the blocks (False: only the top level).
        face_only: initialise only the zero-initialised face branches of the blocks (the one part a pretrained
            Wan checkpoint lacks); everything else is about to be loaded.
    """
    from cofe_dit import DiT

    cfg = dit.cfg
    one = cfg.replace(num_layers=1)
    if not face_only:
        with _seeded(seed * 1000):
            top = DiT(one)
        own_top = {n: t for n, t in (*dit.named_parameters(), *dit.named_buffers()) if not n.startswith("blocks.")}
        for name, value in (*top.named_parameters(), *top.named_buffers()):
            if not name.startswith("blocks."):
                copy_full_into(own_top[name], value.detach())
        del top
    if not blocks and not face_only:
        return
    for i, block in enumerate(dit.blocks):
        with _seeded(seed * 1000 + 1 + i):
            template = DiT(one).blocks[0]
        if face_only:
            if block.cross_attn.face is not None:
                _copy_module(block.cross_attn.face, template.cross_attn.face, f"blocks.{i}.cross_attn.face.")
        else:
            _copy_module(block, template, f"blocks.{i}.")
        del template


def init_cofe(cofe: nn.Module, seed: int) -> None:
    """Initialise a materialised CoFE module as ``CoFE(cfg)`` would under ``seed``."""
    from cofe_fusion import CoFE

    with _seeded(seed * 1000 + 999):
        template = CoFE(cofe.cfg)
    _copy_module(cofe, template)


# ------------------------------------------------------------------------------------------ pretrained Wan weights


def base_fingerprint(path: str | Path) -> dict[str, Any]:
    """A checksum of the pretrained weight files (sha256 of every file's bytes, in name order), with their names
    and sizes: what a slim checkpoint records so a restore can verify it reads the same base model."""
    from cofe_dit.checkpoint import weight_files

    digest = hashlib.sha256()
    files = []
    for file in weight_files(path):
        size = file.stat().st_size
        files.append({"name": file.name, "bytes": size})
        digest.update(f"{file.name}:{size}\n".encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return {"path": str(Path(path).resolve()), "sha256": digest.hexdigest(), "files": files}


# ------------------------------------------------------------------------------------------- training checkpoints


class TrainingCheckpointError(ValueError):
    """A training checkpoint that cannot be read (names the file and what is wrong)."""


@dataclass
class TrainingCheckpoint:
    """What a training checkpoint holds, whatever its kind.

    Attributes:
        path: where it was read from.
        kind: ``lightning`` (a ``.ckpt`` file), ``sharded`` (a distributed-checkpoint directory) or ``export``
            (a ``cofe export`` safetensors file).
        hparams: ``CoFEModule``'s hyper-parameters.
        meta: what the module recorded (components, configs, freezing policy, slim base fingerprint).
        state: the module's state dict (full tensors on the CPU).
        step: the optimiser step it was saved at.
    """

    path: Path
    kind: str
    hparams: dict[str, Any]
    meta: dict[str, Any]
    state: dict[str, Tensor]
    step: int | None = None


def read_checkpoint(path: str | Path) -> TrainingCheckpoint:
    """Read any of the three checkpoint kinds (see the module docstring) into full CPU tensors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        return _read_sharded(path)
    if path.suffix == ".safetensors":
        return _read_export(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise TrainingCheckpointError(f"cannot read the checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise TrainingCheckpointError(f"{path} is not a Lightning checkpoint of `cofe fit` (no state_dict)")
    meta = ckpt.get("cofe")
    if not isinstance(meta, dict):
        raise TrainingCheckpointError(f"{path} was not written by CoFEModule (no 'cofe' record)")
    return TrainingCheckpoint(path, "lightning", dict(ckpt.get("hyper_parameters", {})), meta, ckpt["state_dict"],
                              ckpt.get("global_step"))  # fmt: skip


def _read_sharded(path: Path) -> TrainingCheckpoint:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta_file = path / "meta.pt"
    if not meta_file.is_file():
        raise TrainingCheckpointError(f"{path} is not a sharded checkpoint: no meta.pt")
    try:
        rest = torch.load(meta_file, map_location="cpu", weights_only=True)
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as exc:
        raise TrainingCheckpointError(
            f"cannot read the sharded checkpoint {path}: {type(exc).__name__}: {exc}"
        ) from exc
    files = {item.relative_path for item in metadata.storage_data.values()}
    absent = sorted(f for f in files if not (path / f).is_file())
    if absent:
        raise TrainingCheckpointError(f"sharded checkpoint {path} lacks {absent}: a rank's file is missing")
    want = {
        key: torch.empty(md.size, dtype=md.properties.dtype)
        for key, md in metadata.state_dict_metadata.items()
        if key.startswith("state_dict.") and isinstance(md, TensorStorageMetadata)
    }
    nested = {"state_dict": {k[len("state_dict.") :]: v for k, v in want.items()}}
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        dcp_load(nested, checkpoint_id=str(path), no_dist=True)
    except (Exception, CheckpointException) as exc:
        last = [line for line in str(exc).splitlines() if line.strip()][-1:] or [type(exc).__name__]
        raise TrainingCheckpointError(f"cannot read the sharded checkpoint {path}: {last[0].strip()}") from exc
    meta = rest.get("cofe")
    if not isinstance(meta, dict):
        raise TrainingCheckpointError(f"{path} was not written by CoFEModule (no 'cofe' record in meta.pt)")
    return TrainingCheckpoint(path, "sharded", dict(rest.get("hyper_parameters", {})), meta, nested["state_dict"],
                              rest.get("global_step"))  # fmt: skip


EXPORT_FORMAT = "cofe-export-1"


def _read_export(path: Path) -> TrainingCheckpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            info = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise TrainingCheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if info.get("format") != EXPORT_FORMAT:
        raise TrainingCheckpointError(f"{path} is not a `cofe export` file (metadata format {info.get('format')!r})")
    step = info.get("step")
    return TrainingCheckpoint(path, "export", json.loads(info["hparams"]), json.loads(info["cofe"]), state,
                              int(step) if step else None)  # fmt: skip


def write_export(path: str | Path, state: dict[str, Tensor], hparams: dict, meta: dict, step: int | None) -> Path:
    """One safetensors file of the full model weights plus its config (what a user shares or samples from),
    written through a temporary file so nothing half-written is ever left at ``path``."""
    from safetensors.torch import save_file

    from cofe_apps.io import durable_replace

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    info = {"format": EXPORT_FORMAT, "hparams": json.dumps(hparams, default=str), "cofe": json.dumps(meta, default=str),
            "step": "" if step is None else str(step)}  # fmt: skip
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=info)
        durable_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
