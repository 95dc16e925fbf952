"""Reading checkpoint files from a local path, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import torch


def resolve_file(path: str | Path, what: str) -> Path:
    """``path`` as an existing file, or ``FileNotFoundError`` naming it and what it should hold."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} weights file not found: {p}")
    return p


def load_state_dict_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a torch pickle (weights only), unwrapping common containers.

    Accepts a bare state dict, ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers, a ``module.`` prefix from
    DDP, and OpenAI's TorchScript CLIP archives.

    Raises:
        FileNotFoundError: missing file.
        ValueError: the file is not a readable checkpoint.
    """
    p = resolve_file(path, what)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            try:
                state = torch.load(str(p), map_location="cpu", weights_only=True)
            except RuntimeError:
                # OpenAI's original CLIP files are TorchScript archives, not pickles.
                state = torch.jit.load(str(p), map_location="cpu").state_dict()
    except Exception as exc:
        raise ValueError(f"{what} weights {p} could not be read as a checkpoint: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{what} weights {p}: expected a state dict, found {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state
