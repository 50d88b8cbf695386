"""``avatar4d eval``: AvatarArtist's table-1 metrics of one or more avatar pipelines over
self- and cross-reenactment (:mod:`avatar4d.evaluation`), as a JSON report, an HTML page and an
MLflow run. torch and the metric networks are imported when the command runs, not for ``--help``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Evaluate avatar pipelines with AvatarArtist's table-1 metrics: self-reenactment LPIPS, FID, ID, AED, APD "
    "(+ PSNR, SSIM, AKD) and cross-reenactment FID, CLIP score, AKD, APD. --data is a factory output with "
    "multiview.lance (its dynamic sets: each identity's first view is the source portrait, the other views the "
    "driving frames and the ground truth; make it with another --seed than the training data) or a folder of "
    "videos (tracked; each video's first frame is the source). Every --checkpoints pipeline makes an avatar from "
    "each source and renders it with the driving coefficients and cameras. Writes OUT/report.json, "
    "OUT/report.html (the paper's table layout with AvatarArtist's published row) and OUT/samples/, and logs them "
    "to MLflow. With --address (or RAY_ADDRESS) the cases are spread over Ray workers (one per GPU).")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="AvatarArtist's table-1 metrics of avatar pipelines (JSON + HTML "
                                                "report, MLflow)", description=DESCRIPTION,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoints", action="append", required=True, metavar="[NAME=]DIR",
                        help="an avatar pipeline as `avatar4d create` takes it (a folder with pipeline.json or "
                             "dit/ + vae/ + generator/, or a trained DiT run's final/); repeat to compare several")
    parser.add_argument("--data", required=True, type=Path, help="factory output with multiview.lance, or a "
                                                                 "folder of videos")
    parser.add_argument("--out", type=Path, default=Path("outputs/eval"), help="report folder")
    parser.add_argument("--preset", choices=("tiny", "paper"), default="tiny",
                        help="tiny: random metric networks, 6 identities × 8 views (numbers compare models with "
                             "each other only); paper: the published metric networks from local files")
    parser.add_argument("--identities", type=int, help="identities (or videos) to evaluate (preset's default)")
    parser.add_argument("--views", type=int, help="frames per clip, the source included (preset's default)")
    parser.add_argument("--no-cross", action="store_true", help="self-reenactment only")
    parser.add_argument("--seed", type=int, default=0, help="the DiT's sampling noise (the same for every model)")
    parser.add_argument("--device", help="torch device (preset's default: cpu for tiny, cuda for paper)")
    weights = parser.add_argument_group("metric weights (local files; nothing is downloaded)")
    weights.add_argument("--lpips-backbone", help="torchvision AlexNet state dict (alexnet-owt-7be5be79.pth)")
    weights.add_argument("--inception-weights", help="torch-fidelity's FID Inception "
                                                     "(weights-inception-2015-12-05-6726825d.pth)")
    weights.add_argument("--clip-checkpoint", help="open_clip weights file of --clip-model")
    weights.add_argument("--clip-model", default="ViT-L-14", help="open_clip architecture of --clip-checkpoint")
    weights.add_argument("--arcface", help="insightface arcface_torch IResNet-100 backbone.pth")
    tracking = parser.add_argument_group("tracking and cluster")
    tracking.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                                 "sqlite:///OUT/mlflow.db)")
    tracking.add_argument("--experiment", help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else "
                                               "avatar4d-eval)")
    tracking.add_argument("--run-name", help="MLflow run name")
    tracking.add_argument("--no-mlflow", action="store_true", help="write the report files only")
    tracking.add_argument("--address", help="Ray cluster (auto, HOST:PORT, ray://…); default $RAY_ADDRESS, else "
                                            "this process evaluates")
    tracking.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def parse_checkpoints(values: list[str]) -> list[tuple[str, str]]:
    """``[NAME=]DIR`` → (name, dir); names default to the folder's name (made unique)."""
    from avatar4d.errors import UserError

    out: list[tuple[str, str]] = []
    for value in values:
        name, _, path = value.rpartition("=") if "=" in value and not Path(value).exists() else ("", "", value)
        name = name or Path(path).name or path
        if name in {n for n, _ in out}:
            name = f"{name}-{len(out) + 1}"
        if not path:
            raise UserError(f"--checkpoints {value!r}: give a folder, optionally as NAME=DIR")
        out.append((name, path))
    return out


def build_config(args: argparse.Namespace):
    from avatar4d.evaluation.runner import EVAL_PRESETS

    config = EVAL_PRESETS.get(args.preset)
    metrics = config.metrics
    if args.lpips_backbone:
        metrics = metrics.replace(lpips=metrics.lpips.replace(backbone=args.lpips_backbone, random_backbone=False))
    if args.inception_weights:
        metrics = metrics.replace(fid=metrics.fid.replace(inception_weights=args.inception_weights))
    if args.clip_checkpoint:
        metrics = metrics.replace(clip=metrics.clip.replace(checkpoint=args.clip_checkpoint, model=args.clip_model))
    if args.arcface:
        metrics = metrics.replace(identity=metrics.identity.replace(checkpoint=args.arcface))
    overrides = {"metrics": metrics, "seed": args.seed, "cross": not args.no_cross}
    for name in ("identities", "views", "device"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    config = config.replace(**overrides)
    if config.device.startswith("cuda"):
        import torch

        from avatar4d.errors import UserError

        if not torch.cuda.is_available():
            raise UserError(f"--preset {args.preset} runs on {config.device}, and this machine has no CUDA device: "
                            "add --device cpu")
    return config


def run(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from avatar4d.evaluation.makers import PipelineMaker
    from avatar4d.evaluation.runner import build_report, load_clips, make_run_cases, run_local

    started = time.time()
    config = build_config(args)
    named = parse_checkpoints(args.checkpoints)
    clips = load_clips(args.data, config)
    cases = make_run_cases(clips, config)
    address = args.address or os.environ.get("RAY_ADDRESS")
    logger.info("%d clips, %d cases", len(clips), len(cases))
    if address:
        models = _run_on_ray(address, named, cases, config, progress=not args.no_progress)
    else:
        makers = [PipelineMaker.load(path, name=name, device=config.device, seed=config.seed) for name, path in named]
        with tqdm(total=len(cases) * len(makers), desc="evaluating", unit="case", disable=args.no_progress) as bar:
            models = run_local(makers, cases, config, on_case=lambda _: bar.update(1))
    report = build_report(models, config, data=str(args.data), preset=args.preset, started=started,
                          extra={"checkpoints": {name: str(Path(path).resolve()) for name, path in named},
                                 "ray": address or None})
    json_path, html_path = report.write(args.out)
    where = ""
    if not args.no_mlflow:
        from avatar4d.evaluation.tracking import log_report, tracking_uri

        uri = tracking_uri(args.tracking_uri, args.out)
        run_id = log_report(report, args.out, uri=uri, experiment=args.experiment, run_name=args.run_name,
                            params={"preset": args.preset, "data": str(args.data), **_flat(config.to_dict())})
        where = f"; MLflow {uri} run {run_id}"
    for model in report.models:
        print(f"{model.name}: " + "; ".join(
            f"{task} " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("cases", "frames"))
            for task, row in model.summary.items()))
    print(f"report {html_path} ({json_path.name}){where}")
    return 0


def _flat(data: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _run_on_ray(address: str, named: list[tuple[str, str]], cases, config, *, progress: bool):
    """The cases spread over Ray workers by the factory's scheduler (``factory.evaluate``), found
    through the ``avatar4d.evaluation`` entry point so the core never imports ``factory``."""
    from importlib import metadata

    from avatar4d.errors import NotAvailableError

    found = {entry.name: entry for entry in metadata.entry_points(group="avatar4d.evaluation")}
    if "ray" not in found:
        raise NotAvailableError("evaluating on Ray needs the factory package (pip install avatar4d with its "
                                "distributed parts); run without --address to evaluate in this process")
    return found["ray"].load()(address, named, cases, config, progress=progress)
