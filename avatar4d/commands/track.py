"""``avatar4d track``: a portrait or a driving video → per-frame cameras, morphable-model
coefficients and landmarks (``tracking.json``) plus overlays to check them (``overlay.png``, and
``overlay.mp4`` for videos). torch and PyAV are imported when the command runs, not for ``--help``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

HEADS = ("procedural", "flame", "faceverse")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "track", help="track a portrait or video: cameras, head-model coefficients and landmarks per frame",
        description="Find 68 landmarks in every frame (the embedded detector: a small CNN trained on the procedural "
                    "world, shipped with avatar4d) and fit a camera (yaw/pitch/roll + translation) and the chosen "
                    "head model's identity, expression and jaw to them (a video shares one identity and is smoothed "
                    "in time). Writes OUT/tracking.json (per frame; frames without a face are listed, never filled), "
                    "OUT/overlay.png (labelled contact sheet: detected landmarks green, fitted red) and, for videos, "
                    "OUT/overlay.mp4. Non-square frames are centre-cropped to a square first.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("input", type=Path, metavar="PORTRAIT_OR_VIDEO", help="an image (PNG, JPEG, ...) or a video")
    parser.add_argument("--head", choices=HEADS, default="procedural", help="morphable head model to fit")
    parser.add_argument("--head-model", type=Path, help="FLAME generic_model.pkl/.npz or FaceVerse .npy (for "
                                                         "--head flame|faceverse)")
    parser.add_argument("--head-landmarks", type=Path, help="FLAME landmark embedding (.npy/.npz) for --head flame")
    parser.add_argument("--out", type=Path, help="output folder (default: outputs/track/<input name>)")
    parser.add_argument("--detector", type=Path, help="a landmark-regressor checkpoint folder (default: the "
                                                      "shipped world-trained one)")
    parser.add_argument("--threshold", type=float, default=0.5, help="face probability below which a frame has "
                                                                     "no face")
    parser.add_argument("--max-frames", type=int, help="track only the first N frames of a video")
    parser.add_argument("--iterations", type=int, default=240, help="fitting iterations (after 60 rigid ones)")
    parser.add_argument("--no-video", action="store_true", help="skip overlay.mp4")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.set_defaults(handler=run)


def load_head(name: str, model_path: Path | None, landmarks_path: Path | None):
    """The morphable model named ``name``. FLAME and FaceVerse come from the user's files and are placed in the
    world frame by the similarity that maps their neutral landmarks onto the procedural head's (centroid and mean
    radius), so the world's camera framing fits them (FLAME is in metres, the world's head ~0.7 units tall)."""
    from avatar4d.errors import UserError
    from avatar4d.geometry.morphable import (
        FaceVerseConfig,
        FlameConfig,
        default_head_model,
        load_faceverse,
        load_flame,
    )

    reference = default_head_model()
    if name == "procedural":
        return reference
    if model_path is None:
        raise UserError(f"--head {name} needs --head-model PATH (the licence does not allow shipping it)")

    def load(scale: float = 1.0, translation: tuple[float, float, float] = (0.0, 0.0, 0.0)):
        if name == "flame":
            return load_flame(model_path, landmark_path=landmarks_path,
                              config=FlameConfig(scale=scale, translation=translation))
        return load_faceverse(model_path, config=FaceVerseConfig(scale=scale, translation=translation))

    try:
        head = load()
        ours = head.landmarks(head.vertices(head.neutral_params()))[0]  # [68, 3]
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(f"cannot use {model_path} as a {name} head: {str(exc).splitlines()[0]}") from None
    target = reference.landmarks(reference.vertices(reference.neutral_params()))[0]
    scale = float((target - target.mean(0)).norm(dim=-1).mean() / (ours - ours.mean(0)).norm(dim=-1).mean())
    translation = tuple(float(v) for v in target.mean(0) - scale * ours.mean(0))
    logger.info("%s head placed in the world frame: scale %.3f, translation %s", name, scale, translation)
    return load(scale, translation)


def run(args: argparse.Namespace) -> int:
    from avatar4d.errors import UserError
    from avatar4d.tracking.fitting import FitConfig
    from avatar4d.tracking.landmarks import RegressorDetector
    from avatar4d.tracking.media import read_media, write_video
    from avatar4d.tracking.output import draw_overlays, write_json, write_sheet
    from avatar4d.tracking.tracker import Tracker, centre_square

    if not 0 < args.threshold < 1:
        raise UserError(f"--threshold must be in (0, 1), got {args.threshold}")
    if args.iterations < 1:
        raise UserError(f"--iterations must be >= 1, got {args.iterations}")
    head = load_head(args.head, args.head_model, args.head_landmarks).to(args.device)
    media = read_media(args.input, max_frames=args.max_frames, progress=True)
    frames, crop = centre_square(media.frames)
    detector = RegressorDetector(args.detector, threshold=args.threshold, device=args.device)
    tracker = Tracker(head, detector, FitConfig(iterations=args.iterations))
    result = tracker.track(frames, video=media.is_video)
    out = args.out or Path("outputs/track") / args.input.stem
    out.mkdir(parents=True, exist_ok=True)
    size = frames.shape[1]
    json_path = write_json(out / "tracking.json", result, source=args.input, head_name=args.head, size=size,
                           crop=crop, fps=media.fps, detector=detector.name, undecodable=media.undecodable)
    overlays = draw_overlays(frames, result)
    sheet = write_sheet(out / "overlay.png", overlays, result, f"{args.input.name}: {args.head} head, "
                        f"{len(frames)} frame(s), green detected / red fitted")
    written = [json_path, sheet]
    if media.is_video and not args.no_video:
        written.append(write_video(out / "overlay.mp4", overlays, media.fps or 25.0, progress=True))
    present = int(result.detections.present.sum())
    error = result.fit.error_px[result.detections.present].mean()
    print(f"tracked {present}/{len(frames)} frames with a face (mean fit error {float(error):.2f} px at 512²)"
          + (f"; no face in frames {result.missing_frames}" if result.missing_frames else ""))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
