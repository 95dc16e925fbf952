"""Kernels and references. ``cofe_fusion.ops.expert_gate`` imports triton; the other modules do not."""
