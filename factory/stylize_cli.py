"""`avatar4d factory stylize`: declared here, hooked into ``factory/cli.py`` by ``register_stylize``.

Light on purpose (argument declarations only): the handler imports torch, diffusers, Ray and Lance lazily.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from avatar4d.errors import UserError

DESCRIPTION = (
    "Stylize source portraits into style domains (AvatarArtist §3.1): SDEdit (img2img from the noised "
    "portrait, strength ≈ 0.6) with Stable Diffusion and a face-landmark ControlNet (scale ≈ 1.5) conditioned "
    "on the landmarks of each portrait's own mesh and camera; the output <out>/stylized.lance keeps every "
    "portrait's camera and head-model coefficients. Written exactly once; a rerun skips what is committed. "
    "Per-domain prompt, negative prompt, strength, ControlNet scale, guidance and steps come from the domain "
    "catalog (`avatar4d factory domains`, --domains-file). Nothing is downloaded: --models tiny (default) builds "
    "small random networks; --models pretrained needs --sd-path and --controlnet-path (local folders or files)."
)


def register_stylize(commands: argparse._SubParsersAction) -> None:
    """Add the ``stylize`` sub-command to the ``avatar4d factory`` sub-parsers."""
    stylize = commands.add_parser("stylize", help="SDEdit + landmark ControlNet: portraits → <out>/stylized.lance",
                                  description=DESCRIPTION)
    stylize.add_argument("--source", required=True,
                         help="Lance dataset of source portraits with columns sample_id, image (PNG), camera (25), "
                              "face_params (e.g. <out>/pairs.lance of `factory run --domains realistic`)")
    stylize.add_argument("--out", type=Path, default=Path("data"), help="output folder (default ./data)")
    stylize.add_argument("--domains", nargs="+", default=["pixar", "greek_statue"], metavar="NAME",
                         help="domains to stylize into (catalog names)")
    stylize.add_argument("--domains-file", type=Path, default=None, help="YAML adding or overriding domains")
    stylize.add_argument("--models", choices=["tiny", "paper-random", "pretrained"], default="tiny",
                         help="tiny: small random networks; paper-random: Stable Diffusion 1.5 sizes, random "
                              "weights (benchmarks); pretrained: the weights below")
    stylize.add_argument("--sd-path", type=Path, default=None,
                         help="Stable Diffusion 1.5: a diffusers folder or one .safetensors/.ckpt file")
    stylize.add_argument("--controlnet-path", type=Path, default=None,
                         help="face-landmark ControlNet: a diffusers folder or one file")
    stylize.add_argument("--steps", type=int, default=None, help="sampler steps (default: each domain's, 30)")
    stylize.add_argument("--resolution", type=int, default=None,
                         help="working resolution, a multiple of 8 (default: the portraits')")
    stylize.add_argument("--batch-size", type=int, default=4, help="portraits per pipeline call")
    stylize.add_argument("--chunk-size", type=int, default=8, help="portraits per committed chunk")
    stylize.add_argument("--actors", type=int, default=1, help="Ray actors (one per GPU when GPUs exist)")
    stylize.add_argument("--seed", type=int, default=0, help="run seed (every row's noise derives from it)")
    stylize.add_argument("--local", action="store_true", help="no Ray: stylize in this process")
    stylize.add_argument("--device", default=None, help="device of the in-process worker with --local")
    stylize.add_argument("--address", default=None,
                         help="Ray cluster: 'auto', HOST:PORT or ray://HOST:PORT (default: $RAY_ADDRESS, else a "
                              "local Ray for this run)")
    stylize.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all cores)")
    stylize.add_argument("--no-progress", action="store_true", help="no progress bar")
    stylize.set_defaults(handler=_stylize)


def build_stylize_config(args: argparse.Namespace):  # -> StylizeRunConfig (imported lazily)
    from factory.stages.stylize import StylizeConfig
    from factory.stylize_run import StylizeRunConfig

    for option, value in (("--batch-size", args.batch_size), ("--chunk-size", args.chunk_size),
                          ("--actors", args.actors), ("--steps", args.steps), ("--num-cpus", args.num_cpus)):
        if value is not None and value < 1:
            raise UserError(f"{option} must be >= 1, got {value}")
    if args.resolution is not None and (args.resolution < 8 or args.resolution % 8):
        raise UserError(f"--resolution must be a multiple of 8, got {args.resolution}")
    if args.local and args.address:
        raise UserError("--local runs without Ray; drop --address or --local")
    if args.device is not None and not args.local:
        raise UserError("--device applies to --local runs; Ray actors use their GPU when they get one")
    if args.models == "pretrained":
        absent = [option for option, path in (("--sd-path", args.sd_path), ("--controlnet-path", args.controlnet_path))
                  if path is None]
        if absent:
            raise UserError(f"--models pretrained needs {' and '.join(absent)} (local weights; nothing is downloaded)")
    for option, path in (("--sd-path", args.sd_path), ("--controlnet-path", args.controlnet_path),
                         ("--domains-file", args.domains_file)):
        if path is not None and not path.exists():
            raise UserError(f"{option} {path}: no such file or folder")
    stage = StylizeConfig(models=args.models, sd_path=str(args.sd_path) if args.sd_path else None,
                          controlnet_path=str(args.controlnet_path) if args.controlnet_path else None,
                          steps=args.steps, resolution=args.resolution, batch_size=args.batch_size,
                          device=args.device or "cpu")
    return StylizeRunConfig(source=str(args.source), out=str(args.out), domains=list(args.domains),
                            domains_file=str(args.domains_file) if args.domains_file else None, stylize=stage,
                            chunk_size=args.chunk_size, run_seed=args.seed, num_actors=args.actors)


def _stylize(args: argparse.Namespace) -> int:
    config = build_stylize_config(args)
    from factory.stylize_run import run_stylize

    summary = run_stylize(config, address=args.address, local=args.local, num_cpus=args.num_cpus,
                          progress=not args.no_progress)
    print(f"factory stylize: {summary.committed_chunks} chunks committed ({summary.skipped_chunks} already done), "
          f"{summary.rows_total} stylized rows in {summary.out}/stylized.lance "
          f"({summary.images_per_second():.2f} images/s); {summary.resubmitted_chunks} chunks retried; "
          f"{summary.seconds:.1f}s")
    return 0
