"""`avatar4d factory`: registered through the `avatar4d.commands` entry point (pyproject.toml).

This module must stay light: it only declares arguments; handlers import heavy libraries lazily.
"""

from __future__ import annotations

import argparse

from avatar4d.commands.placeholder import register_placeholder

DESCRIPTION = (
    "Ray data factory: per-domain 4D GAN actors mass-produce image–parametric-triplane pairs "
    "and multi-view sets into Lance datasets, exactly once."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    register_placeholder(subparsers, "factory", DESCRIPTION, "the data-factory issue")
