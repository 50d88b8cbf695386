"""Commands announced in the CLI before their implementation lands: ``--help`` describes them and
running one says, in one line, which part of the roadmap brings it."""

from __future__ import annotations

import argparse

from avatar4d.errors import NotAvailableError


def register_placeholder(subparsers: argparse._SubParsersAction, name: str, description: str,
                         lands_with: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help=f"{description.split(':')[0].rstrip('.')} (not built yet)",
        description=f"{description} Its commands land with {lands_with}; until then this command says so.")

    def not_built(_: argparse.Namespace) -> int:
        raise NotAvailableError(f"`avatar4d {name}` is not built yet: it lands with {lands_with} "
                                "(see the README's roadmap)")

    parser.set_defaults(handler=not_built)
    return parser
