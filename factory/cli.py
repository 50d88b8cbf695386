"""`avatar4d factory`: registered through the `avatar4d.commands` entry point (pyproject.toml).

This module must stay light: it only declares arguments; handlers import heavy libraries lazily.
"""

from __future__ import annotations

import argparse

from avatar4d.errors import UserError

DESCRIPTION = (
    "Ray data factory: per-domain 4D GAN actors mass-produce image–parametric-triplane pairs "
    "and multi-view sets into Lance datasets, exactly once."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "factory", help=DESCRIPTION.split(":")[0] + " (not built yet)",
        description=DESCRIPTION + " Its commands land with the data-factory issue; until then this command says so.")
    parser.set_defaults(handler=_not_built)


def _not_built(_: argparse.Namespace) -> int:
    raise UserError("`avatar4d factory` is not built yet: it lands with the data-factory issue "
                    "(see the README's roadmap)")
