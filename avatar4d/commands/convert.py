"""``avatar4d convert``: turn released third-party checkpoints into avatar4d checkpoints
(safetensors + JSON), reading them without executing any code they carry."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert released checkpoints (Next3D .pkl, AvatarArtist .pth) to avatar4d format",
        description="Convert released checkpoints into avatar4d checkpoints (a folder with model.safetensors "
                    "and checkpoint.json). Third-party pickles are read by a restricted unpickler that never "
                    "imports or runs the code they embed.")
    parser.set_defaults(group_parser=parser)
    parser.add_subparsers(dest="convert_command", metavar="FORMAT")
