"""`avatar4d train`: registered through the `avatar4d.commands` entry point (pyproject.toml).

This module must stay light: it only declares arguments; handlers import heavy libraries lazily.
"""

from __future__ import annotations

import argparse

from avatar4d.commands.placeholder import register_placeholder

DESCRIPTION = (
    "Trainers on Ray Train + DeepSpeed, tracked in MLflow: per-domain GANs, the triplane VAE, "
    "the image-conditioned DiT and the motion-aware renderer."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    register_placeholder(subparsers, "train", DESCRIPTION, "the trainers issue")
