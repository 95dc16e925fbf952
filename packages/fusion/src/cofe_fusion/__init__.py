"""CoFE: per-expert projections, per-block gates and a fused Triton gating kernel."""

__version__ = "0.0.1"
