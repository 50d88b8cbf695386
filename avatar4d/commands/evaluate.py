"""``avatar4d eval``: the paper's metrics (self-/cross-reenactment LPIPS, FID, ID, AED, APD,
CLIP score, AKD)."""

from __future__ import annotations

import argparse

from avatar4d.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate avatars with the paper's metrics (not built yet)",
        description="Evaluate generated avatars with AvatarArtist's table-1 metrics: self-reenactment LPIPS, "
                    "FID, ID, AED, APD and cross-reenactment FID, CLIP score, AKD, APD. The metric suite lands "
                    "after the serving graph; this command says so until then.")
    parser.set_defaults(handler=_run)


def _run(_: argparse.Namespace) -> int:
    raise UserError("`avatar4d eval` is not built yet: the metric suite lands after the inference graph "
                    "(see the README's roadmap)")
