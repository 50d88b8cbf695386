"""Checkpoints: our safetensors + JSON format, and safe readers of third-party files."""

from avatar4d.checkpoint.io import (
    CheckpointError,
    CheckpointInfo,
    file_sha256,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from avatar4d.checkpoint.safe_pickle import PickleReadError, UnsafePickleError

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "PickleReadError",
    "UnsafePickleError",
    "file_sha256",
    "load_checkpoint",
    "load_state_dict_strict",
    "save_checkpoint",
]
