"""Frozen face experts (ArcFace identity, CLIP semantic, DINOv2 detail) and face analysis."""

__version__ = "0.0.1"
