"""`avatar4d factory encode`: declared here, hooked into ``factory/cli.py`` by ``register_encode``.

Light on purpose (argument declarations only): the handler imports torch, Ray and Lance lazily.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from avatar4d import storage
from avatar4d.errors import UserError

DESCRIPTION = (
    "Precompute the DiT's inputs for every pair of <data>/pairs.lance: CLIP image tokens "
    "(hidden_states[-2]), DINOv2 tokens (last_hidden_state) and the triplane VAE's latent (posterior "
    "mean × latent scale), written to <data>/encoded.lance exactly once. Run it after VAE training; "
    "re-running resumes (chunks already encoded are skipped) and picks up pairs added since. "
    "Nothing is downloaded: --encoders tiny builds small random encoders, --encoders paper needs "
    "--clip-checkpoint and --dino-checkpoint (local paths)."
)


def register_encode(commands: argparse._SubParsersAction) -> None:
    """Add the ``encode`` sub-command to the ``avatar4d factory`` sub-parsers."""
    encode = commands.add_parser("encode", help="CLIP/DINO tokens and VAE latents of every pair → encoded.lance",
                                 description=DESCRIPTION)
    encode.add_argument("--data", default="data",
                        help="the factory output folder holding pairs.lance (default: ./data), or the factory's "
                             "s3://bucket/prefix (credentials and endpoint from AWS_ACCESS_KEY_ID, "
                             "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3, AWS_REGION)")
    encode.add_argument("--vae-checkpoint", required=True,
                        help="avatar4d triplane-VAE checkpoint folder (from `avatar4d train vae` or "
                             "`avatar4d convert avatarartist`), local or s3://… (e.g. the trainer's …/final)")
    encode.add_argument("--encoders", choices=["tiny", "paper"], default="tiny",
                        help="tiny (default): small random CLIP/DINO; paper: ViT-H/14 CLIP + DINOv2-base "
                             "from the local checkpoints below")
    encode.add_argument("--clip-checkpoint", type=Path, default=None,
                        help="CLIP vision weights: an open_clip checkpoint file (visual.* keys, e.g. ViT-H-14 "
                             "open_clip_pytorch_model.bin) or a Hugging Face CLIP vision folder "
                             "(IP-Adapter's image_encoder)")
    encode.add_argument("--dino-checkpoint", type=Path, default=None,
                        help="a Hugging Face Dinov2Model folder (e.g. dinov2-base)")
    encode.add_argument("--batch-size", type=int, default=None, help="pairs per encoder batch (default 8)")
    encode.add_argument("--actors", type=int, default=1, help="Ray actors running the encoders (default 1)")
    encode.add_argument("--store-latent-std", action="store_true",
                        help="also store the VAE posterior std (× latent scale) per pair")
    encode.add_argument("--device", default=None,
                        help="device of the in-process worker with --local (cpu, cuda); Ray actors use "
                             "their GPU when they get one")
    encode.add_argument("--local", action="store_true", help="no Ray: encode in this process")
    encode.add_argument("--address", default=None,
                        help="Ray cluster to use: 'auto', HOST:PORT or ray://HOST:PORT; default: $RAY_ADDRESS "
                             "when set, else a local Ray started for this run and stopped afterwards")
    encode.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all cores)")
    encode.add_argument("--no-progress", action="store_true", help="no progress bar")
    encode.set_defaults(handler=_encode)


def build_encode_config(args: argparse.Namespace):  # -> EncodeRunConfig (imported lazily)
    """Check the paths (one-line errors) and build the run config from the arguments."""
    from factory.encode import EncodeRunConfig
    from factory.encode_inputs import check_data_folder, check_vae_checkpoint
    from factory.stages.encode import EncodeConfig
    from factory.stages.encoders import ENCODER_PRESETS

    if args.local and args.address:
        raise UserError("--local runs without Ray; drop --address or --local")
    if args.device is not None and not args.local:
        raise UserError("--device applies to --local runs; Ray actors use their GPU when they get one")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.actors < 1:
        raise UserError(f"--actors must be >= 1, got {args.actors}")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise UserError(f"--num-cpus must be >= 1, got {args.num_cpus}")
    check_data_folder(args.data)
    if not storage.is_remote(args.vae_checkpoint) and not Path(args.vae_checkpoint).exists():
        raise UserError(f"--vae-checkpoint {args.vae_checkpoint}: no such folder")
    check_vae_checkpoint(args.vae_checkpoint)
    encoders = ENCODER_PRESETS.get(args.encoders)
    for option, path in (("--clip-checkpoint", args.clip_checkpoint), ("--dino-checkpoint", args.dino_checkpoint)):
        if path is not None and not path.exists():
            raise UserError(f"{option} {path}: no such file or folder")
    if args.clip_checkpoint is not None:
        encoders = encoders.replace(clip=encoders.clip.replace(checkpoint=str(args.clip_checkpoint)))
    if args.dino_checkpoint is not None:
        encoders = encoders.replace(dino=encoders.dino.replace(checkpoint=str(args.dino_checkpoint)))
    if encoders.require_pretrained:
        given = (("--clip-checkpoint", args.clip_checkpoint), ("--dino-checkpoint", args.dino_checkpoint))
        absent = [option for option, path in given if path is None]
        if absent:
            raise UserError(f"--encoders {args.encoders} needs local weights: give {' and '.join(absent)}")
    stage = EncodeConfig(encoders=encoders, store_latent_std=args.store_latent_std)
    if args.batch_size is not None:
        stage = stage.replace(batch_size=args.batch_size)
    if args.device is not None:
        stage = stage.replace(device=args.device)
    return EncodeRunConfig(data=str(args.data), vae_checkpoint=str(args.vae_checkpoint), encode=stage,
                           num_actors=args.actors)


def _encode(args: argparse.Namespace) -> int:
    config = build_encode_config(args)
    from factory.encode import run_encode

    summary = run_encode(config, address=args.address, local=args.local, num_cpus=args.num_cpus,
                         progress=not args.no_progress)
    print(f"factory encode: {summary.committed_chunks} chunks committed ({summary.skipped_chunks} already done), "
          f"{summary.rows_total} encoded rows in {summary.data}/encoded.lance "
          f"({summary.rows_per_second():.1f} rows/s); {summary.resubmitted_chunks} chunks retried, "
          f"{summary.orphans_removed} orphan files removed; {summary.seconds:.1f}s")
    return 0
