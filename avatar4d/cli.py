"""The ``avatar4d`` command line.

Core sub-commands (``demo``, ``convert``, ``eval``) live in :mod:`avatar4d.commands`. The
``factory``, ``train`` and ``serve`` packages contribute theirs through the
``avatar4d.commands`` entry-point group (see pyproject.toml), so the core never imports them and
a serving image without trainer code still has a working CLI.

Start-up stays fast: a core command's module (which may import torch) is imported only when that
command is the one being run; ``avatar4d --help`` lists them from :data:`CORE_COMMANDS`. ``-v`` and
``--debug`` are accepted before or after the sub-command. Exit codes: :mod:`avatar4d.errors`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata

from avatar4d import __version__
from avatar4d.errors import EXIT_INTERRUPTED, EXIT_USAGE, EXIT_USER_ERROR, NotAvailableError, UserError

logger = logging.getLogger("avatar4d")

Register = Callable[["argparse._SubParsersAction"], None]

#: core command → (module with ``register(subparsers)``, one-line help for ``avatar4d --help``)
CORE_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("avatar4d.commands.demo", "render procedural and generated heads to PNG (the embedded-default "
                                       "smoke run)"),
    "convert": ("avatar4d.commands.convert", "convert released checkpoints (Next3D++ .pkl, AvatarArtist DiT/VAE) "
                                             "to avatar4d format"),
    "track": ("avatar4d.commands.track", "track a portrait or video: cameras, head-model coefficients, landmarks"),
    "create": ("avatar4d.commands.create", "make a drivable avatar from one portrait (DiT sampling, VAE decode)"),
    "animate": ("avatar4d.commands.animate", "drive an avatar by a video, coefficients or a preset; write an MP4"),
    "eval": ("avatar4d.commands.evaluate", "AvatarArtist's table-1 metrics of avatar pipelines (JSON + HTML "
                                            "report, MLflow)"),
}
QUIET_MODULES = r"(torch|torchvision|deepspeed|ray|mlflow|pydantic|lance|open_clip|timm)(\.|$)"
GLOBAL_FLAGS = {"-v", "-vv", "-vvv", "--verbose", "--debug", "--version", "-h", "--help"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``ArgumentDefaultsHelpFormatter`` without "(default: None)" / "(default: False)" noise."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _plugin_commands() -> list[tuple[str, Register | Exception]]:
    found = []
    for entry in sorted(metadata.entry_points(group="avatar4d.commands"), key=lambda e: e.name):
        try:
            found.append((entry.name, entry.load()))
        except Exception as exc:  # a broken optional package must not break the whole CLI
            found.append((entry.name, exc))
    return found


def chosen_command(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not a global flag)."""
    for token in argv:
        if not token.startswith("-"):
            return token
        if token not in GLOBAL_FLAGS:
            return None
    return None


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    default_count, default_flag = (0, False) if top else (argparse.SUPPRESS, argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="count", default=default_count,
                        help="more output: Ray, DeepSpeed and library logs (-vv for debug)")
    parser.add_argument("--debug", action="store_true", default=default_flag, help="show full tracebacks for errors")


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield sub
                yield from _subparsers(sub)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; core commands other than the one in ``argv`` are listed but not imported."""
    command = chosen_command(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="avatar4d",
        description="Open-domain 4D avatar generation (AvatarArtist) at cluster scale: a Ray data factory, "
                    "DeepSpeed trainers and a Ray Serve inference graph.",
        epilog="Run `avatar4d COMMAND --help` for the options of one command. Exit codes: 0 success, 1 user or "
               "data error, 2 usage error, 69 not available yet, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"avatar4d {__version__}")
    _add_global_options(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, short) in CORE_COMMANDS.items():
        if name == command:
            importlib.import_module(module).register(subparsers)
        else:
            subparsers.add_parser(name, help=short)
    for name, register in _plugin_commands():
        if isinstance(register, Exception):
            broken = subparsers.add_parser(name, help=f"(unavailable: {register})")
            broken.set_defaults(handler=_unavailable(name, register))
        else:
            register(subparsers)
    for sub in _subparsers(parser):
        _add_global_options(sub, top=False)
        if issubclass(sub.formatter_class, argparse.ArgumentDefaultsHelpFormatter):
            sub.formatter_class = HelpFormatter
    return parser


def _unavailable(name: str, error: Exception) -> Callable[[argparse.Namespace], int]:
    def handler(_: argparse.Namespace) -> int:
        raise NotAvailableError(f"the `{name}` commands could not be loaded ({error}); is avatar4d fully installed?")

    return handler


def configure_logging(verbose: int) -> None:
    """WARNING by default, INFO with -v, DEBUG with -vv; Python warnings only from -v on."""
    import warnings

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from avatar4d.storage import RedactingFilter  # AWS keys never reach a log line

    for log_handler in logging.getLogger().handlers:
        log_handler.addFilter(RedactingFilter())
    if verbose == 0:  # third-party chatter (deprecations, fork-safety notes, "creating tables") only with -v
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=QUIET_MODULES)
        # child processes (Ray workers of a local Ray, MLflow's model validation) inherit these
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow sets its logger from it on import
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for name in ("mlflow", "alembic", "ray", "deepspeed", "lance", "urllib3", "filelock"):
            logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    handler = getattr(args, "handler", None)
    if handler is None:
        # A command group without an action (`avatar4d` or `avatar4d convert`): show its help.
        (getattr(args, "group_parser", None) or parser).print_help()
        return EXIT_USAGE
    try:
        return int(handler(args) or 0)
    except (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        if args.debug:
            raise
        message = str(exc) if isinstance(exc, UserError) else f"{exc.strerror or exc}: {exc.filename}"
        from avatar4d.storage import redact

        print(f"avatar4d: error: {redact(message)}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("avatar4d: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
