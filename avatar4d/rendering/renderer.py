"""Triplane volume renderer (EG3D ``ImportanceRenderer`` / Next3D++ ``ImportanceRenderer_bsMotion``).

Per pixel: a camera ray, ``depth_resolution`` stratified samples in the ray range, the OSG decoder
on the triplane features there, EG3D's MipRayMarcher2 weights, ``depth_resolution_importance``
more samples drawn from those weights, and a final march over the merged, depth-sorted samples.
Rays are processed in chunks of at most ``max_points_per_chunk`` decoder evaluations; all random
draws are made up front, so the chunk size never changes the result.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import Tensor, nn

from avatar4d.config import Config, PresetRegistry
from avatar4d.geometry.camera import Camera
from avatar4d.rendering.compositing import CLAMP_MODES, RayMarchResult, march_rays
from avatar4d.rendering.planes import PLANE_CONVENTIONS, sample_planes
from avatar4d.rendering.rays import camera_rays
from avatar4d.rendering.sampling import importance_depths, merge_samples, resolve_ray_range, stratified_depths

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RenderingConfig(Config):
    """Volume-rendering options (EG3D ``rendering_kwargs``).

    ``ray_start = ray_end = None`` selects Next3D++'s "auto" range ``[d - 0.45, d + 0.6]`` (``d``:
    camera distance to the world origin). ``pixel_centers=False`` reproduces Next3D++'s integer
    pixel coordinates. ``deterministic`` removes the jitter of both stratified and importance
    sampling (evaluation); ``jitter_in_deterministic=True`` keeps the stratified jitter then, as the
    official evaluation mode does (it only makes importance sampling deterministic, ``det=evaluation``).
    Default off: a deterministic render should not depend on a random draw, and comparisons and
    tests rely on it. ``batch_statistics=True`` reproduces the official batch coupling: the auto ray
    range from the batch's mean camera distance and the depth clamp to the whole batch's sample range;
    default off, so a render never depends on what else is in its batch (the factory pads batches),
    and the two agree for cameras at one radius and rays that hit something.
    ``plane_convention``: see :mod:`avatar4d.rendering.planes`.
    """

    plane_convention: str = "next3dpp"
    box_warp: float = 1.0
    ray_start: float | None = 2.25
    ray_end: float | None = 3.3
    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    disparity_space_sampling: bool = False
    clamp_mode: str = "softplus"
    density_bias: float = -1.0
    white_back: bool = False
    pixel_centers: bool = True
    deterministic: bool = False
    jitter_in_deterministic: bool = False
    batch_statistics: bool = False
    max_points_per_chunk: int = 1 << 22

    def __post_init__(self) -> None:
        if self.plane_convention not in PLANE_CONVENTIONS:
            raise ValueError(f"unknown plane_convention {self.plane_convention!r}; "
                             f"choose from {sorted(PLANE_CONVENTIONS)}")
        if self.box_warp <= 0:
            raise ValueError(f"box_warp must be positive, got {self.box_warp}")
        if (self.ray_start is None) != (self.ray_end is None):
            raise ValueError("ray_start and ray_end must both be numbers or both be None (auto range)")
        if self.ray_start is not None and not 0 <= self.ray_start < self.ray_end:
            raise ValueError(f"need 0 <= ray_start < ray_end, got {self.ray_start}, {self.ray_end}")
        if self.disparity_space_sampling and self.ray_start is not None and self.ray_start <= 0:
            raise ValueError("disparity_space_sampling needs ray_start > 0")
        if self.depth_resolution < 2:
            raise ValueError(f"depth_resolution must be >= 2, got {self.depth_resolution}")
        if self.depth_resolution_importance < 0:
            raise ValueError(f"depth_resolution_importance must be >= 0, got {self.depth_resolution_importance}")
        if self.depth_resolution_importance > 0 and self.depth_resolution < 4:
            raise ValueError("importance sampling needs depth_resolution >= 4")
        if self.clamp_mode not in CLAMP_MODES:
            raise ValueError(f"unknown clamp_mode {self.clamp_mode!r}; choose from {list(CLAMP_MODES)}")
        if self.max_points_per_chunk < 1:
            raise ValueError(f"max_points_per_chunk must be >= 1, got {self.max_points_per_chunk}")

    @property
    def samples_per_ray(self) -> int:
        return self.depth_resolution + self.depth_resolution_importance


RENDERING_PRESETS: PresetRegistry[RenderingConfig] = PresetRegistry("rendering")


@RENDERING_PRESETS.register("tiny")
def _tiny() -> RenderingConfig:
    return RenderingConfig(depth_resolution=12, depth_resolution_importance=12)


@RENDERING_PRESETS.register("small")
def _small() -> RenderingConfig:
    return RenderingConfig(depth_resolution=24, depth_resolution_importance=24)


@RENDERING_PRESETS.register("paper")
def _paper() -> RenderingConfig:
    """Next3D++ release (ani3dgan512.pkl): its planes, auto ray range, integer pixel coordinates."""
    return RenderingConfig(plane_convention="next3dpp", ray_start=None, ray_end=None, pixel_centers=False)


@RENDERING_PRESETS.register("eg3d")
def _eg3d() -> RenderingConfig:
    """EG3D FFHQ: fixed range 2.25-3.3, pixel centres."""
    return RenderingConfig(plane_convention="eg3d", ray_start=2.25, ray_end=3.3, pixel_centers=True)


@RENDERING_PRESETS.register("next3d")
def _next3d() -> RenderingConfig:
    """Next3D release (next3d_ffhq_512.pkl): EG3D renderer with Next3D's (z, y) third plane."""
    return RenderingConfig(plane_convention="next3d", ray_start=2.25, ray_end=3.3, pixel_centers=True)


@dataclasses.dataclass
class RenderOutput:
    """Rendered images. features [B, C, H, W] (composited, in [-1, 1]; +1 background with white_back);
    depth [B, 1, H, W] (distance along the ray, clamped to the ray range); opacity [B, 1, H, W]
    (sum of the compositing weights, in [0, 1])."""

    features: Tensor
    depth: Tensor
    opacity: Tensor

    @property
    def rgb(self) -> Tensor:
        """[B, 3, H, W]: the first three composited feature channels (the raw RGB image)."""
        return self.features[:, :3]


class TriplaneRenderer(nn.Module):
    """Renders a batch of triplanes through a decoder from a batch of cameras. No parameters."""

    def __init__(self, config: RenderingConfig | None = None) -> None:
        super().__init__()
        self.config = config or RenderingConfig()

    def forward(self, planes: Tensor, decoder: nn.Module, camera: Camera, resolution: int,
                generator: torch.Generator | None = None) -> RenderOutput:
        # planes: [B, 3, C, Rp, Rp]; camera: B (or 1, broadcast) cameras; -> images [B, *, res, res]
        cfg = self.config
        if planes.ndim != 5 or planes.shape[1] != 3:
            raise ValueError(f"planes must be [B, 3, C, H, W], got {tuple(planes.shape)}")
        n_features = getattr(decoder, "n_features", None)
        if n_features is not None and planes.shape[2] != n_features:
            raise ValueError(f"planes have {planes.shape[2]} channels, decoder expects {n_features}")
        batch = planes.shape[0]
        if camera.batch_size != batch:
            if camera.batch_size != 1:
                raise ValueError(f"{camera.batch_size} cameras for {batch} triplanes")
            camera = Camera(camera.cam2world.expand(batch, 4, 4), camera.intrinsics.expand(batch, 3, 3))
        camera = camera.to(device=planes.device, dtype=torch.float32)

        origins, directions = camera_rays(camera, resolution, cfg.pixel_centers)  # [B, M, 3] each
        ray_start, ray_end = resolve_ray_range(camera.origin, cfg.ray_start, cfg.ray_end,
                                               batch_mean=cfg.batch_statistics)  # [B, 1] each
        num_rays = origins.shape[1]
        coarse_noise, fine_uniform = self._draw_randomness(batch, num_rays, planes.device, generator)

        rays_per_chunk = max(1, cfg.max_points_per_chunk // (batch * cfg.samples_per_ray))
        chunks, ranges = [], []
        for first in range(0, num_rays, rays_per_chunk):
            rays = slice(first, first + rays_per_chunk)
            chunk, depth_range = self._render_rays(
                planes, decoder, origins[:, rays], directions[:, rays], ray_start, ray_end,
                None if coarse_noise is None else coarse_noise[:, rays],
                None if fine_uniform is None else fine_uniform[:, rays])
            chunks.append(chunk)
            ranges.append(depth_range)
        logger.debug("rendered %d rays x %d samples in %d chunk(s)", num_rays, cfg.samples_per_ray, len(chunks))

        features = torch.cat([c.features for c in chunks], dim=1)  # [B, M, C]
        depth = torch.cat([c.depth for c in chunks], dim=1)  # [B, M]
        if cfg.batch_statistics:  # the official clamp to the whole batch's sample depths
            depth = depth.clamp(min(low for low, _ in ranges), max(high for _, high in ranges))
        opacity = torch.cat([c.opacity for c in chunks], dim=1)  # [B, M]
        return RenderOutput(
            features=features.transpose(1, 2).reshape(batch, -1, resolution, resolution),  # [B, C, H, W]
            depth=depth.reshape(batch, 1, resolution, resolution),
            opacity=opacity.reshape(batch, 1, resolution, resolution),
        )

    def _draw_randomness(self, batch: int, num_rays: int, device: torch.device,
                         generator: torch.Generator | None) -> tuple[Tensor | None, Tensor | None]:
        """Uniform draws for the stratified jitter [B, M, S] and importance sampling [B, M, N]."""
        cfg = self.config
        if cfg.deterministic and not cfg.jitter_in_deterministic:
            return None, None
        draw_device = generator.device if generator is not None else device
        coarse = torch.rand(batch, num_rays, cfg.depth_resolution, generator=generator, device=draw_device)
        fine = None
        if cfg.depth_resolution_importance > 0 and not cfg.deterministic:
            fine = torch.rand(batch, num_rays, cfg.depth_resolution_importance, generator=generator,
                              device=draw_device).to(device)
        return coarse.to(device), fine

    def _render_rays(self, planes: Tensor, decoder: nn.Module, origins: Tensor, directions: Tensor,
                     ray_start: Tensor, ray_end: Tensor, coarse_noise: Tensor | None,
                     fine_uniform: Tensor | None) -> tuple[RayMarchResult, tuple[float, float]]:
        # origins, directions: [B, r, 3]; ray_start, ray_end: [B, 1]
        cfg = self.config
        march = dict(clamp_mode=cfg.clamp_mode, density_bias=cfg.density_bias, white_back=cfg.white_back)
        depths = stratified_depths(ray_start, ray_end, origins.shape[1], cfg.depth_resolution,
                                   disparity_space=cfg.disparity_space_sampling, noise=coarse_noise)  # [B, r, S]
        colors, densities = self._query(planes, decoder, origins, directions, depths)  # [B, r, S, C], [B, r, S]
        if cfg.depth_resolution_importance > 0:
            coarse_weights = march_rays(colors, densities, depths, **march).weights  # [B, r, S-1]
            fine_depths = importance_depths(depths, coarse_weights, cfg.depth_resolution_importance,
                                            fine_uniform)  # [B, r, N]
            fine_colors, fine_densities = self._query(planes, decoder, origins, directions, fine_depths)
            depths, colors, densities = merge_samples(depths, colors, densities,
                                                      fine_depths, fine_colors, fine_densities)  # [B, r, S+N]
        result = march_rays(colors, densities, depths, **march, clamp_depth=not cfg.batch_statistics)
        return result, (float(depths.min()), float(depths.max()))  # the range feeds the batch-wide clamp

    def _query(self, planes: Tensor, decoder: nn.Module, origins: Tensor, directions: Tensor,
               depths: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder outputs at ``origin + depth * direction``: colors [B, r, S, C], raw sigma [B, r, S]."""
        batch, num_rays, num_samples = depths.shape
        points = origins[:, :, None] + depths[..., None] * directions[:, :, None]  # [B, r, S, 3]
        samples = sample_planes(planes, points.reshape(batch, -1, 3), self.config.plane_convention,
                                self.config.box_warp)  # [B, 3, r*S, C]
        sample_dirs = directions[:, :, None].expand(batch, num_rays, num_samples, 3).reshape(batch, -1, 3)
        out = decoder(samples, sample_dirs)  # sigma [B, r*S, 1], rgb [B, r*S, C']
        colors = out["rgb"].reshape(batch, num_rays, num_samples, -1)
        return colors, out["sigma"].reshape(batch, num_rays, num_samples)
