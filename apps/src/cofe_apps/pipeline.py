"""`CoFEPipeline`: a trained CoFE model and its frozen components, from a reference face and a prompt to a video.

No Lightning here: the pipeline imports the network (:class:`cofe_apps.model.CoFEModel`) and the components, never
the trainer, and builds nothing only training needs (no EMA mirror, no optimiser state). ``cofe sample`` is a thin
shell over it.

Example (the tiny model of the tests; any ``cofe export`` file or training checkpoint loads the same way):
    >>> from cofe_apps.pipeline import CoFEPipeline                      # doctest: +SKIP
    >>> pipe = CoFEPipeline.from_pretrained("cofe.safetensors", offload="model")   # doctest: +SKIP
    >>> video = pipe(load_image("face.png"), "a woman turns her head", seed=0)    # doctest: +SKIP
    >>> video.shape  # (frames, height, width, 3) uint8                  # doctest: +SKIP

Memory modes (``offload``):
    * ``none``: every component stays on the device for the whole run.
    * ``model``: each component is on the device only while it runs (umT5 for the prompts, the experts and CLIP
      for the reference and first frame, the DiT for the solver steps, the VAE for the decode); the rest waits on
      the CPU. Several videos in one call share each residency (prompts encoded in one batch, and so on).
    * ``blocks``: as ``model``, and the DiT's blocks stream to the device one group at a time with the next one
      prefetched on a side CUDA stream (diffusers' group offloading), for 24-48 GB cards.

Identity controls (:class:`IdentityControls`): the face branch's strength per block, per-expert weights on the
learned gates, the step window in which the face tokens are given, and the blocks that receive them. Their
defaults leave the output bit-identical to sampling without them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from cofe_apps.components import Encoders
    from cofe_apps.model import CoFEModel
    from cofe_apps.specs import ComponentsSpec
    from cofe_dit import SamplerConfig

Offload = Literal["none", "model", "blocks"]
OFFLOAD_MODES: tuple[str, ...] = ("none", "model", "blocks")
QUANTIZE_MODES: tuple[str, ...] = ("int8", "fp8")


@dataclass(frozen=True)
class IdentityControls:
    """How strongly, where and when the reference face conditions the video.

    Attributes:
        branch_scale: multiplies the face branch's output in every block (one value) or per block (one per block):
            below 1 loosens the identity (more pose and expression freedom), above 1 tightens it.
        expert_weights: a weight per expert name (``identity``, ``semantic``, ``detail``) applied to the learned
            gates and renormalised (``g_k w_k / sum_j g_j w_j``); None keeps the gates as learned.
        window: ``(start, end)`` fractions of the solver steps in which the face tokens are given (steps ``i`` of
            ``n`` with ``start <= i / n < end``); outside it the model sees what face dropout taught it (zero
            tokens). Late starts leave the layout and pose to the text, as ComfyUI's start/end percent do.
        blocks: the DiT blocks that receive face tokens (None: all).
    """

    branch_scale: float | tuple[float, ...] = 1.0
    expert_weights: Mapping[str, float] | None = None
    window: tuple[float, float] = (0.0, 1.0)
    blocks: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        scales = self.branch_scale if isinstance(self.branch_scale, tuple) else (self.branch_scale,)
        if any(not math.isfinite(float(s)) or float(s) < 0 for s in scales):
            raise ValueError(f"branch_scale must be finite and >= 0, got {self.branch_scale}")
        start, end = self.window
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"window must satisfy 0 <= start <= end <= 1, got {self.window}")
        if self.expert_weights is not None:
            bad = {k: v for k, v in self.expert_weights.items() if not math.isfinite(float(v)) or float(v) < 0}
            if bad or not any(float(v) > 0 for v in self.expert_weights.values()):
                raise ValueError(f"expert_weights must be >= 0 with one > 0, got {dict(self.expert_weights)}")

    @property
    def is_default(self) -> bool:
        return self == IdentityControls()

    def check(self, num_blocks: int, experts: Sequence[str]) -> None:
        """Raise unless the controls fit a model of ``num_blocks`` blocks and these expert names."""
        if isinstance(self.branch_scale, tuple) and len(self.branch_scale) != num_blocks:
            raise ValueError(f"branch_scale has {len(self.branch_scale)} values; the DiT has {num_blocks} blocks")
        if self.blocks is not None:
            bad = [b for b in self.blocks if not 0 <= b < num_blocks]
            if bad:
                raise ValueError(f"blocks {bad} do not exist: the DiT has blocks 0..{num_blocks - 1}")
        if self.expert_weights is not None:
            unknown = sorted(set(self.expert_weights) - set(experts))
            if unknown:
                raise ValueError(f"expert_weights names unknown experts {unknown}; the model has {list(experts)}")


@dataclass
class _Request:
    """One video's inputs, resolved."""

    reference: np.ndarray
    prompt: str
    first_frame: np.ndarray | None
    crops: tuple[np.ndarray, np.ndarray] | None
    seed: int
    generator: torch.Generator | None = None


def _modules_of(component: Any) -> list[nn.Module]:
    """The torch modules a component object holds (its ``model``, an open_clip tower, the face experts' dict)."""
    if isinstance(component, nn.Module):
        return [component]
    found = []
    for value in vars(component).values():
        if isinstance(value, nn.Module):
            found.append(value)
        elif isinstance(value, dict):
            found.extend(v for v in value.values() if isinstance(v, nn.Module))
    return found


def _tensors_of(component: Any) -> dict[str, Tensor]:
    """Plain tensor attributes of a component (e.g. the linear codec's basis, the VAE's latent statistics)."""
    return {k: v for k, v in vars(component).items() if isinstance(v, Tensor)}


def _move(component: Any, device: torch.device) -> None:
    if component is None:
        return
    for module in _modules_of(component):
        module.to(device)
    for name, t in _tensors_of(component).items():
        setattr(component, name, t.to(device))


class CoFEPipeline:
    """A CoFE model with its components, ready to sample.

    Args:
        model: the network (:class:`cofe_apps.model.CoFEModel`), on the CPU for ``offload != "none"``.
        components: what the frozen components are (the checkpoint's record, or precompute's ``config.json``).
        device: where the computation runs.
        offload: ``none``, ``model`` or ``blocks`` (see the module docstring).
        encoders: already built components (else built from ``components``).
        vae_tiling: decode the video tile by tile (diffusers' tiled Wan VAE decode: less memory, seams blended).
    """

    def __init__(
        self,
        model: CoFEModel,
        components: ComponentsSpec,
        *,
        device: str | torch.device = "cpu",
        offload: Offload = "none",
        encoders: Encoders | None = None,
        vae_tiling: bool = False,
    ):
        from cofe_apps.components import Encoders

        if offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
        self.device = torch.device(device)
        self.offload = offload
        self.model = model
        self.components = components
        home = self.device if offload == "none" else torch.device("cpu")
        half = torch.bfloat16 if self.device.type == "cuda" else torch.float32  # Wan's umT5 / CLIP dtypes
        self.enc: Encoders = encoders if encoders is not None else Encoders(components, home, half)
        cfg = model.dit.cfg
        g = self.enc.geometry
        if g.channels != cfg.out_dim or (g.temporal_stride, g.spatial_stride, g.spatial_stride) != tuple(
            cfg.vae_stride
        ):
            raise ValueError(
                f"the VAE gives {g.channels}-channel latents at {g.temporal_stride}x/{g.spatial_stride}x; the model "
                f"was trained on {cfg.out_dim} channels at {tuple(cfg.vae_stride)}"
            )
        if self.enc.text.dim != cfg.text_dim:
            raise ValueError(f"the text encoder gives {self.enc.text.dim}-d states; the model reads {cfg.text_dim}")
        if vae_tiling:
            vae_model = getattr(self.enc.vae, "model", None)
            if vae_model is None or not hasattr(vae_model, "enable_tiling"):
                raise ValueError("vae_tiling needs a Wan VAE (the linear codec decodes block by block already)")
            vae_model.enable_tiling()
        self.model.to(home)
        if offload == "blocks":
            self._stream_blocks()
        self.model.eval().requires_grad_(False)

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        offload: Offload = "none",
        ema: bool = False,
        components: str | Path | dict | None = None,
        dit_weights: str | Path | None = None,
        quantize: str | None = None,
        attention: str = "sdpa",
        compile: bool = False,
        vae_tiling: bool = False,
    ) -> CoFEPipeline:
        """A pipeline from a ``cofe export`` file, a Lightning checkpoint of ``cofe fit`` or a sharded checkpoint
        directory.

        Args:
            path: the checkpoint.
            dtype: the DiT's compute dtype (default bf16 on CUDA, fp32 on the CPU); the weights are read straight
                into it, tensor by tensor.
            device: where it runs (default ``cuda`` when present).
            offload: ``none``, ``model`` or ``blocks``.
            ema: sample with the EMA of the trained weights (training checkpoints; an export holds one set).
            components: another copy of precompute's ``config.json`` (default: the checkpoint's record).
            dit_weights: the base Wan folder, for slim checkpoints only.
            quantize: weight-only quantisation of the DiT's block linears: ``int8`` (torchao, any device) or
                ``fp8`` (torchao, CUDA GPUs of compute capability >= 8.9); None keeps ``dtype``.
            attention: ``sdpa`` (PyTorch's fused attention), ``flash`` (flash-attn) or ``sage`` (SageAttention).
            compile: ``torch.compile`` each DiT block (regional compilation: one graph reused by every block).
            vae_tiling: tiled VAE decode.
        """
        from cofe_apps.model import read_components
        from cofe_apps.specs import ComponentsSpec
        from cofe_apps.weights import load_model

        if offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
        if quantize is not None and quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {QUANTIZE_MODES} or None, got {quantize!r}")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(dtype, str):
            if dtype not in ("bfloat16", "float16", "float32"):
                raise ValueError(f"dtype must be bfloat16, float16 or float32, got {dtype!r}")
            dtype = getattr(torch, dtype)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        if attention not in ("sdpa", "flash", "sage"):
            raise ValueError(f"attention must be sdpa, flash or sage, got {attention!r}")
        home = device if offload == "none" else torch.device("cpu")
        loaded = load_model(path, dtype=dtype, device=home, ema=ema, dit_weights=dit_weights)
        record = read_components(components) if components is not None else loaded.meta.get("components")
        if not record:
            raise ValueError(f"{path} records no components: pass components= (precompute's config.json)")
        if components is not None:  # another record: it must describe what this model was trained on
            from cofe_apps.model import configs_from_hparams

            _, cofe_cfg = configs_from_hparams(loaded.hparams, record)  # raises on latents, text, CLIP
            if cofe_cfg != loaded.model.cofe.cfg:
                raise ValueError(
                    f"the components {components} give experts {[(e.name, e.width) for e in cofe_cfg.experts]}; "
                    f"{path} was trained on {[(e.name, e.width) for e in loaded.model.cofe.cfg.experts]}"
                )
        model = loaded.model
        if quantize is not None:
            quantize_dit(model.dit, quantize, device)
        if attention != "sdpa":
            from cofe_dit import set_attention_backend

            set_attention_backend(model.dit, attention)
        pipe = cls(model, ComponentsSpec.from_dict(record), device=device, offload=offload, vae_tiling=vae_tiling)
        pipe.source = loaded
        if compile:
            model.dit.compile_blocks()
        return pipe

    def _stream_blocks(self) -> None:
        """DiT blocks on the CPU, each moved to the device just before it runs, the next one prefetched on a side
        stream (diffusers' ``apply_group_offloading``: block-level groups of one, ``use_stream`` on CUDA). Its
        non-block parameters (embeddings, head) are moved to the device once and stay there."""
        from diffusers.hooks import apply_group_offloading

        dit = self.model.dit
        cuda = self.device.type == "cuda"
        apply_group_offloading(
            dit,
            onload_device=self.device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=cuda,
            non_blocking=cuda,
        )
        self._streamed = True

    @contextlib.contextmanager
    def _on_device(self, *components: Any) -> Iterator[None]:
        """Components on the device for the block's duration (``model`` / ``blocks`` offload), then back."""
        if self.offload == "none":
            yield
            return
        for c in components:
            _move(c, self.device)
        try:
            yield
        finally:
            for c in components:
                _move(c, torch.device("cpu"))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    @contextlib.contextmanager
    def _dit_on_device(self) -> Iterator[None]:
        if self.offload != "model":  # none: there already; blocks: streamed by the hooks
            yield
            return
        with self._on_device(self.model.dit):
            yield

    # ------------------------------------------------------------------------------------------------ sampling

    @property
    def cfg(self):
        """The DiT's config (preset, geometry, Wan's sampling defaults)."""
        return self.model.dit.cfg

    def output_size(self, first_frame: np.ndarray | None, height: int | None, width: int | None) -> tuple[int, int]:
        """``(height, width)``: given, else the preset's (Wan's rule: with a conditioning image its aspect ratio at
        the preset's area, e.g. Wan 2.2's ``best_output_size`` for TI2V)."""
        from cofe_dit import output_size

        cfg = self.cfg
        for name, value in (("height", height), ("width", width)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive number of pixels, got {value}")
        if first_frame is not None and cfg.model_type != "t2v":
            w, h = output_size(cfg, first_frame.shape[1], first_frame.shape[0])
        else:
            w, h = output_size(cfg)
        return height or h, width or w

    def sampler_config(self, config: SamplerConfig | None = None, **overrides: Any) -> SamplerConfig:
        """The preset's sampler settings (Wan's), or ``config``, with the given (non-None) ones overriding them."""
        from cofe_dit import SamplerConfig

        given = {k: v for k, v in overrides.items() if v is not None}
        if config is None:
            return SamplerConfig.from_defaults(self.cfg, **given)
        return replace(config, **given) if given else config

    def __call__(
        self,
        reference: np.ndarray | Sequence[np.ndarray],
        prompt: str | Sequence[str],
        first_frame: np.ndarray | Sequence[np.ndarray | None] | None = None,
        *,
        negative_prompt: str | None = None,
        frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        config: SamplerConfig | None = None,
        steps: int | None = None,
        shift: float | None = None,
        solver: str | None = None,
        text_scale: float | None = None,
        face_scale: float | None = None,
        controls: IdentityControls | None = None,
        seed: int | Sequence[int] = 0,
        generator: torch.Generator | None = None,
        crops: tuple[np.ndarray, np.ndarray] | Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
        callback: Callable[[int, int, int], None] | None = None,
        **sampler: Any,
    ) -> np.ndarray | list[np.ndarray]:
        """Generate one video, or one per prompt when ``prompt`` is a list.

        Args:
            reference: ``(H, W, 3)`` uint8 RGB photo(s) of the person (the largest face is used).
            prompt: what the video shows; a list makes a batch (``reference``, ``first_frame``, ``seed`` and
                ``crops`` then give one entry each, or one shared by all).
            first_frame: the first frame (I2V: required; TI2V: optional; T2V: refused).
            negative_prompt: default the preset's (Wan's own).
            frames, height, width: the video size (default the preset's; with a first frame, Wan's size rule).
            config: a full ``SamplerConfig``; ``steps`` ... ``face_scale`` override single fields of it (or of the
                preset's defaults).
            controls: :class:`IdentityControls` (default: none).
            seed: noise seed(s) (the noise is drawn on the CPU: the same video on any device).
            generator: a CPU generator for the noise instead of ``seed`` (single video).
            crops: ``(aligned 112 identity crop, head crop)`` already made, else found in ``reference``.
            callback: ``callback(video_index, step, steps)`` after every solver step.
            **sampler: other ``SamplerConfig`` fields (``batch_guidance``, ``cache_threshold``, ``schedule``).

        Returns:
            ``(frames, height, width, 3)`` uint8 RGB, or a list of them for a list of prompts.
        """
        batch = not isinstance(prompt, str)
        prompts = [prompt] if not batch else list(prompt)
        if not prompts:
            raise ValueError("prompt is an empty list")
        n = len(prompts)

        def per_video(value, name, *, is_item):
            if is_item(value):
                return [value] * n
            values = list(value)
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} prompts")
            return values

        references = per_video(reference, "reference", is_item=lambda v: isinstance(v, np.ndarray))
        firsts = per_video(first_frame, "first_frame", is_item=lambda v: v is None or isinstance(v, np.ndarray))
        seeds = per_video(seed, "seed", is_item=lambda v: isinstance(v, int))
        crop_list = per_video(crops, "crops", is_item=lambda v: v is None or _is_crop_pair(v))
        if generator is not None and n > 1:
            raise ValueError("generator= serves one video; give seeds for a batch")
        requests = [
            _Request(r, p, f, c, s, generator)
            for r, p, f, c, s in zip(references, prompts, firsts, crop_list, seeds, strict=True)
        ]
        videos = self._generate(
            requests,
            negative_prompt=negative_prompt,
            frames=frames,
            height=height,
            width=width,
            config=self.sampler_config(
                config,
                steps=steps,
                shift=shift,
                solver=solver,
                text_scale=text_scale,
                face_scale=face_scale,
                **sampler,
            ),
            controls=controls or IdentityControls(),
            callback=callback,
        )
        return videos if batch else videos[0]

    @torch.no_grad()
    def _generate(self, requests: list[_Request], *, negative_prompt, frames, height, width, config, controls,
                  callback) -> list[np.ndarray]:  # fmt: skip
        from cofe_apps.components import reference_from_image
        from cofe_apps.io import image_to_tensor, resize_crop
        from cofe_dit import i2v_condition, sample

        cfg, enc, dev = self.cfg, self.enc, self.device
        if frames is None:
            frames = cfg.sampling.num_frames
        elif frames < 1:
            raise ValueError(f"frames must be 1 + {enc.geometry.temporal_stride}k >= 1, got {frames}")
        controls.check(cfg.num_layers, self.model.cofe.cfg.expert_names)
        sizes = [self.output_size(r.first_frame, height, width) for r in requests]
        for r, (h, w) in zip(requests, sizes, strict=True):
            enc.geometry.check(frames, h, w, cfg.patch_size)
            if cfg.model_type == "i2v" and r.first_frame is None:
                raise ValueError(f"the {cfg.name!r} model is I2V: give a first frame (--first-frame)")
            if cfg.model_type == "t2v" and r.first_frame is not None:
                raise ValueError(f"a first frame needs an i2v or ti2v model; this DiT is {cfg.model_type!r}")
        crops = [r.crops if r.crops is not None else reference_from_image(r.reference) for r in requests]
        if negative_prompt is None:
            negative_prompt = cfg.sampling.negative_prompt  # Wan's own, encoded by the same text encoder

        # 1. Text: every prompt and the negative one in one batch, one residency of umT5.
        with self._on_device(enc.text):
            states = enc.text.encode_padded([r.prompt for r in requests] + [negative_prompt])  # (N + 1, T, C)
        contexts, neg = states[:-1], states[-1:]

        # 2. Reference and first frame: experts, CLIP (I2V) and the VAE encoder; then CoFE's fused tokens.
        # The VAE encoder and CLIP serve first frames only: a T2V batch leaves them where they are.
        framed = any(r.first_frame is not None for r in requests)
        with self._on_device(enc.experts, self.model.cofe, *((enc.image, enc.vae) if framed else ())):
            feats = enc.experts.encode([c[0] for c in crops], [c[1] for c in crops])
            feats = {k: torch.from_numpy(v.astype(np.float32)).to(dev) for k, v in feats.items()}
            faces, _ = self.model.face_tokens(feats, expert_weights=controls.expert_weights)  # NB x (N, M, D)
            conds = []
            for r, (h, w) in zip(requests, sizes, strict=True):
                first = cond = clip = None
                if r.first_frame is not None:
                    img = resize_crop(image_to_tensor(r.first_frame), h, w).to(dev)  # (1, 3, H, W)
                    if cfg.model_type == "ti2v":
                        first = enc.vae.encode(img[:, :, None]).to(dev)  # (1, z, 1, h, w)
                    else:  # i2v: mask + VAE latent of [first frame, zeros], and the frame's CLIP tokens
                        shape = enc.geometry.latent_shape(frames, h, w)
                        cond = i2v_condition(enc.i2v_latent(img, frames), shape[1], cfg.vae_stride[0]).to(dev)
                        clip = enc.image.encode(img).to(dev)
                conds.append((first, cond, clip))

        # 3. The solver, one residency of the DiT for every video.
        latents = []
        with self._dit_on_device():
            for i, (r, (h, w), (first, cond, clip)) in enumerate(zip(requests, sizes, conds, strict=True)):
                face_i = [f[i : i + 1] for f in faces]  # NB x (1, M, D)
                zero = [torch.zeros_like(f) for f in face_i]  # what training's face dropout shows the model
                if controls.blocks is not None:
                    keep = set(controls.blocks)
                    face_i = [f if b in keep else z for b, (f, z) in enumerate(zip(face_i, zero, strict=True))]
                kwargs = {}
                config_i = config if controls.window == (0.0, 1.0) else replace(config, face_window=controls.window)
                if controls.branch_scale != 1.0:
                    kwargs["face_branch_scale"] = controls.branch_scale
                step_cb = None
                if callback is not None:

                    def step_cb(step, _x, i=i, total=config_i.steps):
                        callback(i, step, total)

                latents.append(
                    sample(
                        self.model.dit,
                        (1, *enc.geometry.latent_shape(frames, h, w)),
                        contexts[i : i + 1].to(dev),
                        config=config_i,
                        seed=r.seed,
                        generator=r.generator,
                        negative_context=neg.to(dev),
                        face_tokens=face_i,
                        negative_face_tokens=zero,
                        first_frame=first,
                        cond=cond,
                        clip_tokens=clip,
                        callback=step_cb,
                        **kwargs,
                    )
                )

        # 4. Decode, one residency of the VAE.
        videos = []
        with self._on_device(enc.vae):
            for latent in latents:
                video = enc.vae.decode(latent)[0]  # (3, F, H, W) in [-1, 1]
                videos.append(((video.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().cpu().numpy())
        return videos


def _is_crop_pair(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, np.ndarray) for v in value)


def quantize_dit(dit: nn.Module, mode: str, device: torch.device) -> None:
    """Weight-only quantisation of the DiT blocks' linear layers with torchao (activations stay in the compute
    dtype): ``int8`` (per-channel int8 weights, half of bf16's bytes) or ``fp8`` (float8 e4m3 weights; needs a CUDA
    GPU of compute capability >= 8.9, where torchao has fp8 kernels). Embeddings, the head and the fp32 islands
    (norms, modulation tables) are left as they are: they are a small part of the bytes and the most sensitive."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {mode!r}")
    if mode == "fp8":
        ok = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 9)
        if not ok:
            raise ValueError(
                f"quantize='fp8' needs a CUDA GPU of compute capability >= 8.9 (Ada, Hopper); the device is {device}: "
                "use quantize='int8'"
            )
    try:
        import logging

        logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's import-time enum notice
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError as exc:  # pragma: no cover - torchao is a dependency of cofe-apps
        raise ValueError(f"quantize={mode!r} needs torchao (pip install torchao): {exc}") from exc
    config = Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig()
    for block in dit.blocks:
        quantize_(block, config, filter_fn=lambda m, _fqn: isinstance(m, nn.Linear))
