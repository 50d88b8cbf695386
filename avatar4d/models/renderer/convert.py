"""Converting the released renderer (``render.pkl``) and saving / loading renderer checkpoints.

``render.pkl`` is a StyleGAN/EG3D network pickle (``{"G", "D", "G_ema", ...}`` of pickled
``persistent_class`` modules that may embed their training-time source). It is read with the
restricted unpickler of :mod:`avatar4d.checkpoint.legacy_pickle` (nothing it carries is imported or
run; a hostile global is refused before anything is written), the 8 alias keys of the 3-D
convolutions (``<p>.weight`` = ``<p>.conv.weight``, the same Parameter) are checked equal and
folded as the VAE converter does, every key and shape is checked against the ``paper`` renderer,
and an avatar4d checkpoint (safetensors + JSON) is written.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from avatar4d.checkpoint import CheckpointError, CheckpointInfo, file_sha256, load_state_dict_strict, save_checkpoint
from avatar4d.checkpoint.next3d_pkl import read_next3d_pickle, to_plain
from avatar4d.models.renderer.config import RENDERER_PRESETS
from avatar4d.models.renderer.model import MotionAwareRenderer
from avatar4d.models.vae.convert import convert_released_vae

logger = logging.getLogger(__name__)

COMPONENT = MotionAwareRenderer.checkpoint_component


def released_renderer_state(source: str | Path, *, key: str = "G_ema") -> tuple[dict[str, torch.Tensor], Any]:
    """The tensors of ``key`` in a released renderer pickle, alias keys folded (float32), and what was read."""
    legacy = read_next3d_pickle(source, key=key)
    state = convert_released_vae(legacy.state_dict)  # folds and checks the <p>.weight / <p>.conv.weight aliases
    logger.info("read %s[%r]: %s, %d tensors (%d after folding aliases)", source, key, legacy.class_name,
                len(legacy.state_dict), len(state))
    return state, legacy


def convert_released_renderer(source: str | Path, out: str | Path, *, preset: str = "paper",
                              key: str = "G_ema") -> CheckpointInfo:
    """Convert the released ``render.pkl`` into a renderer checkpoint at ``out`` (keys and shapes checked)."""
    source = Path(source)
    if not source.is_file():
        raise CheckpointError(f"renderer pickle not found: {source}")
    state, legacy = released_renderer_state(source, key=key)
    config = RENDERER_PRESETS.get(preset)
    with torch.device("meta"):
        expected = MotionAwareRenderer(config)
    with warnings.catch_warnings():  # loading into meta tensors is a no-op: only the key and shape check runs
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        load_state_dict_strict(expected, state, what=f"{source} [{key}] as the {preset!r} renderer")
    metadata = {
        "source_file": source.name,
        "source_sha256": file_sha256(source),
        "source_class": legacy.class_name,
        "source_key": key,
        "init_kwargs": to_plain(legacy.init_kwargs),
        "converted_by": "avatar4d convert avatarartist --render",
    }
    info = save_checkpoint(out, state, component=COMPONENT, config=config, metadata=metadata)
    logger.info("converted %s (%d tensors) → %s", source, len(state), out)
    return info


def save_renderer(directory: str | Path, renderer: MotionAwareRenderer, *, step: int = 0,
                  metadata: dict[str, Any] | None = None) -> CheckpointInfo:
    return renderer.save_pretrained(directory, step=step, metadata=metadata)


def load_renderer(directory: str | Path, *, device: str | torch.device = "cpu") -> MotionAwareRenderer:
    return MotionAwareRenderer.from_pretrained(directory, map_location=device)
