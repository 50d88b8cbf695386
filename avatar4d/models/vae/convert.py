"""Released AvatarArtist VAE weights ↔ ours, and avatar4d VAE checkpoints.

The release (``pretrained_model/checkpoint-VAE/pytorch_model.bin``) is a raw state dict saved
with ``torch.save`` (possibly in fp16: the training script casts the VAE to half). Its names are
ours except for one quirk: every ``SamePadConv3d`` also registers its conv weight as
``<p>.weight`` next to ``<p>.conv.weight`` (26 alias pairs in the paper model, 122 keys for 96
tensors). :func:`convert_released_vae` checks that both names of each pair hold the same values
and keeps only ``<p>.conv.weight``; :func:`to_released_vae_state_dict` adds the aliases back.

The release's ``final_mean.pt`` / ``final_std.pt`` are applied as ``x * std + mean`` on
``b f c h w`` after ``reshape(1, -1, 1, 1, 1)``, i.e. they broadcast over the plane axis and hold
one value or one per plane; :func:`release_statistics` turns them into our [F, 1] form.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avatar4d.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    file_sha256,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from avatar4d.models.vae.config import VAE_PRESETS, TriplaneVAEConfig
from avatar4d.models.vae.model import STATISTICS_KEYS, TriplaneVAE, broadcast_statistics

logger = logging.getLogger(__name__)

COMPONENT = "triplane_vae"
WRAPPER_PREFIX = "module."
_CONV_WEIGHT = ".conv.weight"


def strip_wrapper_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove a DDP/accelerate ``module.`` prefix carried by every key; mixed prefixes are an error."""
    keys = list(state_dict)
    prefixed = [k for k in keys if k.startswith(WRAPPER_PREFIX)]
    if not prefixed:
        return dict(state_dict)
    if len(prefixed) != len(keys):
        raise CheckpointError(f"{len(prefixed)} of {len(keys)} keys start with {WRAPPER_PREFIX!r}: "
                              "not one consistently wrapped state dict")
    logger.info("stripping the %r prefix from %d keys", WRAPPER_PREFIX, len(keys))
    return {k[len(WRAPPER_PREFIX):]: v for k, v in state_dict.items()}


def _same_values(a: Tensor, b: Tensor) -> bool:
    if a is b or a.is_meta or b.is_meta:
        return True  # one tensor under two names, or no data to compare (shape-only dicts)
    if a.dtype == b.dtype and a.device == b.device:
        return torch.equal(a, b)
    return torch.equal(a.detach().to("cpu", torch.float32), b.detach().to("cpu", torch.float32))


def convert_released_vae(state_dict: Mapping[str, Tensor], *, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Release names → ours: fold each ``<p>.weight`` alias into ``<p>.conv.weight``, cast floats to ``dtype``.

    Raises :class:`~avatar4d.checkpoint.CheckpointError` for non-tensor values or an alias pair whose
    two tensors differ in shape or value. A state dict without aliases (ours) passes through.
    """
    source = strip_wrapper_prefix(state_dict)
    converted: dict[str, Tensor] = {}
    aliases = 0
    for key, value in source.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        partner = key[: -len(".weight")] + _CONV_WEIGHT if key.endswith(".weight") else None
        if partner is not None and partner in source:
            other = source[partner]
            if not isinstance(other, Tensor) or tuple(other.shape) != tuple(value.shape) \
                    or not _same_values(value, other):
                raise CheckpointError(f"alias {key!r} and {partner!r} should hold the same conv weight but differ")
            aliases += 1
            continue
        converted[key] = value.to(dtype) if value.is_floating_point() else value
    logger.info("converted released VAE weights: %d tensors kept, %d alias keys folded", len(converted), aliases)
    return converted


def to_released_vae_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Ours → release names: every ``<p>.conv.weight`` also appears as ``<p>.weight`` (the SAME tensor),
    listed just before it, as ``AutoencoderKL.state_dict()`` orders them. Statistics buffers are dropped."""
    released: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key in STATISTICS_KEYS:
            continue
        if key.endswith(_CONV_WEIGHT):
            released[key[: -len(_CONV_WEIGHT)] + ".weight"] = value
        released[key] = value
    return released


def load_released_vae_file(path: str | Path, *, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Read the release's ``pytorch_model.bin`` (no code executed) and return it converted to our names.

    Accepts a raw state dict (the release), optionally wrapped as ``{"state_dict": ...}`` (what the
    release's own ``init_from_ckpt`` also accepts) or carrying a ``module.`` prefix; fp16 → ``dtype``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"released VAE weights not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a torch state-dict file readable without code: {first_line}") from None
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        logger.info("%s wraps its weights in 'state_dict'; using that", path)
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not data:
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state dict of tensors")
    non_tensors = [k for k, v in data.items() if not isinstance(v, Tensor)]
    if non_tensors:
        raise CheckpointError(f"{path} is not a plain state dict: {non_tensors[:3]} are not tensors")
    return convert_released_vae(data, dtype=dtype)


def release_statistics(tensor: Tensor, num_planes: int = 4) -> Tensor:
    """The release's ``final_mean.pt``/``final_std.pt`` (1 or ``num_planes`` values) → [1, 1] or [F, 1]."""
    flat = torch.as_tensor(tensor, dtype=torch.float32).reshape(-1)
    if flat.numel() not in (1, num_planes):
        raise ValueError(f"the release broadcasts its triplane statistics over the plane axis (reshape(1,-1,1,1,1) "
                         f"on b f c h w), so they hold 1 or {num_planes} values; got {flat.numel()}")
    return flat.reshape(-1, 1)


# ------------------------------------------------------------------ avatar4d checkpoints
def save_vae(directory: str | Path, vae: TriplaneVAE, *, step: int = 0,
             metadata: Mapping[str, Any] | None = None) -> CheckpointInfo:
    """Write ``vae`` (weights, statistics buffers if any, config) as an avatar4d checkpoint."""
    return save_checkpoint(directory, vae.state_dict(), component=COMPONENT, config=vae.config, step=step,
                           metadata=metadata)


def load_vae(directory: str | Path, *, device: str | torch.device = "cpu") -> tuple[TriplaneVAE, CheckpointInfo]:
    """Rebuild a VAE from an avatar4d checkpoint (config + weights, strictly checked)."""
    state, info = load_checkpoint(directory, component=COMPONENT, map_location=device)
    vae = TriplaneVAE(TriplaneVAEConfig.from_dict(info.config)).to(device)
    load_state_dict_strict(vae, state, what=f"triplane VAE {directory}")
    return vae, info


def convert_released_vae_checkpoint(source: str | Path, out: str | Path, *, preset: str = "paper",
                                    mean: Tensor | None = None, std: Tensor | None = None) -> CheckpointInfo:
    """Released ``pytorch_model.bin`` (+ optional ``final_mean``/``final_std`` tensors) → avatar4d checkpoint."""
    source = Path(source)
    weights = load_released_vae_file(source)
    if (mean is None) != (std is None):
        raise ValueError("give both the triplane mean and std, or neither")
    config = VAE_PRESETS.get(preset, normalize_triplanes=mean is not None)
    state = dict(weights)
    if mean is not None and std is not None:
        state["triplane_mean"] = broadcast_statistics(release_statistics(mean, config.num_planes), config, "mean")
        state["triplane_std"] = broadcast_statistics(release_statistics(std, config.num_planes), config, "std",
                                                    positive=True)
    with torch.device("meta"):
        expected = TriplaneVAE(config)  # key/shape check without allocating the model
    load_state_dict_strict(expected, {k: v.to("meta") for k, v in state.items()}, what=f"released VAE {source}")
    metadata = {"source_file": source.name, "source_sha256": file_sha256(source),
                "converted_by": "avatar4d.models.vae.convert_released_vae_checkpoint"}
    return save_checkpoint(out, state, component=COMPONENT, config=config, metadata=metadata)
