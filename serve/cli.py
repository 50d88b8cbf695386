"""`avatar4d serve`: registered through the `avatar4d.commands` entry point (pyproject.toml).

This module must stay light: it only declares arguments; handlers import heavy libraries lazily.
"""

from __future__ import annotations

import argparse

from avatar4d.commands.placeholder import register_placeholder

DESCRIPTION = (
    "Ray Serve inference graph behind an HTTP API and a web page: portrait → triplane → frames "
    "driven by a video or an expression, from any camera."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    register_placeholder(subparsers, "serve", DESCRIPTION, "the serving issue")
