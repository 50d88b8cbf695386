"""One load path for every 4D generator kind the data factory can host.

Two kinds share the generator interface (``mapping``, ``parametric_triplane``, ``synthesis``,
``decoder``, ``renderer``, ``mesh_conditioner``, ``z_dim``/``w_dim``, ``identity_for_latent``):

- ``gan``: a Next3D++ generator (:mod:`avatar4d.models.next3d`; random, trained or converted);
- ``world``: the procedural 4D world (:mod:`avatar4d.world`), analytic heads with ground truth.

A checkpoint folder says which it is (its ``component``); :func:`load_generator_checkpoint`
rebuilds either, so the factory stages and the trainers' renderers never branch on the kind.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from avatar4d.checkpoint.io import CheckpointError, CheckpointInfo, read_checkpoint_info
from avatar4d.geometry.camera import Camera
from avatar4d.geometry.morphable import MorphableModel
from avatar4d.models.next3d import Next3DGenerator
from avatar4d.models.next3d.checkpoint import COMPONENT as GAN_COMPONENT
from avatar4d.models.next3d.checkpoint import load_generator as load_gan
from avatar4d.rendering.parametric import ParametricTriplane
from avatar4d.rendering.renderer import RenderOutput
from avatar4d.world import COMPONENT as WORLD_COMPONENT
from avatar4d.world import ProceduralWorldGenerator, load_world

Generator4D = Next3DGenerator | ProceduralWorldGenerator
#: checkpoint component → generator kind
GENERATOR_COMPONENTS = {GAN_COMPONENT: "gan", WORLD_COMPONENT: "world"}
GENERATOR_KINDS = tuple(GENERATOR_COMPONENTS.values())


def is_generator(info: CheckpointInfo) -> bool:
    return info.component in GENERATOR_COMPONENTS


def generator_kind(info: CheckpointInfo) -> str:
    """``gan`` or ``world`` for a generator checkpoint (CheckpointError for anything else)."""
    if info.component not in GENERATOR_COMPONENTS:
        raise CheckpointError(f"{info.path} holds a {info.component}, not a 4D generator "
                              f"(one of {sorted(GENERATOR_COMPONENTS)})")
    return GENERATOR_COMPONENTS[info.component]


def load_generator_checkpoint(directory: str | Path, *, head: MorphableModel | None = None,
                              device: str | torch.device = "cpu") -> tuple[Generator4D, CheckpointInfo]:
    """Rebuild the generator saved in ``directory``, whatever its kind."""
    kind = generator_kind(read_checkpoint_info(directory))
    if kind == "world":
        return load_world(directory, head=head, device=device)
    return load_gan(directory, head=head, device=device)


class DomainRenderer(nn.Module):
    """The frozen rendering half of one generator (a GAN or the procedural world): mesh
    conditioner, OSG decoder, volume renderer."""

    def __init__(self, checkpoint: str | Path, head: MorphableModel, device: torch.device | str) -> None:
        super().__init__()
        generator, info = load_generator_checkpoint(checkpoint, head=head, device=device)
        self.sha256 = info.weights_sha256
        self.decoder = generator.decoder
        self.mesh_conditioner = generator.mesh_conditioner
        self.renderer = generator.renderer
        self.renderer.config = self.renderer.config.replace(deterministic=True)
        self.face_box = generator.face_box
        self.plane_channels = generator.config.plane_channels
        self.requires_grad_(False).eval()
        del generator

    def planes(self, stacked: Tensor, vertices: Tensor | None) -> Tensor:
        """Stacked parametric triplanes [B, 4, C, R, R] → renderable planes [B, 3, C, R, R]."""
        triplane = ParametricTriplane.from_stacked(stacked)
        if vertices is None:
            return triplane.static
        with torch.no_grad():
            uv_grid, face_mask = self.mesh_conditioner(vertices)  # [B, R, R, 2], [B, 1, R, R]
        return triplane.compose(uv_grid, face_mask, self.face_box)

    def render(self, planes: Tensor, camera: Camera, resolution: int) -> RenderOutput:
        # planes [B, 3, C, R, R] -> features [B, C, res, res], depth [B, 1, res, res]
        return self.renderer(planes.float(), self.decoder, camera, resolution)
