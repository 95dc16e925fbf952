"""`CoFEModule`: the Wan-compatible DiT with CoFE face fusion, trained with flow matching.

The module owns the model, the loss, the optimiser and what is logged (STYLE rule 10); MLflow is reached only
through the logger and callbacks.

Start vs restore. ``__init__`` only reads configuration; the model is created in :meth:`configure_model` (Lightning's
hook), on the ``meta`` device, then sharded (FSDP2 ``fully_shard`` per DiT block under ``ModelParallelStrategy``)
and materialised: each rank allocates only its shards and fills them with a deterministic initialisation
(:mod:`cofe_apps.weights`: the same weights under one process, DDP or FSDP) and, when a run *starts* from a
pretrained Wan (``dit_weights``), the pretrained tensors read straight from memory-mapped safetensors into the
shards. When a run is *restored* from a checkpoint, the base weights are not read at all: a checkpoint is
self-contained (all weights, frozen ones in their storage dtype, the optimiser state, the EMA, the components
record and the configs). ``checkpoint_mode="slim"`` keeps only the trainable state and the base weights'
checksum, which a restore verifies against ``dit_weights``.

Freezing policies: ``cofe`` (the paper's: every cross-attention of the DiT, text and the new face branch, plus
CoFE's projectors and gates), ``adapter`` (only the face branches and CoFE), ``full`` (everything).

The EMA of the trained weights lives in a parameter-free mirror module (``ema``) whose tensors are sharded like the
parameters they follow, so under FSDP each rank keeps the EMA of its own shards and a sharded checkpoint holds
all of it; it is updated once per optimiser step (gradient accumulation included).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from cofe_apps.model import CoFEModel, build_configs, read_components
from cofe_dit import DiT, FlowMatching, first_frame_mask, i2v_condition, per_token_timesteps
from cofe_fusion import CoFE

__all__ = ["EMA", "CoFEModule", "build_configs", "read_components"]  # the last two live in cofe_apps.model

Freeze = Literal["cofe", "adapter", "full"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# DiT parameters each freezing policy trains (CoFE itself always trains).
TRAINABLE = {"cofe": ("blocks.*.cross_attn.*",), "adapter": ("blocks.*.cross_attn.face.*",), "full": ("*",)}


def _is_no_decay(name: str, p: torch.nn.Parameter) -> bool:
    """Biases, norm weights, gains and AdaLN tables get no weight decay (1-D or modulation tables)."""
    return p.ndim <= 1 or "norm" in name or name.endswith("modulation")


class EMA(nn.Module):
    """fp32 exponential moving averages of named parameters, as (frozen) parameters of their own, so they are
    saved, restored and sharded like the parameters they follow."""

    def __init__(self, params: dict[str, Tensor]):
        super().__init__()
        self.names = list(params)
        for name, p in params.items():
            self.register_parameter(self._key(name), nn.Parameter(torch.empty_like(p, dtype=torch.float32), False))

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def get(self, name: str) -> Tensor:
        return getattr(self, self._key(name))

    @torch.no_grad()
    def copy_from(self, params: dict[str, Tensor]) -> None:
        for name in self.names:
            self.get(name).copy_(params[name].detach().float())

    @torch.no_grad()
    def update(self, params: dict[str, Tensor], decay: float) -> None:
        for name in self.names:
            self.get(name).lerp_(params[name].detach().float(), 1 - decay)


class CoFEModule(L.LightningModule):
    """DiT + CoFE under flow matching.

    Args:
        dit: DiT preset name (``cofe_dit.PRESETS``).
        dit_overrides: ``DiTConfig`` fields to change (``face_dim`` is set from CoFE).
        dit_weights: a local Wan / diffusers checkpoint to start from (face branches start at zero); read only when
            a run starts, never when it is restored.
        cofe: CoFE preset name (``cofe_fusion`` presets).
        cofe_overrides: ``CoFEConfig`` fields to change; ``num_blocks`` follows the DiT, expert widths the components.
        components: the ``config.json`` of ``cofe precompute``: latent geometry, text width, expert widths and the
            frozen components (which raw-clip batches are encoded with); checked against the DiT preset.
        freeze: ``cofe`` (every cross-attention of the DiT + CoFE), ``adapter`` (face branches + CoFE) or ``full``.
        frozen_dtype: storage dtype of the frozen parameters (``bfloat16`` halves their memory; None: as trained).
        lr: AdamW peak learning rate.
        weight_decay: AdamW weight decay (biases, norms and modulation tables get none).
        betas: AdamW betas.
        warmup_steps: linear warmup steps.
        min_lr_ratio: the cosine decay ends at ``min_lr_ratio * lr`` at ``trainer.max_steps``.
        ema_decay: EMA decay of the trained weights per optimiser step (0 disables).
        flow_shift: timestep shift of training sigmas (Wan-family fine-tuning: uniform sigma, shift 5).
        sigma_sampling: ``uniform`` (default) or ``logit_normal`` training sigmas, shifted by ``flow_shift``.
        text_dropout: probability of training a sample on the empty prompt (classifier-free guidance).
        face_dropout: probability of training a sample with zero face tokens (face guidance).
        first_frame: Wan 2.2 TI2V training: the first latent frame is given clean (``ti2v`` models).
        gradient_checkpointing: recompute each DiT block in the backward pass.
        checkpoint_mode: ``full`` (self-contained) or ``slim`` (trainable state + base checksum).
        seed: seed of the deterministic initialisation.
        log_gates_every: steps between per-block gate-weight logs.
        raw_text_len: text tokens after padding in raw mode (the data module's ``text_len`` in precomputed mode).
    """

    def __init__(
        self,
        dit: str = "tiny-ti2v",
        dit_overrides: dict[str, Any] | None = None,
        dit_weights: str | None = None,
        cofe: str = "tiny",
        cofe_overrides: dict[str, Any] | None = None,
        components: str | None = None,
        freeze: Freeze = "cofe",
        frozen_dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        ema_decay: float = 0.999,
        flow_shift: float = 5.0,
        sigma_sampling: Literal["uniform", "logit_normal"] = "uniform",
        text_dropout: float = 0.1,
        face_dropout: float = 0.1,
        first_frame: bool = True,
        gradient_checkpointing: bool = False,
        checkpoint_mode: Literal["full", "slim"] = "full",
        seed: int = 0,
        log_gates_every: int = 10,
        raw_text_len: int = 512,
        _record: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["_record"])
        if freeze not in TRAINABLE:
            raise ValueError(f"freeze must be one of {sorted(TRAINABLE)}, got {freeze!r}")
        if checkpoint_mode not in ("full", "slim"):
            raise ValueError(f"checkpoint_mode must be 'full' or 'slim', got {checkpoint_mode!r}")
        if checkpoint_mode == "slim" and not dit_weights:
            raise ValueError("checkpoint_mode='slim' keeps only the trained state: it needs dit_weights (the base)")
        self.record = _record if _record is not None else read_components(components)
        self.dit_cfg, self.cofe_cfg = build_configs(dit, dit_overrides, cofe, cofe_overrides, self.record)
        if freeze == "cofe" and not dit_weights:
            warnings.warn(
                "freeze='cofe' on a randomly initialised DiT: its head starts at zero and stays frozen, so no "
                "gradient reaches CoFE. Give dit_weights (a pretrained Wan) or use freeze='full'.",
                stacklevel=2,
            )
        null = (self.record or {}).get("null_text")
        text = torch.tensor(null, dtype=torch.float32) if null else torch.zeros(0, self.dit_cfg.text_dim)
        self.register_buffer("null_text", text)  # (T0, text_dim): the empty prompt's states
        self.flow = FlowMatching(shift=flow_shift, sampling=sigma_sampling)
        self.dit: DiT | None = None
        self.cofe: CoFE | None = None
        self.net: CoFEModel | None = None
        self.ema: EMA | None = None
        # The checkpoint a run resumes from (a path, set by `cofe fit`), or its `cofe` record (set by `from_state`).
        self.restoring: str | dict | None = None
        self.base_report = None
        self._encoders = None  # frozen components for raw batches; a plain attribute, never checkpointed
        self.last_gates: Tensor | None = None
        self._t_last: float | None = None

    # --------------------------------------------------------------------------------------------- model

    def _target_device(self) -> torch.device:
        trainer = self._trainer
        if trainer is not None:
            return trainer.strategy.root_device
        return torch.device("cpu")

    def configure_model(self) -> None:
        """Create the model on ``meta``, shard it (under ``ModelParallelStrategy``), materialise and fill it."""
        if self.dit is not None:
            return
        from cofe_apps import weights as W

        hp = self.hparams
        with torch.device("meta"):
            net = CoFEModel(self.dit_cfg, self.cofe_cfg)
        dit, cofe = net.dit, net.cofe
        self._apply_freeze(dit, cofe)
        # The module trains `net` (the class export and the pipeline use) but registers its two parts under their
        # own names, so the state-dict keys stay `dit.*` / `cofe.*` as in every checkpoint written so far; `net` is
        # a plain attribute over the same module objects (sharding and materialisation act on them in place).
        self.dit, self.cofe = dit, cofe
        object.__setattr__(self, "net", net)
        trainable = self.trainable()
        if hp.frozen_dtype:
            from cofe_dit.model import is_fp32_parameter

            dtype = DTYPES[hp.frozen_dtype]
            for name, p in dit.named_parameters():
                if not p.requires_grad and not is_fp32_parameter(name):  # the fp32 islands stay fp32
                    p.data = p.data.to(dtype)
        self.ema = EMA(trainable) if hp.ema_decay > 0 else None
        if hp.gradient_checkpointing:
            dit.enable_gradient_checkpointing()
        mesh = getattr(self, "_device_mesh", None)
        if mesh is not None:
            self._shard(mesh)
        W.materialize(self, self._target_device())
        self._restore_buffers()
        restoring = self.restoring
        meta = None if restoring is None else self._restore_meta()
        slim = meta is not None and meta.get("checkpoint_mode") == "slim"
        if slim:
            self.strict_loading = False  # the checkpoint lacks the frozen base, which is loaded (and verified) here
        if restoring is None or slim:
            W.init_dit(dit, hp.seed, face_only=bool(hp.dit_weights))
            if hp.dit_weights:
                from cofe_dit import load_into

                self.base_report = load_into(dit, hp.dit_weights)
                rank_zero_info(self.base_report.summary())
            if slim:
                self._verify_base(meta)
        if restoring is None:
            W.init_cofe(cofe, hp.seed)
            if self.ema is not None:
                self.ema.copy_from(self.trainable())  # the materialised parameters (to_empty replaced them)

    def _restore_meta(self) -> dict:
        """The ``cofe`` record of the checkpoint being restored, read without loading its tensors."""
        if isinstance(self.restoring, dict):
            return self.restoring
        p = Path(self.restoring)
        try:
            if p.is_dir():
                rest = torch.load(p / "meta.pt", map_location="cpu", weights_only=True)
            else:
                rest = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise ValueError(f"cannot read the checkpoint {p}: {type(exc).__name__}: {exc}") from exc
        self.restoring = dict(rest.get("cofe") or {})
        return self.restoring

    def _restore_buffers(self) -> None:
        """Buffers that are state of the architecture, not weights (RoPE tables live outside the module)."""
        null = (self.record or {}).get("null_text")
        value = torch.tensor(null, dtype=torch.float32) if null else torch.zeros(0, self.dit_cfg.text_dim)
        self.null_text = value.to(self.null_text.device)

    def _apply_freeze(self, dit: DiT, cofe: CoFE) -> None:
        import fnmatch

        patterns = TRAINABLE[self.hparams.freeze]
        names = [n for n, _ in dit.named_parameters()]
        for pat in patterns:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                raise ValueError(f"freeze={self.hparams.freeze!r}: {pat!r} matches no DiT parameter")
        for name, p in dit.named_parameters():
            p.requires_grad_(any(fnmatch.fnmatchcase(name, pat) for pat in patterns))
        cofe.requires_grad_(True)

    def _shard(self, mesh) -> None:
        """FSDP2: one ``fully_shard`` per DiT block, then CoFE, the EMA mirror and the DiT's top level."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        dp = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        # Parameters all-gathered in their own dtype and gradients reduced in fp32: the fp32 islands of the DiT
        # (modulation tables, time embedding, norms) stay exact; compute precision comes from the trainer's autocast.
        policy = MixedPrecisionPolicy(reduce_dtype=torch.float32)
        for block in self.dit.blocks:
            fully_shard(block, mesh=dp, mp_policy=policy)
        fully_shard(self.cofe, mesh=dp, mp_policy=policy)
        if self.ema is not None:
            fully_shard(self.ema, mesh=dp, reshard_after_forward=True)
        fully_shard(self.dit, mesh=dp, mp_policy=policy)

    def _verify_base(self, meta: dict) -> None:
        from cofe_apps.weights import base_fingerprint

        want = meta.get("base") or {}
        have = base_fingerprint(self.hparams.dit_weights)
        if want.get("sha256") != have["sha256"]:
            raise ValueError(
                f"the slim checkpoint {self.restoring} was trained on base weights {want.get('path')} "
                f"(sha256 {want.get('sha256')}); dit_weights {self.hparams.dit_weights} has sha256 {have['sha256']}"
            )

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def face_tokens(self, batch: dict, drop: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """Expert features of the batch -> per-block fused tokens ``num_layers x (B, M, D)`` and gates."""
        return self.net.face_tokens(batch, drop)

    def null_context(self, like: Tensor) -> Tensor:
        """The empty prompt's states padded like ``like`` ``(B, T, text_dim)`` (zeros without a record)."""
        out = torch.zeros_like(like[:1])
        n = min(self.null_text.shape[0], like.shape[1])
        out[0, :n] = self.null_text[:n].to(like)
        return out

    @torch.no_grad()
    def encode_raw(self, batch: dict) -> dict:
        """Raw-clip batch -> the precomputed fields (latent, txt, id, sem, det, and clip / cond for I2V)."""
        if self._encoders is None:
            if not self.record:
                raise ValueError("a raw-clip batch needs CoFEModule(components=<cofe precompute config.json>)")
            from cofe_apps.components import Encoders
            from cofe_apps.specs import ComponentsSpec

            self._encoders = Encoders(ComponentsSpec.from_dict(self.record), str(self.device))
        enc = self._encoders
        video = batch["video"]  # (B, 3, F, H, W)
        out = {"keys": batch["keys"], "latent": enc.vae.encode(video).to(self.device)}
        out["txt"] = enc.text.encode_padded(batch["caption"]).to(self.device)[:, : self.hparams.raw_text_len]
        feats = enc.experts.encode(batch["ref_id"], batch["ref"])
        out.update({k: torch.from_numpy(v.astype("float32")).to(self.device) for k, v in feats.items()})
        if enc.image is not None:
            first = video[:, :, 0]  # (B, 3, H, W)
            out["clip"] = enc.image.encode(first).to(self.device)
            out["cond"] = enc.i2v_latent(first, video.shape[2]).to(self.device)
        return out

    def forward(self, batch: dict) -> tuple[Tensor, dict]:
        if "video" in batch:
            batch = self.encode_raw(batch)
        x0 = batch["latent"].float()  # (B, C, F, H, W)
        b = x0.shape[0]
        ctx = batch["txt"].float()  # (B, T, text_dim)
        drop_t = torch.rand(b, device=x0.device) < self.hparams.text_dropout if self.training else None
        drop_f = torch.rand(b, device=x0.device) < self.hparams.face_dropout if self.training else None
        if drop_t is not None and drop_t.any():
            ctx = torch.where(drop_t[:, None, None], self.null_context(ctx), ctx)  # the empty prompt
        faces, gates = self.face_tokens(batch, drop_f)
        sigma = self.flow.sample_sigmas(b, device=x0.device)
        xt, t, target = self.flow.prepare(x0, sigma)
        mask = cond = clip = None
        cfg = self.dit.cfg
        if cfg.model_type == "i2v":
            cond = i2v_condition(batch["cond"].float(), x0.shape[2], cfg.vae_stride[0])  # (B, 4 + C, F, H, W)
            clip = batch["clip"].float()  # (B, I, image_dim)
        elif self.hparams.first_frame and cfg.model_type == "ti2v":
            xt = torch.cat([x0[:, :, :1], xt[:, :, 1:]], dim=2)  # the first latent frame is given clean
            pt, ph, pw = cfg.patch_size
            grid = (x0.shape[2] // pt, x0.shape[3] // ph, x0.shape[4] // pw)
            t = per_token_timesteps(t, grid, given_frames=1)  # ... and its tokens see timestep 0
            mask = first_frame_mask(x0.shape, device=x0.device)  # ... and are not scored
        pred = self.dit(xt, t, ctx, cond=cond, clip_tokens=clip, face_tokens=faces)
        loss = self.flow.loss(pred, target, mask)
        return loss, {"gates": gates.detach()}

    # ------------------------------------------------------------------------------------------ training

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, extra = self(batch)
        b = batch["latent"].shape[0] if "latent" in batch else batch["video"].shape[0]
        grid = batch["latent"].shape[2:] if "latent" in batch else None
        now = time.perf_counter()
        metrics = {"train/loss": loss.detach(), "train/lr": torch.tensor(self.optimizers().param_groups[0]["lr"])}
        if self._t_last is not None:
            dt = max(now - self._t_last, 1e-9)
            metrics["train/samples_per_s"] = torch.tensor(b * self.trainer.world_size / dt)
            if grid is not None:
                tokens = b * self.dit.cfg.num_tokens(*grid)
                metrics["train/tokens_per_s"] = torch.tensor(tokens * self.trainer.world_size / dt)
        self._t_last = now
        self.log_dict(metrics, prog_bar=False, sync_dist=True, batch_size=b)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=b)
        gates = extra["gates"]  # (L, B, E) or (L, B, M, E)
        self.last_gates = gates.float().mean(dim=tuple(range(1, gates.ndim - 1))).cpu()  # (L, E)
        if self.global_step % self.hparams.log_gates_every == 0:
            names = [e.name for e in self.cofe.cfg.experts]
            self.log_dict(
                {
                    f"gates/block{i:02d}/{n}": self.last_gates[i, e]
                    for i in range(len(self.last_gates))
                    for e, n in enumerate(names)
                },
                sync_dist=True,
                batch_size=b,
            )
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Log the global gradient norm (over every shard of every rank, before clipping)."""
        grads = [p.grad for p in self.trainable().values() if p.grad is not None]
        if not grads:
            norm = torch.tensor(0.0)
        else:
            norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
            if hasattr(norm, "full_tensor"):
                norm = norm.full_tensor()  # a sharded run's norm is the all-reduced one
        self.log("train/grad_norm", norm.detach().float().cpu())

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # once per optimiser step, whatever the gradient accumulation
            self.ema.update(self.trainable(), self.hparams.ema_decay)

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.trainable().items():
            (no_decay if _is_no_decay(name, p) else decay).append(p)
        if not decay and not no_decay:
            raise ValueError("no trainable parameters: check the freeze policy")
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=hp.lr, betas=tuple(hp.betas))

        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches

        def schedule(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / max(1, hp.warmup_steps)
            progress = min(1.0, (step - hp.warmup_steps) / max(1, total - hp.warmup_steps))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ----------------------------------------------------------------------------------------- checkpoint

    def cofe_meta(self) -> dict:
        """What a checkpoint or an export records beside the weights."""
        meta = {
            "dit_config": self.dit_cfg.to_dict(),
            "cofe_config": self.cofe_cfg.to_dict(),
            "components": self.record,
            "freeze": self.hparams.freeze,
            "checkpoint_mode": self.hparams.checkpoint_mode,
            "trainable": sorted(self.trainable()),
        }
        if self.hparams.checkpoint_mode == "slim":
            if getattr(self, "_base_fingerprint", None) is None:
                from cofe_apps.weights import base_fingerprint

                self._base_fingerprint = base_fingerprint(self.hparams.dit_weights)
            meta["base"] = self._base_fingerprint
        return meta

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cofe"] = self.cofe_meta()
        # The random stream the training draws noise, sigmas and dropouts from: a resumed run draws what the
        # uninterrupted one would have (Lightning does not restore it).
        checkpoint["rng"] = {"torch": torch.random.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state()
        if self.hparams.checkpoint_mode == "slim":
            keep = set(self.trainable()) | {f"ema.{EMA._key(n)}" for n in (self.ema.names if self.ema else [])}
            keep.add("null_text")
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("cofe")
        if not isinstance(meta, dict):
            raise ValueError("this checkpoint was not written by CoFEModule (no 'cofe' record)")
        rng = checkpoint.get("rng") or {}
        if "torch" in rng:
            torch.random.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        if meta["dit_config"] != self.dit_cfg.to_dict():
            diff = sorted(k for k, v in meta["dit_config"].items() if self.dit_cfg.to_dict().get(k) != v)
            raise ValueError(f"the checkpoint's DiT differs from this run's in {diff}: it is another preset's")

    @torch.no_grad()
    def apply_ema(self) -> None:
        """Replace the trained weights by their EMA (for sampling or export)."""
        if self.ema is None:
            raise ValueError("this model keeps no EMA (ema_decay was 0)")
        for name, p in self.trainable().items():
            p.copy_(self.ema.get(name).to(p.dtype))

    def model_state(self, ema: bool = False, trained_only: bool = False) -> dict[str, Tensor]:
        """The model weights (DiT + CoFE, or only the trained ones; their EMA with ``ema``), unsharded, on the CPU.

        Under FSDP every rank must call this (each gathered tensor is a collective); all get the full values.
        """
        state = {}
        trained = self.trainable()
        for prefix, module in (("dit.", self.dit), ("cofe.", self.cofe)):
            for name, p in module.named_parameters():
                full = f"{prefix}{name}"
                if trained_only and full not in trained:
                    continue
                value = self.ema.get(full) if ema and full in trained and self.ema is not None else p
                value = value.full_tensor() if hasattr(value, "full_tensor") else value
                state[full] = value.detach().cpu().contiguous()
        return state

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, ema: bool = False, device: str = "cpu", dit_weights=None, dtype=None
    ) -> CoFEModule:
        """A module (in eval mode) from any checkpoint kind (:func:`cofe_apps.weights.read_checkpoint`); never needs
        the base folder unless the checkpoint is slim (then ``dit_weights`` or the recorded path).

        ``dtype`` casts the DiT (its fp32 islands stay fp32; CoFE stays fp32): one compute dtype for sampling,
        whatever storage dtypes training used (a bf16 frozen base beside fp32 trained layers). None keeps them.
        """
        from cofe_apps.weights import read_checkpoint

        ckpt = read_checkpoint(path)
        return cls.from_state(ckpt, ema=ema, device=device, dit_weights=dit_weights, dtype=dtype)

    @classmethod
    def from_state(cls, ckpt, *, ema: bool = False, device: str = "cpu", dit_weights=None, dtype=None):
        import inspect

        known = set(inspect.signature(cls.__init__).parameters) - {"self", "_record"}
        hp = {k: v for k, v in dict(ckpt.hparams).items() if k in known}  # LightningCLI adds `_instantiator`, ...
        meta = ckpt.meta
        if meta.get("checkpoint_mode") == "slim":
            hp["dit_weights"] = dit_weights or hp.get("dit_weights")
        else:
            hp["dit_weights"] = None  # self-contained: the base folder is never read
            hp["checkpoint_mode"] = "full"
        hp["components"] = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # freeze='cofe' without dit_weights warns for fresh runs only
            module = cls(**hp, _record=meta.get("components"))
        module.restoring = meta
        module.configure_model()
        state = ckpt.state
        if ckpt.kind == "export":
            state = {k: v for k, v in state.items()}
            own = module.state_dict()
            missing = sorted(k for k in own if k not in state and not k.startswith("ema.") and k != "null_text")
            if missing:
                raise ValueError(f"{ckpt.path} lacks {missing[:5]}")
            state.update({k: v for k, v in own.items() if k not in state})
        strict = meta.get("checkpoint_mode") != "slim" and ckpt.kind != "export"
        result = module.load_state_dict(state, strict=strict)
        if not strict and result.unexpected_keys:
            raise ValueError(f"{ckpt.path} holds tensors this model does not have: {result.unexpected_keys[:5]}")
        if ema:
            if ckpt.kind == "export":
                raise ValueError(f"{ckpt.path} is an export: it holds one set of weights (export with --ema for EMA)")
            module.apply_ema()
        if dtype is not None:
            module.dit.to(dtype)
        return module.to(device).eval()
