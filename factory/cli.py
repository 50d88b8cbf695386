"""`avatar4d factory`: registered through the `avatar4d.commands` entry point (pyproject.toml).

This module must stay light: it only declares arguments; handlers import Ray, Lance and torch
lazily, so ``avatar4d --help`` stays fast and works without them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avatar4d.errors import UserError
from factory.encode_cli import register_encode
from factory.stylize_cli import register_stylize

DESCRIPTION = (
    "Ray data factory: per-domain 4D GAN actors mass-produce image–parametric-triplane pairs "
    "and multi-view sets into Lance datasets, exactly once."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    factory = subparsers.add_parser("factory", help="the Ray data factory: generate, inspect and compact datasets",
                                    description=DESCRIPTION)
    commands = factory.add_subparsers(dest="factory_command", metavar="COMMAND")
    factory.set_defaults(group_parser=factory)
    _register_run(commands)
    register_encode(commands)
    register_stylize(commands)

    status = commands.add_parser("status", help="rows per domain and set, bytes, versions, committed chunks",
                                 description="Summarise the Lance datasets of a factory output folder.")
    status.add_argument("dir", help="the factory output folder (holds pairs.lance, multiview.lance) or its "
                        "s3://bucket/prefix (AWS_* environment variables: credentials, region, AWS_ENDPOINT_URL)")
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    status.set_defaults(handler=_status)

    preview = commands.add_parser("preview", help="contact sheet of images and triplane channels (PNG)",
                                  description="Write a contact sheet: for a few pairs per domain, the image "
                                              "and the first three channels of each of the four planes of its "
                                              "parametric triplane (each normalised to its own range).")
    preview.add_argument("dir", help="the factory output folder or its s3://bucket/prefix")
    preview.add_argument("--out", type=Path, required=True, help="PNG file to write")
    preview.add_argument("--per-domain", type=int, default=4, help="pairs shown per domain")
    preview.add_argument("--domains", nargs="+", default=None, help="domains to show (default: all in the data)")
    preview.set_defaults(handler=_preview)

    compact = commands.add_parser("compact", help="merge small fragments, drop old versions (rows unchanged)",
                                  description="Compact the Lance datasets of a factory output folder: merge "
                                              "the per-chunk fragments into large ones and delete superseded "
                                              "files and versions. Run it when no `factory run` writes there.")
    compact.add_argument("dir", type=Path, help="the factory output folder")
    compact.add_argument("--keep-versions-days", type=float, default=None, metavar="DAYS",
                         help="keep old versions younger than this (readers pinned to them keep working); "
                              "default 7, 0 keeps only the latest")
    compact.set_defaults(handler=_compact)

    verify = commands.add_parser("verify", help="read back every fragment and blob, check the per-row checksums",
                                 description="Read every fragment of pairs.lance, multiview.lance and encoded.lance "
                                             "in full (blobs included) and recompute the per-row checksums. Exit "
                                             "status 1 when something is damaged; `factory repair` removes it.")
    verify.add_argument("dir", help="the factory output folder (local; see README for s3://)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=_verify)

    repair = commands.add_parser("repair", help="remove damaged fragments so the next run regenerates their chunks",
                                 description="Remove every damaged fragment (and every chunk that lost rows) found "
                                             "by `factory verify`, in one Lance commit per table; then run the "
                                             "same `factory run` (and `factory encode`) again: it regenerates "
                                             "exactly the removed chunks from their seeds.")
    repair.add_argument("dir", help="the factory output folder (local; see README for s3://)")
    repair.set_defaults(handler=_repair)

    domains = commands.add_parser("domains", help="list the domain catalog (the paper's 28 + your YAML)",
                                  description="List the domains `factory run --domains` accepts.")
    domains.add_argument("--domains-file", type=Path, default=None, help="YAML adding or overriding domains")
    domains.set_defaults(handler=_domains)


def _register_run(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run", help="generate pairs and multiview sets into Lance (embedded default: tiny, local Ray)",
        description="Generate image–parametric-triplane pairs and multiview sets with one Ray actor per "
                    "domain GAN and commit them to <out>/pairs.lance and <out>/multiview.lance exactly once. "
                    "Without arguments: the `tiny` recipe (a few domains × a few dozen samples, the procedural "
                    "4D world in each domain's look) on a local Ray started by this command. Re-running the same "
                    "command resumes: committed chunks are skipped.")
    run.add_argument("--recipe", default="tiny", choices=["tiny", "paper"],
                     help="tiny (default): the embedded default, a few domains × a few dozen samples; "
                          "paper: 28 domains × 20,000 pairs + multiview sets")
    run.add_argument("--out", default="data",
                     help="output folder of the Lance datasets (default: ./data), or s3://bucket/prefix on object "
                          "storage: credentials, region and endpoint from the standard AWS_* environment variables "
                          "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL for an "
                          "S3-compatible server); see cluster/README.md")
    run.add_argument("--domains", nargs="+", default=None, metavar="DOMAIN",
                     help="domains to generate (default: the recipe's); see `avatar4d factory domains`")
    run.add_argument("--domains-file", type=Path, default=None,
                     help="YAML adding or overriding domains (entries: name, kind, prompt, generator_checkpoint, ...)")
    run.add_argument("--samples-per-domain", type=int, default=None, metavar="N",
                     help="image–triplane pairs per domain (default: the recipe's; at most 100,000,000, and at "
                          "most 999,999 chunks per domain)")
    run.add_argument("--generator-kind", choices=["world", "gan"], default=None,
                     help="what hosts a domain without its own generator checkpoint: world = the procedural 4D "
                          "world in the domain's look (tiny recipe), gan = a randomly initialised Next3D GAN "
                          "(paper recipe; noise until trained)")
    run.add_argument("--multiview-identities", type=int, default=None, metavar="N",
                     help="identities per multiview set (dynamic, static) and domain (default: the recipe's)")
    run.add_argument("--actors-per-domain", type=int, default=None, metavar="N",
                     help="actors hosting each domain's GAN (default: the recipe's)")
    run.add_argument("--seed", type=int, default=None, help="run seed: every sample's seed derives from it (default 0)")
    run.add_argument("--address", default=None,
                     help="Ray cluster to use: 'auto' (the cluster of this node), HOST:PORT or ray://HOST:PORT; "
                          "default: $RAY_ADDRESS when set, else a local Ray started for this run and stopped "
                          "afterwards. Token-auth clusters need RAY_AUTH_MODE=token and the cluster's token")
    run.add_argument("--num-cpus", type=int, default=None,
                     help="CPUs of the local Ray (default: all cores; at least what the actors ask for)")
    run.add_argument("--config", type=Path, default=None,
                     help="a FactoryConfig YAML/JSON replacing the recipe (the options above still override it; "
                          "see factory/recipes.py for the fields)")
    run.add_argument("--keep-versions-days", type=float, default=None, metavar="DAYS",
                     help="keep old Lance versions younger than this, so a trainer pinned to one keeps it "
                          "(default 7; 0 keeps only the latest)")
    run.add_argument("--no-progress", action="store_true", help="no status line and progress bars")
    run.set_defaults(handler=_run)


def build_config(args: argparse.Namespace):  # -> FactoryConfig (imported lazily)
    """The recipe (or ``--config``) with the command-line overrides applied."""
    from factory.chunks import check_plan_size
    from factory.recipes import FactoryConfig, get_recipe

    if args.config is not None:
        check_text_file(args.config, "--config")
    config = FactoryConfig.load(args.config) if args.config else get_recipe(args.recipe)
    overrides = {"out": str(args.out)}
    for option, field in (("domains", "domains"), ("samples_per_domain", "samples_per_domain"),
                          ("multiview_identities", "multiview_identities"),
                          ("actors_per_domain", "actors_per_domain"), ("seed", "run_seed"),
                          ("generator_kind", "generator_kind")):
        if getattr(args, option) is not None:
            overrides[field] = getattr(args, option)
    if args.domains_file is not None:
        if not args.domains_file.is_file():
            raise UserError(f"--domains-file {args.domains_file}: no such file")
        check_text_file(args.domains_file, "--domains-file")
        overrides["domains_file"] = str(args.domains_file)
    config = config.replace(**overrides)
    check_plan_size(samples_per_domain=config.samples_per_domain, multiview_identities=config.multiview_identities,
                    chunk_size=config.chunk_size, multiview_chunk_size=config.multiview_chunk_size)
    return config


def check_text_file(path: Path, option: str) -> None:
    """A YAML/JSON file must be UTF-8 text (one-line error for a binary or otherwise encoded file)."""
    if not path.is_file():
        return  # the loader says "not found"
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{option} {path} is not a UTF-8 text file (YAML or JSON expected; byte {error.start} "
                        "cannot be decoded)") from None
    except OSError as error:
        raise UserError(f"{option} {path}: {error.strerror or error}") from None


def _run(args: argparse.Namespace) -> int:
    if args.num_cpus is not None and args.num_cpus < 1:
        raise UserError(f"--num-cpus must be >= 1, got {args.num_cpus}")
    if args.keep_versions_days is not None and args.keep_versions_days < 0:
        raise UserError(f"--keep-versions-days must be >= 0, got {args.keep_versions_days}")
    from avatar4d import storage

    storage.check_uri(args.out, "--out")
    if not storage.is_remote(args.out) and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} exists and is not a folder")
    config = build_config(args)
    from factory.pipeline import FactoryError, run_factory
    from factory.sink import DEFAULT_KEEP_VERSIONS_DAYS

    keep = DEFAULT_KEEP_VERSIONS_DAYS if args.keep_versions_days is None else args.keep_versions_days
    try:
        summary = run_factory(config, address=args.address, num_cpus=args.num_cpus, progress=not args.no_progress,
                              keep_versions_days=keep)
    except FactoryError as error:  # committed chunks stay: say so in one line (--debug: traceback)
        raise UserError(f"factory run failed: {error}; committed chunks are kept, run the command again to "
                        "resume") from error
    nodes = len(summary.chunks_per_node)
    print(f"factory run: {summary.committed_chunks} chunks committed ({summary.skipped_chunks} already done), "
          f"{summary.rows_total.get('pairs', 0)} pairs and {summary.rows_total.get('multiview', 0)} multiview "
          f"rows in {summary.out}; {summary.resubmitted_chunks} chunks retried after {summary.actor_failures} "
          f"worker deaths, {summary.orphans_removed} orphan files removed; {len(summary.actor_nodes)} actors on "
          f"{nodes} node(s); {summary.seconds:.1f}s ({summary.startup_seconds:.1f}s start-up)")
    return 0


def _existing_location(text: str) -> str | Path:
    """A local factory folder (:func:`_existing_dir`) or an object-store URI holding a dataset."""
    from avatar4d import storage
    from factory.sink import has_versions

    if not storage.is_remote(text):
        return _existing_dir(Path(text))
    uri = storage.check_uri(text, "folder")
    if not any(has_versions(f"{uri}/{table}.lance") for table in ("pairs", "multiview", "encoded")):
        raise UserError(f"{uri} holds no factory dataset (no pairs.lance, multiview.lance or encoded.lance)")
    return uri


# `factory verify` / `repair` inspect the files of a dataset (fragment files, blob sidecars, the
# _versions folder they roll back) on disk; Lance's object-store API does not expose them that way.
LOCAL_ONLY = ("works on a local folder: copy the prefix (aws s3 sync {uri} DIR), run it on DIR, and sync "
              "DIR back while no `factory run`/`encode` writes there")


def _local_dir(text: str, command: str) -> Path:
    """:func:`_existing_dir` for commands that need the files on disk: an object-store URI is a
    one-line error that says how to run them."""
    from avatar4d import storage

    if storage.is_remote(text):
        raise UserError(f"`factory {command}` " + LOCAL_ONLY.format(uri=storage.redact(text.rstrip("/"))))
    return _existing_dir(Path(text))


def _existing_dir(path: Path) -> Path:
    if not path.exists():
        raise UserError(f"{path}: no such folder")
    if not path.is_dir():
        raise UserError(f"{path} is not a folder")
    if not any((path / f"{table}.lance").is_dir() for table in ("pairs", "multiview", "encoded")):
        raise UserError(f"{path} holds no factory dataset (no pairs.lance, multiview.lance or encoded.lance)")
    return path


def _status(args: argparse.Namespace) -> int:
    from factory.inspect import format_status, status

    report = status(_existing_location(args.dir))
    print(json.dumps(report, indent=2) if args.json else format_status(report))
    return 0


def _preview(args: argparse.Namespace) -> int:
    from factory.inspect import preview

    if args.per_domain < 1:
        raise UserError(f"--per-domain must be >= 1, got {args.per_domain}")
    if args.out.suffix.lower() != ".png":
        raise UserError(f"--out {args.out}: the contact sheet is a PNG file (name it *.png)")
    path = preview(_existing_location(args.dir), args.out, per_domain=args.per_domain, domains=args.domains)
    print(f"wrote {path}")
    return 0


def _compact(args: argparse.Namespace) -> int:
    from factory.inspect import compact

    if args.keep_versions_days is not None and args.keep_versions_days < 0:
        raise UserError(f"--keep-versions-days must be >= 0, got {args.keep_versions_days}")
    for table, result in compact(_existing_dir(args.dir), keep_versions_days=args.keep_versions_days).items():
        print(f"{table}: {result['rows']} rows, fragments {result['fragments_before']} → {result['fragments_after']}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    import dataclasses

    from factory.verify import format_verify, verify

    reports = verify(_local_dir(args.dir, "verify"))
    if args.json:
        print(json.dumps({table: dataclasses.asdict(report) for table, report in reports.items()}, indent=2))
    else:
        print(format_verify(reports))
    return 0 if all(report.ok for report in reports.values()) else 1


def _repair(args: argparse.Namespace) -> int:
    from factory.verify import repair

    results = repair(_local_dir(args.dir, "repair"))
    changed = False
    for table, result in results.items():
        if result.fragments_removed or result.chunks_removed or result.versions_rolled_back:
            changed = True
            print(f"{table}: removed {len(result.fragments_removed)} damaged fragment(s), "
                  f"{result.rows_removed} rows of {len(result.chunks_removed)} chunk(s)"
                  + (f", rolled back {result.versions_rolled_back} unreadable version(s)"
                     if result.versions_rolled_back else "") + f"; now version {result.version}")
        else:
            print(f"{table}: nothing damaged")
    if changed:
        print("run the same `avatar4d factory run` (and `factory encode`) again to regenerate the removed chunks")
    return 0


def _domains(args: argparse.Namespace) -> int:
    from factory.domains import load_domains

    if args.domains_file is not None:
        check_text_file(args.domains_file, "--domains-file")
    catalog = load_domains(args.domains_file)
    width = max(len(name) for name in catalog.names())
    for domain in catalog:
        detail = domain.prompt if domain.kind == "prompt" else (domain.model_name or domain.kind)
        checkpoint = f" [checkpoint {domain.generator_checkpoint}]" if domain.generator_checkpoint else ""
        sys.stdout.write(f"{domain.name.ljust(width)}  {domain.kind:<9}  {detail}{checkpoint}\n")
    return 0
