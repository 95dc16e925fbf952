"""Identity, semantic and quality metrics for face video generation, by head-pose bin."""

__version__ = "0.0.1"
