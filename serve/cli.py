"""`avatar4d serve`: registered through the `avatar4d.commands` entry point (pyproject.toml).

This module must stay light: it only declares arguments; handlers import heavy libraries lazily.
"""

from __future__ import annotations

import argparse

from avatar4d.errors import UserError

DESCRIPTION = (
    "Ray Serve inference graph behind an HTTP API and a web page: portrait → triplane → frames "
    "driven by a video or an expression, from any camera."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help=DESCRIPTION.split(":")[0] + " (not built yet)",
        description=DESCRIPTION + " Its commands land with the serving issue; until then this command says so.")
    parser.set_defaults(handler=_not_built)


def _not_built(_: argparse.Namespace) -> int:
    raise UserError("`avatar4d serve` is not built yet: it lands with the serving issue "
                    "(see the README's roadmap)")
