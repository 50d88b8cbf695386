"""Released AvatarArtist DiT weights (``pretrained_model/DiT.pth``) → our state dict and checkpoints.

The release's ``save_checkpoint`` writes ``{'state_dict', 'state_dict_ema', 'optimizer'?, 'scheduler'?,
'epoch'}``; its inference loader requires ``state_dict``, pops every stored ``pos_embed`` (the value
used is the one recomputed at construction) and loads ``state_dict_ema``. Our ``paper`` preset has
the release's names, so conversion is the identity apart from dropping wrapper prefixes and
replacing ``pos_embed`` by the one our config computes (the release's 32×32-grid quirk by default).
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
from avatar4d.models.dit.config import DIT_PRESETS, DiTConfig
from avatar4d.models.dit.embeddings import sincos_pos_embed_2d
from avatar4d.models.dit.model import ImageConditionedDiT

logger = logging.getLogger(__name__)

COMPONENT = "dit"
WRAPPER_PREFIXES = ("module.", "model.", "base_model.")
POS_EMBED_KEY = "pos_embed"


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def expected_dit_state(config: DiTConfig) -> dict[str, Tensor]:
    """Our state dict's names and shapes for ``config`` (meta tensors, nothing allocated)."""
    with torch.device("meta"):
        return ImageConditionedDiT(config).state_dict()


def convert_released_dit(checkpoint: Mapping[str, Any], config: DiTConfig | None = None) -> dict[str, Tensor]:
    """The loaded ``DiT.pth`` dict → our state dict for ``config`` (default: the ``paper`` preset).

    Uses the EMA weights (``state_dict_ema``), as the release's inference does. Raises
    :class:`CheckpointError` when the file is not wrapped like the release or does not fit ``config``.
    """
    config = config or DIT_PRESETS.get("paper")
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"a released DiT checkpoint is a dict, got {type(checkpoint).__name__}")
    if "state_dict" not in checkpoint:
        raise CheckpointError("not a released AvatarArtist DiT checkpoint: no top-level 'state_dict' "
                              f"(found keys {sorted(map(str, checkpoint))[:8]})")
    if "state_dict_ema" not in checkpoint:
        raise CheckpointError("the DiT checkpoint has no 'state_dict_ema': the release's inference uses the EMA "
                              "weights, and this file holds only the raw training weights")
    weights = checkpoint["state_dict_ema"]
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"'state_dict_ema' must be a dict of tensors, got {type(weights).__name__}")

    converted: dict[str, Tensor] = {}
    for key, value in weights.items():
        name = _strip_prefixes(str(key))
        if name == POS_EMBED_KEY:
            continue
        if not isinstance(value, Tensor):
            raise CheckpointError(f"'state_dict_ema' entry {key!r} is not a tensor ({type(value).__name__})")
        if name in converted:
            raise CheckpointError(f"two entries of 'state_dict_ema' map to {name!r} after removing wrapper prefixes")
        converted[name] = value
    converted[POS_EMBED_KEY] = sincos_pos_embed_2d(config.hidden_size, config.token_grid,
                                                   config.pos_embed_grid)[None]
    _check_against(converted, expected_dit_state(config))
    ordered = {name: converted[name] for name in expected_dit_state(config)}
    logger.info("converted %d released DiT tensors (pos_embed recomputed on the %r grid)", len(ordered) - 1,
                config.pos_embed_grid)
    return ordered


def _check_against(found: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
                  if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        parts = [f"{len(v)} {what}: {', '.join(v[:4])}{' …' if len(v) > 4 else ''}"
                 for what, v in (("missing", missing), ("unexpected", unexpected), ("with other shapes", mismatched))
                 if v]
        raise CheckpointError("the released DiT weights do not fit the requested config (" + "; ".join(parts) + ")")


def load_released_dit_file(path: str | Path) -> dict[str, Any]:
    """Read ``DiT.pth`` with ``torch.load(weights_only=True)`` (no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"DiT checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} needs pickled Python objects beyond tensors and plain containers, which "
                              f"are not loaded for safety ({first_line}); re-save it as a plain dict of tensors") \
            from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {exc}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def save_dit(directory: str | Path, model: ImageConditionedDiT, *, step: int = 0,
             metadata: Mapping[str, Any] | None = None) -> CheckpointInfo:
    """Write the DiT as an avatar4d checkpoint (safetensors + config JSON + step)."""
    return save_checkpoint(directory, model.state_dict(), component=COMPONENT, config=model.config, step=step,
                           metadata=dict(metadata or {}))


def load_dit(directory: str | Path, *,
             device: str | torch.device = "cpu") -> tuple[ImageConditionedDiT, CheckpointInfo]:
    """Rebuild a DiT from an avatar4d checkpoint."""
    state, info = load_checkpoint(directory, component=COMPONENT, map_location=device)
    model = ImageConditionedDiT(DiTConfig.from_dict(info.config)).to(device)
    load_state_dict_strict(model, state, what=f"DiT {directory}")
    return model, info


def convert_released_dit_file(source: str | Path, out: str | Path, *, preset: str = "paper",
                              pos_embed_grid: str | None = None) -> CheckpointInfo:
    """``DiT.pth`` → an avatar4d DiT checkpoint at ``out`` (the ``avatar4d convert avatarartist --dit`` step)."""
    config = DIT_PRESETS.get(preset)
    if pos_embed_grid is not None:
        config = config.replace(pos_embed_grid=pos_embed_grid)
    source = Path(source)
    state = convert_released_dit(load_released_dit_file(source), config)
    metadata = {"source_file": source.name, "source_sha256": file_sha256(source), "source_key": "state_dict_ema",
                "converted_by": "avatar4d convert avatarartist"}
    info = save_checkpoint(out, {k: v.contiguous() for k, v in state.items()}, component=COMPONENT, config=config,
                           metadata=metadata)
    logger.info("converted %s → %s", source, out)
    return info
