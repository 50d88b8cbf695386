"""Rasterizer throughput: every available backend side by side on the same mesh, same run.

The mesh is an icosphere subdivided to about ``--triangles`` triangles, seen by a batch of
``--batch`` perspective cameras around it (radius 2.7, FOV 18.837°, like the GAN's cameras). Each
backend rasterizes the batch and interpolates 3 vertex attributes ``--repeats`` times after
``--warmup`` untimed runs; the table gives ms per frame, triangles per second and the ratio to the
first backend. Nothing is written unless ``--report PATH`` is given.

    python benchmarks/raster.py --resolution 256 --triangles 5000 --repeats 5 --backends torch
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatar4d.geometry.camera import orbit_camera  # noqa: E402
from avatar4d.geometry.raster import RasterBackendUnavailable, get_rasterizer, perspective_clip  # noqa: E402


def icosphere(subdivisions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit icosphere: vertices [V, 3] float32, faces [20 * 4**subdivisions, 3] long."""
    t = (1.0 + math.sqrt(5.0)) / 2.0
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5),
             (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts = [tuple(c / math.sqrt(sum(x * x for x in v)) for c in v) for v in verts]
    for _ in range(subdivisions):
        midpoint_of: dict[tuple[int, int], int] = {}
        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = (_midpoint(verts, midpoint_of, p, q) for p, q in ((a, b), (b, c), (c, a)))
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return torch.tensor(verts, dtype=torch.float32), torch.tensor(faces, dtype=torch.long)


def _midpoint(verts: list[tuple[float, ...]], cache: dict[tuple[int, int], int], a: int, b: int) -> int:
    """Index of the unit-sphere point halfway between vertices a and b (added once per edge)."""
    key = (min(a, b), max(a, b))
    if key not in cache:
        m = [(p + q) / 2.0 for p, q in zip(verts[a], verts[b], strict=True)]
        norm = math.sqrt(sum(c * c for c in m))
        verts.append(tuple(c / norm for c in m))
        cache[key] = len(verts) - 1
    return cache[key]


def subdivisions_for(triangles: int) -> int:
    """Subdivision level whose triangle count 20 * 4**k is closest to ``triangles`` (log scale)."""
    return max(0, round(math.log(max(triangles, 20) / 20.0, 4)))


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_backend(name: str, device: torch.device, clip: torch.Tensor, faces: torch.Tensor,
                  attr: torch.Tensor, resolution: tuple[int, int], repeats: int, warmup: int) -> dict:
    rasterizer = get_rasterizer(name, device)
    clip, faces, attr = clip.to(device), faces.to(device), attr.to(device)
    for _ in range(warmup):
        rasterizer.interpolate(attr, rasterizer.rasterize(clip, faces, resolution), faces)
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        raster = rasterizer.rasterize(clip, faces, resolution)
        rasterizer.interpolate(attr, raster, faces)
        sync(device)
        times.append(time.perf_counter() - start)
    best, median = min(times), sorted(times)[len(times) // 2]
    frames = clip.shape[0]
    coverage = raster.mask.float().mean().item()
    return {"backend": name, "ms_per_frame": 1e3 * median / frames, "best_ms_per_frame": 1e3 * best / frames,
            "triangles_per_s": faces.shape[0] * frames / median, "coverage": coverage}


def run(args: argparse.Namespace) -> tuple[list[dict], list[str], dict]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    verts, faces = icosphere(subdivisions_for(args.triangles))
    verts = verts * 0.25 + torch.tensor([0.0, 0.0, 0.2])  # head-sized, around the look-at pivot
    yaw = torch.linspace(-0.6, 0.6, args.batch)
    camera = orbit_camera(yaw, 0.1 * torch.ones(args.batch), 0.0)
    clip = perspective_clip(verts[None].expand(args.batch, -1, -1), camera)  # [B, V, 4]
    attr = verts  # world positions as a 3-channel attribute
    resolution = (args.resolution, args.resolution)
    rows, skipped = [], []
    for name in args.backends.split(","):
        name = name.strip()
        try:
            rows.append(bench_backend(name, device, clip, faces, attr, resolution, args.repeats, args.warmup))
        except RasterBackendUnavailable as exc:
            skipped.append(f"{name}: {exc}")
    env = {"date": args.date or datetime.date.today().isoformat(), "device": str(device),
           "cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none",
           "triangles": int(faces.shape[0]), "vertices": int(verts.shape[0]), "batch": args.batch,
           "resolution": args.resolution, "repeats": args.repeats, "warmup": args.warmup,
           "argv": args.argv}
    return rows, skipped, env


def table(rows: list[dict]) -> list[str]:
    lines = ["| backend | ms/frame (median) | ms/frame (best) | triangles/s | vs first | coverage |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        ratio = rows[0]["ms_per_frame"] / row["ms_per_frame"]
        lines.append(f"| {row['backend']} | {row['ms_per_frame']:.2f} | {row['best_ms_per_frame']:.2f} | "
                     f"{row['triangles_per_s']:.3g} | {ratio:.2f}x | {row['coverage']:.3f} |")
    return lines


def report(rows: list[dict], skipped: list[str], env: dict) -> str:
    lines = ["# Rasterizer benchmark", "", f"- date: {env['date']}", f"- device: {env['device']} "
             f"(CPU: {env['cpu']}; GPU: {env['gpu']}); torch threads: {env['threads']}",
             f"- torch {env['torch']}, Python {platform.python_version()}",
             f"- command: `python benchmarks/raster.py {' '.join(env['argv'])}`",
             f"- mesh: icosphere, {env['triangles']} triangles, {env['vertices']} vertices; "
             f"batch {env['batch']} frames at {env['resolution']}²; {env['repeats']} timed runs "
             f"after {env['warmup']} warm-up (rasterize + interpolate of 3 channels)", ""]
    lines += table(rows)
    if skipped:
        lines += ["", "Not measured:"] + [f"- {s}" for s in skipped]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--triangles", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=4, help="frames rasterized per call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", default="torch,nvdiffrast")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--date", default="", help="date to record (default: today)")
    parser.add_argument("--report", default="", help="write a markdown report to this path")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows, skipped, env = run(args)
    print(f"{env['triangles']} triangles x {env['batch']} frames at {env['resolution']}² on {env['device']}")
    print("\n".join(table(rows)) if rows else "no backend ran")
    for line in skipped:
        print(f"skipped {line}")
    if args.report:
        Path(args.report).write_text(report(rows, skipped, env))
        print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
