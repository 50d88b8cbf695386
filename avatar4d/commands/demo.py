"""``avatar4d demo``: the embedded-default smoke run.

Writes two contact sheets (rows: identity × expression, columns: camera poses):
``procedural_heads.png``, the shipped procedural head shaded by the rasterizer, and
``generated_heads.png``, the Next3D++ generator (the randomly initialised ``tiny`` preset by
default, or any generator checkpoint) driven by the same meshes. Needs no downloads.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# expression shown in the demo → weights of the morphable model's named expressions
DEMO_EXPRESSIONS = {
    "neutral": {},
    "jaw_open": {"jaw_open": 1.0},
    "smile": {"smile": 1.0},
    "blink": {"blink_left": 1.0, "blink_right": 1.0},
    "brow_raise": {"brow_raise": 1.0},
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="render procedural and generated heads to PNG (the embedded-default smoke run)",
        description="Render the shipped procedural head and the Next3D++ generator for several identities, "
                    "expressions (neutral, jaw open, smile, blink, brow raise) and camera poses, and write two "
                    "contact sheets. Runs on a CPU in seconds with the tiny preset; pass --generator to use a "
                    "trained or converted generator checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    parser.add_argument("--identities", type=int, default=3, help="number of random identities")
    parser.add_argument("--cameras", type=int, default=4, help="camera poses per row")
    parser.add_argument("--resolution", type=int, default=128, help="size of the procedural-head renders")
    parser.add_argument("--generator", type=Path, default=None,
                        help="generator checkpoint folder (default: the randomly initialised tiny preset)")
    parser.add_argument("--truncation", type=float, default=0.7, help="truncation psi of the generator")
    parser.add_argument("--seed", type=int, default=0, help="random seed (identities and cameras)")
    parser.add_argument("--backend", default="auto", help="rasterizer backend: auto, torch or nvdiffrast")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from avatar4d.errors import UserError

    for name in ("identities", "cameras", "resolution"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.resolution > 2048:
        raise UserError(f"--resolution {args.resolution} is too large for a preview (max 2048)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device is available")
    start = time.perf_counter()
    sheet = render_procedural_grid(args.out / "procedural_heads.png", identities=args.identities,
                                   cameras=args.cameras, resolution=args.resolution, seed=args.seed,
                                   backend=args.backend, device=args.device)
    print(f"wrote {sheet}")
    sheet = render_generated_grid(args.out / "generated_heads.png", identities=args.identities, cameras=args.cameras,
                                  seed=args.seed, checkpoint=args.generator, truncation_psi=args.truncation,
                                  device=args.device)
    print(f"wrote {sheet} ({time.perf_counter() - start:.1f}s in all)")
    return 0


def _demo_setup(head, identities: int, cameras: int, seed: int, device: str):
    """Identity coefficients, per-expression FaceParams and cameras shared by both sheets."""
    from avatar4d.geometry.camera import PoseSampler, PoseSamplerConfig

    gen = torch.Generator().manual_seed(seed)
    identity = 1.5 * torch.randn(identities, head.identity_dim, generator=gen)
    expressions = []
    for label, weights in DEMO_EXPRESSIONS.items():
        if all(name in head.expression_names for name in weights):
            expression = torch.zeros(1, head.expression_dim)
            for name, weight in weights.items():
                expression[0, head.expression_names.index(name)] = weight
            expressions.append((label, expression))
    sampler = PoseSampler(PoseSamplerConfig(yaw_range=(-0.6, 0.6), pitch_range=(-0.2, 0.3), roll_range=(0.0, 0.0)))
    camera = sampler.sample(cameras, seed=seed).camera.to(device)
    return identity, expressions, camera, gen


def _mesh(head, identity_row: torch.Tensor, expression: torch.Tensor, copies: int, device: str) -> torch.Tensor:
    params = head.neutral_params(1)
    params.identity = identity_row[None]
    params.expression = expression
    return head.vertices(params.to(device)).expand(copies, -1, -1)  # [copies, V, 3]


def render_procedural_grid(path: Path, *, identities: int, cameras: int, resolution: int, seed: int,
                           backend: str = "auto", device: str = "cpu") -> Path:
    """Shaded renders of the procedural head (a faint UV checkerboard shows the UV layout)."""
    from tqdm import tqdm

    from avatar4d.geometry.mesh import vertex_normals
    from avatar4d.geometry.morphable import default_head_model
    from avatar4d.geometry.raster import get_rasterizer, perspective_clip
    from avatar4d.viz import lambert_shade, make_grid, save_png

    head = default_head_model().to(device)
    rasterizer = get_rasterizer(backend, device=device)
    identity, expressions, camera, _ = _demo_setup(head, identities, cameras, seed, device)
    rows = []
    for index in tqdm(range(identities), desc="procedural heads", unit="id"):
        for _, expression in expressions:
            verts = _mesh(head, identity[index], expression, cameras, device)
            raster = rasterizer.rasterize(perspective_clip(verts, camera), head.faces, (resolution, resolution))
            normals = torch.nn.functional.normalize(
                rasterizer.interpolate(vertex_normals(verts, head.faces), raster, head.faces), dim=-1)
            albedo = _uv_checker(rasterizer.interpolate(head.uv_coords.to(device), raster, head.uv_faces))
            rows.append(lambert_shade(normals, raster.mask, albedo, -camera.forward))
    return save_png(make_grid(torch.cat(rows).cpu(), nrow=cameras), path)


@torch.inference_mode()
def render_generated_grid(path: Path, *, identities: int, cameras: int, seed: int, checkpoint: Path | None = None,
                          truncation_psi: float = 0.7, device: str = "cpu") -> Path:
    """Images of the Next3D++ generator driven by the procedural head's expression meshes."""
    from tqdm import tqdm

    from avatar4d.geometry.morphable import default_head_model
    from avatar4d.models.next3d import GENERATOR_PRESETS, Next3DGenerator
    from avatar4d.models.next3d.checkpoint import load_generator
    from avatar4d.viz import make_grid, save_png

    head = default_head_model().to(device)
    if checkpoint is None:
        torch.manual_seed(seed)
        generator = Next3DGenerator(GENERATOR_PRESETS.get("tiny"), head=head).to(device).eval()
    else:
        generator, _ = load_generator(checkpoint, head=head, device=device)
        generator.eval()
    identity, expressions, camera, gen = _demo_setup(head, identities, cameras, seed, device)
    z = torch.randn(identities, generator.config.backbone.z_dim, generator=gen).to(device)
    rows = []
    for index in tqdm(range(identities), desc="generated heads", unit="id"):
        ws = generator.mapping(z[index:index + 1].expand(cameras, -1), camera, truncation_psi=truncation_psi,
                               truncation_cutoff=generator.config.truncation_cutoff)
        for _, expression in expressions:
            verts = _mesh(head, identity[index], expression, cameras, device)
            out = generator.synthesis(ws, camera, verts, generator=torch.Generator(device).manual_seed(seed))
            rows.append(out.image.clamp(-1, 1) * 0.5 + 0.5)
    return save_png(make_grid(torch.cat(rows).cpu(), nrow=cameras), path)


def _uv_checker(uv: torch.Tensor, cells: int = 16) -> torch.Tensor:
    """Skin-coloured albedo [B, H, W, 3] with a faint UV checkerboard, to show the UV layout."""
    check = ((uv * cells).floor().sum(-1, keepdim=True) % 2)  # [B, H, W, 1]
    skin = torch.tensor([0.86, 0.68, 0.58], device=uv.device)
    return skin * (0.9 + 0.1 * check)
