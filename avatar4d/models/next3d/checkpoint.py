"""Saving, loading and converting Next3D++ generator checkpoints.

``convert_next3d_pickle`` reads a released EG3D-family training pickle (``ani3dgan512.pkl``) with
the restricted unpickler of :mod:`avatar4d.checkpoint.next3d_pkl` (no embedded code runs), checks
every key and shape against our ``paper`` generator (whose names are the release's, so the
mapping is the identity), and writes an avatar4d checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from avatar4d.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    file_sha256,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from avatar4d.checkpoint.next3d_pkl import PlaneConventionError, read_next3d_pickle, to_plain
from avatar4d.geometry.morphable import MorphableModel
from avatar4d.models.next3d.config import GENERATOR_PRESETS, GeneratorConfig
from avatar4d.models.next3d.generator import Next3DGenerator

logger = logging.getLogger(__name__)

COMPONENT = "next3d_generator"


def save_generator(directory: str | Path, generator: Next3DGenerator, *, step: int = 0,
                   metadata: dict[str, Any] | None = None) -> CheckpointInfo:
    return save_checkpoint(directory, generator.state_dict(), component=COMPONENT, config=generator.config,
                           step=step, metadata=metadata)


def load_generator(directory: str | Path, *, head: MorphableModel | None = None,
                   device: str | torch.device = "cpu") -> tuple[Next3DGenerator, CheckpointInfo]:
    """Rebuild a generator from its checkpoint (config + weights)."""
    state, info = load_checkpoint(directory, component=COMPONENT, map_location=device)
    generator = Next3DGenerator(GeneratorConfig.from_dict(info.config), head=head).to(device)
    load_state_dict_strict(generator, state, what=f"generator {directory}")
    return generator, info


def convert_next3d_pickle(source: str | Path, out: str | Path, *, preset: str = "paper",
                          key: str = "G_ema") -> CheckpointInfo:
    """Convert a released Next3D++ ``.pkl`` into an avatar4d generator checkpoint at ``out``."""
    source = Path(source)
    if not source.is_file():
        raise CheckpointError(f"pickle not found: {source}")
    legacy = read_next3d_pickle(source, key=key)
    logger.info("read %s from %s (%d tensors)", legacy.class_name, source, len(legacy.state_dict))
    config = GENERATOR_PRESETS.get(preset)
    try:
        convention = legacy.plane_convention()
    except PlaneConventionError as exc:
        logger.warning("could not infer the plane convention (%s); keeping %s", exc,
                       config.rendering.plane_convention)
    else:
        if convention != config.rendering.plane_convention:
            logger.info("the pickle's renderer uses plane convention %r; using it", convention)
            config = config.replace(rendering=config.rendering.replace(plane_convention=convention))
    with torch.device("meta"):
        expected = Next3DGenerator(config).state_dict()
    _check_keys(legacy.state_dict, expected, source)
    metadata = {
        "source_file": source.name,
        "source_sha256": file_sha256(source),
        "source_class": legacy.class_name,
        "source_key": key,
        "init_kwargs": to_plain(legacy.init_kwargs),
        "plane_convention": config.rendering.plane_convention,
        "converted_by": "avatar4d convert next3d-pkl",
    }
    info = save_checkpoint(out, legacy.state_dict, component=COMPONENT, config=config, metadata=metadata)
    logger.info("converted %s (%d tensors) → %s", source, len(legacy.state_dict), out)
    return info


def _check_keys(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: Path) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
                  if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        parts = [f"{len(v)} {name}: {', '.join(v[:4])}{' …' if len(v) > 4 else ''}"
                 for name, v in (("missing", missing), ("unexpected", unexpected), ("with other shapes", mismatched))
                 if v]
        raise CheckpointError(f"{source} is not a Next3D++ generator of the requested preset ("
                              + "; ".join(parts) + ")")
