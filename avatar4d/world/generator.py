"""The procedural 4D world generator: the GAN's interface, analytic heads instead of learned ones.

A stand-in for a domain's Next3D GAN wherever no trained weights exist (the embedded default,
tests, CI). It has the generator's interface (``mapping``, ``parametric_triplane``, ``synthesis``,
``forward`` → :class:`~avatar4d.models.next3d.generator.GeneratorOutput`; ``decoder``,
``renderer``, ``mesh_conditioner``, ``face_box``, ``superresolution``), so the factory, the VAE's
rendered losses and every later stage use it unchanged, and its outputs have ground truth:

- the latent w = ψ·z (no mapping network; truncation pulls towards the average head) holds the
  head model's identity coefficients first (:meth:`identity_for_latent` hands them to the stages,
  so a row's mesh is the triplane's identity), then the appearance;
- :class:`~avatar4d.world.painter.WorldPainter` paints the parametric triplane analytically;
- an expression is rendered exactly as the VAE trainer renders a stored triplane: the mesh's UVs
  over the face box (:class:`MeshConditioner`), :meth:`ParametricTriplane.compose`, volume rendering;
- the OSG decoder has fixed weights that pass the plane features through: for every channel the
  first layer has rows +1 and −1 and the second ``g·(h₊ − h₋) = g·x`` because
  ``softplus(x) − softplus(−x) = x``; the gain g is 3 for features (the decoder averages the three
  planes, the world's planes are summed terms) and ``3·density_scale`` for σ (from channel 3),
  minus a gate that empties everything outside the triplane box (:func:`passthrough_decoder`);
- "super-resolution" is a fixed bilinear upsampling of the raw image.

So rendering the stored triplane *is* the image. A persistent ``config_digest`` buffer (SHA-256 of
the config, style included) makes every domain's checkpoint hash distinct.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.geometry.camera import Camera
from avatar4d.geometry.morphable import MorphableModel, default_head_model
from avatar4d.models.next3d.generator import GeneratorOutput, MeshConditioner, render_planes_output
from avatar4d.rendering.decoder import OSGDecoder
from avatar4d.rendering.parametric import FaceBox, ParametricTriplane
from avatar4d.rendering.renderer import TriplaneRenderer
from avatar4d.world.appearance import APPEARANCE_DIM
from avatar4d.world.config import BOX_CHANNEL, DENSITY_CHANNEL, WorldConfig
from avatar4d.world.painter import WorldPainter

KIND = "world"


BOX_GATE_SLOPE = 60.0  # the gate unit: softplus(slope · (threshold − mean of the box channel))
BOX_GATE_THRESHOLD = 0.85  # mean 1 inside the box, ≤ 2/3 where a plane reads outside its range
BOX_GATE_PENALTY = 100.0  # σ removed per unit of the gate (≈ 1100 outside, 0.012 inside)


def passthrough_decoder(config: WorldConfig) -> OSGDecoder:
    """An OSG decoder (C → 2C softplus → 1 + C) whose output is the plane-sum of each channel.

    Channel j uses hidden units 2j (+x) and 2j+1 (−x). The box channel instead feeds one gate unit
    that removes σ wherever a plane is read outside the box (a plane reads 0 there, so a plane
    term alone — e.g. plane 0 in front of the box — would otherwise make density out of nothing).
    """
    channels, box = config.plane_channels, BOX_CHANNEL
    decoder = OSGDecoder(channels, config.decoder_hidden, channels)
    first, second = decoder.net[0], decoder.net[2]
    eye = torch.eye(channels)
    first_weight = torch.stack([eye, -eye], dim=1).reshape(2 * channels, channels)  # rows +e_j, −e_j
    first_bias = torch.zeros(2 * channels)
    first_weight[2 * box + 1] = 0.0
    first_weight[2 * box] = -BOX_GATE_SLOPE * eye[box]
    first_bias[2 * box] = BOX_GATE_SLOPE * BOX_GATE_THRESHOLD
    difference = torch.stack([eye, -eye], dim=2).reshape(channels, 2 * channels)  # h_2j − h_2j+1
    difference[box] = 0.0
    sigma = 3 * config.density_scale * difference[DENSITY_CHANNEL]
    sigma[2 * box] = -BOX_GATE_PENALTY
    with torch.no_grad():
        first.weight.copy_(first_weight / first.weight_gain)
        first.bias.copy_(first_bias / first.bias_gain)
        second.weight.copy_(torch.cat([sigma[None], 3 * difference], dim=0) / second.weight_gain)
        second.bias.zero_()
    return decoder.requires_grad_(False)


class FixedUpsampler(nn.Module):
    """The world's "super-resolution": bilinear upsampling of the raw image (no parameters)."""

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution

    def forward(self, rgb: Tensor, features: Tensor | None = None, ws: Tensor | None = None) -> Tensor:
        # rgb [B, 3, N, N] in [-1, 1] -> [B, 3, S, S]
        if rgb.shape[-1] == self.resolution:
            return rgb
        return F.interpolate(rgb, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)


def config_digest(config: WorldConfig | Mapping[str, Any]) -> Tensor:
    """SHA-256 of the config's JSON (:meth:`Config.to_json`'s form; a mapping is a config as stored in a
    checkpoint) as 32 uint8 values."""
    data = config if isinstance(config, Mapping) else config.to_dict()
    return torch.tensor(list(hashlib.sha256(json.dumps(data, indent=2, sort_keys=True).encode()).digest()),
                        dtype=torch.uint8)


class ProceduralWorldGenerator(nn.Module):
    """A domain's procedural 4D head world with the Next3D generator's interface."""

    kind = KIND

    def __init__(self, config: WorldConfig, head: MorphableModel | None = None) -> None:
        super().__init__()
        self.config = config
        self.head = head or default_head_model()
        if config.latent_dim < self.head.identity_dim + APPEARANCE_DIM:
            raise ValueError(f"latent_dim {config.latent_dim} < {self.head.identity_dim} identity + "
                             f"{APPEARANCE_DIM} appearance values")
        self.painter = WorldPainter(config, self.head)
        self.decoder = passthrough_decoder(config)
        self.renderer = TriplaneRenderer(config.rendering)
        self.superresolution = FixedUpsampler(config.image_resolution)
        self.face_box = FaceBox(*config.face_box, resolution=256).scaled(config.plane_resolution)
        self.mesh_conditioner = MeshConditioner(self.head, self.face_box, config.rendering.box_warp,
                                                config.rasterizer_backend)
        self.register_buffer("config_digest", config_digest(config))
        self.num_ws = 1

    @property
    def z_dim(self) -> int:
        return self.config.latent_dim

    @property
    def w_dim(self) -> int:
        return self.config.latent_dim

    def mapping(self, z: Tensor, camera: Camera | None = None, *, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> Tensor:
        """z [B, L] → ws [B, 1, L] = ψ·z (the world's average head sits at w = 0; camera unused)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [B, {self.z_dim}], got {tuple(z.shape)}")
        return (z * truncation_psi)[:, None]

    def identity_for_latent(self, z: Tensor, truncation_psi: float = 1.0) -> Tensor:
        """The head model's identity coefficients [B, Ni] of the heads that ``z`` makes."""
        return self.mapping(z, truncation_psi=truncation_psi)[:, 0, :self.head.identity_dim]

    def parametric_triplane(self, ws: Tensor, noise_mode: str = "const") -> tuple[ParametricTriplane, list, list]:
        """ws [B, 1, L] → (parametric triplane, [], []) (no feature pyramids: nothing is learned)."""
        return self.painter(ws[:, 0]), [], []

    def synthesis(self, ws: Tensor, camera: Camera, vertices: Tensor, *, noise_mode: str = "const",
                  neural_resolution: int | None = None, generator: torch.Generator | None = None) -> GeneratorOutput:
        """ws, rendering camera, expression mesh vertices [B, V, 3] → images and triplanes."""
        triplane = self.painter(ws[:, 0])
        uv_grid, face_mask = self.mesh_conditioner(vertices)  # [B, R, R, 2], [B, 1, R, R]
        planes = triplane.compose(uv_grid, face_mask, self.face_box)  # [B, 3, C, R, R]
        resolution = neural_resolution or self.config.neural_resolution
        return render_planes_output(self, planes, triplane, ws, camera, resolution, generator)

    def forward(self, z: Tensor, camera: Camera, vertices: Tensor, *, conditioning_camera: Camera | None = None,
                truncation_psi: float = 1.0, truncation_cutoff: int | None = None, noise_mode: str = "const",
                update_emas: bool = False, neural_resolution: int | None = None,
                generator: torch.Generator | None = None) -> GeneratorOutput:
        ws = self.mapping(z, camera, truncation_psi=truncation_psi)
        return self.synthesis(ws, camera, vertices, neural_resolution=neural_resolution, generator=generator)

