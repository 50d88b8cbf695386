"""Serving benchmark: portrait → avatar latency and per-frame rendering, direct pipeline calls vs the
Ray Serve application over HTTP on 127.0.0.1, measured side by side in one run (rounds alternate).

    python benchmarks/serve.py                       # tiny random checkpoints, CPU
    python benchmarks/serve.py --rounds 5 --report benchmarks/results/serve-cpu.md

"direct" calls ``AvatarPipeline.create`` / ``animate`` in this process; "serve" sends the same work to the
application (preprocess → encoders → generator → store; store → renderer) one request at a time, so
the ratio is Serve's overhead (HTTP, FastAPI, handle calls, serialisation, the PNG response) for one
client. The goal is ≤ 1.1× (DESIGN.md). Both sides track the portrait and render the same frames.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLES = REPO / "serve" / "web" / "samples"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, help="pipeline checkpoints (default: tiny random ones)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating direct/serve rounds")
    parser.add_argument("--creates", type=int, default=3, help="avatars created per round and side")
    parser.add_argument("--renders", type=int, default=4, help="render requests per round and side")
    parser.add_argument("--frames", type=int, default=16, help="frames per render request")
    parser.add_argument("--report", type=Path, help="write a Markdown report here")
    args = parser.parse_args()

    import ray
    import requests
    import torch
    from ray import serve

    from avatar4d.pipeline import AvatarPipeline, PipelineConfig, preset_sequence
    from avatar4d.pipeline.checkpoints import write_random_checkpoints
    from avatar4d.pipeline.images import decode_image
    from serve.app import build_app
    from serve.settings import ServeSettings

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="avatar4d-bench-serve-"))
    checkpoints = args.checkpoints or write_random_checkpoints(work / "ckpt")
    pngs = [p.read_bytes() for p in sorted(SAMPLES.glob("*.png"))]
    images = [decode_image(png, max_pixels=1 << 24) for png in pngs]

    pipeline = AvatarPipeline.load(checkpoints, PipelineConfig())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(ServeSettings(checkpoints=str(checkpoints), store_dir=str(work / "store"))), name="bench",
              route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    driving = {"preset": "talk", "frames": args.frames}

    def direct_create(k: int) -> float:
        started = time.perf_counter()
        pipeline.create([images[k % len(images)]], seeds=[k])
        return time.perf_counter() - started

    def serve_create(k: int) -> float:
        started = time.perf_counter()
        response = requests.post(f"{url}/v1/avatars", files={"portrait": ("p.png", pngs[k % len(pngs)], "image/png")},
                                 data={"seed": str(k)}, timeout=300)
        response.raise_for_status()
        return time.perf_counter() - started

    avatar = pipeline.create([images[0]])[0]
    served_id = requests.post(f"{url}/v1/avatars", files={"portrait": ("p.png", pngs[0], "image/png")},
                              timeout=300).json()["avatar_id"]
    sequence = preset_sequence("talk", pipeline.head, args.frames)

    def direct_render(_: int) -> float:
        started = time.perf_counter()
        pipeline.animate(avatar, sequence)
        return time.perf_counter() - started

    def serve_render(_: int) -> float:
        started = time.perf_counter()
        response = requests.post(f"{url}/v1/avatars/{served_id}/render", json={"driving": driving, "format": "png"},
                                 timeout=300)
        response.raise_for_status()
        return time.perf_counter() - started

    for warm in (direct_create, serve_create, direct_render, serve_render):
        warm(0)
    times: dict[str, list[float]] = {name: [] for name in ("direct_create", "serve_create", "direct_render",
                                                            "serve_render")}
    ratios: dict[str, list[float]] = {"create": [], "render": []}
    for round_index in range(args.rounds):
        for kind, count in (("create", args.creates), ("render", args.renders)):
            direct = [{"create": direct_create, "render": direct_render}[kind](round_index * count + k)
                      for k in range(count)]
            served = [{"create": serve_create, "render": serve_render}[kind](round_index * count + k)
                      for k in range(count)]
            times[f"direct_{kind}"] += direct
            times[f"serve_{kind}"] += served
            ratios[kind].append(statistics.median(served) / statistics.median(direct))
            print(f"round {round_index + 1} {kind}: direct {statistics.median(direct) * 1e3:.0f} ms, serve "
                  f"{statistics.median(served) * 1e3:.0f} ms, ratio {ratios[kind][-1]:.2f}", flush=True)
    serve.shutdown()
    ray.shutdown()

    def ms(name: str, per: int = 1) -> str:
        return f"{statistics.median(times[name]) * 1e3 / per:.1f}"

    rows = [
        ("portrait → avatar (ms)", ms("direct_create"), ms("serve_create"), statistics.median(ratios["create"]),
         ratios["create"]),
        (f"render {args.frames} frames (ms per frame)", ms("direct_render", args.frames),
         ms("serve_render", args.frames), statistics.median(ratios["render"]), ratios["render"]),
    ]
    table = ["| measure | direct | Serve (HTTP) | Serve / direct: median (rounds) |", "|---|---:|---:|---:|"]
    table += [f"| {name} | {d} | {s} | **{r:.2f}** ({', '.join(f'{x:.2f}' for x in rs)}) |"
              for name, d, s, r, rs in rows]
    frames_per_s = args.frames / statistics.median(times["direct_render"])
    print("\n".join(table))
    print(f"direct rendering: {frames_per_s:.1f} frames/s ({pipeline.renderer.name}, "
          f"{pipeline.frames.renderer.output_resolution}² frames, one thread)")
    if args.report:
        versions = {m: __import__(m).__version__ for m in ("torch", "ray", "fastapi")}
        args.report.write_text("\n".join([
            "# Serving benchmark (CPU)", "",
            f"- date: {datetime.date.today().isoformat()}",
            f"- device: cpu ({platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
            "shared with other jobs); no GPU was lent to this session, so no GPU figures",
            f"- Python {platform.python_version()}, " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            f"- command: `python benchmarks/serve.py {' '.join(sys.argv[1:])}`",
            f"- checkpoints: {args.checkpoints or 'tiny random (write_random_checkpoints)'}; pipeline preset tiny "
            f"(tracking on, sampler {pipeline.sampling.scheduler} {pipeline.sampling.steps} steps, guidance "
            f"{pipeline.sampling.guidance_scale}); {pipeline.renderer.name} renderer",
            "- one client, requests one at a time; medians per round, rounds alternate direct and Serve", "",
            *table, "",
            f"Direct rendering: {frames_per_s:.1f} frames/s at {pipeline.frames.renderer.output_resolution}² on one "
            "thread.", ""]))
        print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
