"""``avatar4d eval``: the paper's metrics (self-/cross-reenactment LPIPS, FID, ID, AED, APD,
CLIP score, AKD)."""

from __future__ import annotations

import argparse

from avatar4d.commands.placeholder import register_placeholder

DESCRIPTION = ("Evaluate avatars with AvatarArtist's table-1 metrics: self-reenactment LPIPS, FID, ID, AED, APD "
               "and cross-reenactment FID, CLIP score, AKD, APD.")


def register(subparsers: argparse._SubParsersAction) -> None:
    register_placeholder(subparsers, "eval", DESCRIPTION, "the evaluation issue, after the inference graph")
