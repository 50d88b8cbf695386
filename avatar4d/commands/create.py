"""``avatar4d create PORTRAIT --checkpoints DIR --out AVATAR``: one portrait → a drivable avatar.

Runs the core inference pipeline (:mod:`avatar4d.pipeline`): tracking, CLIP + DINO, DiT sampling
(DPM-Solver++ with classifier-free guidance), VAE decode; writes ``AVATAR/avatar.safetensors`` +
``avatar.json``. torch is imported when the command runs, not for ``--help``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHECKPOINTS_HELP = ("a folder with pipeline.json, or with dit/ + vae/ + generator/ (`avatar4d convert` output), or "
                    "a trained DiT (runs/NAME/final: its VAE and generators are found from its recorded config); "
                    "models may be MLflow registry URIs (models:/avatar4d-dit/1) in pipeline.json")


def add_pipeline_options(parser: argparse.ArgumentParser, *, checkpoints_required: bool,
                         preset_flag: str = "--preset") -> None:
    parser.add_argument("--checkpoints", type=Path, required=checkpoints_required, help=CHECKPOINTS_HELP)
    parser.add_argument(preset_flag, dest="pipeline_preset", choices=("tiny", "paper"), default="tiny",
                        help="pipeline preset (paper: bf16 on a GPU, 512² frames, the paper's sampler)")
    parser.add_argument("--device", help="torch device (default: the preset's; cpu or cuda)")
    parser.add_argument("--renderer", choices=("auto", "parametric", "motion-aware"), default="auto",
                        help="frame renderer: auto = the motion-aware renderer when the checkpoints have one")


def build_pipeline(args: argparse.Namespace, checkpoints: Path, **overrides):
    from avatar4d.pipeline import PIPELINE_PRESETS, AvatarPipeline

    config = PIPELINE_PRESETS.get(args.pipeline_preset)
    overrides.setdefault("renderer", args.renderer)
    if args.device:
        overrides["device"] = args.device
    return AvatarPipeline.load(checkpoints, config.replace(**overrides))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "create", help="make a drivable avatar from one portrait (tracking, CLIP + DINO, DiT sampling, VAE decode)",
        description="Turn one portrait of any style into an avatar: the portrait is centre-cropped to a square, "
                    "tracked (camera and head-model coefficients), encoded by CLIP and DINOv2, and the DiT samples "
                    "a parametric-triplane latent (DPM-Solver++ with classifier-free guidance) that the VAE decodes. "
                    "Writes AVATAR/avatar.safetensors (triplane, portrait, source camera and coefficients) and "
                    "AVATAR/avatar.json (id, checkpoint hashes, sampler). Drive it with `avatar4d animate`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("portrait", type=Path, metavar="PORTRAIT", help="an image file (PNG, JPEG, WebP, ...)")
    parser.add_argument("--out", type=Path, required=True, metavar="AVATAR", help="avatar folder to write")
    add_pipeline_options(parser, checkpoints_required=True)
    parser.add_argument("--seed", type=int, default=0, help="seed of the diffusion noise (same seed, same avatar)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the DiT's training config, else 19)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: as --steps, else 4.5)")
    parser.add_argument("--no-track", action="store_true", help="skip tracking: frontal source camera, zero "
                                                                 "coefficients")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avatar4d.errors import UserError
    from avatar4d.pipeline.images import decode_image

    if not args.portrait.is_file():
        raise UserError(f"portrait not found: {args.portrait}")
    image = decode_image(args.portrait.read_bytes(), max_pixels=8192 * 8192, what=str(args.portrait))
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    with tqdm(total=3, desc="loading models", unit="step", bar_format="{desc} [{n}/{total}] {elapsed}") as bar:
        pipeline = build_pipeline(args, args.checkpoints, track=not args.no_track)
        if args.steps is not None or args.guidance is not None:
            pipeline.sampling = pipeline.sampling.replace(
                **({"steps": args.steps} if args.steps is not None else {}),
                **({"guidance_scale": args.guidance} if args.guidance is not None else {}))
        bar.update(1)
        bar.set_description(f"sampling ({pipeline.sampling.scheduler}, {pipeline.sampling.steps} steps)")
        avatar = pipeline.create([image], seeds=[args.seed])[0]
        bar.update(1)
        bar.set_description("saving")
        avatar.metadata.update({"portrait": str(args.portrait), "checkpoints_source": str(args.checkpoints.resolve())})
        out = avatar.save(args.out)
        bar.update(1)
    print(f"avatar {avatar.avatar_id} → {out} (triplane {list(avatar.triplane.shape)}; drive it with "
          f"`avatar4d animate {out} --preset talk --out talk.mp4`)")
    return 0
