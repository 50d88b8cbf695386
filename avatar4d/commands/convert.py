"""``avatar4d convert``: turn released third-party checkpoints into avatar4d checkpoints
(safetensors + JSON), reading them without executing any code they carry."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert released checkpoints (Next3D++ .pkl, ...) to avatar4d format",
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


def _convert_next3d(args: argparse.Namespace) -> int:
    from avatar4d.models.next3d.checkpoint import convert_next3d_pickle

    info = convert_next3d_pickle(args.file, args.out, preset=args.preset, key=args.key)
    print(f"wrote {info.path} ({info.component}, plane convention {info.metadata['plane_convention']})")
    return 0
