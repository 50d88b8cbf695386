"""`avatar4d train`: registered through the `avatar4d.commands` entry point (pyproject.toml).

This module must stay light: it only declares arguments; handlers import Ray, DeepSpeed, MLflow
and torch lazily.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from avatar4d.errors import UserError

DESCRIPTION = (
    "Trainers on Ray Train + DeepSpeed, tracked in MLflow: the triplane VAE and the image-conditioned "
    "DiT (recipes tiny and paper)."
)
TASK_HELP = {
    "vae": ("train the triplane VAE on <data>/pairs.lance",
            "Train the triplane VAE (3D convolutions over plane, H, W; KL) on the factory's image–triplane "
            "pairs: L1 triplane + L1 depth + LPIPS on renders by each row's own domain generator + KL. "
            "DeepSpeed ZeRO on Ray Train workers, checkpoints in <storage>/<run-name>, metrics, sample grids "
            "and the registered model in MLflow (default: sqlite:///<storage>/mlflow.db)."),
    "dit": ("train the image-conditioned DiT on <data>/encoded.lance",
            "Train the image-conditioned DiT on the precomputed CLIP/DINO tokens and VAE latents "
            "(<data>/encoded.lance): IDDPM objective with learned variance, condition dropout 0.1, EMA. "
            "DeepSpeed ZeRO on Ray Train workers, checkpoints in <storage>/<run-name>, metrics, sample grids "
            "and the registered model in MLflow."),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="train the VAE or the DiT (DeepSpeed on Ray Train, MLflow)",
                                  description=DESCRIPTION)
    train.set_defaults(group_parser=train)
    commands = train.add_subparsers(dest="train_command", metavar="TASK")
    for task, (short, long) in TASK_HELP.items():
        parser = commands.add_parser(task, help=short, description=long)
        _common_arguments(parser)
        if task == "vae":
            parser.add_argument("--lpips-backbone", type=Path, default=None, metavar="PATH",
                                help="local torchvision weights of the LPIPS trunk (needed by --recipe paper)")
        else:
            parser.add_argument("--vae-checkpoint", type=Path, default=None, metavar="DIR",
                                help="the VAE of the dataset's latents: sample grids then show renders too")
        parser.add_argument("--generators", type=Path, nargs="+", default=None, metavar="DIR",
                            help="folders holding the domains' generator checkpoints (default: <data>/generators)")
        parser.set_defaults(handler=_train, task=task)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="tiny", choices=["tiny", "paper"],
                        help="tiny (default): CPU-size model and run; paper: the paper's sizes and schedule")
    parser.add_argument("--data", type=Path, default=Path("data"), help="the factory output folder (default ./data)")
    parser.add_argument("--run-name", default=None, metavar="NAME", help="run name (default: <task>-<recipe>)")
    parser.add_argument("--storage", type=Path, default=Path("runs"),
                        help="folder of the run folders and the default MLflow database (default ./runs)")
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="training workers (default: recipe)")
    parser.add_argument("--steps", type=int, default=None, metavar="N", help="optimiser steps (default: recipe)")
    parser.add_argument("--resume", action="store_true", help="continue the run of the same name from its last "
                                                               "checkpoint")
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: start a local Ray)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite in --storage)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: avatar4d)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override any config value, e.g. --set train.lr=3e-4 --set model.depth=4 (YAML values)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-4", ...]`` → ``{"train.lr": 0.0003}`` (values parsed as YAML scalars)."""
    import yaml

    overrides = {}
    for item in items:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise UserError(f"--set expects PATH=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"--set {path}: {text!r} is not a valid value") from None
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as text
            try:
                value = float(value)
            except ValueError:
                pass
        overrides[path.strip()] = value
    return overrides


def build_config(args: argparse.Namespace) -> Any:
    """The task config of the recipe with the command line's overrides."""
    from train.config import apply_overrides

    if args.task == "vae":
        from train.vae.recipes import get_recipe
    else:
        from train.dit.recipes import get_recipe
    config = get_recipe(args.recipe)
    overrides: dict[str, Any] = {"data": str(args.data), "train.storage_path": str(args.storage)}
    for option, path in (("workers", "train.num_workers"), ("steps", "train.steps"), ("run_name", "train.run_name"),
                         ("tracking_uri", "train.tracking_uri"), ("experiment", "train.experiment")):
        if getattr(args, option) is not None:
            overrides[path] = getattr(args, option)
    if getattr(args, "lpips_backbone", None) is not None:
        overrides["loss.lpips_backbone"] = str(args.lpips_backbone)
    if getattr(args, "vae_checkpoint", None) is not None:
        overrides["vae_checkpoint"] = str(args.vae_checkpoint)
    if args.generators:
        key = "loss.generators" if args.task == "vae" else "generators"
        overrides[key] = [str(p) for p in args.generators]
    overrides.update(parse_overrides(args.overrides))
    return apply_overrides(config, overrides).with_defaults(args.recipe)


def _train(args: argparse.Namespace) -> int:
    if not args.data.is_dir():
        raise UserError(f"--data {args.data} is not a folder (make one with `avatar4d factory run --out DIR`)")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    config = build_config(args)
    from train.runner import TrainingError, run_training

    try:
        result = run_training(config, resume=args.resume, address=args.address, progress=not args.no_progress)
    except TrainingError as exc:
        raise UserError(str(exc)) from None
    loss = result.metrics.get("loss")
    loss_text = f", loss {loss:.4g}" if isinstance(loss, (int, float)) else ""
    print(f"run {config.train.run_name}: step {result.final_step}{loss_text}; checkpoints in {result.run_dir}, "
          f"final model in {result.run_dir}/final, MLflow {config.train.resolved_tracking_uri()} "
          f"(model {config.train.registered_model})")
    return 0
