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
import struct
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


# ------------------------------------------------------------------------------------------- the model, for inference

# safetensors' dtype names (the format's header spec) -> torch.
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


class ExportReader:
    """Reads a ``cofe export`` file tensor by tensor with ordinary file reads, each straight into its destination.

    Why not ``safetensors.safe_open``: it memory-maps the file, and every page a copy touches stays resident while
    the file is open, so filling a model from it peaks at twice the file (measured: 1 GiB file -> +2.0 GiB RSS).
    Read by offset (the format is an 8-byte header length, a JSON header of dtype / shape / byte offsets, then the
    bytes), a load peaks at the model plus one tensor.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._fh = open(self.path, "rb")  # closed by close() / the context manager
            size = self.path.stat().st_size
            (n,) = struct.unpack("<Q", self._fh.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(self._fh.read(n))
        except (OSError, ValueError) as exc:
            self.close()
            raise TrainingCheckpointError(f"cannot read {self.path}: {type(exc).__name__}: {exc}") from exc
        self.base = 8 + n
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.entries: dict[str, dict] = header
        for key, e in header.items():
            start, end = e.get("data_offsets", (0, -1))
            if e.get("dtype") not in _ST_DTYPES or self.base + end > size or end < start:
                self.close()
                raise TrainingCheckpointError(f"{self.path}: tensor {key!r} has a bad header entry {e} (truncated?)")

    def keys(self) -> list[str]:
        return list(self.entries)

    def dtype(self, key: str) -> torch.dtype:
        return _ST_DTYPES[self.entries[key]["dtype"]]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def read(self, key: str) -> Tensor:
        """The tensor ``key`` as a new CPU tensor in its stored dtype."""
        out = torch.empty(self.shape(key), dtype=self.dtype(key))
        self._read_into(key, out)
        return out

    def read_into(self, key: str, target: Tensor) -> None:
        """Fill ``target`` (any dtype, any device; same shape) with ``key``: straight from the file when ``target``
        is a contiguous CPU tensor of the stored dtype, else through one temporary tensor."""
        if tuple(target.shape) != self.shape(key):
            raise TrainingCheckpointError(
                f"{self.path}: {key} is {self.shape(key)} in the file, {tuple(target.shape)} in the model"
            )
        if target.device.type == "cpu" and target.dtype == self.dtype(key) and target.is_contiguous():
            self._read_into(key, target)
        else:
            with torch.no_grad():
                target.copy_(self.read(key))

    def _read_into(self, key: str, out: Tensor) -> None:
        start, end = self.entries[key]["data_offsets"]
        if out.numel() * out.element_size() != end - start:
            raise TrainingCheckpointError(f"{self.path}: {key} holds {end - start} bytes, not {tuple(out.shape)}")
        if end == start:
            return
        self._fh.seek(self.base + start)
        view = memoryview(out.view(-1).view(torch.uint8).numpy())
        if self._fh.readinto(view) != end - start:
            raise TrainingCheckpointError(f"{self.path}: {key} is cut short (the file is truncated)")

    def close(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()
            self._fh = None

    def __enter__(self) -> ExportReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ema_key(name: str) -> str:
    """The key of a parameter's EMA in a training checkpoint (``CoFEModule.ema``: dots become ``__``)."""
    return "ema." + name.replace(".", "__")


@dataclass
class LoadedModel:
    """A :class:`cofe_apps.model.CoFEModel` read for inference, with what its checkpoint recorded.

    Attributes:
        model: the network, in eval mode, no gradients.
        path: where it was read from.
        kind: ``export``, ``lightning`` or ``sharded``.
        hparams: the run's ``CoFEModule`` hyper-parameters.
        meta: the ``cofe`` record (configs, components, freezing policy).
        step: the optimiser step it was saved at.
        ema: whether the trained weights are their EMA.
    """

    model: nn.Module
    path: Path
    kind: str
    hparams: dict[str, Any]
    meta: dict[str, Any]
    step: int | None
    ema: bool


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    ema: bool = False,
    dit_weights: str | Path | None = None,
) -> LoadedModel:
    """Any checkpoint kind (export file, Lightning ``.ckpt``, sharded directory) -> the network alone.

    Built on ``meta``, allocated once on ``device`` in its final dtype, then filled tensor by tensor: no EMA
    mirror, no optimiser state and no LightningModule is ever built, and an export is read by offset
    (:class:`ExportReader`: the peak is the model plus one tensor).

    Args:
        path: the checkpoint.
        dtype: compute dtype of the DiT (its fp32 islands stay fp32; CoFE stays fp32); None keeps every tensor's
            stored dtype (a bf16 frozen base beside fp32 trained layers, as training kept them).
        device: where the weights go.
        ema: use the EMA of the trained weights (training checkpoints only; an export holds one set).
        dit_weights: the base Wan folder, for slim checkpoints only (default: the path they record).

    Raises:
        TrainingCheckpointError / ValueError / FileNotFoundError: naming the file and what is wrong.
    """
    from cofe_apps.model import CoFEModel, configs_from_hparams

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    reader = None
    if path.is_file() and path.suffix == ".safetensors":
        reader = ExportReader(path)
        info = reader.metadata
        if info.get("format") != EXPORT_FORMAT:
            reader.close()
            raise TrainingCheckpointError(
                f"{path} is not a `cofe export` file (metadata format {info.get('format')!r})"
            )
        try:
            hparams, meta = json.loads(info["hparams"]), json.loads(info["cofe"])
        except (KeyError, ValueError) as exc:
            reader.close()
            raise TrainingCheckpointError(f"{path}: unreadable export metadata ({exc})") from exc
        kind, step = "export", int(info["step"]) if info.get("step") else None
        keys = set(reader.keys())
    else:
        ckpt = read_checkpoint(path)  # a .ckpt is memory-mapped; a sharded directory is read whole
        kind, hparams, meta, step, state = ckpt.kind, dict(ckpt.hparams), ckpt.meta, ckpt.step, ckpt.state
        keys = set(state)
    try:
        dit_cfg, cofe_cfg = configs_from_hparams(hparams, meta.get("components"))
        built = json.loads(json.dumps(dit_cfg.to_dict()))  # tuples as the record's JSON holds them
        recorded = json.loads(json.dumps(meta.get("dit_config") or built))
        if recorded != built:
            diff = sorted(k for k in recorded.keys() | built.keys() if recorded.get(k) != built.get(k))
            raise TrainingCheckpointError(f"{path}: its recorded DiT config differs from its hparams' in {diff}")
        with torch.device("meta"):
            model = CoFEModel(dit_cfg, cofe_cfg)
        slim = meta.get("checkpoint_mode") == "slim"
        names = list(model.state_dict())
        unexpected = sorted(k for k in keys if not k.startswith(("dit.", "cofe.", "ema.")) and k != "null_text")
        unexpected += sorted(k for k in keys if k.startswith(("dit.", "cofe.")) and k not in set(names))
        if unexpected:
            raise TrainingCheckpointError(f"{path} holds tensors this model does not have: {unexpected[:5]}")
        missing = [n for n in names if n not in keys and not (slim and n.startswith("dit."))]
        if missing:
            raise TrainingCheckpointError(f"{path} lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        trained = set(meta.get("trainable") or [])
        if ema:
            if kind == "export":
                raise ValueError(f"{path} is an export: it holds one set of weights (export with --ema for EMA)")
            if not any(k.startswith("ema.") for k in keys):
                raise ValueError(f"{path} keeps no EMA (trained with ema_decay=0): sample without --ema")
        source = {n: (ema_key(n) if ema and n in trained and ema_key(n) in keys else n) for n in names}

        def stored_dtype(key: str) -> torch.dtype:
            return reader.dtype(key) if reader is not None else state[key].dtype

        if dtype is not None:
            model.dit.to(dtype)  # on meta: free; the fp32 islands stay fp32
        else:  # each tensor as stored
            for mod_name, module in model.named_modules():
                for pname, p in list(module.named_parameters(recurse=False)):
                    key = f"{mod_name}.{pname}"
                    held = key if key in keys else source[key]  # an EMA takes its parameter's storage dtype
                    if held in keys and p.dtype != stored_dtype(held):
                        module._parameters[pname] = nn.Parameter(
                            torch.empty_like(p, dtype=stored_dtype(held)), requires_grad=False
                        )
        model.to_empty(device=device)
        if slim:
            from cofe_dit import load_into

            base = dit_weights or hparams.get("dit_weights")
            if not base:
                raise ValueError(f"{path} is a slim checkpoint: give the base Wan folder (--dit-weights)")
            want = (meta.get("base") or {}).get("sha256")
            have = base_fingerprint(base)["sha256"]
            if want != have:
                raise ValueError(
                    f"the slim checkpoint {path} was trained on base weights with sha256 {want}; {base} has {have}"
                )
            load_into(model.dit, base)
        own = model.state_dict()
        with torch.no_grad():
            for name in names:
                key = source[name]
                if key not in keys:
                    continue  # slim: the base, loaded above
                if reader is not None:
                    reader.read_into(key, own[name])
                else:
                    value = state[key]
                    if tuple(value.shape) != tuple(own[name].shape):
                        raise TrainingCheckpointError(
                            f"{path}: {key} is {tuple(value.shape)}, the model's {name} {tuple(own[name].shape)}"
                        )
                    own[name].copy_(value)
    finally:
        if reader is not None:
            reader.close()
    model.requires_grad_(False).eval()
    return LoadedModel(model, path, kind, hparams, meta, step, ema)
