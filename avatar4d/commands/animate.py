"""``avatar4d animate AVATAR (--driving VIDEO | --expressions FILE | --preset NAME) --out video.mp4``:
drive an avatar and render it from a fixed camera or a turntable (:mod:`avatar4d.pipeline`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from avatar4d.commands.create import add_pipeline_options, build_pipeline

PRESET_NAMES = ("neutral", "talk", "smile", "blink", "surprise")  # avatar4d.pipeline.driving.PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "animate", help="drive an avatar by a video, expression coefficients or a preset; write an MP4",
        description="Render an avatar made by `avatar4d create`, driven by a video (tracked frame by frame), an "
                    "expressions file (JSON {\"expression\": [[...]], \"jaw\": [[...]]}, a tracking.json of "
                    "`avatar4d track`, or .npy [frames, coefficients]) or a built-in preset, seen from the "
                    "portrait's own camera, a fixed --camera YAW,PITCH (degrees) or a turntable (--orbit). "
                    "Writes an H.264 MP4, and PNG frames with --frames-dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("avatar", type=Path, metavar="AVATAR", help="avatar folder (from `avatar4d create`)")
    drive = parser.add_mutually_exclusive_group(required=True)
    drive.add_argument("--driving", type=Path, metavar="VIDEO", help="driving video (tracked frame by frame)")
    drive.add_argument("--expressions", type=Path, metavar="FILE", help="per-frame expression coefficients")
    drive.add_argument("--preset", dest="expression_preset", choices=PRESET_NAMES, help="built-in expression loop")
    view = parser.add_mutually_exclusive_group()
    view.add_argument("--camera", metavar="YAW,PITCH", help="fixed camera, degrees (default: the portrait's camera)")
    view.add_argument("--orbit", action="store_true", help="turntable: yaw sweeps ±40° over the clip")
    parser.add_argument("--frames", type=int, default=48, help="frames of a --preset clip")
    parser.add_argument("--fps", type=float, help="frames per second of the MP4 (default: the video's, else 25)")
    parser.add_argument("--out", type=Path, required=True, metavar="VIDEO", help="MP4 to write")
    parser.add_argument("--frames-dir", type=Path, help="also write every frame as PNG here")
    add_pipeline_options(parser, checkpoints_required=False, preset_flag="--pipeline")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from PIL import Image
    from tqdm import tqdm

    from avatar4d.errors import UserError
    from avatar4d.pipeline import Avatar, from_file, from_video, parse_camera, preset_sequence, turntable
    from avatar4d.pipeline.cameras import cameras_from_degrees
    from avatar4d.tracking.media import write_video

    if args.out.suffix.lower() != ".mp4":
        raise UserError(f"--out must be an .mp4 file, got {args.out}")
    if args.fps is not None and not 0 < args.fps <= 120:
        raise UserError(f"--fps must be in (0, 120], got {args.fps}")
    avatar = Avatar.load(args.avatar)
    camera = parse_camera(args.camera) if args.camera else None
    checkpoints = args.checkpoints or avatar.metadata.get("checkpoints_source")
    if checkpoints is None:
        raise UserError(f"{args.avatar} does not record its checkpoints; give --checkpoints")
    pipeline = build_pipeline(args, Path(checkpoints))
    if avatar.checkpoints.get("generator") not in (None, pipeline.hashes["generator"]):
        logging.getLogger(__name__).warning("the avatar was made with another generator than %s renders with",
                                            checkpoints)
    limit = pipeline.config.max_frames
    if args.driving is not None:
        driving = from_video(args.driving, pipeline.head, max_frames=limit, device=str(pipeline.device),
                             progress=True)
    elif args.expressions is not None:
        driving = from_file(args.expressions, pipeline.head.expression_dim)
    else:
        if not 1 <= args.frames <= limit:
            raise UserError(f"--frames must be in [1, {limit}], got {args.frames}")
        driving = preset_sequence(args.expression_preset, pipeline.head, args.frames)
    frames = driving.check(pipeline.head.expression_dim, limit).frames
    cameras = (turntable(frames) if args.orbit else cameras_from_degrees([camera[0]], [camera[1]]) if camera
               else None)
    with tqdm(total=frames, desc="rendering", unit="frame") as bar:
        video = pipeline.animate(avatar, driving, cameras, progress=bar.update)
    fps = args.fps or driving.fps or pipeline.config.fps
    write_video(args.out, video, fps)
    written = [str(args.out)]
    if args.frames_dir is not None:
        args.frames_dir.mkdir(parents=True, exist_ok=True)
        for index, frame in enumerate(video):
            Image.fromarray(frame).save(args.frames_dir / f"frame_{index:04d}.png")
        written.append(f"{len(video)} PNG frames in {args.frames_dir}")
    print(f"rendered {len(video)} frames of avatar {avatar.avatar_id} ({video.shape[2]}×{video.shape[1]}, "
          f"{pipeline.renderer.name} renderer, {driving.source}) → " + ", ".join(written))
    return 0
