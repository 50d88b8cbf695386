"""Driven frames/s of the motion-aware renderer (and its parts), measured side by side in one run.

A driven frame = motion encoder on the driving frame + renderer forward (mesh rasterization, face
backbone, encoders, ViT, triplane decoder, volume rendering, super-resolution) for a fixed source.
Per-stage times (each stage alone, same inputs) show what dominates.

    python benchmarks/renderer.py --preset tiny --batch 1 4 --threads 1        # CPU
    python benchmarks/renderer.py --preset paper --dtype bfloat16 --batch 1 8 --device cuda
"""

# ruff: noqa: B023  (the timed closures run inside the iteration that defines them)
from __future__ import annotations

import argparse
import platform
import time

import torch

from avatar4d.geometry.camera import orbit_camera
from avatar4d.geometry.morphable import default_head_model
from avatar4d.models.renderer import MOTION_ENCODER_PRESETS, RENDERER_PRESETS, MotionAwareRenderer, MotionEncoder


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=RENDERER_PRESETS.names())
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    head = default_head_model()
    config = RENDERER_PRESETS.get(args.preset)
    renderer = MotionAwareRenderer(config, head=head).to(args.device).eval()
    motion_preset = "paper" if args.preset == "paper" else "tiny"
    encoder = MotionEncoder(MOTION_ENCODER_PRESETS.get(motion_preset)).to(args.device).eval()
    print(f"device {args.device} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{args.threads} thread(s), preset {args.preset}, {args.dtype}, "
          f"{sum(p.numel() for p in renderer.parameters()):,} renderer parameters")
    for batch in args.batch:
        gen = torch.Generator().manual_seed(0)
        size, res, c = config.image_resolution, config.plane_resolution, config.plane_channels
        source = (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(args.device)
        driving = (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(args.device)
        triplane = (torch.randn(batch, 4, c, res, res, generator=gen) * 0.3).to(args.device)
        vertices = head.vertices(head.random_params(batch, generator=gen)).float().to(args.device)
        camera = orbit_camera(torch.zeros(batch), torch.zeros(batch)).to(args.device)
        autocast = torch.autocast(args.device if args.device != "cpu" else "cpu", dtype=dtype,
                                  enabled=dtype != torch.float32)

        with torch.no_grad(), autocast:
            source_motion = encoder(source)
            planes = renderer.parametric_planes(triplane, vertices)
            refined = renderer.refine(source, planes, source_motion, source_motion)

            def frame() -> None:
                renderer(source, triplane, encoder(driving), vertices, camera, source_motion=source_motion)

            stages = {
                "motion encoder": lambda: encoder(driving),
                "parametric planes (raster + face backbone)": lambda: renderer.parametric_planes(triplane, vertices),
                "refine (encoders + ViT + decoder)": lambda: renderer.refine(source, planes, source_motion,
                                                                             source_motion),
                "volume rendering + SR": lambda: renderer.render(refined, camera),
            }
            total = timed(frame, args.repeats, args.device)
            parts = {name: timed(fn, args.repeats, args.device) for name, fn in stages.items()}
        print(f"batch {batch}: {batch / total:8.2f} driven frames/s ({1000 * total / batch:.1f} ms/frame, "
              f"{size}² output)")
        stage_sum = sum(parts.values())
        for name, seconds in parts.items():
            print(f"    {name:45s} {1000 * seconds:8.1f} ms  {100 * seconds / stage_sum:5.1f} %")


if __name__ == "__main__":
    main()
