"""Saving and loading world generators: the same checkpoint format as every avatar4d model.

A world checkpoint holds the config (sizes and the domain's style) and, as weights, the fixed
pass-through decoder and the config digest; loading rebuilds the generator and checks that the
stored weights are exactly what the config implies (a hand-edited config is refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from avatar4d.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from avatar4d.geometry.morphable import MorphableModel
from avatar4d.world.config import WorldConfig
from avatar4d.world.generator import ProceduralWorldGenerator, config_digest

COMPONENT = "procedural_world"


def save_world(directory: str | Path, generator: ProceduralWorldGenerator, *,
               metadata: dict[str, Any] | None = None) -> CheckpointInfo:
    return save_checkpoint(directory, generator.state_dict(), component=COMPONENT, config=generator.config,
                           metadata={"kind": generator.kind, **(metadata or {})})


def load_world(directory: str | Path, *, head: MorphableModel | None = None,
               device: str | torch.device = "cpu") -> tuple[ProceduralWorldGenerator, CheckpointInfo]:
    state, info = load_checkpoint(directory, component=COMPONENT, map_location="cpu")
    generator = ProceduralWorldGenerator(WorldConfig.from_dict(info.config), head=head)
    expected = {name: tensor.clone() for name, tensor in generator.state_dict().items()}
    load_state_dict_strict(generator, state, what=f"world generator {directory}")
    # The digest hashes the config's JSON as it was saved. The config gains fields with defaults as the world
    # grows, so the check is against the stored JSON (a hand edit changes it), not a re-serialised config.
    if not torch.equal(state["config_digest"], config_digest(info.config)):
        raise CheckpointError(f"{directory}: config.json does not match its weights (config.json edited by hand?)")
    for name, tensor in expected.items():
        if name != "config_digest" and not torch.equal(tensor, state[name]):
            raise CheckpointError(f"{directory}: {name} does not match the checkpoint's config "
                                  "(config.json edited by hand?)")
    return generator.to(device), info
