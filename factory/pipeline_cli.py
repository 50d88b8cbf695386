"""`avatar4d pipeline run`: registered through the ``avatar4d.commands`` entry point (pyproject.toml).

Light on purpose (argument declarations only): the handler imports torch, Ray and Lance lazily.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from avatar4d.errors import UserError

DESCRIPTION = (
    "AvatarArtist's data pipeline end to end: source portraits (the procedural world's realistic domain, or "
    "--source) → SDEdit + landmark-ControlNet stylization into every domain → one Next3D GAN fine-tune per "
    "domain (as many at once as the CPUs/GPUs hold) → image–triplane pairs and multiview sets made by the "
    "fine-tuned GANs. Every step is resumable: run the same command again and it skips what is committed "
    "(stylized and factory chunks, finished fine-tunes) and resumes an interrupted fine-tune."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    pipeline = subparsers.add_parser("pipeline", help="portraits → stylize → per-domain GAN fine-tunes → factory",
                                     description=DESCRIPTION)
    pipeline.set_defaults(group_parser=pipeline)
    commands = pipeline.add_subparsers(dest="pipeline_command", metavar="COMMAND")
    run = commands.add_parser("run", help="run (or resume) the whole pipeline", description=DESCRIPTION)
    run.add_argument("--recipe", choices=["tiny", "paper"], default="tiny",
                     help="tiny (default): CPU sizes, random tiny Stable Diffusion and GANs; paper: the paper's "
                          "domains and sizes (needs --source, --sd-path, --controlnet-path, --base-checkpoint)")
    run.add_argument("--out", type=Path, default=Path("pipeline"), help="output folder (default ./pipeline)")
    run.add_argument("--domains", nargs="+", default=None, metavar="NAME", help="domains (default: the recipe's)")
    run.add_argument("--domains-file", type=Path, default=None, help="YAML adding or overriding domains")
    run.add_argument("--source", default=None, help="a Lance dataset of your own tracked portraits (columns: "
                                                    "sample_id, image, camera, face_params)")
    run.add_argument("--portraits", type=int, default=None, help="world portraits to make (without --source)")
    run.add_argument("--base-checkpoint", type=Path, default=None, help="Next3D GAN every domain starts from")
    run.add_argument("--sd-path", type=Path, default=None, help="Stable Diffusion 1.5 (folder or file)")
    run.add_argument("--controlnet-path", type=Path, default=None, help="face-landmark ControlNet (folder or file)")
    run.add_argument("--gan-images", type=int, default=None, help="images per fine-tune (default: the recipe's)")
    run.add_argument("--gan-workers", type=int, default=None, help="Ray Train workers per fine-tune")
    run.add_argument("--parallel-runs", type=int, default=None,
                     help="fine-tunes at once (default: as many as the CPUs/GPUs hold)")
    run.add_argument("--samples-per-domain", type=int, default=None, help="pairs per domain in the final factory run")
    run.add_argument("--address", default=None, help="Ray cluster (default: $RAY_ADDRESS, else local Rays)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(handler=_run)


def build_pipeline_config(args: argparse.Namespace):  # -> PipelineConfig (imported lazily)
    from factory.pipeline_run import get_recipe

    config = get_recipe(args.recipe)
    for option in ("portraits", "gan_images", "gan_workers", "parallel_runs", "samples_per_domain"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise UserError(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    for option, path in (("--base-checkpoint", args.base_checkpoint), ("--sd-path", args.sd_path),
                         ("--controlnet-path", args.controlnet_path), ("--domains-file", args.domains_file)):
        if path is not None and not path.exists():
            raise UserError(f"{option} {path}: no such file or folder")
    updates = {"out": str(args.out)}
    for option in ("domains", "source", "portraits", "gan_images", "gan_workers", "parallel_runs",
                   "samples_per_domain"):
        if getattr(args, option) is not None:
            updates[option] = getattr(args, option)
    for option in ("domains_file", "base_checkpoint"):
        if getattr(args, option) is not None:
            updates[option] = str(getattr(args, option))
    stylize = config.stylize
    if args.sd_path is not None or args.controlnet_path is not None:
        stylize = stylize.replace(models="pretrained", sd_path=str(args.sd_path) if args.sd_path else None,
                                  controlnet_path=str(args.controlnet_path) if args.controlnet_path else None)
    if stylize.models == "pretrained" and not (stylize.sd_path and stylize.controlnet_path):
        raise UserError("this recipe stylizes with pretrained weights: give --sd-path and --controlnet-path")
    return config.replace(stylize=stylize, **updates)


def _run(args: argparse.Namespace) -> int:
    config = build_pipeline_config(args)
    from factory.pipeline_run import run_pipeline

    summary = run_pipeline(config, address=args.address, progress=not args.no_progress)
    print(f"pipeline: {summary.stylized_rows} stylized portraits, {len(summary.trained)} GANs fine-tuned "
          f"({len(summary.skipped_runs)} already done), {summary.pairs} pairs and {summary.multiview} multiview rows "
          f"in {summary.out}/data; steps {summary.seconds}")
    return 0
