"""``avatar4d demo``: pictures of what the embedded default makes.

Writes labelled contact sheets (rows: identity × expression, columns: cameras at yaw −45°…+45°):
``procedural_heads.png``, the shipped procedural head shaded by the rasterizer, and
``world_<domain>.png``, the procedural 4D world of each domain (:mod:`avatar4d.world`), or
``generated_heads.png`` for ``--generator CKPT`` (a GAN or a world checkpoint), driven by the
same expression meshes. Needs no downloads.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

# expression shown in the demo → weights of the morphable model's named expressions
DEMO_EXPRESSIONS = {
    "neutral": {},
    "jaw_open": {"jaw_open": 1.0},
    "smile": {"smile": 1.0},
    "blink": {"blink_left": 1.0, "blink_right": 1.0},
    "brow_raise": {"brow_raise": 1.0},
}


DEMO_DOMAINS = ("realistic", "pixar", "greek_statue")
DEMO_YAWS_DEGREES = (-45.0, -22.5, 0.0, 22.5, 45.0)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="render heads of the procedural 4D world (or a generator checkpoint) to labelled PNG sheets",
        description="Render contact sheets (rows: identity × expression — neutral, jaw open, smile, blink, brow "
                    "raise; columns: cameras from yaw -45° to +45°): the shipped procedural head shaded by the "
                    "rasterizer, and for each --domains entry the procedural 4D world in that domain's look (the "
                    "embedded default's stand-in for the per-domain GANs). --generator renders a generator "
                    "checkpoint instead (a trained or converted GAN, or a world). CPU, no downloads, seconds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    parser.add_argument("--identities", type=int, default=2, help="identities per sheet")
    parser.add_argument("--domains", default=",".join(DEMO_DOMAINS), help="comma-separated domains of world sheets")
    parser.add_argument("--world-preset", default="tiny", help="size preset of the world's planes (tiny, small, "
                                                                "paper); sheets render at 64² or more either way")
    parser.add_argument("--resolution", type=int, default=128, help="size of each rendered image")
    parser.add_argument("--generator", type=Path, help="a generator checkpoint folder (GAN or world) to render "
                                                       "instead of the domains' worlds")
    parser.add_argument("--truncation", type=float, default=0.7, help="truncation psi of the generator")
    parser.add_argument("--seed", type=int, default=0, help="random seed (identities)")
    parser.add_argument("--backend", default="auto", help="rasterizer backend: auto, torch or nvdiffrast")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from avatar4d.commands.demo_sheets import (
        load_sheet_generator,
        render_generated_grid,
        render_procedural_grid,
        world_generator,
    )
    from avatar4d.errors import UserError

    for name in ("identities", "resolution"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.resolution > 2048:
        raise UserError(f"--resolution {args.resolution} is too large for a preview (max 2048)")
    if not 0 <= args.truncation <= 1:
        raise UserError(f"--truncation must be in [0, 1], got {args.truncation}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device is available")
    if args.generator is not None and not args.generator.is_dir():
        raise UserError(f"--generator {args.generator}: checkpoint folder not found")
    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    if args.generator is None and not domains:
        raise UserError("--domains is empty: name at least one domain")
    from avatar4d.world import WORLD_PRESETS

    WORLD_PRESETS.get(args.world_preset)  # unknown preset → one-line error before rendering
    start = time.perf_counter()
    sheet = render_procedural_grid(args.out / "procedural_heads.png", identities=args.identities,
                                   resolution=args.resolution, seed=args.seed,
                                   backend=args.backend, device=args.device)
    print(f"wrote {sheet}")
    if args.generator is not None:
        sheets = [render_generated_grid(args.out / "generated_heads.png", generator=load_sheet_generator(
            args.generator, args.device), identities=args.identities, seed=args.seed, resolution=args.resolution,
            truncation_psi=args.truncation, title=str(args.generator), device=args.device)]
    else:
        sheets = [render_generated_grid(args.out / f"world_{domain}.png", generator=world_generator(
            domain, args.world_preset, args.device, args.resolution), identities=args.identities, seed=args.seed,
            resolution=args.resolution, truncation_psi=args.truncation, title=f"procedural world: {domain}",
            device=args.device) for domain in domains]
    for sheet in sheets:
        print(f"wrote {sheet}")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0
