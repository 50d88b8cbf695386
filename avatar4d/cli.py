"""The ``avatar4d`` command line.

Core sub-commands (``demo``, ``convert``, ``eval``) live in :mod:`avatar4d.commands`. The
``factory``, ``train`` and ``serve`` packages contribute theirs through the
``avatar4d.commands`` entry-point group (see pyproject.toml), so the core never imports them and
a serving image without trainer code still has a working CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

from avatar4d import __version__
from avatar4d.errors import UserError

logger = logging.getLogger("avatar4d")

Register = Callable[["argparse._SubParsersAction"], None]


def _core_commands() -> list[Register]:
    from avatar4d.commands import convert, demo, evaluate

    return [demo.register, convert.register, evaluate.register]


def _plugin_commands() -> list[tuple[str, Register | Exception]]:
    found = []
    for entry in sorted(metadata.entry_points(group="avatar4d.commands"), key=lambda e: e.name):
        try:
            found.append((entry.name, entry.load()))
        except Exception as exc:  # a broken optional package must not break the whole CLI
            found.append((entry.name, exc))
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatar4d",
        description="Open-domain 4D avatar generation (AvatarArtist) at cluster scale: a Ray data factory, "
                    "DeepSpeed trainers and a Ray Serve inference graph.",
        epilog="Run `avatar4d COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"avatar4d {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _core_commands():
        register(subparsers)
    for name, register in _plugin_commands():
        if isinstance(register, Exception):
            broken = subparsers.add_parser(name, help=f"(unavailable: {register})")
            broken.set_defaults(handler=_unavailable(name, register))
        else:
            register(subparsers)
    return parser


def _unavailable(name: str, error: Exception) -> Callable[[argparse.Namespace], int]:
    def handler(_: argparse.Namespace) -> int:
        raise UserError(f"the `{name}` commands could not be loaded ({error}); is avatar4d fully installed?")

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        # A command group without an action (`avatar4d` or `avatar4d convert`): show its help.
        (getattr(args, "group_parser", None) or parser).print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        if args.debug:
            raise
        message = str(exc) if isinstance(exc, UserError) else f"{exc.strerror or exc}: {exc.filename}"
        print(f"avatar4d: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avatar4d: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
