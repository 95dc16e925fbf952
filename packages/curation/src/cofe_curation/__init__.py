"""Raw face videos to pose-varying, identity-consistent, speech-aware WebDataset shards."""

__version__ = "0.0.1"
