"""Load and save DiT weights: original Wan layout, diffusers ``WanTransformer3DModel`` layout, sharded or not.

Both layouts hold the same tensors under different names. Our module names are Wan's; diffusers names are
mapped onto them (the inverse of diffusers' ``scripts/convert_wan_to_diffusers.py`` renaming table).

Loading is strict: every tensor the model needs must be present with the right shape, and nothing may be left
over. The only tolerated gap is the zero-initialised face branch (absent from every released Wan checkpoint),
which is reported, not silently skipped. Only safetensors (or ``torch.load(weights_only=True)``) are read.

Loading is lazy and never holds weights twice: ``from_pretrained`` builds the model on the ``meta`` device, reads
names, shapes and dtypes from the safetensors headers, and fills each parameter straight in its final dtype and
device, one tensor at a time. A tensor already in its final dtype on the CPU is the memory-mapped file itself
(copy-on-write: training never writes to the file), so a bf16 checkpoint loaded as bf16 costs only the pages
touched; a tensor that must be cast or moved is read into one temporary buffer. The fp32 islands of the model
(``cofe_dit.model.is_fp32_parameter``) stay fp32 whatever ``dtype`` is asked for. ``save`` streams tensor by
tensor too (one device-to-host copy at a time) into the safetensors format.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from cofe_dit.config import DiTConfig, with_preset_defaults
from cofe_dit.model import DiT, is_fp32_parameter

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")

# diffusers name -> Wan name; applied as regular-expression substitutions on full keys, first match wins.
_DIFFUSERS_TO_WAN: list[tuple[str, str]] = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^blocks\.(\d+)\.attn1\.to_q\.", r"blocks.\1.self_attn.q."),
    (r"^blocks\.(\d+)\.attn1\.to_k\.", r"blocks.\1.self_attn.k."),
    (r"^blocks\.(\d+)\.attn1\.to_v\.", r"blocks.\1.self_attn.v."),
    (r"^blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"^blocks\.(\d+)\.attn1\.norm_q\.", r"blocks.\1.self_attn.norm_q."),
    (r"^blocks\.(\d+)\.attn1\.norm_k\.", r"blocks.\1.self_attn.norm_k."),
    (r"^blocks\.(\d+)\.attn2\.to_q\.", r"blocks.\1.cross_attn.q."),
    (r"^blocks\.(\d+)\.attn2\.to_k\.", r"blocks.\1.cross_attn.k."),
    (r"^blocks\.(\d+)\.attn2\.to_v\.", r"blocks.\1.cross_attn.v."),
    (r"^blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"^blocks\.(\d+)\.attn2\.norm_q\.", r"blocks.\1.cross_attn.norm_q."),
    (r"^blocks\.(\d+)\.attn2\.norm_k\.", r"blocks.\1.cross_attn.norm_k."),
    (r"^blocks\.(\d+)\.attn2\.add_k_proj\.", r"blocks.\1.cross_attn.k_img."),
    (r"^blocks\.(\d+)\.attn2\.add_v_proj\.", r"blocks.\1.cross_attn.v_img."),
    (r"^blocks\.(\d+)\.attn2\.norm_added_k\.", r"blocks.\1.cross_attn.norm_k_img."),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),  # diffusers norm2 is the cross-attention norm
    (r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"^blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
    (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
]
_DIFFUSERS_MARKERS = ("condition_embedder.", ".attn1.", ".attn2.", "proj_out.")
# Keys that old diffusers exports carry and the architecture never used (WanTransformer3DModel ignores them too).
_IGNORED = (re.compile(r"\.norm_added_q\."),)


class CheckpointError(ValueError):
    """A checkpoint does not match the model; the message lists every missing, unexpected and mis-shaped key."""


@dataclass
class LoadReport:
    """What a load found. ``allowed_missing`` are keys the model may initialise itself (the face branch)."""

    source: str
    layout: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    allowed_missing: list[str] = field(default_factory=list)
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 12) -> str:
        def head(items: list) -> str:
            shown = ", ".join(str(i) for i in items[:limit])
            return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

        lines = [f"checkpoint {self.source} ({self.layout} layout): {self.loaded} tensors matched"]
        if self.mismatched:
            rows = [f"{k}: checkpoint {tuple(c)} vs model {tuple(m)}" for k, c, m in self.mismatched]
            lines.append(f"  {len(rows)} shape mismatches: " + head(rows))
        if self.missing:
            lines.append(f"  {len(self.missing)} missing from the checkpoint: " + head(self.missing))
        if self.unexpected:
            lines.append(f"  {len(self.unexpected)} unexpected in the checkpoint: " + head(self.unexpected))
        if self.allowed_missing:
            lines.append(f"  {len(self.allowed_missing)} face-branch tensors kept at their (zero) initialisation")
        return "\n".join(lines)


def weight_files(path: str | Path) -> list[Path]:
    """The weight files behind a path: a file, a sharded index json, or a directory holding either."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_file() and path.name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{path} is not a sharded-checkpoint index (needs a 'weight_map'): {exc}") from exc
        files = [path.parent / s for s in shards]
        absent = [str(f) for f in files if not f.exists()]
        if absent:
            raise FileNotFoundError(f"index {path} names shards that do not exist: {absent}")
        return files
    if path.is_file():
        if not path.name.endswith(WEIGHT_SUFFIXES):
            raise CheckpointError(f"{path} is not a weight file (expected one of {WEIGHT_SUFFIXES})")
        return [path]
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(f"{path} holds several shard indexes {[i.name for i in indexes]}; pass one of them")
    if indexes:
        return weight_files(indexes[0])
    files = sorted(path.glob("*.safetensors"))
    if not files:
        files = sorted(p for p in path.iterdir() if p.name.endswith((".pt", ".pth", ".bin")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors (or .pt/.pth/.bin) weights in {path}")
    return files


# safetensors dtype names <-> torch dtypes (the format's own table).
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


@dataclass
class _Entry:
    """One tensor in a checkpoint file: where it is and what it is, without its data."""

    file: Path
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int = 0  # absolute byte offset of the data (safetensors)
    nbytes: int = 0
    tensor: Tensor | None = None  # torch files: the (memory-mapped where possible) loaded tensor


def _safetensors_entries(file: Path) -> list[_Entry]:
    """Parse a safetensors header (8-byte little-endian length, JSON) and check the data fits in the file."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise ValueError(f"header length {n} does not fit the file ({size} bytes)")
            header = json.loads(fh.read(n))
        entries, end = [], 0
        for key, info in header.items():
            if key == "__metadata__":
                continue
            begin, stop = info["data_offsets"]
            dtype = _ST_DTYPES[info["dtype"]]
            entries.append(_Entry(file, key, tuple(info["shape"]), dtype, 8 + n + begin, stop - begin))
            end = max(end, stop)
        if 8 + n + end > size:
            raise ValueError(f"truncated: the header indexes {8 + n + end} bytes, the file has {size}")
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise CheckpointError(f"cannot read {file}: {exc}") from exc
    return entries


class _Reader:
    """The tensors behind a checkpoint path: names, shapes and dtypes up front, data one tensor at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, _Entry] = {}
        self._handles: dict[Path, Any] = {}  # one safe_open (one mmap) per file, opened on first zero-copy read
        for file in weight_files(path):
            if file.suffix == ".safetensors":
                part = {e.key: e for e in _safetensors_entries(file)}
            else:
                part = {k: _Entry(file, k, tuple(t.shape), t.dtype, tensor=t) for k, t in _torch_file(file).items()}
            overlap = set(part) & set(self.entries)
            if overlap:
                raise CheckpointError(f"{file} repeats keys found in another shard: {sorted(overlap)[:5]}")
            self.entries.update(part)

    def read(self, key: str, dtype: torch.dtype, device: torch.device, *, zero_copy: bool = True) -> Tensor:
        """The tensor ``key`` in ``dtype`` on ``device``.

        With ``zero_copy`` and no cast or move needed, this is the memory-mapped file (copy-on-write); otherwise the
        bytes are read into one buffer that is dropped once converted, so nothing is held twice.
        """
        e = self.entries[key]
        if e.tensor is not None:  # torch files: already memory-mapped by torch.load(mmap=True)
            return e.tensor.to(device=device, dtype=dtype)
        if zero_copy and dtype == e.dtype and device.type == "cpu":
            try:
                if e.file not in self._handles:
                    self._handles[e.file] = safe_open(str(e.file), framework="pt", device="cpu")
                return self._handles[e.file].get_tensor(e.key)
            except Exception as exc:  # safetensors raises its own error types for corrupt files
                raise CheckpointError(f"cannot read {e.file} ({e.key}): {exc}") from exc
        buf = bytearray(e.nbytes)
        with open(e.file, "rb") as fh:
            fh.seek(e.offset)
            if fh.readinto(buf) != e.nbytes:
                raise CheckpointError(f"cannot read {e.file} ({e.key}): truncated")
        if e.nbytes == 0:
            t = torch.empty(e.shape, dtype=e.dtype)
        else:
            t = torch.frombuffer(buf, dtype=e.dtype).reshape(e.shape)
        return t.to(device=device, dtype=dtype)  # the buffer is private: no copy needed when nothing changes

    def close(self) -> None:
        """Drop the file handles (tensors already read stay valid: they hold their own mapping)."""
        self._handles.clear()

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _torch_file(file: Path) -> Mapping[str, Tensor]:
    """A ``.pt`` / ``.pth`` / ``.bin`` state dict, memory-mapped when the file format allows, never unpickling code."""
    try:
        part = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # legacy (pre-zipfile) torch files cannot be memory-mapped
            raise
        part = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(part, Mapping) and "state_dict" in part and isinstance(part["state_dict"], Mapping):
        part = part["state_dict"]
    if not isinstance(part, Mapping):
        raise CheckpointError(f"{file} does not hold a state dict (found {type(part).__name__})")
    return {k: v for k, v in part.items() if isinstance(v, Tensor)}


def read_state_dict(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read every tensor behind ``path`` (see ``weight_files``). Never unpickles arbitrary objects.

    On the CPU the tensors are memory-mapped (read lazily, copy-on-write).
    """
    device = torch.device(device)
    with _Reader(path) as reader:
        return {k: reader.read(k, e.dtype, device) for k, e in reader.entries.items()}


def detect_layout(keys: Iterable[str]) -> str:
    """``"diffusers"`` or ``"wan"`` from the key names."""
    keys = list(keys)
    if any(m in k for k in keys for m in _DIFFUSERS_MARKERS):
        return "diffusers"
    return "wan"


def _wan_key(key: str, patterns: list[tuple[re.Pattern, str]]) -> str | None:
    """The Wan name of a diffusers key (None for keys the architecture never used)."""
    if any(p.search(key) for p in _IGNORED):
        return None
    for pattern, repl in patterns:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return key


def to_wan_layout(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a diffusers ``WanTransformer3DModel`` state dict to Wan names (unknown keys pass through)."""
    patterns = [(re.compile(p), r) for p, r in _DIFFUSERS_TO_WAN]
    return {new: v for k, v in state.items() if (new := _wan_key(k, patterns)) is not None}


def _prefix(keys: Iterable[str]) -> str:
    """Wrapper prefixes (``module.``, ``model.``, ``_orig_mod.``, ``dit.``) shared by every key."""
    keys = list(keys)
    out = ""
    for prefix in ("module.", "model.", "_orig_mod.", "dit."):
        if keys and all(k.startswith(out + prefix) for k in keys):
            out += prefix
    return out


def _strip_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop wrapper prefixes shared by every key."""
    p = _prefix(state)
    return {k[len(p) :]: v for k, v in state.items()}


def _wan_names(reader: _Reader) -> tuple[dict[str, str], str]:
    """``{wan name: key in the file}`` and the layout of the checkpoint."""
    p = _prefix(reader.entries)
    stripped = {k[len(p) :]: k for k in reader.entries}
    layout = detect_layout(stripped)
    if layout == "wan":
        return stripped, layout
    patterns = [(re.compile(x), r) for x, r in _DIFFUSERS_TO_WAN]
    return {new: raw for k, raw in stripped.items() if (new := _wan_key(k, patterns)) is not None}, layout


def _shapes(reader: _Reader, names: Mapping[str, str]) -> dict[str, Tensor]:
    """Meta tensors with the checkpoint's shapes (what ``compare`` and ``infer_config`` need, no data)."""
    return {wan: torch.empty(reader.entries[raw].shape, device="meta") for wan, raw in names.items()}


def load_into(
    model: DiT,
    path: str | Path,
    *,
    strict: bool = True,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> LoadReport:
    """Load weights from ``path`` into ``model``, one tensor at a time.

    Works for a model built on the ``meta`` device (``with torch.device("meta"): DiT(cfg)``): each parameter is
    replaced by the checkpoint's tensor in its final dtype and device (memory-mapped when no cast or move is
    needed); parameters the checkpoint does not have (the face branch) are then allocated and given their proper
    initialisation. For an ordinary model the parameters are filled in place (``copy_``, one temporary buffer at a
    time) unless ``dtype`` or ``device`` asks to change them, in which case they are replaced. Parameters that
    are sharded ``DTensor``s (FSDP2 ``fully_shard``) get their local shard of each tensor.

    Args:
        model: the DiT to fill.
        path: a ``.safetensors`` file, a ``*.safetensors.index.json``, or a directory (Wan or diffusers export).
        strict: raise ``CheckpointError`` on any missing, unexpected or mis-shaped tensor (the face branch is the
            only thing allowed to be absent). With ``strict=False`` matching tensors load and the report lists the rest.
        dtype: the dtype of the parameters (the fp32 islands stay fp32); None keeps each parameter's dtype.
        device: where the parameters go; None keeps materialised parameters where they are and puts meta ones on
            the CPU.

    Returns:
        The ``LoadReport``.
    """
    with _Reader(path) as reader:
        return _load(model, reader, path, strict=strict, dtype=dtype, device=device)


def _load(model: DiT, reader: _Reader, path, *, strict: bool, dtype, device) -> LoadReport:
    names, layout = _wan_names(reader)
    shapes = _shapes(reader, names)
    report = compare(model, shapes, source=str(path), layout=layout)
    if strict and not report.ok:
        first, *rest = report.summary().split("\n")
        hint = _preset_hint(shapes, model.cfg)
        raise CheckpointError("\n".join([first, *([f"  {hint}"] if hint else []), *rest]))
    device = torch.device(device) if device is not None else None
    loaded, fresh = 0, []
    with torch.no_grad():
        for name, module, pname, param in list(model._named_tensors()):
            want_dtype = (torch.float32 if is_fp32_parameter(name) else dtype) if dtype is not None else param.dtype
            want_device = device or (torch.device("cpu") if param.is_meta else param.device)
            key = names.get(name)
            if key is None or tuple(reader.entries[key].shape) != tuple(param.shape):
                if param.is_meta:  # allocate, then Wan's initialisation below
                    new = torch.empty(param.shape, dtype=want_dtype, device=want_device)
                    module._parameters[pname] = nn.Parameter(new, requires_grad=param.requires_grad)
                    fresh.append(name)
                elif want_dtype != param.dtype or want_device != param.device:  # keep its values, moved
                    new = param.detach().to(device=want_device, dtype=want_dtype)
                    module._parameters[pname] = nn.Parameter(new, requires_grad=param.requires_grad)
                continue
            if _is_dtensor(param):
                if param.is_meta:
                    raise ValueError(
                        f"{name} is a sharded parameter on the meta device: materialise the sharded model first "
                        "(to_empty), or load before fully_shard"
                    )
                _load_shard(param, reader.read(key, param.dtype, torch.device("cpu")))
            elif param.is_meta or want_dtype != param.dtype or want_device != param.device:
                value = reader.read(key, want_dtype, want_device)
                module._parameters[pname] = nn.Parameter(value, requires_grad=param.requires_grad)
            else:
                param.copy_(reader.read(key, param.dtype, param.device, zero_copy=False))
            loaded += 1
    if fresh:
        model.init_parameters(fresh)  # the face branch (or, non-strict, whatever was missing): Wan's init
    model._rope_cache.clear()
    report.loaded = loaded
    return report


def _is_dtensor(t: Tensor) -> bool:
    return type(t).__name__ == "DTensor" or type(getattr(t, "data", None)).__name__ == "DTensor"


def _load_shard(param: Tensor, full: Tensor) -> None:
    """Copy this rank's shard of the full tensor into a sharded (DTensor) parameter, without communication."""
    from torch.distributed.tensor import distribute_tensor

    local = distribute_tensor(full.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(local)


def compare(model: DiT, state: Mapping[str, Tensor], source: str = "<state dict>", layout: str = "wan") -> LoadReport:
    """Compare a Wan-named state dict (or meta tensors of its shapes) with the model's own tensors."""
    report = LoadReport(source=source, layout=layout)
    own = {name: param for name, _, _, param in model._named_tensors()}
    for key, value in own.items():
        if key not in state:
            (report.allowed_missing if ".cross_attn.face." in key else report.missing).append(key)
        elif tuple(state[key].shape) != tuple(value.shape):
            report.mismatched.append((key, tuple(state[key].shape), tuple(value.shape)))
    report.unexpected = sorted(k for k in state if k not in own)
    report.loaded = len(own) - len(report.missing) - len(report.allowed_missing) - len(report.mismatched)
    return report


def infer_config(state: Mapping[str, Tensor], num_heads: int | None = None, **overrides) -> DiTConfig:
    """Read the architecture off a Wan-named state dict (heads default to a head width of 128, as in every Wan)."""
    try:
        pe = state["patch_embedding.weight"]  # (D, C_in, pt, ph, pw)
        dim, in_dim = pe.shape[0], pe.shape[1]
        patch = tuple(pe.shape[2:])
        layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        ffn_dim = state["blocks.0.ffn.0.weight"].shape[0]
        text_dim = state["text_embedding.0.weight"].shape[1]
        freq_dim = state["time_embedding.0.weight"].shape[1]
        out_dim = state["head.head.weight"].shape[0] // (patch[0] * patch[1] * patch[2])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"cannot infer a Wan DiT config from this state dict (missing {exc})") from exc
    image_dim = state["img_emb.proj.1.weight"].shape[1] if "img_emb.proj.1.weight" in state else None
    # Shapes cannot tell T2V from TI2V; the one 48-channel Wan (Wan2.2 VAE) is TI2V, as diffusers' configs imply.
    model_type = "i2v" if image_dim is not None else ("ti2v" if in_dim == out_dim == 48 else "t2v")
    face_key = "blocks.0.cross_attn.face.k.weight"
    face_dim = state[face_key].shape[1] if face_key in state else None
    heads = num_heads or (dim // 128 if dim % 128 == 0 else None)
    if heads is None:
        raise CheckpointError(f"cannot infer the head count for width {dim}; pass num_heads")
    cfg = dict(
        model_type=model_type,
        dim=dim,
        ffn_dim=ffn_dim,
        num_heads=heads,
        num_layers=layers,
        in_dim=in_dim,
        out_dim=out_dim,
        text_dim=text_dim,
        freq_dim=freq_dim,
        patch_size=patch,
        image_dim=image_dim,
        face_dim=face_dim,
        cross_attn_norm="blocks.0.norm3.weight" in state,
    )
    cfg.update(overrides)
    out = _ti2v_stride(DiTConfig(**cfg)) if "vae_stride" not in overrides else DiTConfig(**cfg)
    return out if "sampling" in overrides else with_preset_defaults(out, keep_vae_stride="vae_stride" in overrides)


def _ti2v_stride(cfg: DiTConfig) -> DiTConfig:
    """TI2V models (48 latent channels) go with the Wan2.2 VAE, 4x16x16; files that omit the stride mean that."""
    return cfg.replace(vae_stride=(4, 16, 16)) if cfg.model_type == "ti2v" else cfg


def config_from_diffusers(config: Mapping) -> DiTConfig:
    """A ``DiTConfig`` from a diffusers ``WanTransformer3DModel`` ``config.json`` (with the VAE stride and sampling
    defaults of the preset of that architecture, which the file does not carry)."""
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    in_dim, out_dim = config.get("in_channels", 16), config.get("out_channels") or config.get("in_channels", 16)
    image_dim = config.get("image_dim")
    model_type = "i2v" if image_dim else ("ti2v" if in_dim == 48 else "t2v")
    cfg = DiTConfig(
        name="diffusers",
        model_type=model_type,
        dim=heads * head_dim,
        ffn_dim=config["ffn_dim"],
        num_heads=heads,
        num_layers=config["num_layers"],
        in_dim=in_dim,
        out_dim=out_dim,
        text_dim=config.get("text_dim", 4096),
        freq_dim=config.get("freq_dim", 256),
        patch_size=tuple(config.get("patch_size", (1, 2, 2))),
        eps=config.get("eps", 1e-6),
        cross_attn_norm=config.get("cross_attn_norm", True),
        image_dim=image_dim,
        rope_max_len=config.get("rope_max_seq_len", 1024),
    )
    return with_preset_defaults(_ti2v_stride(cfg))


def config_from_wan(config: Mapping) -> DiTConfig:
    """A ``DiTConfig`` from a ``config.json`` of ours or of the original Wan repositories (``_class_name: WanModel``).

    Wan's files omit the CLIP width of I2V models (always 1280, ViT-H/14) and carry keys we do not model
    (``window_size``: every released model uses global attention, ``(-1, -1)``).
    """
    known = {f for f in DiTConfig.__dataclass_fields__}
    data = {k: v for k, v in config.items() if k in known}
    window = tuple(config.get("window_size", (-1, -1)))
    if window != (-1, -1):
        raise CheckpointError(
            f"window_size={window}: local attention is not supported (released Wan models use global)"
        )
    if config.get("model_type") not in (None, "t2v", "i2v", "ti2v"):
        raise CheckpointError(f"model_type={config.get('model_type')!r} is not supported (t2v, i2v, ti2v)")
    if data.get("model_type") == "i2v" and data.get("image_dim") is None:
        data["image_dim"] = 1280
    data.setdefault("name", "wan")
    if data.get("model_type") == "ti2v":
        data.setdefault("vae_stride", (4, 16, 16))  # Wan's TI2V config.json omits it; TI2V is the Wan2.2 VAE
    return DiTConfig.from_dict(data)


def _preset_hint(state: Mapping[str, Tensor], cfg: DiTConfig) -> str:
    """Say what architecture the checkpoint is, when it is not the model's."""
    try:
        found = infer_config(state, num_heads=1)  # the head count is not in the shapes and not needed here
    except (CheckpointError, ValueError):
        return ""
    keys = ("model_type", "dim", "num_layers", "ffn_dim", "in_dim", "out_dim", "text_dim", "image_dim")
    diffs = [
        f"{k}={getattr(found, k)} (model: {getattr(cfg, k)})" for k in keys if getattr(found, k) != getattr(cfg, k)
    ]
    return ("the checkpoint is a different architecture: " + ", ".join(diffs)) if diffs else ""


def resolve_config(path: str | Path, config: DiTConfig | str | None = None, **overrides) -> DiTConfig:
    """The config ``from_pretrained`` builds for ``path``: ``config`` (a ``DiTConfig`` or preset name), else the
    ``config.json`` beside the weights (ours, Wan's or diffusers'), else the tensor shapes (headers only); then
    ``overrides``. A config without sampling defaults gets those of the preset with its architecture."""
    path = Path(path)
    if isinstance(config, str):
        cfg = DiTConfig.from_name(config)
    elif config is not None:
        cfg = config
    else:
        cfg = None
        folder = path if path.is_dir() else path.parent
        cfg_file = folder / "config.json"
        if cfg_file.exists():
            try:
                data = json.loads(cfg_file.read_text())
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{cfg_file} is not valid JSON: {exc}") from exc
            if "num_attention_heads" in data:
                cfg = config_from_diffusers(data)
            elif "dim" in data and "num_layers" in data:
                cfg = config_from_wan(data)
        if cfg is None:
            reader = _Reader(path)
            names, _ = _wan_names(reader)
            cfg = infer_config(_shapes(reader, names))
    return cfg.replace(**overrides) if overrides else cfg


def from_pretrained(
    path: str | Path,
    config: DiTConfig | str | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    strict: bool = True,
    **overrides,
) -> DiT:
    """Build a DiT for a checkpoint and load it without ever holding the weights twice.

    The model is built on ``meta`` and each tensor is read straight into its final dtype and device (see
    ``load_into``); the config comes from ``resolve_config``. ``overrides`` (e.g. ``face_dim=1536``) apply last.

    Args:
        path: a weight file, shard index or directory (Wan or diffusers layout).
        config: a ``DiTConfig`` or preset name; None reads it from the checkpoint.
        dtype: parameter dtype (e.g. ``torch.bfloat16``; the fp32 islands stay fp32); None: fp32.
        device: parameter device; None: CPU.
        strict: see ``load_into``.

    Example:
        >>> path = "/models/Wan2.1-T2V-1.3B-Diffusers/transformer"
        >>> model = from_pretrained(path, dtype=torch.bfloat16)  # doctest: +SKIP
    """
    cfg = resolve_config(path, config, **overrides)
    with torch.device("meta"):
        model = DiT(cfg)
    load_into(model, path, strict=strict, dtype=dtype, device=device)
    return model


def save(
    model: DiT, folder: str | Path, *, max_shard_bytes: int = 5 * 2**30, only: Iterable[str] | None = None
) -> Path:
    """Save in the Wan layout as safetensors (sharded with an index past ``max_shard_bytes``) plus ``config.json``.

    Streams: the header is written from shapes and dtypes, then each tensor's bytes, copied to the host one tensor
    at a time, so no second copy of the model is ever held (a GPU model costs one tensor of host memory). Each file
    is written to a temporary name and renamed when complete.

    Args:
        model: the model to save (its tensors as they are: a bf16 model saves bf16, with fp32 islands).
        folder: output directory (created).
        max_shard_bytes: largest shard; bigger models get ``*-0000i-of-0000n.safetensors`` and an index.
        only: optional key prefixes or substrings to save (e.g. the trained face branches).

    Returns:
        The folder.
    """
    folder = Path(folder)
    state = model.state_dict()  # references to the parameters, no copies
    if only is not None:
        prefixes = tuple(only)
        state = {k: v for k, v in state.items() if k.startswith(prefixes) or any(p in k for p in prefixes)}
    for key, value in state.items():
        if value.is_meta:
            raise ValueError(f"cannot save {key}: it is on the meta device (materialise or load the model first)")
        if _is_dtensor(value):
            raise ValueError(f"cannot save {key}: it is a sharded DTensor; gather the full state dict first")
        if value.dtype not in _ST_NAMES:
            raise ValueError(f"cannot save {key}: dtype {value.dtype} has no safetensors name")
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[list[str]] = [[]]
    size = 0
    for key, value in state.items():
        nbytes = value.numel() * value.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    name = "diffusion_pytorch_model"
    meta = {"format": "pt", "layout": "wan"}
    if len(shards) == 1:
        _write_safetensors(folder / f"{name}.safetensors", [(k, state[k]) for k in shards[0]], meta)
    else:
        weight_map = {}
        for i, keys in enumerate(shards, 1):
            fname = f"{name}-{i:05d}-of-{len(shards):05d}.safetensors"
            _write_safetensors(folder / fname, [(k, state[k]) for k in keys], meta)
            weight_map.update(dict.fromkeys(keys, fname))
        index = {
            "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
            "weight_map": weight_map,
        }
        _atomic_text(folder / f"{name}.safetensors.index.json", json.dumps(index, indent=2))
    _atomic_text(folder / "config.json", json.dumps(model.cfg.to_dict(), indent=2, ensure_ascii=False))
    return folder


def _write_safetensors(path: Path, items: list[tuple[str, Tensor]], metadata: dict[str, str]) -> None:
    """Write a safetensors file tensor by tensor: header from shapes and dtypes, then the data in header order."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for key, value in items:
        nbytes = value.numel() * value.element_size()
        header[key] = {
            "dtype": _ST_NAMES[value.dtype],
            "shape": list(value.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(blob)))
            fh.write(blob)
            for _, value in items:
                if value.numel() == 0:
                    continue
                t = value.detach().to("cpu").contiguous()  # one tensor on the host at a time
                fh.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
