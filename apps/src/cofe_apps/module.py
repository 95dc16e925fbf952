"""`CoFEModule`: the Wan-compatible DiT with CoFE face fusion, trained with flow matching.

The module owns the model, the loss, the optimiser and what is logged (STYLE rule 10); MLflow is reached only
through the logger and callbacks. Freezing policy ``cofe`` (the default, as CoFE prescribes): the expert
projectors, the per-block gates and the DiT's cross-attention layers (text, and the new face branch) train;
everything else is frozen. ``full`` trains the whole DiT as well.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import lightning as L
import torch
from torch import Tensor

from cofe_dit import DiT, DiTConfig, FlowMatching, first_frame_mask, per_token_timesteps
from cofe_dit.checkpoint import load_into
from cofe_fusion import CoFE, CoFEConfig, ExpertFeatures, freeze_dit_for_cofe

EXPERT_KEYS = {"identity": "id", "semantic": "sem", "detail": "det"}


def _is_no_decay(name: str, p: torch.nn.Parameter) -> bool:
    """Biases, norm weights, gains and AdaLN tables get no weight decay (1-D or modulation tables)."""
    return p.ndim <= 1 or "norm" in name or name.endswith("modulation")


class CoFEModule(L.LightningModule):
    """DiT + CoFE under flow matching.

    Args:
        dit: DiT preset name (``cofe_dit.PRESETS``).
        dit_overrides: ``DiTConfig`` fields to change (``face_dim`` is set from CoFE).
        dit_weights: a local Wan / diffusers checkpoint to start from (face branches start at zero).
        cofe: CoFE preset name (``cofe_fusion`` presets).
        cofe_overrides: ``CoFEConfig`` fields to change; ``num_blocks`` follows the DiT.
        freeze: ``cofe`` (projectors, gates, cross-attention) or ``full``.
        lr, weight_decay, betas: AdamW; decay skips biases, norms and modulation tables.
        warmup_steps, min_lr_ratio: linear warmup, then cosine decay to ``min_lr_ratio * lr`` at the trainer's last
            step (``trainer.max_steps``; a resumed run keeps the checkpoint's architecture but not its length).
        ema_decay: EMA of the trained weights (0 disables).
        flow_shift, sigma_sampling: flow-matching timestep sampling.
        text_dropout, face_dropout: probability of dropping each condition (for classifier-free guidance).
        first_frame: Wan 2.2 TI2V training: the first latent frame is given (``ti2v`` models).
        gradient_checkpointing: recompute each DiT block in the backward pass.
        log_gates_every: steps between per-block gate-weight logs.
        record_keys: a folder where each rank appends the sample keys it trained on (for tests / audits).
        components: for raw-clip batches (``ShardDataModule(mode="raw")``): the ``config.json`` of
            ``cofe precompute`` naming the VAE, text encoder and experts, encoded here on the fly (frozen).
        raw_text_len: text tokens after padding in raw mode (the data module's ``text_len`` in precomputed mode).
    """

    def __init__(
        self,
        dit: str = "tiny-ti2v",
        dit_overrides: dict[str, Any] | None = None,
        dit_weights: str | None = None,
        cofe: str = "tiny",
        cofe_overrides: dict[str, Any] | None = None,
        freeze: str = "cofe",
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        ema_decay: float = 0.999,
        flow_shift: float = 5.0,
        sigma_sampling: str = "logit_normal",
        text_dropout: float = 0.1,
        face_dropout: float = 0.1,
        first_frame: bool = True,
        gradient_checkpointing: bool = False,
        log_gates_every: int = 10,
        record_keys: str | None = None,
        components: str | None = None,
        raw_text_len: int = 512,
    ):
        super().__init__()
        self.save_hyperparameters()
        if freeze not in ("cofe", "full"):
            raise ValueError(f"freeze must be 'cofe' or 'full', got {freeze!r}")
        cofe_cfg = CoFEConfig.from_name(cofe, **(cofe_overrides or {}))
        dit_cfg = DiTConfig.from_name(dit, **(dit_overrides or {}))
        dit_cfg = dit_cfg.replace(face_dim=cofe_cfg.dim)
        self.cofe = CoFE(cofe_cfg.replace(num_blocks=dit_cfg.num_layers))
        self.dit = DiT(dit_cfg)
        if dit_weights:
            report = load_into(self.dit, dit_weights)
            print(report.summary())
        if gradient_checkpointing:
            self.dit.enable_gradient_checkpointing()
        self.flow = FlowMatching(shift=flow_shift, sampling=sigma_sampling)
        if freeze == "cofe":
            if not dit_weights:
                warnings.warn(
                    "freeze='cofe' on a randomly initialised DiT: its head starts at zero and stays frozen, so no "
                    "gradient reaches CoFE. Give dit_weights (a pretrained Wan) or use freeze='full'.",
                    stacklevel=2,
                )
            freeze_dit_for_cofe(self.dit)
        self._encoders = None  # frozen components for raw batches; a plain attribute, never checkpointed
        self.ema: dict[str, Tensor] = {}
        self.last_gates: Tensor | None = None
        self._t_last: float | None = None

    # --------------------------------------------------------------------------------------------- model

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def face_tokens(self, batch: dict, drop: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """Expert features of the batch -> per-block fused tokens ``num_layers x (B, M, D)`` and gates."""
        feats = {}
        for spec in self.cofe.cfg.experts:
            value = batch[EXPERT_KEYS[spec.name]].float()  # (B, C) pooled or (B, L, C) tokens
            feats[spec.name] = ExpertFeatures(pooled=value) if value.ndim == 2 else ExpertFeatures(tokens=value)
        out = self.cofe(feats)
        tokens = out.tokens
        if drop is not None and drop.any():
            keep = (~drop).to(tokens[0].dtype)[:, None, None]  # (B, 1, 1)
            tokens = [t * keep for t in tokens]  # dropped samples see zero tokens
        return tokens, out.gates

    @torch.no_grad()
    def encode_raw(self, batch: dict) -> dict:
        """Raw-clip batch -> the precomputed fields (latent, txt, id, sem, det) with the frozen components."""
        if self._encoders is None:
            if not self.hparams.components:
                raise ValueError("a raw-clip batch needs CoFEModule(components=<cofe precompute config.json>)")
            from cofe_apps.precompute import Precomputer
            from cofe_apps.sample import Components

            comp = Components.from_json(self.hparams.components)
            self._encoders = Precomputer.from_components(comp, str(self.device))
        enc = self._encoders
        out = {"keys": batch["keys"], "latent": enc.vae.encode(batch["video"]).to(self.device)}
        out["txt"] = enc.text.encode_padded(batch["caption"]).to(self.device)[:, : self.hparams.raw_text_len]
        feats = enc.experts.encode(batch["ref"])
        out.update({k: torch.from_numpy(v.astype("float32")).to(self.device) for k, v in feats.items()})
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
            ctx = ctx * (~drop_t).to(ctx.dtype)[:, None, None]  # the empty prompt is all-zero padding
        faces, gates = self.face_tokens(batch, drop_f)
        sigma = self.flow.sample_sigmas(b, device=x0.device)
        xt, t, target = self.flow.prepare(x0, sigma)
        mask = None
        ti2v = self.hparams.first_frame and self.dit.cfg.model_type == "ti2v"
        if ti2v:
            xt = torch.cat([x0[:, :, :1], xt[:, :, 1:]], dim=2)  # the first latent frame is given clean
            pt, ph, pw = self.dit.cfg.patch_size
            grid = (x0.shape[2] // pt, x0.shape[3] // ph, x0.shape[4] // pw)
            t = per_token_timesteps(t, grid, given_frames=1)  # ... and its tokens see timestep 0
            mask = first_frame_mask(x0.shape, device=x0.device)  # ... and are not scored
        pred = self.dit(xt, t, ctx, face_tokens=faces)
        loss = self.flow.loss(pred, target, mask)
        return loss, {"gates": gates.detach()}

    # ------------------------------------------------------------------------------------------ training

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, extra = self(batch)
        b = batch["latent"].shape[0]
        tokens = b * self.dit.cfg.num_tokens(*batch["latent"].shape[2:])
        now = time.perf_counter()
        metrics = {"train/loss": loss.detach(), "train/lr": torch.tensor(self.optimizers().param_groups[0]["lr"])}
        if self._t_last is not None:
            dt = max(now - self._t_last, 1e-9)
            metrics["train/samples_per_s"] = torch.tensor(b * self.trainer.world_size / dt)
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
        if self.hparams.record_keys:
            from pathlib import Path

            folder = Path(self.hparams.record_keys)
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f"rank{self.global_rank}.txt", "a") as f:
                f.writelines(f"{self.current_epoch}\t{k}\n" for k in batch["keys"])
            with open(folder / f"loss_rank{self.global_rank}.txt", "a") as f:
                f.write(f"{self.global_step}\t{loss.item()!r}\n")
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad.detach().float().norm() for p in self.trainable().values() if p.grad is not None]
        norm = torch.stack(grads).norm() if grads else torch.tensor(0.0)
        self.log("train/grad_norm", norm, sync_dist=True)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        decay = self.hparams.ema_decay
        if decay <= 0:
            return
        with torch.no_grad():
            for name, p in self.trainable().items():
                if name not in self.ema:
                    self.ema[name] = p.detach().float().clone()
                else:
                    self.ema[name].lerp_(p.detach().float(), 1 - decay)

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

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ema"] = {k: v.clone() for k, v in self.ema.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.ema = {k: v.clone() for k, v in checkpoint.get("ema", {}).items()}

    def trainable_state(self, ema: bool = False) -> dict[str, Tensor]:
        """The trained weights (or their EMA), as saved to safetensors."""
        if ema and self.ema:
            return {k: v.detach().cpu().contiguous() for k, v in self.ema.items()}
        return {k: p.detach().float().cpu().contiguous() for k, p in self.trainable().items()}
