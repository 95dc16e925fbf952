"""CoFE applications: the `cofe` command and its jobs."""

__version__ = "0.4.0"
