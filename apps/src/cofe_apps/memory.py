"""GPU memory of a ``CoFEPipeline`` sampling run per offload mode, planned on the ``meta`` device.

Nothing is allocated and nothing is downloaded: every model is built on ``meta`` at its real size, and every phase of
a run executes on ``meta`` tensors under :class:`LiveBytes`, a dispatch mode that adds the bytes of each storage an
operation creates, subtracts them when Python frees it, and keeps the peak. :func:`plan` gives, for one of the three
real presets and one memory mode, per phase the bytes of the resident weights, of the tensors carried in from earlier
phases, and the peak of the transient (activation) bytes, and the run's peak resident bytes.

Phases, as ``CoFEPipeline`` runs them (at the preset's default size: ``output_size(cfg)``, ``cfg.sampling.num_frames``):
    text        umT5-XXL (bf16) encodes the prompt and the negative prompt in one batch of 2, 512 tokens each.
    experts     the reference and the first frame: CLIP ViT-H/14 and DINOv2 ViT-L/14 (fp32) on the 224 x 224 head
                crop, CoFE's fused tokens (fp32); Wan 2.1 I2V: its CLIP image tokens (bf16) and the VAE encoding of
                ``[first frame, zeros]`` (all frames); Wan 2.2 TI2V: the VAE encoding of the first frame. The
                pipeline keeps the VAE on the device in this phase for every preset.
    dit         the solver: UniPC steps, each 2-3 guidance passes of the DiT (sequential, or one forward of batch 2-3
                with ``batch_guidance``), with the text states, face tokens (and zero tokens), I2V condition.
    vae_decode  the VAE decodes the latent (untiled, or tiled with ``vae_tiling``) and the video becomes uint8 frames.

Residency per mode (``offload``): ``none``: every component on the GPU for the whole run, so every phase holds all
the weights; ``model``: each phase holds only its components (umT5; the experts, CLIP, VAE and CoFE; the DiT; the
VAE); ``blocks``: as ``model``, but the dit phase holds the DiT's non-block parameters and two blocks (the running one
and the prefetched one), as diffusers' block-level group offloading streams them.

How each number is obtained:
    weights      bytes of the parameters and buffers of the model built on meta, in the dtype it runs in (the
                 DiT in the compute dtype with its fp32 islands and RoPE tables, CoFE fp32, umT5 and CLIP-I2V bf16,
                 the VAE and the experts fp32); a quantised DiT through torchao's weight-only configs on the block
                 linears (as ``cofe_apps.pipeline.quantize_dit``), counting the int8 / fp8 data, scales and zero
                 points. ArcFace runs in onnxruntime: with ``offload="none"`` its ONNX file (the catalog's size) is
                 counted as if onnxruntime's CUDA provider held it; offloading, the session is built on the CPU.
                 ``qkv_cache=True`` adds the DiT's concatenated q/k/v copies (``DiT.cache_qkv``, off by default).
    activations  measured: one run of each phase on meta at the default geometry (the dit phase: 4 UniPC steps of
                 ``cofe_dit.sample``, which reach UniPC's order-2 state), the peak of live new bytes above what the
                 phase started with. Attention is counted as CUDA's flash / memory-efficient kernels allocate it
                 (:class:`FusedAttention`); the umT5 and VAE attention and everything else as the code allocates it.
    state        the tensors carried in from earlier phases and the phase's inputs (face tokens and zero tokens,
                 I2V condition, CLIP tokens, text states, the latent), built on meta with the pipeline's shapes and
                 dtypes; UniPC's latent copies are part of the dit phase's measured peak.

The meta runs at real size take seconds through two exact shortcuts (``REPLAY``): a module call repeated with the
same input shapes (the DiT's blocks, the VAE's per-frame decoder and encoder, its tile blending) is replayed from its
first run's record, and a functional op seen before with the same input layouts gets its outputs allocated directly
instead of running its Python meta kernel again. With them off, every real-size peak is the same to the byte.

Not counted: the CUDA context, cuBLAS / cuDNN workspaces and the caching allocator's fragmentation; :meth:`fits`
keeps a margin for them (``FIT_MARGIN_FRACTION * peak + FIT_MARGIN_BYTES``).

Example:
    >>> p = plan("wan2.1-i2v-14b", "blocks")  # doctest: +SKIP
    >>> p.peak / GiB, p.peak_phase, p.fits(24)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import textwrap
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._python_dispatch import _disable_current_modes as _no_dispatch_modes

GiB = 2**30
GB = 10**9
PRESETS: tuple[str, ...] = ("wan2.1-t2v-1.3b", "wan2.2-ti2v-5b", "wan2.1-i2v-14b")
OFFLOAD_MODES: tuple[str, ...] = ("none", "model", "blocks")
QUANTIZE_MODES: tuple[str, ...] = ("int8", "fp8")
DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32")
PHASES: tuple[str, ...] = ("text", "experts", "dit", "vae_decode")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# Margin kept free on a card by `MemoryPlan.fits`: the CUDA context and kernel workspaces (~0.5-1 GiB with PyTorch
# 2.x on Hopper), plus the caching allocator's rounding and fragmentation, taken as 10% of the peak.
FIT_MARGIN_BYTES = 1 * GiB
FIT_MARGIN_FRACTION = 0.10

# Shortcuts that make the meta runs take seconds: module calls replayed from their first run with the same input
# shapes (`_Replayable`), and functional ops' outputs built from the layouts their meta kernel gave for the same
# input layouts (`_KERNELS`). False runs every call and kernel: the same peaks to the byte, ~20x slower
# (`python apps/benchmarks/memory_table.py --check` compares both).
REPLAY = True
# Output layouts of functional (non-mutating, non-aliasing) aten ops, per op and input layout (see `LiveBytes`).
_KERNELS: dict[Any, Any] = {}

# Solver steps run on meta for the dit phase: UniPC is first order on the first and the last step and second order in
# between (three latent-sized data predictions kept), so 4 steps reach its largest state.
_MEASURED_STEPS = 4
# The expert and CLIP inputs: the 224 x 224 head crop / first frame (16 x 16 patches of 14 px).
_EXPERT_SIZE = 224
# Wan's umT5 runs the prompt and the negative prompt in one batch, padded to 512 tokens.
_TEXT_BATCH = 2


# --------------------------------------------------------------------------------------------------------------
# Counting live bytes on meta
# --------------------------------------------------------------------------------------------------------------


def _storage_key(t: Tensor) -> int | None:
    try:
        return id(t.untyped_storage())
    except (RuntimeError, NotImplementedError, TypeError):  # wrapper subclasses (torchao's quantised weights)
        return None


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the ``meta`` tensors alive, operation by operation, and keeps the peak.

    A storage an operation creates (one that no input shares: views and in-place results are no new memory) is
    added when it appears and subtracted when Python frees it (a weakref callback on the storage, whose Python object
    torch keeps for as long as the storage lives). Storages that existed before (weights, inputs) are not counted;
    neither are CPU tensors (the DiT builds its RoPE tables in fp64 on the CPU): ``meta`` stands for the GPU.

    Attributes:
        live: bytes alive now.
        peak: the most bytes alive at once since entering (or since :meth:`reset_peak`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._alive: dict[int, weakref.ref] = {}
        self.replays: dict[Any, Any] = {}  # `_Replayable` records, per module fingerprint and input signature

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        key = _kernel_key(func, args, kwargs) if REPLAY and _is_functional(func) else None
        layouts = _KERNELS.get(key) if key is not None else None
        if layouts is not None:
            # The same op on inputs of the same layouts: its outputs are fresh storages of known layouts (a meta
            # kernel computes shapes only), so they are built directly instead of running the Python kernel again.
            kind, shapes = layouts
            outs = [_EMPTY_STRIDED(sh, st, dtype=dt, device="meta") for sh, st, dt in shapes]
            for t in outs:
                self.track(t)
            return outs[0] if kind is Tensor else kind(outs)
        out = func(*args, **kwargs)
        inputs = {_storage_key(t) for t in _tensors((args, kwargs.values()))}
        fresh = []
        for t in _tensors(out):
            if t.device.type == "meta":
                skey = _storage_key(t)
                if skey is not None and skey not in inputs:
                    self.track(t)
                    fresh.append(t)
        if key is not None:
            _KERNELS[key] = _fresh_layouts(out, fresh)
        return out

    def track(self, t: Tensor) -> None:
        """Count ``t``'s storage from now until Python frees it (once, however many tensors share it)."""
        storage = t.untyped_storage()
        key = id(storage)
        if key not in self._alive:
            n = storage.nbytes()
            self._alive[key] = weakref.ref(storage, functools.partial(self._free, key, n))
            self.live += n
            self.peak = max(self.peak, self.live)

    def _free(self, key: int, n: int, _ref: weakref.ref) -> None:
        self.live -= n
        self._alive.pop(key, None)

    def reset_peak(self) -> None:
        self.peak = self.live


@functools.cache
def _is_functional(func) -> bool:
    """An op that neither mutates nor aliases: its outputs are new storages."""
    schema = func._schema
    return not schema.is_mutable and all(r.alias_info is None for r in schema.returns)


_EMPTY_STRIDED = torch.ops.aten.empty_strided.default
_SCALARS = (bool, int, float, str, torch.dtype, torch.device, torch.memory_format, torch.layout)


def _tensors(obj: Any) -> Iterator[Tensor]:
    """The tensors in an op's arguments or outputs (nested tuples, lists and dict values)."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)) or type(obj).__name__ == "dict_values":
        for o in obj:
            yield from _tensors(o)


def _arg_key(a: Any) -> Any:
    if isinstance(a, Tensor):
        if type(a) is not Tensor and type(a) is not nn.Parameter:
            raise _Unreplayable(type(a).__name__)  # tensor subclasses (torchao) run their own code
        return (tuple(a.shape), a.stride(), a.dtype, a.device.type)
    if isinstance(a, (tuple, list)):
        return (type(a), tuple(_arg_key(x) for x in a))
    if a is None or isinstance(a, _SCALARS):
        return (type(a), a)
    raise _Unreplayable(type(a).__name__)


def _kernel_key(func, args: tuple, kwargs: dict) -> Any:
    """What a functional op's output layouts depend on: the op, its tensors' layouts, its other arguments."""
    try:
        return (func, _arg_key(args), tuple((k, _arg_key(v)) for k, v in kwargs.items()))
    except _Unreplayable:
        return None


def _fresh_layouts(out: Any, fresh: list[Tensor]) -> tuple | None:
    """``(Tensor | tuple | list, ((shape, stride, dtype), ...))`` when every output is a fresh, whole meta storage;
    else None (the op runs every time)."""
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if not outs or len(outs) != len(fresh) or any(o is not f for o, f in zip(outs, fresh, strict=True)):
        return None
    storages = set()
    layouts = []
    for t in outs:
        if type(t) is not Tensor or t.storage_offset() != 0:
            return None
        st = t.untyped_storage()
        if id(st) in storages or st.nbytes() != _extent(t.shape, t.stride(), t.element_size()):
            return None
        storages.add(id(st))
        layouts.append((tuple(t.shape), t.stride(), t.dtype))
    return (Tensor if isinstance(out, Tensor) else type(out)), tuple(layouts)


class FusedAttention(TorchFunctionMode):
    """``scaled_dot_product_attention`` allocated as CUDA's flash and memory-efficient kernels allocate it: the
    output and the fp32 log-sum-exp of every query row (freed on return in inference), never the ``Lq x Lk`` scores.

    On ``meta`` SDPA has no fused kernel and would fall back to the math path, whose score matrix is 86 GB for one
    self-attention of Wan2.1-14B at 32760 tokens (40 heads, bf16): memory a CUDA run never holds.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q = args[0] if args else kwargs["query"]
            v = args[2] if len(args) > 2 else kwargs["value"]
            out = q.new_empty((*q.shape[:-1], v.shape[-1]))  # (..., Lq, Dv)
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # (..., Lq)
            del lse
            return out
        return func(*args, **kwargs)


@contextlib.contextmanager
def _meta_autocast() -> Iterator[None]:
    """``torch.autocast(device_type="meta")`` raises (meta has no autocast dtype); the DiT opens an fp32 region with
    it (``DiT.embed_time``). Nothing is cast on meta either way, so a null context stands in for it there."""
    original = torch.autocast

    class _Autocast(original):
        def __init__(self, device_type: str, *args, **kwargs):
            self._null = device_type == "meta"
            if not self._null:
                super().__init__(device_type, *args, **kwargs)

        def __enter__(self):
            return None if self._null else super().__enter__()

        def __exit__(self, *exc):
            return False if self._null else super().__exit__(*exc)

    torch.autocast = _Autocast
    try:
        yield
    finally:
        torch.autocast = original


class _Unreplayable(Exception):
    """A call whose memory effects cannot be replayed from shapes (an output aliasing an input, say)."""


def _signature(obj: Any) -> Any:
    """A hashable description of a call argument: shapes, strides and dtypes of tensors, values of the rest."""
    if isinstance(obj, Tensor):
        if type(obj) not in (Tensor, nn.Parameter):
            raise _Unreplayable(type(obj).__name__)
        return ("tensor", tuple(obj.shape), obj.stride(), obj.dtype, obj.device.type)
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_signature(o) for o in obj))
    if isinstance(obj, dict):
        return ("dict", tuple((k, _signature(v)) for k, v in obj.items()))
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise _Unreplayable(type(obj).__name__)


def _extent(shape: Sequence[int], stride: Sequence[int], itemsize: int) -> int:
    if any(s == 0 for s in shape):
        return 0
    return (1 + sum((s - 1) * st for s, st in zip(shape, stride, strict=True))) * itemsize


def _layout(obj: Any, taken: set[int], args: Sequence[Any] = ()) -> Any:
    """How to rebuild ``obj`` (an output, or a feature-cache entry a call wrote) from its shapes alone: a fresh
    storage, one of the call's arguments (a call that writes into its input and returns it), or a plain value."""
    for i, a in enumerate(args):
        if obj is a and isinstance(a, Tensor):
            return ("arg", i)
    if isinstance(obj, Tensor):
        key = _storage_key(obj)
        nbytes = obj.untyped_storage().nbytes()
        if (
            type(obj) is not Tensor
            or obj.device.type != "meta"
            or key in taken
            or obj.storage_offset() != 0
            or nbytes != _extent(obj.shape, obj.stride(), obj.element_size())
        ):
            raise _Unreplayable("a tensor that is not one fresh storage")
        taken.add(key)
        return ("tensor", tuple(obj.shape), obj.stride(), obj.dtype)
    if isinstance(obj, tuple):
        return ("tuple", tuple(_layout(o, taken, args) for o in obj))
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return ("value", obj)
    raise _Unreplayable(type(obj).__name__)


def _build(layout: Any, args: Sequence[Any], made: list[Tensor]) -> Any:
    """Rebuild what ``_layout`` described; new tensors are appended to ``made`` (for the tracker to count)."""
    kind, *rest = layout
    if kind == "tensor":
        shape, stride, dtype = rest
        t = torch.empty_strided(shape, stride, dtype=dtype, device="meta")
        made.append(t)
        return t
    if kind == "arg":
        return args[rest[0]]
    if kind == "tuple":
        return tuple(_build(x, args, made) for x in rest[0])
    return rest[0]


class _Ref:
    """What a list entry was before a call: a weak reference to a tensor, else the value itself."""

    def __init__(self, value: Any):
        self.tensor = isinstance(value, Tensor)
        self.value = weakref.ref(value) if self.tensor else value

    def refers_to(self, value: Any) -> bool:
        if self.tensor:
            return self.value() is value
        return not isinstance(value, Tensor) and type(value) is type(self.value) and value == self.value


class _Replayable:
    """A call run once per input signature and replayed from its record afterwards.

    The record holds what the call did to memory: the peak it reached above the live bytes at entry, the layout of
    its outputs, and the entries it wrote into list arguments (the Wan VAE's feature cache and its index). A replay
    raises the tracker's peak to ``live + that transient``, frees the list entries the call replaced, allocates the
    new ones and the outputs as fresh ``meta`` storages (or returns the argument the call returned): the same bytes
    in the same places as running the call, since on meta a call's allocations depend on its input shapes only. This
    makes a 40-block DiT cost one block and a causal VAE decode a few frames (its cache reaches a steady shape after
    two); ``REPLAY = False`` runs every call, and the real-size peaks agree to the byte.

    Args:
        tracker: the :class:`LiveBytes` counting.
        function: the call (a module's bound ``forward``, or a method such as the VAE's tile blending).
        fingerprint: what makes two callers interchangeable (a module's class and parameter layout).
    """

    def __init__(self, tracker: LiveBytes, function: Callable, fingerprint: tuple):
        self.tracker = tracker
        self.function = function
        self.fingerprint = fingerprint

    def __call__(self, *args, **kwargs):
        tracker = self.tracker
        try:
            key = (self.fingerprint, _signature(args), _signature(kwargs))
        except _Unreplayable:
            return self.function(*args, **kwargs)
        record = tracker.replays.get(key)
        if record is None:
            return self._record(key, args, kwargs)
        if record == "run":
            return self.function(*args, **kwargs)
        transient, out_layout, edits = record
        tracker.peak = max(tracker.peak, tracker.live + transient)
        lists = [a for a in (*args, *kwargs.values()) if isinstance(a, list)]
        for target, edit in zip(lists, edits, strict=True):
            for i, _ in edit:
                target[i] = None  # the replaced entry is freed first, as the call frees it before it returns
        made: list[Tensor] = []
        # Built with the modes off and counted directly: the same bytes without a Python dispatch per tensor.
        with torch._C.DisableTorchFunction(), _no_dispatch_modes():
            for target, edit in zip(lists, edits, strict=True):
                for i, layout in edit:
                    target[i] = _build(layout, args, made)
            out = _build(out_layout, args, made)
        for t in made:
            tracker.track(t)
        return out

    def _record(self, key, args, kwargs):
        tracker = self.tracker
        lists = [a for a in (*args, *kwargs.values()) if isinstance(a, list)]
        # Weak references only: holding the old entries would keep alive what the call frees.
        before = [[_Ref(v) for v in target] for target in lists]
        # The storages of the tensor arguments (lists aside: their entries are the cache the call rewrites).
        fixed = [a for a in (*args, *kwargs.values()) if not isinstance(a, list)]
        taken = {_storage_key(t) for t in _tensors(fixed)}
        entry, outer_peak = tracker.live, tracker.peak
        tracker.reset_peak()
        out = self.function(*args, **kwargs)
        transient = tracker.peak - entry
        tracker.peak = max(outer_peak, tracker.peak)
        try:
            out_layout = _layout(out, taken, args)
            edits = []
            for target, old in zip(lists, before, strict=True):
                if len(target) != len(old):
                    raise _Unreplayable("a list argument changed length")
                edits.append([(i, _layout(v, taken)) for i, v in enumerate(target) if not old[i].refers_to(v)])
            tracker.replays[key] = (transient, out_layout, edits)
        except _Unreplayable:
            tracker.replays[key] = "run"
        return out


def _module_fingerprint(module: nn.Module) -> tuple:
    params = tuple((n, tuple(p.shape), p.dtype, type(p).__name__) for n, p in module.named_parameters())
    return (type(module).__qualname__, *params)


@contextlib.contextmanager
def measuring(replay: Sequence[nn.Module | tuple[Any, str]] = ()) -> Iterator[LiveBytes]:
    """Run code on ``meta`` tensors with its live bytes counted (see :class:`LiveBytes`), attention counted as the
    fused CUDA kernels allocate it, and the calls of ``replay`` replayed after their first run with each signature
    (see :class:`_Replayable`): modules whose calls repeat with the same shapes (DiT blocks, the VAE's per-frame
    encoder and decoder), or ``(object, method name)`` pairs (the VAE's tile blending).

    Example:
        >>> x = torch.empty(1024, device="meta")  # made before: not counted
        >>> with measuring() as m:
        ...     y = x * 2
        >>> m.peak
        4096
    """
    tracker = LiveBytes()
    patched: list[tuple[Any, str]] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(_meta_autocast())
        stack.enter_context(FusedAttention())
        stack.enter_context(tracker)
        for item in replay if REPLAY else ():
            if isinstance(item, nn.Module):
                owner, name, fingerprint = item, "forward", _module_fingerprint(item)
            else:
                owner, name = item
                fingerprint = (type(owner).__qualname__, name)
            # An instance attribute shadows the class's method until it is deleted again.
            setattr(owner, name, _Replayable(tracker, getattr(owner, name), fingerprint))
            patched.append((owner, name))
        try:
            yield tracker
        finally:
            for owner, name in patched:
                delattr(owner, name)


# --------------------------------------------------------------------------------------------------------------
# The models, on meta at their real sizes (built once per process)
# --------------------------------------------------------------------------------------------------------------


def tensor_bytes(t: Tensor) -> int:
    """Bytes of a tensor; for a tensor subclass (torchao's ``Int8Tensor``, ``Float8Tensor``) those of its inner
    tensors (data, scales, zero points)."""
    if type(t) not in (Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(inner) for n in names if (inner := getattr(t, n)) is not None)
    return t.numel() * t.element_size()


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (each counted once)."""
    return sum(tensor_bytes(t) for t in (*module.parameters(), *module.buffers()))


def _torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    return getattr(torch, name)


@functools.cache
def preset_configs(preset: str):
    """The DiT and CoFE configs of a preset: ``apps/configs/<preset>-cofe.yaml`` names them (``model.dit``,
    ``model.cofe``); the face width and the CoFE block count follow as ``cofe_apps.module.build_configs`` sets them
    without a components record (the experts' widths are the CoFE preset's: ArcFace 512, CLIP ViT-H/14 1280,
    DINOv2 ViT-L/14 1024)."""
    import yaml

    from cofe_dit import DiTConfig
    from cofe_fusion import CoFEConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; memory plans exist for {PRESETS}")
    path = CONFIGS / f"{preset}-cofe.yaml"
    try:
        model = yaml.safe_load(path.read_text())["model"]
        dit, cofe = model["dit"], model["cofe"]
    except (OSError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read model.dit and model.cofe ({exc!r})") from exc
    dit_cfg = DiTConfig.from_name(dit)
    cofe_cfg = CoFEConfig.from_name(cofe).replace(num_blocks=dit_cfg.num_layers)
    return dit_cfg.replace(face_dim=cofe_cfg.dim), cofe_cfg


def _quantize_block(block: nn.Module, quantize: str) -> None:
    """torchao weight-only quantisation of a block's linears, with the configs ``cofe_apps.pipeline.quantize_dit``
    uses (it is not imported: its fp8 path refuses devices other than CUDA, and meta is not one)."""
    import logging

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's import-time enum notice
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    config = Int8WeightOnlyConfig() if quantize == "int8" else Float8WeightOnlyConfig()
    quantize_(block, config, filter_fn=lambda m, _fqn: isinstance(m, nn.Linear))


@functools.cache
def _dit(preset: str, dtype: str, quantize: str | None):
    """The preset's DiT on meta in ``dtype`` (fp32 islands kept), in eval mode as the pipeline samples with it.

    Quantised, its blocks are one quantised block repeated: all blocks have one layout, so bytes and activations are
    those of the real model (torchao quantises one block on meta in 0.05 s, forty in seconds)."""
    from cofe_dit import DiT

    cfg, _ = preset_configs(preset)
    with torch.device("meta"):
        model = DiT(cfg)
    model.to(_torch_dtype(dtype)).eval().requires_grad_(False)
    model.check_inputs = False  # its finiteness checks read values, which meta tensors do not have
    model.rope_tables(torch.device("meta"))  # built once per device and kept: counted with the weights
    if quantize is not None:
        block = model.blocks[0]
        _quantize_block(block, quantize)
        model.blocks = nn.ModuleList([block] * cfg.num_layers)
    return model


def _attentions(model) -> list[nn.Module]:
    return list(dict.fromkeys(b.self_attn for b in model.blocks))


def caches_qkv(preset: str) -> bool:
    """Whether the preset's DiT keeps its q/k/v concatenation in inference by default (``DiT.cache_qkv``)."""
    return all(getattr(a, "cache_qkv", False) for a in _attentions(_dit(preset, "bfloat16", None)))


def qkv_cache_bytes(preset: str, dtype: str = "bfloat16", quantize: str | None = None) -> int:
    """Bytes of the DiT's inference q/k/v caches when it keeps them (``DiT.cache_qkv = True``: a ``(3D, D)`` weight
    and ``(3D,)`` bias per block, in the compute dtype); 0 for quantised weights, which it never concatenates."""
    model = _dit(preset, dtype, quantize)
    if quantize is not None or not hasattr(model.blocks[0].self_attn, "fused_qkv"):
        return 0
    return sum(tensor_bytes(m.weight) + tensor_bytes(m.bias) for b in model.blocks
               for m in (b.self_attn.q, b.self_attn.k, b.self_attn.v))  # fmt: skip


@contextlib.contextmanager
def _qkv_caching(model, enabled: bool) -> Iterator[None]:
    """The DiT with its q/k/v caches on (built now, outside any measurement: every step after a run's first reads
    them) or off, then as it was."""
    attns = _attentions(model)
    before = [getattr(a, "cache_qkv", False) for a in attns]
    for a in attns:
        if hasattr(a, "cache_qkv"):
            a.cache_qkv = enabled
            a.clear_cache()
            if enabled:
                a.fused_qkv()
    try:
        yield
    finally:
        for a, was in zip(attns, before, strict=True):
            if hasattr(a, "cache_qkv"):
                a.cache_qkv = was
                a.clear_cache()


def dit_bytes(preset: str, dtype: str = "bfloat16", quantize: str | None = None) -> tuple[int, int]:
    """``(non-block bytes, bytes of one block)`` of the preset's DiT (with its face branch) as it runs; the
    non-block bytes include its RoPE tables."""
    model = _dit(preset, dtype, quantize)
    blocks = [module_bytes(b) for b in model.blocks]
    if len(set(blocks)) != 1:
        raise RuntimeError(f"the {preset} DiT's blocks differ in size: {sorted(set(blocks))}")
    rest = sum(tensor_bytes(p) for n, p in model.named_parameters() if not n.startswith("blocks."))
    rest += sum(tensor_bytes(t) for t in model.rope_tables(torch.device("meta")))  # fp32 (cos, sin) tables
    return rest, blocks[0]


@functools.cache
def _cofe(preset: str):
    from cofe_fusion import CoFE

    _, cfg = preset_configs(preset)
    with torch.device("meta"):
        cofe = CoFE(cfg)
    cofe.eval().requires_grad_(False)
    return cofe


@functools.cache
def _umt5():
    """umT5-XXL's encoder as Wan ships it (``google/umt5-xxl``: d_model 4096, d_ff 10240, 24 layers, 64 heads of 64,
    vocabulary 256384, gated GELU), bf16 as Wan runs it on CUDA."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=256384,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    return model.to(torch.bfloat16).eval().requires_grad_(False)


# diffusers' AutoencoderKLWan defaults are the Wan 2.1 VAE (base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], 2 res
# blocks, 8x spatial / 4x temporal). The Wan 2.2 VAE: vae/config.json of Wan-AI/Wan2.2-TI2V-5B-Diffusers (diffusers'
# scripts/convert_wan_to_diffusers.py `vae22_diffusers_config`): 48 channels, 16x spatial through a 2x2 patchify.
_WAN22_VAE = {
    "base_dim": 160,
    "decoder_base_dim": 256,
    "z_dim": 48,
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_spatial": 16,
    "scale_factor_temporal": 4,
    "latents_mean": [0.0] * 48,  # the statistics do not change the network
    "latents_std": [1.0] * 48,
}


@functools.cache
def _vae(z_dim: int):
    from diffusers import AutoencoderKLWan

    config = {16: {}, 48: _WAN22_VAE}[z_dim]
    with torch.device("meta"):
        vae = AutoencoderKLWan(**config)
    return vae.eval().requires_grad_(False)  # fp32, as the pipeline runs it


@functools.cache
def _experts():
    """The semantic (open_clip ViT-H/14, the LAION-2B tower) and detail (timm DINOv2 ViT-L/14) experts, fp32."""
    from cofe_encoders.detail import DINOv2Expert
    from cofe_encoders.semantic import CLIPVisionExpert

    with torch.device("meta"):
        semantic = CLIPVisionExpert("ViT-H-14")
        detail = DINOv2Expert("vit_large_patch14_dinov2.lvd142m", image_size=_EXPERT_SIZE)
    return semantic, detail


@functools.cache
def _image_encoder():
    """Wan 2.1 I2V's CLIP image encoder as the -Diffusers layout holds it (transformers ``CLIPVisionModel``: ViT-H/14,
    32 layers, width 1280, 16 heads, MLP 5120), bf16."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=16,
        image_size=_EXPERT_SIZE,
        patch_size=14,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    with torch.device("meta"):
        model = CLIPVisionModel(config)
    return model.to(torch.bfloat16).eval().requires_grad_(False)


def _identity_bytes() -> int:
    from cofe_apps.catalog import IDENTITY

    return int(IDENTITY[0].size)  # antelopev2 glintr100.onnx, the catalog's first (default) identity expert


@functools.cache
def component_bytes(preset: str, dtype: str = "bfloat16", quantize: str | None = None) -> dict[str, int]:
    """Bytes of every component's weights as it runs on CUDA: ``dit`` (with its face branch), ``dit_streamed`` (the
    non-block parameters and two blocks), ``qkv_cache`` (the DiT's cached q/k/v concatenations, 0 if it keeps
    none), ``cofe``, ``umt5``, ``vae``, ``semantic``, ``detail``, ``identity`` (the ONNX file), and ``image`` for
    Wan 2.1 I2V."""
    cfg, cofe_cfg = preset_configs(preset)
    rest, block = dit_bytes(preset, dtype, quantize)
    semantic, detail = _experts()
    widths = {"semantic": semantic.token_dim, "detail": detail.token_dim}
    for spec in cofe_cfg.experts:
        if spec.name in widths and widths[spec.name] != spec.width:
            raise ValueError(
                f"the {spec.name} expert gives {widths[spec.name]}-d tokens; {preset}'s CoFE preset "
                f"{cofe_cfg.name!r} reads {spec.width}"
            )
    out = {
        "dit": rest + cfg.num_layers * block,
        "dit_streamed": rest + 2 * block,
        "qkv_cache": qkv_cache_bytes(preset, dtype, quantize),
        "cofe": module_bytes(_cofe(preset)),
        "umt5": module_bytes(_umt5()),
        "vae": module_bytes(_vae(cfg.out_dim)),
        "semantic": module_bytes(semantic),
        "detail": module_bytes(detail),
        "identity": _identity_bytes(),
    }
    if cfg.model_type == "i2v":
        out["image"] = module_bytes(_image_encoder())
    return out


# --------------------------------------------------------------------------------------------------------------
# Measured phases
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """A run's size: pixel frames and size, the latent grid, DiT tokens and guidance passes."""

    frames: int
    height: int
    width: int
    latent: tuple[int, int, int, int]  # (C, F, H, W)
    tokens: int


def geometry(preset: str, frames: int | None = None, height: int | None = None, width: int | None = None) -> Geometry:
    """The preset's default size (``output_size(cfg)``, ``cfg.sampling.num_frames``) or the given one, checked."""
    from cofe_dit import output_size

    cfg, _ = preset_configs(preset)
    w0, h0 = output_size(cfg)
    frames, height, width = frames or cfg.sampling.num_frames, height or h0, width or w0
    st, ss, _ = cfg.vae_stride
    _, ph, pw = cfg.patch_size
    if frames < 1 or (frames - 1) % st:
        raise ValueError(f"frames must be 1 + {st}k for the {preset} VAE, got {frames}")
    for name, size, div in (("height", height, ss * ph), ("width", width, ss * pw)):
        if size < div or size % div:
            raise ValueError(f"{name} must be a multiple of {div} (VAE stride x patch) for {preset}, got {size}")
    lat = ((frames - 1) // st + 1, height // ss, width // ss)
    return Geometry(frames, height, width, (cfg.out_dim, *lat), cfg.num_tokens(*lat))


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


@dataclass(frozen=True)
class Measured:
    """One phase's measurement: ``state`` bytes it starts with, the ``activations`` peak above them, and what
    those bytes are (``carried``: name -> bytes)."""

    state: int
    activations: int
    carried: tuple[tuple[str, int], ...] = ()


@functools.cache
def measure_text() -> Measured:
    """umT5-XXL on the prompt and the negative prompt (2 x 512 tokens), and their fp32 copies leaving the GPU. No
    attention mask (it adds one ``(2, 1, 512, 512)`` bf16 bias, 1 MB, and its construction reads values)."""
    model = _umt5()
    ids = _meta(_TEXT_BATCH, 512, dtype=torch.long)
    with measuring() as m:
        states = model(input_ids=ids).last_hidden_state  # (2, 512, 4096)
        copies = [states[i].float() for i in range(_TEXT_BATCH)]  # `.float().cpu()` per prompt
        del states, copies
    return Measured(0, m.peak)


def _face_features(preset: str) -> dict[str, Tensor]:
    _, cofe_cfg = preset_configs(preset)
    semantic, detail = _experts()
    tokens = {"semantic": semantic.num_tokens, "detail": detail.num_tokens}
    out = {}
    for spec in cofe_cfg.experts:
        if cofe_cfg.projector_of(spec) == "mlp":
            out[spec.name] = _meta(1, spec.width)  # (1, C): ArcFace's embedding
        else:
            out[spec.name] = _meta(1, tokens[spec.name], spec.width)  # (1, L, C)
    return out


@contextlib.contextmanager
def _tiling(vae, enabled: bool) -> Iterator[None]:
    """The shared meta VAE with diffusers' tiling on or off (``enable_tiling`` / ``disable_tiling``), then off."""
    vae.enable_tiling() if enabled else vae.disable_tiling()
    try:
        yield
    finally:
        vae.disable_tiling()


def _vae_encode(vae, video: Tensor, z_dim: int) -> Tensor:
    """``WanVAE.encode``: the distribution's mode, in fp32, normalised per channel."""
    mean, std = _meta(1, z_dim, 1, 1, 1), _meta(1, z_dim, 1, 1, 1)
    z = vae.encode(video).latent_dist.mode().float()  # (1, z, F', H', W')
    return (z - mean) / std


@functools.cache
def measure_experts(preset: str, frames: int, height: int, width: int, vae_tiling: bool) -> Measured:
    """The experts on the head crop, CoFE, and the first frame's CLIP tokens and VAE latent (I2V, TI2V); what
    stays on the GPU after it (the face tokens, the I2V condition and CLIP tokens, the TI2V first latent) is part of
    the peak and of the later phases' state."""
    from cofe_dit import i2v_condition

    cfg, _ = preset_configs(preset)
    semantic, detail = _experts()
    cofe, vae = _cofe(preset), _vae(cfg.out_dim)
    with _tiling(vae, vae_tiling), measuring([vae.encoder, (vae, "blend_v"), (vae, "blend_h")]) as m:
        crop = _meta(1, 3, _EXPERT_SIZE, _EXPERT_SIZE)  # (1, 3, 224, 224) the preprocessed head crop
        out = semantic.visual.forward_intermediates(crop, indices=[semantic.layer], output_fmt="NLC")
        del out  # the experts' outputs go to the CPU (numpy) and come back as CoFE's inputs
        out = detail.model.forward_features(crop)
        del out, crop
        faces = cofe(_face_features(preset)).tokens  # NB x (1, M, D) fp32
        kept = {"face tokens": faces}
        if cfg.model_type != "t2v":
            frame = _meta(1, 3, height, width)  # (1, 3, H, W) the first frame
            if cfg.model_type == "i2v":
                clip = _meta(1, 3, frames, height, width)  # [first frame, zeros]: Encoders.i2v_latent
                latent = _vae_encode(vae, clip, cfg.out_dim)
                del clip
                kept["i2v condition"] = i2v_condition(latent, latent.shape[2], cfg.vae_stride[0])
                del latent
                pixels = _meta(1, 3, _EXPERT_SIZE, _EXPERT_SIZE, dtype=torch.bfloat16)
                hidden = _image_encoder()(pixel_values=pixels, output_hidden_states=True).hidden_states
                kept["clip tokens"] = hidden[-2]  # (1, 257, 1280)
                del hidden, pixels
            else:
                kept["first latent"] = _vae_encode(vae, frame[:, :, None], cfg.out_dim)  # (1, z, 1, h, w)
            del frame
        carried = tuple((k, sum(tensor_bytes(t) for t in (v if isinstance(v, list) else [v]))) for k, v in kept.items())
        del kept, faces
    return Measured(0, m.peak, carried)


@functools.cache
def measure_dit(
    preset: str,
    dtype: str,
    quantize: str | None,
    batch_guidance: bool,
    frames: int,
    height: int,
    width: int,
    qkv_cache: bool = False,
) -> Measured:
    """``_MEASURED_STEPS`` UniPC steps of ``cofe_dit.sample`` with the preset's guidance (text and face: 3 passes,
    one batch with ``batch_guidance``: ``SamplerConfig.batch_guidance``) on the real DiT (its blocks replayed), with
    the inputs the pipeline gives it (text states, face tokens and zero tokens, the I2V / TI2V condition, the noise).
    ``qkv_cache``: with ``DiT.cache_qkv`` on (q/k/v as one GEMM on cached concatenated weights) or off (as the DiT
    runs quantised weights, and unquantised ones by default: three GEMMs, no weight copy)."""
    from cofe_dit import SamplerConfig, sample

    cfg, cofe_cfg = preset_configs(preset)
    g = geometry(preset, frames, height, width)
    model = _dit(preset, dtype, quantize)
    overrides = {"batch_guidance": True} if batch_guidance else {}
    config = SamplerConfig.from_defaults(cfg, steps=_MEASURED_STEPS, **overrides)
    nb, m_tok, d = cofe_cfg.num_blocks, cofe_cfg.num_tokens, cofe_cfg.dim
    inputs = {
        "text states": [_meta(1, cfg.text_len, cfg.text_dim), _meta(1, cfg.text_len, cfg.text_dim)],  # fp32
        "face tokens": [_meta(1, m_tok, d) for _ in range(nb)],  # fp32, CoFE's output
        "zero face tokens": [_meta(1, m_tok, d) for _ in range(nb)],
        "latent": [_meta(1, *g.latent)],
    }
    cond = clip = first = None
    if cfg.model_type == "i2v":
        cond = _meta(1, cfg.cond_channels, *g.latent[1:])
        clip = _meta(1, (_EXPERT_SIZE // 14) ** 2 + 1, cfg.image_dim, dtype=torch.bfloat16)
        inputs["i2v condition"], inputs["clip tokens"] = [cond], [clip]
    elif cfg.model_type == "ti2v":
        first = _meta(1, cfg.out_dim, 1, *g.latent[2:])
        inputs["first latent"] = [first]
    (ctx, neg), faces, zero, (noise,) = (
        inputs[k] for k in ("text states", "face tokens", "zero face tokens", "latent")
    )
    carried = tuple((k, sum(tensor_bytes(t) for t in v)) for k, v in inputs.items())
    with _qkv_caching(model, qkv_cache):
        with measuring(list(dict.fromkeys(model.blocks))) as m:
            sample(model, (1, *g.latent), ctx, config=config, noise=noise, negative_context=neg, face_tokens=faces,
                   negative_face_tokens=zero, first_frame=first, cond=cond, clip_tokens=clip)  # fmt: skip
    return Measured(sum(b for _, b in carried), m.peak, carried)


@functools.cache
def guidance_passes(preset: str) -> int:
    """DiT passes per step at the preset's sampling defaults with face tokens (``GuidedVelocity.passes``)."""
    from cofe_dit import GuidedVelocity, SamplerConfig

    cfg, _ = preset_configs(preset)
    config = SamplerConfig.from_defaults(cfg)
    face = [_meta(1, 1, 1)]
    guided = GuidedVelocity(
        _dit(preset, "bfloat16", None), _meta(1, 1, 1), negative_context=_meta(1, 1, 1), face_tokens=face,
        negative_face_tokens=face, text_scale=config.text_scale, face_scale=config.face_scale,
    )  # fmt: skip
    return len(guided.passes())


def measure_vae_decode(preset: str, frames: int, height: int, width: int, vae_tiling: bool) -> Measured:
    """``WanVAE.decode`` (un-normalise, diffusers' causal decode frame by frame with its feature cache, tiled or
    not) and the pipeline's conversion to uint8 frames on the device."""
    cfg, _ = preset_configs(preset)
    return _measure_decode(cfg.out_dim, geometry(preset, frames, height, width).latent, vae_tiling)


@functools.cache
def _measure_decode(z_dim: int, latent_shape: tuple[int, ...], vae_tiling: bool) -> Measured:
    vae = _vae(z_dim)
    latent = _meta(1, *latent_shape)
    with _tiling(vae, vae_tiling), measuring([vae.decoder, (vae, "blend_v"), (vae, "blend_h")]) as m:
        std, mean = _meta(1, z_dim, 1, 1, 1), _meta(1, z_dim, 1, 1, 1)
        z = latent.float() * std + mean
        video = vae.decode(z).sample.float().clamp(-1, 1)[0]  # (3, F, H, W)
        del z
        frames_u8 = ((video.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte()  # (F, H, W, 3)
        del video, frames_u8
    return Measured(tensor_bytes(latent), m.peak, (("latent", tensor_bytes(latent)),))


def clear_measurements() -> None:
    """Forget the measured phases (not the models): the next plans measure again (e.g. with ``REPLAY = False``)."""
    for f in (measure_text, measure_experts, measure_dit, _measure_decode):
        f.cache_clear()
    _KERNELS.clear()


# --------------------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """One phase of a run on the GPU.

    Attributes:
        name: ``text``, ``experts``, ``dit`` or ``vae_decode``.
        components: the components whose weights are resident.
        weights: their bytes.
        state: bytes of the tensors carried in from earlier phases and of the phase's own inputs.
        activations: the measured peak of the transient bytes above ``state``.
    """

    name: str
    components: tuple[str, ...]
    weights: int
    state: int
    activations: int

    @property
    def peak(self) -> int:
        return self.weights + self.state + self.activations


@dataclass(frozen=True)
class MemoryPlan:
    """Resident GPU bytes of one sampling run, per phase (see the module docstring for how each is obtained).

    Attributes:
        preset, offload, dtype, quantize, batch_guidance, vae_tiling, qkv_cache: what was planned.
        geometry: frames, pixel size, latent grid and DiT tokens.
        passes: DiT passes per solver step (guidance).
        components: bytes of every component's weights as it runs (``qkv_cache`` 0 unless planned).
        phases: ``text``, ``experts``, ``dit``, ``vae_decode``.
    """

    preset: str
    offload: str
    dtype: str
    quantize: str | None
    batch_guidance: bool
    vae_tiling: bool
    qkv_cache: bool
    geometry: Geometry
    passes: int
    components: dict[str, int]
    phases: tuple[Phase, ...]

    @property
    def peak(self) -> int:
        """The most bytes resident at once over the run."""
        return max(p.peak for p in self.phases)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda p: p.peak).name

    def phase(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(f"no phase {name!r}; phases: {[p.name for p in self.phases]}")

    def fits(self, card_gb: float) -> bool:
        """Whether the run fits a card of ``card_gb`` GB (10^9 bytes: 80 GB = 74.5 GiB, 24 GB = 22.4 GiB) with the
        margin for what is not counted: ``peak * (1 + FIT_MARGIN_FRACTION) + FIT_MARGIN_BYTES <= card``."""
        return self.peak * (1 + FIT_MARGIN_FRACTION) + FIT_MARGIN_BYTES <= card_gb * GB


def _residency(offload: str, components: dict[str, int]) -> dict[str, tuple[str, ...]]:
    """The components resident in each phase.

    The DiT's q/k/v caches (``qkv_cache=True`` only) appear with its first step and stay as long as its blocks
    hold them: to the end with ``none``; for the dit phase with ``model`` (moving the DiT back to the CPU drops
    them, ``SelfAttention._apply``); to the end with ``blocks``, where each block's cache is built on the GPU while
    the block is there and stays there after the offloading hooks swap the block's weights back to the CPU
    (``tensor.data = cpu copy``): every block's cache is resident, not two blocks'.
    """
    base = tuple(k for k in ("dit", "cofe", "umt5", "vae", "semantic", "detail", "identity", "image")
                 if k in components)  # fmt: skip
    if offload == "none":
        return {"text": base, "experts": base, "dit": (*base, "qkv_cache"), "vae_decode": (*base, "qkv_cache")}
    # The pipeline builds the identity expert's onnxruntime session on the CPU when it offloads.
    experts = tuple(k for k in ("semantic", "detail", "image", "vae", "cofe") if k in components)
    if offload == "model":
        return {"text": ("umt5",), "experts": experts, "dit": ("dit", "qkv_cache"), "vae_decode": ("vae",)}
    return {"text": ("umt5",), "experts": experts, "dit": ("dit_streamed", "qkv_cache"),
            "vae_decode": ("vae", "qkv_cache")}  # fmt: skip


def plan(
    preset: str,
    offload: str,
    *,
    dtype: str = "bfloat16",
    quantize: str | None = None,
    batch_guidance: bool = False,
    vae_tiling: bool = False,
    qkv_cache: bool | None = None,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> MemoryPlan:
    """The GPU memory of one ``CoFEPipeline`` run of a real preset.

    Args:
        preset: ``wan2.1-t2v-1.3b``, ``wan2.2-ti2v-5b`` or ``wan2.1-i2v-14b`` (configs in ``apps/configs``).
        offload: ``none``, ``model`` or ``blocks`` (see the module docstring).
        dtype: the DiT's compute dtype (``bfloat16``, ``float16``, ``float32``); its fp32 islands stay fp32.
        quantize: ``int8`` or ``fp8`` weight-only quantisation of the DiT's block linears (torchao), or None.
        batch_guidance: the guidance passes of a step as one forward of batch 2-3.
        vae_tiling: diffusers' tiled VAE decode (and encode, for Wan 2.1 I2V's conditioning clip).
        qkv_cache: whether the DiT keeps its inference q/k/v concatenation (``DiT.cache_qkv = True``: 3 D^2 per
            block more, resident to the end with ``blocks``); None: as the DiT does by default (no cache).
        frames, height, width: the video size (default: the preset's).

    Returns:
        The :class:`MemoryPlan`. Measurements are cached per process: the first plans take seconds.

    Raises:
        ValueError: an unknown preset, mode, dtype or quantisation, a q/k/v cache asked of quantised weights, or a
            size the VAE and patching cannot take.
    """
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES} or None, got {quantize!r}")
    _torch_dtype(dtype)
    g = geometry(preset, frames, height, width)
    size = (g.frames, g.height, g.width)
    components = dict(component_bytes(preset, dtype, quantize))
    if qkv_cache and components["qkv_cache"] == 0:
        raise ValueError(f"qkv_cache=True: the {preset} DiT keeps no q/k/v cache with quantize={quantize!r}")
    if qkv_cache is None:
        qkv_cache = quantize is None and caches_qkv(preset)
    if not qkv_cache:
        components["qkv_cache"] = 0
    measured = {
        "text": measure_text(),
        "experts": measure_experts(preset, *size, vae_tiling),
        "dit": measure_dit(preset, dtype, quantize, batch_guidance, *size, qkv_cache=qkv_cache),
        "vae_decode": measure_vae_decode(preset, *size, vae_tiling),
    }
    # What the experts phase leaves on the GPU stays there to the end (the pipeline keeps its references); the dit
    # phase's own inputs already count those tensors.
    after_experts = sum(b for _, b in measured["experts"].carried)
    carried_in = {"text": 0, "experts": 0, "dit": 0, "vae_decode": after_experts}
    resident = _residency(offload, components)
    phases = tuple(
        Phase(name, resident[name], sum(components[k] for k in resident[name]),
              measured[name].state + carried_in[name], measured[name].activations)
        for name in PHASES
    )  # fmt: skip
    return MemoryPlan(preset, offload, dtype, quantize, batch_guidance, vae_tiling, qkv_cache, g,
                      guidance_passes(preset), components, phases)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------

TABLE_QUANTIZE: tuple[str | None, ...] = (None, "int8")
PHASE_TITLES = {"text": "text", "experts": "experts + image", "dit": "DiT", "vae_decode": "VAE decode"}
CARDS_GB: tuple[int, ...] = (24, 48, 80)


def _gib(n: int) -> str:
    return f"{n / GiB:.1f}"


def smallest_card(p: MemoryPlan) -> str:
    """The smallest of ``CARDS_GB`` that :meth:`MemoryPlan.fits`, e.g. ``"24 GB"``, or ``"> 80 GB"``."""
    for card in CARDS_GB:
        if p.fits(card):
            return f"{card} GB"
    return f"> {CARDS_GB[-1]} GB"


def plans(**options: Any) -> list[MemoryPlan]:
    """Every preset x offload mode x {bf16, int8} plan the tables show, with ``options`` passed to :func:`plan`."""
    return [plan(preset, mode, quantize=q, **options) for preset in PRESETS for mode in OFFLOAD_MODES
            for q in TABLE_QUANTIZE]  # fmt: skip


def _paragraph(text: str) -> list[str]:
    return textwrap.wrap(text, width=118, break_on_hyphens=False)


def markdown_tables() -> str:
    """The tables of ``apps/README.md``'s section on sampling memory (printed by ``apps/benchmarks/memory_table.py``;
    ``apps/tests/test_memory.py`` checks that the README holds exactly these)."""
    cards = ", ".join(f"{c} GB" for c in CARDS_GB)
    margin = f"{FIT_MARGIN_FRACTION:.0%} + {FIT_MARGIN_BYTES / GiB:.0f} GiB"
    lines = _paragraph(
        "Peak resident GiB per phase (weights + carried tensors + measured activation peak) at each preset's default "
        f"size, sequential guidance, untiled VAE; card: the smallest of {cards} that holds the peak + {margin}; then "
        "the peak and card with the tiled VAE (`vae_tiling=True`):"
    )
    lines += [
        "",
        "| preset | offload | DiT | "
        + " | ".join(PHASE_TITLES[n] for n in PHASES)
        + " | peak | card | peak, tiled VAE | card, tiled VAE |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in PHASES) + " | ---: | --- | ---: | --- |",
    ]
    for p in plans():
        t = plan(p.preset, p.offload, quantize=p.quantize, vae_tiling=True)
        cells = " | ".join(_gib(p.phase(n).peak) for n in PHASES)
        lines.append(
            f"| {p.preset} | {p.offload} | {p.quantize or 'bf16'} | {cells} | **{_gib(p.peak)}** | {smallest_card(p)} "
            f"| {_gib(t.peak)} | {smallest_card(t)} |"
        )
    lines += [
        "",
        *_paragraph(
            '`offload="blocks"` and the options that change its peak, GiB (card): the tiled VAE, int8 block linears '
            "and the guidance passes as one batch:"
        ),
    ]
    lines += [
        "",
        "| preset | bf16 | tiled VAE | int8 + tiled VAE | batched passes |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    options = ({}, {"vae_tiling": True}, {"quantize": "int8", "vae_tiling": True}, {"batch_guidance": True})
    for preset in PRESETS:
        blocks = [plan(preset, "blocks", **o) for o in options]
        lines.append(f"| {preset} | " + " | ".join(f"{_gib(b.peak)} ({smallest_card(b)})" for b in blocks) + " |")
    lines += [
        "",
        *_paragraph(
            "Weights as they run, GiB: the DiT with its face branch, bf16 with its fp32 islands / int8 block linears; "
            "streamed: its non-block parameters and two blocks; q/k/v cache: the blocks' concatenated copies if "
            "`DiT.cache_qkv = True` (off by default; with streamed blocks every block's copy would stay on the GPU); "
            "experts: CLIP ViT-H/14 and DINOv2 ViT-L/14 in fp32 and the ArcFace ONNX file (counted with "
            '`offload="none"` only):'
        ),
    ]
    lines += [
        "",
        "| preset | DiT bf16 / int8 | streamed bf16 / int8 | q/k/v cache | CoFE | umT5-XXL | VAE | experts "
        "| CLIP (I2V) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for preset in PRESETS:
        c, cq = component_bytes(preset), component_bytes(preset, quantize="int8")
        experts = c["semantic"] + c["detail"] + c["identity"]
        lines.append(
            f"| {preset} | {_gib(c['dit'])} / {_gib(cq['dit'])} | {_gib(c['dit_streamed'])} / "
            f"{_gib(cq['dit_streamed'])} | {_gib(c['qkv_cache'])} | {_gib(c['cofe'])} | {_gib(c['umt5'])} | "
            f"{_gib(c['vae'])} | {_gib(experts)} | {_gib(c['image']) if 'image' in c else '-'} |"
        )
    lines += [
        "",
        *_paragraph(
            "Measured activation peaks, GiB (transient bytes above what the phase starts with; DiT: 4 UniPC steps, the "
            "guidance passes one after another or as one batch; experts + image and VAE decode: untiled / tiled):"
        ),
    ]
    lines += [
        "",
        "| preset | latent (C, F, H, W) | DiT tokens | text | experts + image | DiT | DiT, batched passes | DiT, int8 "
        "| VAE decode |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for preset in PRESETS:
        p, t = plan(preset, "model"), plan(preset, "model", vae_tiling=True)
        b, q = plan(preset, "model", batch_guidance=True), plan(preset, "model", quantize="int8")
        act = {name: _gib(p.phase(name).activations) for name in PHASES}
        latent = "(" + ", ".join(map(str, p.geometry.latent)) + ")"
        lines.append(
            f"| {preset} | {latent} | {p.geometry.tokens} | {act['text']} | {act['experts']} / "
            f"{_gib(t.phase('experts').activations)} | {act['dit']} | {_gib(b.phase('dit').activations)} "
            f"(x{b.passes}) | {_gib(q.phase('dit').activations)} | {act['vae_decode']} / "
            f"{_gib(t.phase('vae_decode').activations)} |"
        )
    return "\n".join(lines)
