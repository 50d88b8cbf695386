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
    "renderer": ("train the motion-aware renderer on <data>/multiview.lance",
                 "Train the motion-aware renderer and its motion encoder on the factory's multiview sets (source "
                 "and target: two views / expressions of one identity): LPIPS + L1 on final and raw image, L1 on "
                 "rendering features, 0.1 L1 triplane, depth, opacity, and after loss.freeze_images images 0.01 "
                 "adversarial (dual discriminator, R1, density regulariser) with the decoder and super-resolution "
                 "unfrozen. Initialised from the domain generator's decoder + SR. DeepSpeed on Ray Train workers, "
                 "checkpoints in <storage>/<run-name>, metrics and source|driving|output|truth grids in MLflow."),
    "gan": ("fine-tune a domain's 4D GAN on <data>/stylized.lance",
            "Fine-tune a Next3D GAN (from --base-checkpoint) on one domain's stylized portraits with their source "
            "meshes and cameras (<data>/stylized.lance from `avatar4d factory stylize`): non-saturating logistic "
            "loss, lazy R1 (gamma 5), density regulariser 0.25, adaptive augmentation (flip, integer translation, "
            "colour), decreasing blur of the discriminator input, stop after --images. Data parallel on Ray Train "
            "workers (DeepSpeed ZeRO-1, one engine each for G and D); losses, ADA p and sample grids in MLflow; the "
            "final generator in <storage>/<run-name>/final is what the factory loads for the domain."),
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
        elif task == "dit":
            parser.add_argument("--vae-checkpoint", type=Path, default=None, metavar="DIR",
                                help="the VAE of the dataset's latents: sample grids then show renders too")
        elif task == "gan":
            parser.add_argument("--domain", required=True, metavar="NAME", help="the domain to fine-tune")
            parser.add_argument("--base-checkpoint", type=Path, default=None, metavar="DIR",
                                help="the Next3D generator to start from (default: the recipe's random init)")
            parser.add_argument("--images", type=int, default=None, metavar="N",
                                help="stop after N images (default: the recipe's; sets the steps)")
        if task == "gan":
            pass  # its data folder holds stylized.lance; generators are not read
        elif task == "renderer":
            parser.add_argument("--init-generator", type=Path, default=None, metavar="DIR",
                                help="domain generator checkpoint whose decoder + SR start the renderer "
                                     "(default: the generator of the dataset's first row)")
        else:
            parser.add_argument("--generators", type=Path, nargs="+", default=None, metavar="DIR",
                                help="folders holding the domains' generator checkpoints (default: <data>/generators)")
        parser.set_defaults(handler=_train, task=task)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="tiny", choices=["tiny", "paper"],
                        help="tiny (default): CPU-size model and run; paper: the paper's sizes and schedule")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="a complete task config (YAML or JSON, e.g. from --print-config) instead of the recipe; "
                             "the options below still override it")
    parser.add_argument("--print-config", action="store_true",
                        help="print the config the options make (YAML) and exit")
    parser.add_argument("--data", default=None, metavar="DIR", help="the factory output folder (default ./data)")
    parser.add_argument("--run-name", default=None, metavar="NAME", help="run name (default: <task>-<recipe>)")
    parser.add_argument("--storage", default=None, metavar="DIR",
                        help="folder of the run folders and the default MLflow database (default ./runs)")
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="training workers (default: recipe)")
    parser.add_argument("--steps", type=int, default=None, metavar="N", help="optimiser steps (default: recipe)")
    parser.add_argument("--resume", action="store_true", help="continue the run of the same name from its last "
                                                               "checkpoint")
    parser.add_argument("--address", default=None, metavar="ADDRESS",
                        help="Ray cluster to join: HOST:PORT, auto or ray://… (default: $RAY_ADDRESS, else start a "
                             "local Ray)")
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<storage>/mlflow.db)")
    parser.add_argument("--experiment", default=None, metavar="NAME",
                        help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else avatar4d)")
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


def load_config_file(path: Path, task: str) -> Any:
    """A task config from ``--config FILE`` (YAML or JSON); its ``task`` must be ``task``."""
    import yaml

    from train.task import task_classes

    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML
    except yaml.YAMLError as exc:
        raise UserError(f"--config {path} is not YAML or JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path} does not hold a config mapping")
    if data.setdefault("task", task) != task:
        raise UserError(f"--config {path} is a {data['task']!r} config, not a {task!r} one")
    _, config_class = task_classes(task)
    return config_class.from_dict(data)


def build_config(args: argparse.Namespace) -> Any:
    """The task config of the recipe (or ``--config``) with the command line's overrides."""
    from train.config import apply_overrides

    if args.task == "vae":
        from train.vae.recipes import get_recipe
    elif args.task == "renderer":
        from train.renderer.recipes import get_recipe
    elif args.task == "gan":
        from train.gan.recipes import get_recipe
    else:
        from train.dit.recipes import get_recipe
    config = load_config_file(args.config, args.task) if getattr(args, "config", None) else get_recipe(args.recipe)
    overrides: dict[str, Any] = {}
    for option, path in (("data", "data"), ("storage", "train.storage_path")):
        if getattr(args, option) is not None:
            overrides[path] = str(getattr(args, option))
    for option, path in (("workers", "train.num_workers"), ("steps", "train.steps"), ("run_name", "train.run_name"),
                         ("tracking_uri", "train.tracking_uri"), ("experiment", "train.experiment")):
        if getattr(args, option) is not None:
            overrides[path] = getattr(args, option)
    if getattr(args, "lpips_backbone", None) is not None:
        overrides["loss.lpips_backbone"] = str(args.lpips_backbone)
    if getattr(args, "vae_checkpoint", None) is not None:
        overrides["vae_checkpoint"] = str(args.vae_checkpoint)
    if args.task == "gan" and args.steps is not None and getattr(args, "images", None) is None:
        overrides["images"] = 0  # --steps counts steps: the recipe's image budget no longer sets them
    for option in ("domain", "base_checkpoint", "images"):
        if getattr(args, option, None) is not None:
            value = getattr(args, option)
            overrides[option] = str(value) if isinstance(value, Path) else value
    if getattr(args, "init_generator", None) is not None:
        overrides["init_generator"] = str(args.init_generator)
    if getattr(args, "generators", None):
        key = "loss.generators" if args.task == "vae" else "generators"
        overrides[key] = [str(p) for p in args.generators]
    overrides.update(parse_overrides(args.overrides))
    return apply_overrides(config, overrides).with_defaults(args.recipe)


def shown(path: str | Path) -> str:
    """``path`` relative to the current folder when it lies inside it (as the user typed it), else absolute."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd())) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


def summary_line(result: Any, config: Any) -> str:
    """The one line a finished run prints: step, loss, time, and where everything is."""
    loss = result.metrics.get("loss")
    loss_text = f", loss {loss:.4g}" if isinstance(loss, (int, float)) else ""
    minutes, seconds = divmod(round(result.seconds), 60)
    tracking = result.tracking_uri
    if tracking.startswith("sqlite:///"):
        tracking = f"sqlite:///{shown(tracking.removeprefix('sqlite:///'))}"
    return (f"run {config.train.run_name}: step {result.final_step}{loss_text} in {minutes}m{seconds:02d}s; "
            f"final model {shown(result.run_dir)}/final; MLflow {tracking} experiment {result.experiment}, "
            f"model {result.model_uri}")


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _train(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    config = build_config(args)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    data = Path(config.data)
    if "://" not in config.data and not data.is_dir():
        raise UserError(f"--data {data} is not a folder (make one with `avatar4d factory run --out DIR`)")
    import signal

    from train.runner import TrainingError, run_training

    signal.signal(signal.SIGTERM, _terminate_as_interrupt)  # `kill` ends the MLflow run as KILLED
    try:
        result = run_training(config, resume=args.resume, address=args.address, progress=not args.no_progress,
                              verbose=args.verbose > 0)
    except TrainingError as exc:
        raise UserError(str(exc)) from None
    print(summary_line(result, config))
    return 0
