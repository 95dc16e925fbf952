"""Load and save DiT weights: original Wan layout, diffusers ``WanTransformer3DModel`` layout, sharded or not.

Both layouts hold the same tensors under different names. Our module names are Wan's; diffusers names are
mapped onto them (the inverse of diffusers' ``scripts/convert_wan_to_diffusers.py`` renaming table).

Loading is strict: every tensor the model needs must be present with the right shape, and nothing may be left
over. The only tolerated gap is the zero-initialised face branch (absent from every released Wan checkpoint),
which is reported, not silently skipped. Only safetensors (or ``torch.load(weights_only=True)``) are read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from cofe_dit.config import DiTConfig
from cofe_dit.model import DiT

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


def read_state_dict(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read every tensor behind ``path`` (see ``weight_files``). Never unpickles arbitrary objects."""
    state: dict[str, Tensor] = {}
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt", device=str(device)) as f:
                    part = {k: f.get_tensor(k) for k in f.keys()}
            except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
                raise CheckpointError(f"cannot read {file}: {exc}") from exc
        else:
            part = torch.load(file, map_location=device, weights_only=True)
            if isinstance(part, Mapping) and "state_dict" in part and isinstance(part["state_dict"], Mapping):
                part = part["state_dict"]
            if not isinstance(part, Mapping):
                raise CheckpointError(f"{file} does not hold a state dict (found {type(part).__name__})")
        overlap = set(part) & set(state)
        if overlap:
            raise CheckpointError(f"{file} repeats keys found in another shard: {sorted(overlap)[:5]}")
        state.update(part)
    return state


def detect_layout(keys: Iterable[str]) -> str:
    """``"diffusers"`` or ``"wan"`` from the key names."""
    keys = list(keys)
    if any(m in k for k in keys for m in _DIFFUSERS_MARKERS):
        return "diffusers"
    return "wan"


def to_wan_layout(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a diffusers ``WanTransformer3DModel`` state dict to Wan names (unknown keys pass through)."""
    patterns = [(re.compile(p), r) for p, r in _DIFFUSERS_TO_WAN]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if any(p.search(key) for p in _IGNORED):
            continue
        for pattern, repl in patterns:
            new, n = pattern.subn(repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def _strip_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop wrapper prefixes (``model.``, ``module.``, ``_orig_mod.``) shared by every key."""
    state = dict(state)
    for prefix in ("module.", "model.", "_orig_mod.", "dit."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_into(model: DiT, path: str | Path, *, strict: bool = True) -> LoadReport:
    """Load weights from ``path`` into ``model`` in place.

    Args:
        model: the DiT to fill.
        path: a ``.safetensors`` file, a ``*.safetensors.index.json``, or a directory (Wan or diffusers export).
        strict: raise ``CheckpointError`` on any missing, unexpected or mis-shaped tensor (the face branch is the
            only thing allowed to be absent). With ``strict=False`` matching tensors load and the report lists the rest.

    Returns:
        The ``LoadReport``.
    """
    raw = _strip_prefix(read_state_dict(path))
    layout = detect_layout(raw)
    state = to_wan_layout(raw) if layout == "diffusers" else raw
    report = compare(model, state, source=str(path), layout=layout)
    if strict and not report.ok:
        first, *rest = report.summary().split("\n")
        hint = _preset_hint(state, model.cfg)
        raise CheckpointError("\n".join([first, *([f"  {hint}"] if hint else []), *rest]))
    own = model.state_dict()
    good = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    with torch.no_grad():
        for key, value in good.items():
            own[key].copy_(value.to(own[key].dtype))
    report.loaded = len(good)
    return report


def compare(model: DiT, state: Mapping[str, Tensor], source: str = "<state dict>", layout: str = "wan") -> LoadReport:
    """Compare a Wan-named state dict with the model's own tensors."""
    own = model.state_dict()
    report = LoadReport(source=source, layout=layout)
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
    model_type = "i2v" if image_dim is not None else "t2v"
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
    return DiTConfig(**cfg)


def config_from_diffusers(config: Mapping) -> DiTConfig:
    """A ``DiTConfig`` from a diffusers ``WanTransformer3DModel`` ``config.json``."""
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    in_dim, out_dim = config.get("in_channels", 16), config.get("out_channels") or config.get("in_channels", 16)
    image_dim = config.get("image_dim")
    model_type = "i2v" if image_dim else ("ti2v" if in_dim == 48 else "t2v")
    return DiTConfig(
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


def from_pretrained(
    path: str | Path, config: DiTConfig | str | None = None, *, strict: bool = True, **overrides
) -> DiT:
    """Build a DiT for a checkpoint and load it.

    The config comes from ``config`` (a ``DiTConfig`` or preset name), else from a ``config.json`` beside the
    weights (ours or diffusers'), else from the tensor shapes. ``overrides`` (e.g. ``face_dim=1024``) apply last.
    """
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
            data = json.loads(cfg_file.read_text())
            if "num_attention_heads" in data:
                cfg = config_from_diffusers(data)
            elif "dim" in data and "num_layers" in data:
                cfg = config_from_wan(data)
        if cfg is None:
            raw = _strip_prefix(read_state_dict(path))
            cfg = infer_config(to_wan_layout(raw) if detect_layout(raw) == "diffusers" else raw)
    if overrides:
        cfg = cfg.replace(**overrides)
    model = DiT(cfg)
    load_into(model, path, strict=strict)
    return model


def save(
    model: DiT, folder: str | Path, *, max_shard_bytes: int = 5 * 2**30, only: Iterable[str] | None = None
) -> Path:
    """Save in the Wan layout as safetensors (sharded with an index past ``max_shard_bytes``) plus ``config.json``.

    Args:
        model: the model to save.
        folder: output directory (created).
        max_shard_bytes: largest shard; bigger models get ``*-0000i-of-0000n.safetensors`` and an index.
        only: optional key prefixes to save (e.g. the trained face branches).

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if only is not None:
        prefixes = tuple(only)
        state = {k: v for k, v in state.items() if k.startswith(prefixes) or any(p in k for p in prefixes)}
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, value in state.items():
        nbytes = value.numel() * value.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += nbytes
    name = "diffusion_pytorch_model"
    meta = {"format": "pt", "layout": "wan"}
    if len(shards) == 1:
        _atomic_save(shards[0], folder / f"{name}.safetensors", meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            fname = f"{name}-{i:05d}-of-{len(shards):05d}.safetensors"
            _atomic_save(shard, folder / fname, meta)
            weight_map.update(dict.fromkeys(shard, fname))
        index = {
            "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
            "weight_map": weight_map,
        }
        (folder / f"{name}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    cfg = model.cfg.to_dict()
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def _atomic_save(state: dict[str, Tensor], path: Path, meta: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
