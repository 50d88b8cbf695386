"""``avatar4d convert``: turn released third-party checkpoints into avatar4d checkpoints
(safetensors + JSON), reading them without executing any code they carry."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert released checkpoints (Next3D++ .pkl, AvatarArtist DiT/VAE) to avatar4d format",
        description="Convert released checkpoints into avatar4d checkpoints (a folder with model.safetensors "
                    "and checkpoint.json). Third-party pickles are read by a restricted unpickler that never "
                    "imports or runs the code they embed.")
    parser.set_defaults(group_parser=parser)
    formats = parser.add_subparsers(dest="convert_command", metavar="FORMAT")

    next3d = formats.add_parser(
        "next3d-pkl", help="a Next3D++ generator pickle (InvertAvatar's ani3dgan512.pkl)",
        description="Convert the Next3D++ generator that AvatarArtist's renderer starts from (ani3dgan512.pkl, an "
                    "EG3D-style training pickle) into an avatar4d generator checkpoint. Every key and shape is "
                    "checked against the `paper` generator preset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    next3d.add_argument("file", type=Path, help="the .pkl file")
    next3d.add_argument("--out", type=Path, required=True, help="output checkpoint folder")
    next3d.add_argument("--key", default="G_ema", help="which network of the pickle to convert")
    next3d.add_argument("--preset", default="paper", help="generator preset the weights must fit")
    next3d.set_defaults(handler=_convert_next3d)

    release = formats.add_parser(
        "avatarartist", help="the released AvatarArtist DiT, triplane VAE and/or motion-aware renderer",
        description="Convert AvatarArtist's released inference weights: the DiT (`DiT.pth`, its EMA weights are "
                    "used) into OUT/dit and the triplane VAE (`pytorch_model.bin` of checkpoint-VAE, with the "
                    "optional `final_mean.pt`/`final_std.pt` triplane statistics) into OUT/vae, and the motion-aware "
                    "renderer (`render.pkl`, its G_ema) into OUT/renderer. Keys and shapes are checked against the "
                    "`paper` presets; .pth/.bin files are read with torch.load(weights_only=True), render.pkl by a "
                    "restricted unpickler that never runs the code it embeds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    release.add_argument("--dit", type=Path, default=None, help="DiT.pth")
    release.add_argument("--vae", type=Path, default=None, help="the VAE's pytorch_model.bin")
    release.add_argument("--vae-mean", type=Path, default=None, help="final_mean.pt (triplane statistics)")
    release.add_argument("--vae-std", type=Path, default=None, help="final_std.pt (triplane statistics)")
    release.add_argument("--render", type=Path, default=None, help="render.pkl (the motion-aware renderer)")
    release.add_argument("--out", type=Path, required=True, help="output folder (gets dit/, vae/, renderer/)")
    release.add_argument("--preset", default="paper", help="DiT, VAE and renderer preset the weights must fit")
    release.set_defaults(handler=_convert_avatarartist)


def _convert_next3d(args: argparse.Namespace) -> int:
    from avatar4d.models.next3d.checkpoint import convert_next3d_pickle

    info = convert_next3d_pickle(args.file, args.out, preset=args.preset, key=args.key)
    print(f"wrote {info.path} ({info.component}, plane convention {info.metadata['plane_convention']})")
    return 0


def _convert_avatarartist(args: argparse.Namespace) -> int:
    import torch

    from avatar4d.errors import UserError

    if args.dit is None and args.vae is None and args.render is None:
        raise UserError("give --dit, --vae and/or --render")
    if (args.vae_mean is None) != (args.vae_std is None):
        raise UserError("give both --vae-mean and --vae-std, or neither")
    for path in (args.dit, args.vae, args.vae_mean, args.vae_std, args.render):
        if path is not None and not path.is_file():
            raise UserError(f"file not found: {path}")
    if args.dit is not None:
        from avatar4d.models.dit.convert import convert_released_dit_file

        info = convert_released_dit_file(args.dit, args.out / "dit", preset=args.preset)
        print(f"wrote {info.path} (DiT, {info.config.get('pos_embed_grid', '?')} positional grid)")
    if args.vae is not None:
        from avatar4d.models.vae.convert import convert_released_vae_checkpoint

        stats = {}
        if args.vae_mean is not None:
            stats = {name: torch.load(path, map_location="cpu", weights_only=True)
                     for name, path in (("mean", args.vae_mean), ("std", args.vae_std))}
        try:
            info = convert_released_vae_checkpoint(args.vae, args.out / "vae", preset=args.preset, **stats)
        except ValueError as exc:  # statistics of an unexpected shape
            raise UserError(str(exc)) from None
        print(f"wrote {info.path} (triplane VAE)")
    if args.render is not None:
        from avatar4d.models.renderer.convert import convert_released_renderer

        info = convert_released_renderer(args.render, args.out / "renderer", preset=args.preset)
        print(f"wrote {info.path} (motion-aware renderer)")
    return 0
