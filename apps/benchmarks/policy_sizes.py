"""Trainable parameters, optimiser memory and checkpoint size of each freezing policy, per real preset.

Counted from the models built on ``meta`` (nothing is allocated), with CoFE's preset for that DiT and the default
experts' widths (ArcFace 512, CLIP ViT-H/14 1280, DINOv2 ViT-L/14 1024). Bytes assume what the GPU configs use:
trained parameters fp32 (master weights) with AdamW's two fp32 moments and an fp32 EMA, frozen parameters stored in
bf16 except the DiT's fp32 islands (modulation, time embedding, norms). A ``full`` checkpoint holds all of it; a
``slim`` one only the trained parameters, their optimiser state and EMA (the base is verified by its checksum).

Usage: python apps/benchmarks/policy_sizes.py
"""

from __future__ import annotations

import warnings

import torch

PRESETS = {"wan2.1-t2v-1.3b": "wan2.1-t2v-1.3b", "wan2.2-ti2v-5b": "wan2.2-ti2v-5b", "wan2.1-i2v-14b": "wan2.1-14b"}
GB = 1e9


def sizes(dit: str, cofe: str, freeze: str) -> dict:
    from cofe_apps.module import CoFEModule
    from cofe_dit.model import is_fp32_parameter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = CoFEModule(dit=dit, cofe=cofe, freeze=freeze, frozen_dtype="bfloat16", dit_weights="unused")
    with torch.device("meta"):
        from cofe_dit import DiT
        from cofe_fusion import CoFE

        module.dit, module.cofe = DiT(module.dit_cfg), CoFE(module.cofe_cfg)
    module._apply_freeze(module.dit, module.cofe)
    trained = sum(p.numel() for p in module.trainable().values())
    frozen_bf16 = sum(p.numel() for n, p in module.dit.named_parameters() if not p.requires_grad
                      and not is_fp32_parameter(n))  # fmt: skip
    frozen_fp32 = sum(
        p.numel() for n, p in module.dit.named_parameters() if not p.requires_grad and is_fp32_parameter(n)
    )
    total = trained + frozen_bf16 + frozen_fp32
    state = trained * 4 * 4  # weights + 2 AdamW moments + EMA, fp32
    return {
        "total": total, "trained": trained, "optimiser_gb": trained * 8 / GB, "full_gb": (state + frozen_bf16 * 2
        + frozen_fp32 * 4) / GB, "slim_gb": state / GB,
    }  # fmt: skip


def main() -> None:
    print("| preset | policy | parameters | trained | AdamW state | full checkpoint | slim checkpoint |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for dit, cofe in PRESETS.items():
        for freeze in ("adapter", "cofe", "full"):
            s = sizes(dit, cofe, freeze)
            print(f"| {dit} | {freeze} | {s['total'] / 1e9:.2f}B | {s['trained'] / 1e9:.3f}B | "
                  f"{s['optimiser_gb']:.1f} GB | {s['full_gb']:.1f} GB | {s['slim_gb']:.1f} GB |")  # fmt: skip


if __name__ == "__main__":
    main()
