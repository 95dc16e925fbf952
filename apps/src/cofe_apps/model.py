"""The CoFE network: the Wan-compatible DiT, its face branch and the CoFE fusion that feeds it, as one ``nn.Module``.

This file imports no training framework. Training (:class:`cofe_apps.module.CoFEModule`, Lightning) trains a
:class:`CoFEModel`, export writes its weights, and :class:`cofe_apps.pipeline.CoFEPipeline` runs it: the one model
class the three rooms share (STYLE rule 19). What only training needs (EMA, optimiser, freezing policies, the
empty-prompt buffer of text dropout) lives in the LightningModule; what only inference needs (offload,
quantisation, identity controls) lives in the pipeline.

State-dict keys are ``dit.*`` and ``cofe.*``: the keys of every checkpoint and export written since cofe-apps 0.1.

Shape legend: B batch, C expert width, L expert tokens, NB DiT blocks, M fused tokens, D fused width, E experts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cofe_dit import DiT, DiTConfig
from cofe_fusion import CoFE, CoFEConfig, ExpertFeatures


def read_components(components: str | dict | None) -> dict | None:
    """The record ``cofe precompute`` wrote (its ``config.json``), from a path or as a dict."""
    if components is None or isinstance(components, dict):
        return components
    path = Path(components)
    if not path.is_file():
        raise FileNotFoundError(f"no components record at {path} (the config.json `cofe precompute` writes)")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not readable JSON: {exc}") from exc


def build_configs(
    dit: str, dit_overrides: dict | None, cofe: str, cofe_overrides: dict | None, record: dict | None
) -> tuple[DiTConfig, CoFEConfig]:
    """The DiT and CoFE configs, with the widths and geometry of the components record checked against them.

    The record is the one source of truth for what the data look like: the latent channels and the VAE strides must
    be the DiT preset's, the text width its ``text_dim``, the CLIP image tokens its ``image_dim``; the experts'
    widths set CoFE's (a width given in ``cofe_overrides`` that disagrees is an error).
    """
    dit_cfg = DiTConfig.from_name(dit, **(dit_overrides or {}))
    overrides = dict(cofe_overrides or {})
    if record is not None:
        src = "components record (cofe precompute's config.json)"
        lat = record.get("latent")
        if lat:
            stride = (lat["temporal_stride"], lat["spatial_stride"], lat["spatial_stride"])
            if lat["channels"] != dit_cfg.out_dim:
                raise ValueError(
                    f"the {src} has {lat['channels']}-channel latents; the {dit_cfg.name!r} DiT predicts "
                    f"{dit_cfg.out_dim} channels: precompute with its VAE (or another DiT preset)"
                )
            if tuple(stride) != tuple(dit_cfg.vae_stride):
                raise ValueError(
                    f"the {src} was made with a VAE of strides {stride}; the {dit_cfg.name!r} DiT is trained on "
                    f"latents of a {tuple(dit_cfg.vae_stride)} VAE"
                )
        if record.get("text_dim") not in (None, dit_cfg.text_dim):
            raise ValueError(
                f"the {src} has {record['text_dim']}-d text states; the {dit_cfg.name!r} DiT reads "
                f"text_dim={dit_cfg.text_dim}"
            )
        image = record.get("image_tokens")
        if dit_cfg.model_type == "i2v":
            if not image:
                raise ValueError(f"the {dit_cfg.name!r} DiT is I2V: precompute with --image-encoder (CLIP tokens)")
            if image["width"] != dit_cfg.image_dim:
                raise ValueError(f"the {src} has {image['width']}-d CLIP tokens; the DiT expects {dit_cfg.image_dim}")
        outputs = record.get("expert_outputs")
        if outputs:
            preset = CoFEConfig.from_name(cofe, **overrides)
            given = {s.name: s for s in preset.experts}
            specs = []
            for name, out in outputs.items():
                spec = given.get(name)
                if "experts" in overrides and spec is not None and spec.width != out["width"]:
                    raise ValueError(
                        f"cofe_overrides gives the {name} expert width {spec.width}; the {src} says the {name} "
                        f"expert ({out['variant']}) produces {out['width']}-d {out['feature']}"
                    )
                projector = spec.projector if spec is not None else None
                if projector is None:
                    projector = "mlp" if out["feature"] == "pooled" else "perceiver"
                specs.append((name, int(out["width"]), projector))
            overrides["experts"] = specs
    cofe_cfg = CoFEConfig.from_name(cofe, **overrides).replace(num_blocks=dit_cfg.num_layers)
    return dit_cfg.replace(face_dim=cofe_cfg.dim), cofe_cfg


def configs_from_hparams(hparams: Mapping[str, Any], record: dict | None) -> tuple[DiTConfig, CoFEConfig]:
    """The configs a run's hyper-parameters (``CoFEModule``'s, as a checkpoint or an export records them) build."""
    return build_configs(
        hparams.get("dit", "tiny-ti2v"),
        hparams.get("dit_overrides"),
        hparams.get("cofe", "tiny"),
        hparams.get("cofe_overrides"),
        record,
    )


class CoFEModel(nn.Module):
    """DiT + face branch + CoFE.

    Args:
        dit_cfg: the DiT's config (``face_dim`` equal to CoFE's ``dim``: :func:`build_configs` sets it).
        cofe_cfg: CoFE's config (``num_blocks`` equal to the DiT's depth).

    Example:
        >>> import torch
        >>> dit_cfg, cofe_cfg = build_configs("tiny", None, "tiny", None, None)
        >>> model = CoFEModel(dit_cfg, cofe_cfg)
        >>> faces, gates = model.face_tokens({"id": torch.randn(1, 16), "sem": torch.randn(1, 5, 24),
        ...                                   "det": torch.randn(1, 7, 20)})
        >>> len(faces) == dit_cfg.num_layers
        True
    """

    def __init__(self, dit_cfg: DiTConfig, cofe_cfg: CoFEConfig):
        super().__init__()
        if dit_cfg.face_dim != cofe_cfg.dim or cofe_cfg.num_blocks != dit_cfg.num_layers:
            raise ValueError(
                f"the DiT (face_dim={dit_cfg.face_dim}, {dit_cfg.num_layers} blocks) and CoFE (dim={cofe_cfg.dim}, "
                f"{cofe_cfg.num_blocks} blocks) do not fit together: build both with build_configs"
            )
        self.dit = DiT(dit_cfg)
        self.cofe = CoFE(cofe_cfg)

    @classmethod
    def attach(cls, dit: DiT, cofe: CoFE) -> CoFEModel:
        """The model around an existing DiT and CoFE (the same module objects, no copy)."""
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.dit, model.cofe = dit, cofe
        return model

    @property
    def dit_cfg(self) -> DiTConfig:
        return self.dit.cfg

    @property
    def cofe_cfg(self) -> CoFEConfig:
        return self.cofe.cfg

    def face_tokens(
        self,
        features: Mapping[str, Tensor],
        drop: Tensor | None = None,
        *,
        expert_weights: Mapping[str, float] | None = None,
    ) -> tuple[list[Tensor], Tensor]:
        """Expert features -> per-block fused tokens ``NB x (B, M, D)`` and the gates.

        Args:
            features: by shard key (``id``, ``sem``, ``det``: ``cofe_apps.specs.EXPERT_KEYS``), each ``(B, C)``
                pooled or ``(B, L, C)`` tokens, as precompute stores them.
            drop: ``(B,)`` bool: those samples get zero tokens (training's face dropout).
            expert_weights: per expert name, a weight on the learned gates (renormalised; None: as learned).
        """
        from cofe_apps.specs import EXPERT_KEYS

        feats = {}
        for spec in self.cofe.cfg.experts:
            value = features[EXPERT_KEYS[spec.name]].float()  # (B, C) pooled or (B, L, C) tokens
            if value.shape[-1] != spec.width:
                raise ValueError(f"{spec.name} features are {value.shape[-1]}-d; CoFE was built for {spec.width}")
            feats[spec.name] = ExpertFeatures(pooled=value) if value.ndim == 2 else ExpertFeatures(tokens=value)
        out = self.cofe(feats) if expert_weights is None else self.cofe(feats, expert_weights=expert_weights)
        tokens = out.tokens
        if drop is not None and drop.any():
            keep = (~drop).to(tokens[0].dtype)[:, None, None]  # (B, 1, 1)
            tokens = [t * keep for t in tokens]  # dropped samples see zero tokens
        return tokens, out.gates

    def forward(
        self,
        x: Tensor,
        timestep: Tensor,
        context: Tensor,
        *,
        cond: Tensor | None = None,
        clip_tokens: Tensor | None = None,
        face_tokens: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        """The DiT's velocity (see ``cofe_dit.DiT.forward``) with the fused face tokens of :meth:`face_tokens`."""
        return self.dit(x, timestep, context, cond=cond, clip_tokens=clip_tokens, face_tokens=face_tokens)
