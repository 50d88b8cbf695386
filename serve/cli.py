"""`avatar4d serve`: registered through the `avatar4d.commands` entry point (pyproject.toml).

This module must stay light: it only declares arguments; the handler imports Ray and torch lazily.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = (
    "Start the Ray Serve application on this machine: an HTTP API (OpenAPI at /docs) and a web page at "
    "http://HOST:PORT/ where you upload a portrait (or pick a sample) and see the avatar turn and talk. "
    "Deployments: preprocess, encoders, avatar generator (batched), avatar store (persisted to --store), "
    "renderer (batched). For a cluster, deploy serve/serve_config.yaml with `serve deploy`."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve avatars over HTTP with a web page (Ray Serve, local)",
                                   description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoints", type=Path, default=Path("outputs/demo/checkpoints"),
                        help="as `avatar4d create --checkpoints` (default: what `make demo` trains)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port")
    parser.add_argument("--store", type=Path, default=Path("outputs/avatars"), help="folder the avatars persist in")
    parser.add_argument("--preset", choices=("tiny", "paper"), default="tiny", help="pipeline preset")
    parser.add_argument("--device", help="torch device of the model replicas (default: the preset's)")
    parser.add_argument("--max-replicas", type=int, default=1, help="autoscale the generator and renderer up to N")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--max-frames", type=int, default=96, help="most frames one render request may ask for")
    parser.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024, help="largest request body")
    parser.add_argument("--max-pixels", type=int, default=4096 * 4096, help="largest portrait (width × height)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import threading

    from avatar4d.errors import UserError

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if not args.checkpoints.exists():
        raise UserError(f"checkpoints not found: {args.checkpoints} (run `make demo` first, or give --checkpoints)")
    import ray
    from ray import serve

    from serve.app import build_app
    from serve.settings import ServeSettings

    settings = ServeSettings(checkpoints=str(args.checkpoints), store_dir=str(args.store),
                             pipeline_preset=args.preset, device=args.device, max_replicas=args.max_replicas,
                             max_frames=args.max_frames, max_body_bytes=args.max_body_bytes,
                             max_pixels=args.max_pixels, default_frames=min(24, max(args.max_frames, 1)))  # ConfigError
    # is a UserError: a bad limit is one line
    app = build_app(settings)  # resolves the checkpoints first: a bad folder is one line, before Ray starts
    print(f"starting Ray Serve on http://{args.host}:{args.port}/ ...", flush=True)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=bool(args.verbose),
             configure_logging=False)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name="avatar4d", route_prefix="/")
        print(f"avatar4d is serving: web page http://{args.host}:{args.port}/  API docs "
              f"http://{args.host}:{args.port}/docs  (Ray at {ray.get_runtime_context().gcs_address}; Ctrl-C stops "
              "it)", flush=True)
        threading.Event().wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
