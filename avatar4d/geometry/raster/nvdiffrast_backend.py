"""nvdiffrast backend (CUDA). nvdiffrast is imported lazily, only when this backend is built.

On PyPI nvdiffrast ships as ``diffrp-nvdiffrast`` (it provides the ``nvdiffrast`` module and
JIT-compiles its CUDA plug-in on first use). nvdiffrast's memory layout already is the project's
pixel convention (row 0 = NDC y = -1), so its output is used unflipped. Differences from the torch
backend: triangles are clipped geometrically (same images), vertex positions are snapped to
nvdiffrast's sub-pixel grid (a few edge pixels may differ), ``rast`` carries nvdiffrast's gradients
with respect to positions, and triangle ids above 2**24 use nvdiffrast's float encoding.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import ModuleType

import torch
from torch import Tensor

from avatar4d.geometry.raster.base import (
    RasterBackendUnavailable,
    Rasterizer,
    RasterizerConfig,
    RasterOutput,
    check_attr,
    check_clip_pos,
    check_faces,
    check_resolution,
)

logger = logging.getLogger(__name__)


def nvdiffrast_installed() -> bool:
    """True when the ``nvdiffrast`` package can be found (does not import or compile it)."""
    return importlib.util.find_spec("nvdiffrast") is not None


def _import_nvdiffrast_torch() -> ModuleType:
    try:
        return importlib.import_module("nvdiffrast.torch")
    except Exception as exc:  # ImportError, or a failing build/import inside the package
        raise RasterBackendUnavailable(
            f"nvdiffrast is not usable here ({type(exc).__name__}: {exc}); install the PyPI package "
            "'diffrp-nvdiffrast' on a CUDA machine or use backend='torch'") from exc


def _as_int32_faces(faces: Tensor, device: torch.device) -> Tensor:
    return faces.to(device=device, dtype=torch.int32).contiguous()


class NvdiffrastRasterizer(Rasterizer):
    """nvdiffrast's CUDA (or OpenGL) rasterizer behind the common interface."""

    name = "nvdiffrast"

    def __init__(self, device: torch.device | str | None = None, config: RasterizerConfig | None = None) -> None:
        self.config = config or RasterizerConfig(backend="nvdiffrast")
        if not torch.cuda.is_available():
            raise RasterBackendUnavailable("the nvdiffrast backend needs a CUDA device; none is available")
        self.device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
        if self.device.type != "cuda":
            raise RasterBackendUnavailable(f"the nvdiffrast backend runs on CUDA devices, not {self.device}")
        self._dr = _import_nvdiffrast_torch()
        try:
            if self.config.nvdiffrast_context == "gl":
                self._context = self._dr.RasterizeGLContext(device=self.device)
            else:
                self._context = self._dr.RasterizeCudaContext(device=self.device)
        except Exception as exc:  # the JIT build of the plug-in happens here
            raise RasterBackendUnavailable(
                f"could not create an nvdiffrast {self.config.nvdiffrast_context} context "
                f"({type(exc).__name__}: {exc})") from exc
        logger.info("nvdiffrast %s context on %s", self.config.nvdiffrast_context, self.device)

    def rasterize(self, clip_pos: Tensor, faces: Tensor, resolution: tuple[int, int]) -> RasterOutput:
        check_clip_pos(clip_pos)
        height, width = check_resolution(resolution)
        check_faces(faces, clip_pos.shape[1])
        pos = clip_pos.to(device=self.device, dtype=torch.float32).contiguous()  # [B, V, 4]
        tri = _as_int32_faces(faces, self.device)  # [F, 3] int32
        rast, rast_db = self._dr.rasterize(self._context, pos, tri, resolution=(height, width))
        return RasterOutput.from_rast(rast, num_triangles=faces.shape[0], rast_db=rast_db)

    def interpolate(self, attr: Tensor, raster: RasterOutput, faces: Tensor) -> Tensor:
        attr = check_attr(attr, raster, faces)  # [B or 1, V, C]
        values = attr.to(device=self.device, dtype=torch.float32).contiguous()
        out, _ = self._dr.interpolate(values, raster.rast.contiguous(), _as_int32_faces(faces, self.device))
        return out.to(attr.dtype)

    @property
    def supports_antialias(self) -> bool:
        return True

    def antialias(self, color: Tensor, raster: RasterOutput, clip_pos: Tensor, faces: Tensor) -> Tensor:
        """nvdiffrast's silhouette anti-aliasing of ``color`` [B, H, W, C]."""
        pos = clip_pos.to(device=self.device, dtype=torch.float32).contiguous()
        return self._dr.antialias(color.contiguous(), raster.rast.contiguous(), pos,
                                  _as_int32_faces(faces, self.device))

    def __repr__(self) -> str:
        return f"NvdiffrastRasterizer(device={self.device}, context={self.config.nvdiffrast_context!r})"
