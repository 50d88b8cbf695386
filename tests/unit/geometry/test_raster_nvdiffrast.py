"""torch vs nvdiffrast parity (needs CUDA and the nvdiffrast package; skipped otherwise)."""

from __future__ import annotations

import math

import pytest
import torch

from avatar4d.geometry.camera import orbit_camera
from avatar4d.geometry.raster import (
    NvdiffrastRasterizer,
    OrthographicView,
    TorchRasterizer,
    nvdiffrast_installed,
    orthographic_clip,
    perspective_clip,
)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not (torch.cuda.is_available() and nvdiffrast_installed()),
    reason="torch/nvdiffrast parity needs a CUDA device and nvdiffrast (PyPI: diffrp-nvdiffrast)")]


def uv_sphere(rings: int = 24, segments: int = 48, radius: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    verts, faces = [], []
    for r in range(rings + 1):
        theta = math.pi * r / rings
        for s in range(segments):
            phi = 2 * math.pi * s / segments
            verts.append((radius * math.sin(theta) * math.cos(phi), radius * math.cos(theta),
                          0.2 + radius * math.sin(theta) * math.sin(phi)))
    for r in range(rings):
        for s in range(segments):
            a, b = r * segments + s, r * segments + (s + 1) % segments
            c, d = a + segments, b + segments
            faces += [(a, c, b), (b, c, d)]
    return torch.tensor(verts), torch.tensor(faces)


@pytest.fixture(scope="module")
def backends() -> tuple[TorchRasterizer, NvdiffrastRasterizer]:
    return TorchRasterizer(), NvdiffrastRasterizer("cuda")


@pytest.mark.parametrize("projection", ["perspective", "orthographic"])
def test_same_rast_layout_ids_and_attributes(backends, projection: str) -> None:
    reference, nvdiffrast = backends
    verts, faces = uv_sphere()
    verts = verts.cuda()
    faces = faces.cuda()
    if projection == "perspective":
        camera = orbit_camera(torch.tensor([0.0, 0.5]), torch.tensor([0.1, -0.2])).to("cuda")
        clip = perspective_clip(verts[None], camera)
    else:
        clip = orthographic_clip(verts[None], OrthographicView.preset("xy")).expand(2, -1, -1).contiguous()
    resolution = (128, 96)
    ours = reference.rasterize(clip, faces, resolution)
    theirs = nvdiffrast.rasterize(clip, faces, resolution)
    assert ours.rast.shape == theirs.rast.shape
    same_id = (ours.triangle_id == theirs.triangle_id).float().mean()
    assert same_id >= 0.99
    both = (ours.triangle_id == theirs.triangle_id) & ours.mask[..., 0]
    assert torch.allclose(ours.rast[both], theirs.rast[both].detach(), atol=2e-3)
    attr = verts * 2.0
    a = reference.interpolate(attr, ours, faces)
    b = nvdiffrast.interpolate(attr, theirs, faces)
    assert torch.allclose(a[both], b[both], atol=2e-3)
    # Either backend interpolates the other's raster output identically.
    assert torch.allclose(reference.interpolate(attr, theirs, faces), b, atol=1e-5)
