"""`avatar4d train`: registered through the `avatar4d.commands` entry point (pyproject.toml).

This module must stay light: it only declares arguments; handlers import heavy libraries lazily.
"""

from __future__ import annotations

import argparse

from avatar4d.errors import UserError

DESCRIPTION = (
    "Trainers on Ray Train + DeepSpeed, tracked in MLflow: per-domain GANs, the triplane VAE, "
    "the image-conditioned DiT and the motion-aware renderer."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help=DESCRIPTION.split(":")[0] + " (not built yet)",
        description=DESCRIPTION + " Its commands land with the trainers issue; until then this command says so.")
    parser.set_defaults(handler=_not_built)


def _not_built(_: argparse.Namespace) -> int:
    raise UserError("`avatar4d train` is not built yet: it lands with the trainers issue "
                    "(see the README's roadmap)")
