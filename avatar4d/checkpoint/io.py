"""avatar4d checkpoints: a folder holding ``model.safetensors`` (weights), ``config.json`` (the
model's typed config: the Hugging Face layout) and ``checkpoint.json`` (format tag, component name,
config, training step, free-form metadata, weight hash).

No pickles are written or read: weights are safetensors, everything else is JSON. Saving is
atomic (written to a temporary folder, then renamed), so a crash never leaves half a checkpoint.
Folders and files follow the process umask (0755/0644 under umask 0022), so others on a shared
filesystem can read them. Models offer the same through ``save_pretrained``/``from_pretrained``
(:mod:`avatar4d.checkpoint.pretrained`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avatar4d import __version__
from avatar4d.config import Config
from avatar4d.errors import UserError

logger = logging.getLogger(__name__)

FORMAT_NAME = "avatar4d-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "checkpoint.json"
CONFIG_FILE = "config.json"


class CheckpointError(UserError):
    """A path is not an avatar4d checkpoint, is damaged, or does not fit the model."""


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    component: str
    config: dict[str, Any]
    step: int
    weights_sha256: str
    metadata: dict[str, Any]
    avatar4d_version: str
    path: Path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(directory: str | Path, state_dict: Mapping[str, Tensor], *, component: str,
                    config: Config | Mapping[str, Any], step: int = 0,
                    metadata: Mapping[str, Any] | None = None) -> CheckpointInfo:
    """Write ``state_dict`` and its config to ``directory`` (created or atomically replaced)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    config_dict = config.to_dict() if isinstance(config, Config) else dict(config)
    tensors = {}
    for name, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor")
        # safetensors refuses shared storage; every tensor gets its own contiguous copy on CPU.
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    staging.mkdir()  # mode 0777 & ~umask (tempfile.mkdtemp would make it 0700)
    try:
        weights = staging / WEIGHTS_FILE
        # one metadata entry only: safetensors writes a multi-key metadata map in hash order, which
        # would make the bytes (and the recorded hash) of identical weights differ between runs
        save_file(tensors, str(weights), metadata={"format": f"{FORMAT_NAME}/{component}"})
        info = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "component": component,
            "step": int(step),
            "config": config_dict,
            "weights_sha256": file_sha256(weights),
            "metadata": dict(metadata or {}),
            "avatar4d_version": __version__,
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
        (staging / CONFIG_FILE).write_text(json.dumps(config_dict, indent=2, sort_keys=True))
        # safetensors writes 0600 whatever the umask; give the weights the mode open() gave the JSON
        os.chmod(weights, stat.S_IMODE((staging / CONFIG_FILE).stat().st_mode))
        if directory.exists():
            backup = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(directory, backup)
            os.replace(staging, directory)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved %s checkpoint (%d tensors, step %d) to %s", component, len(tensors), step, directory)
    return _info_from_dict(info, directory)


def _info_from_dict(info: Mapping[str, Any], directory: Path) -> CheckpointInfo:
    return CheckpointInfo(component=info["component"], config=info["config"], step=info["step"],
                          weights_sha256=info["weights_sha256"], metadata=info.get("metadata", {}),
                          avatar4d_version=info.get("avatar4d_version", "?"), path=directory)


def read_checkpoint_info(directory: str | Path) -> CheckpointInfo:
    """Read and validate ``checkpoint.json`` without loading weights."""
    directory = Path(directory)
    if directory.is_file():
        raise CheckpointError(f"{directory} is a file; an avatar4d checkpoint is a folder holding "
                              f"{WEIGHTS_FILE} and {INFO_FILE} (convert third-party files with `avatar4d convert`)")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {directory}")
    info_path = directory / INFO_FILE
    if not info_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{directory} is not an avatar4d checkpoint (needs {WEIGHTS_FILE} and {INFO_FILE})")
    try:
        info = json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{info_path} is not valid JSON: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{info_path} is not an avatar4d checkpoint description")
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{directory} uses checkpoint format {info['format_version']}; this "
                              f"avatar4d reads up to {FORMAT_VERSION}: upgrade avatar4d")
    missing = [k for k in ("component", "config", "step", "weights_sha256") if k not in info]
    if missing:
        raise CheckpointError(f"{info_path} lacks {missing}")
    return _info_from_dict(info, directory)


def load_checkpoint(directory: str | Path, *, component: str | None = None, map_location: str | torch.device = "cpu",
                    verify_hash: bool = True) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """Load weights and info; ``component`` (if given) must match what the checkpoint holds."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info = read_checkpoint_info(directory)
    if component is not None and info.component != component:
        raise CheckpointError(f"{info.path} holds a {info.component!r} checkpoint, expected {component!r}")
    weights = info.path / WEIGHTS_FILE
    if verify_hash and file_sha256(weights) != info.weights_sha256:
        raise CheckpointError(f"{weights} does not match the hash recorded in {INFO_FILE}: the file is damaged")
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {weights}: {exc}") from None
    return state, info


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, Tensor], *, what: str = "model") -> None:
    """Load with every key and shape checked; the error lists what is missing, unexpected or mis-shaped."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict)
                        if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or mismatched:
        def head(names: list[str]) -> str:
            return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {head(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {head(unexpected)}")
        if mismatched:
            details = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched]
            parts.append(f"{len(mismatched)} with other shapes: {head(details)}")
        raise CheckpointError(f"{what} weights do not fit: " + "; ".join(parts))
    module.load_state_dict(dict(state_dict), strict=True)
