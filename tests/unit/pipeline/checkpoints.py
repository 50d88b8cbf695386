"""Randomly initialised tiny checkpoints in the layout ``avatar4d create --checkpoints`` reads
(dit/, vae/, generator/ = a procedural-world domain): what the pipeline and Serve tests load.
The world generator is exact (its triplanes are ground truth); the DiT and VAE are untrained."""

from __future__ import annotations

from pathlib import Path

import torch

from avatar4d.pipeline.checkpoints import write_random_checkpoints
from avatar4d.world import WORLD_PRESETS, ProceduralWorldGenerator, style_for_domain


def make_checkpoints(root: Path, domain: str = "pixar", seed: int = 0, *, renderer: bool = False) -> Path:
    """``root`` with dit/, vae/ and generator/ (and renderer/ with its motion_encoder/); returns ``root``."""
    return write_random_checkpoints(root, domain=domain, seed=seed, renderer=renderer)


def world_portraits(count: int, *, domain: str = "pixar", seed: int = 123, yaw: float = 0.0):
    """World portraits uint8 [N, H, W, 3] of random identities, their true triplanes [N, 4, C, R, R],
    identity coefficients [N, Ni] and the camera (the world's ground truth)."""
    from avatar4d.geometry.camera import orbit_camera
    from avatar4d.geometry.morphable import FaceParams, default_head_model

    head = default_head_model()
    world = ProceduralWorldGenerator(WORLD_PRESETS.get("tiny", style=style_for_domain(domain)), head).eval()
    z = torch.randn(count, world.z_dim, generator=torch.Generator().manual_seed(seed))
    ws = world.mapping(z, truncation_psi=0.7)
    identity = world.identity_for_latent(z, truncation_psi=0.7)
    params = FaceParams(identity=identity, expression=torch.zeros(count, head.expression_dim),
                        jaw=torch.zeros(count, 3))
    camera = orbit_camera(torch.full((count,), yaw), torch.zeros(count))
    with torch.no_grad():
        out = world.synthesis(ws, camera, head.vertices(params))
        triplane = world.parametric_triplane(ws)[0].stacked()
    images = ((out.image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return images, triplane, identity, camera, out.image_raw
