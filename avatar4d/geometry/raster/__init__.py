"""Mesh rasterization: one :class:`Rasterizer` interface, a pure-PyTorch reference backend and an
nvdiffrast backend, clip-space projection helpers and UV-to-plane rendering.

Conventions (pixel grid, depth test, ``rast`` layout) are documented in :mod:`.base`.
"""

from __future__ import annotations

import logging

import torch

from avatar4d.geometry.raster.base import (
    BACKENDS,
    RasterBackendUnavailable,
    Rasterizer,
    RasterizerConfig,
    RasterOutput,
)
from avatar4d.geometry.raster.nvdiffrast_backend import NvdiffrastRasterizer, nvdiffrast_installed
from avatar4d.geometry.raster.projection import (
    ORTHOGRAPHIC_VIEWS,
    OrthographicView,
    clip_from_world,
    orthographic_clip,
    perspective_clip,
    perspective_projection,
    triplane_views,
    view_for_axes,
)
from avatar4d.geometry.raster.torch_backend import TorchRasterizer
from avatar4d.geometry.raster.uv_plane import UVPlane, render_uv_to_plane, sample_texture

logger = logging.getLogger(__name__)


def get_rasterizer(backend: str = "auto", device: torch.device | str | None = None,
                   config: RasterizerConfig | None = None) -> Rasterizer:
    """Build a rasterizer.

    ``backend``: ``"auto"`` → nvdiffrast when ``device`` is CUDA and nvdiffrast is usable (falls
    back to torch with a warning if its context cannot be built), torch otherwise; ``"torch"`` /
    ``"nvdiffrast"`` force one (a forced, unusable nvdiffrast raises RasterBackendUnavailable).
    ``device`` defaults to torch's default device. ``config`` carries backend tuning knobs.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {backend!r}; choose from {list(BACKENDS)}")
    config = (config or RasterizerConfig()).replace(backend=backend)
    device = torch.device(device) if device is not None else torch.get_default_device()
    if backend == "torch":
        return TorchRasterizer(config)
    if backend == "nvdiffrast":
        return NvdiffrastRasterizer(device, config)
    if device.type == "cuda" and nvdiffrast_installed():
        try:
            return NvdiffrastRasterizer(device, config)
        except RasterBackendUnavailable as exc:
            logger.warning("falling back to the torch rasterizer: %s", exc)
    return TorchRasterizer(config)


def rasterizer_from_config(config: RasterizerConfig, device: torch.device | str | None = None) -> Rasterizer:
    """:func:`get_rasterizer` with the backend named in ``config``."""
    return get_rasterizer(config.backend, device, config)


__all__ = [
    "BACKENDS",
    "ORTHOGRAPHIC_VIEWS",
    "NvdiffrastRasterizer",
    "OrthographicView",
    "RasterBackendUnavailable",
    "RasterOutput",
    "Rasterizer",
    "RasterizerConfig",
    "TorchRasterizer",
    "UVPlane",
    "clip_from_world",
    "get_rasterizer",
    "nvdiffrast_installed",
    "orthographic_clip",
    "perspective_clip",
    "perspective_projection",
    "rasterizer_from_config",
    "render_uv_to_plane",
    "sample_texture",
    "triplane_views",
    "view_for_axes",
]
