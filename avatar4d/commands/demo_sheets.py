"""The rendering behind ``avatar4d demo`` (torch is imported here, not when the CLI prints help)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from avatar4d.commands.demo import DEMO_EXPRESSIONS, DEMO_YAWS_DEGREES


def world_generator(domain: str, preset: str, device: str, resolution: int = 128):
    """The world of ``domain`` at ``preset``'s plane size, rendered at ≥ 64² and upsampled to ``resolution``."""
    from avatar4d.geometry.morphable import default_head_model
    from avatar4d.world import WORLD_PRESETS, ProceduralWorldGenerator, style_for_domain

    config = WORLD_PRESETS.get(preset, style=style_for_domain(domain))
    neural = min(max(config.neural_resolution, 64), resolution)
    config = config.replace(neural_resolution=neural, image_resolution=max(resolution, neural))
    return ProceduralWorldGenerator(config, default_head_model()).to(device).eval()


def load_sheet_generator(checkpoint: Path, device: str):
    from avatar4d.generators import load_generator_checkpoint
    from avatar4d.geometry.morphable import default_head_model

    generator, _ = load_generator_checkpoint(checkpoint, head=default_head_model(), device=device)
    return generator.eval()


def _demo_setup(head, identities: int, seed: int, device: str):
    """Identity coefficients, per-expression FaceParams and the sheet's cameras (yaw −45°…+45°)."""
    from avatar4d.geometry.camera import orbit_camera

    gen = torch.Generator().manual_seed(seed)
    identity = 1.5 * torch.randn(identities, head.identity_dim, generator=gen)
    expressions = []
    for label, weights in DEMO_EXPRESSIONS.items():
        if all(name in head.expression_names for name in weights):
            expression = torch.zeros(1, head.expression_dim)
            for name, weight in weights.items():
                expression[0, head.expression_names.index(name)] = weight
            expressions.append((label, expression))
    yaws = torch.tensor(DEMO_YAWS_DEGREES) * math.pi / 180
    camera = orbit_camera(yaws, torch.zeros_like(yaws), torch.zeros_like(yaws)).to(device)
    return identity, expressions, camera, gen


def _mesh(head, identity_row: torch.Tensor, expression: torch.Tensor, copies: int, device: str) -> torch.Tensor:
    params = head.neutral_params(1)
    params.identity = identity_row[None].to(params.identity)
    params.expression = expression.to(params.expression)
    return head.vertices(params.to(device)).expand(copies, -1, -1)  # [copies, V, 3]


def render_procedural_grid(path: Path, *, identities: int, resolution: int, seed: int,
                           backend: str = "auto", device: str = "cpu") -> Path:
    """Shaded renders of the procedural head (a faint UV checkerboard shows the UV layout)."""
    from tqdm import tqdm

    from avatar4d.geometry.mesh import vertex_normals
    from avatar4d.geometry.morphable import default_head_model
    from avatar4d.geometry.raster import get_rasterizer, perspective_clip
    from avatar4d.viz import labelled_grid, lambert_shade

    head = default_head_model().to(device)
    rasterizer = get_rasterizer(backend, device=device)
    identity, expressions, camera, _ = _demo_setup(head, identities, seed, device)
    cameras = camera.batch_size
    rows, labels = [], []
    for index in tqdm(range(identities), desc="procedural heads", unit="id"):
        for label, expression in expressions:
            verts = _mesh(head, identity[index], expression, cameras, device)
            raster = rasterizer.rasterize(perspective_clip(verts, camera), head.faces, (resolution, resolution))
            normals = torch.nn.functional.normalize(
                rasterizer.interpolate(vertex_normals(verts, head.faces), raster, head.faces), dim=-1)
            albedo = _uv_checker(rasterizer.interpolate(head.uv_coords.to(device), raster, head.uv_faces))
            rows.append(lambert_shade(normals, raster.mask, albedo, -camera.forward))
            labels.append(f"id {index} {label}")
    sheet = labelled_grid(torch.cat(rows).cpu(), nrow=cameras, row_labels=labels,
                          col_labels=[f"yaw {yaw:+.1f}°" for yaw in DEMO_YAWS_DEGREES],
                          title="procedural head model (mesh, UV checkerboard)")
    return _save_sheet(sheet, path)


@torch.inference_mode()
def render_generated_grid(path: Path, *, generator, identities: int, seed: int, resolution: int,
                          truncation_psi: float = 0.7, title: str = "", device: str = "cpu") -> Path:
    """A generator (GAN or world) driven by the procedural head's expression meshes, labelled.

    A world fixes each identity's mesh from its latent; a GAN gets the sheet's random identities."""
    from tqdm import tqdm

    from avatar4d.viz import labelled_grid

    head = generator.head if hasattr(generator, "head") else _default_head(device)
    identity, expressions, camera, gen = _demo_setup(head, identities, seed, device)
    z = torch.randn(identities, generator.z_dim, generator=gen).to(device)
    latent_identity = generator.identity_for_latent(z, truncation_psi)
    cameras = camera.batch_size
    rows, labels = [], []
    for index in tqdm(range(identities), desc=f"rendering {path.name}", unit="identity"):
        ws = generator.mapping(z[index:index + 1].expand(cameras, -1), camera, truncation_psi=truncation_psi,
                               truncation_cutoff=generator.config.truncation_cutoff)
        who = identity[index] if latent_identity is None else latent_identity[index]
        for label, expression in expressions:
            verts = _mesh(head, who, expression, cameras, device)
            out = generator.synthesis(ws, camera, verts, neural_resolution=None,
                                      generator=torch.Generator(device).manual_seed(seed))
            image = out.image.clamp(-1, 1) * 0.5 + 0.5
            rows.append(torch.nn.functional.interpolate(image, size=(resolution, resolution), mode="bilinear",
                                                        antialias=True, align_corners=False))
            labels.append(f"id {index} {label}")
    sheet = labelled_grid(torch.cat(rows).cpu(), nrow=cameras, row_labels=labels,
                          col_labels=[f"yaw {yaw:+.1f}°" for yaw in DEMO_YAWS_DEGREES], title=title)
    return _save_sheet(sheet, path)


def _default_head(device: str):
    from avatar4d.geometry.morphable import default_head_model

    return default_head_model().to(device)


def _save_sheet(sheet, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path


def _uv_checker(uv: torch.Tensor, cells: int = 16) -> torch.Tensor:
    """Skin-coloured albedo [B, H, W, 3] with a faint UV checkerboard, to show the UV layout."""
    check = ((uv * cells).floor().sum(-1, keepdim=True) % 2)  # [B, H, W, 1]
    skin = torch.tensor([0.86, 0.68, 0.58], device=uv.device)
    return skin * (0.9 + 0.1 * check)
