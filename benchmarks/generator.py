"""Next3D++ generator throughput: full forward per dtype side by side, plus a split by stage.

The full forward is ``Next3DGenerator.forward`` (mapping → texture/static backbones → mesh
conditioning → face backbone → volume rendering → super-resolution) under
``torch.inference_mode()``; bf16 runs it under ``torch.autocast(device_type, torch.bfloat16)``.
The dtypes are interleaved iteration by iteration, so a noisy machine slows them alike.

The stage split comes from separate passes in which forward (pre-)hooks on the generator's
sub-modules record a timestamp at every stage boundary (after a CUDA synchronise), so the clean
full-forward figures carry no hook overhead. Stages (consecutive segments of one forward):

- mapping: ``backbone.mapping`` (z, camera → ws);
- backbones: texture + static StyleGAN2 synthesis (the parametric triplane and both pyramids);
- mesh conditioning: rasterizing the mesh's UVs over the face box, hole filling, resampling every
  texture level at those UVs and blending with the static crops;
- face backbone: the conditioned face backbone + pasting its output into the frontal plane;
- volume rendering: rays, coarse + importance samples, decoder, compositing;
- super-resolution.

    python benchmarks/generator.py --preset tiny --batch 4 --dtypes fp32,bf16 --iters 10
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatar4d.geometry.camera import PoseSampler  # noqa: E402
from avatar4d.geometry.morphable import default_head_model  # noqa: E402
from avatar4d.hardware import cpu_model
from avatar4d.models.next3d import GENERATOR_PRESETS, Next3DGenerator  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}
# (sub-module, hook, stage that ends at this boundary), in call order within one forward
STAGE_BOUNDARIES = [
    ("backbone.mapping", "post", "mapping"),
    ("mesh_conditioner", "pre", "backbones"),
    ("face_backbone.synthesis", "pre", "mesh conditioning"),
    ("renderer", "pre", "face backbone"),
    ("superresolution", "pre", "volume rendering"),
    ("superresolution", "post", "super-resolution"),
]
STAGES = [stage for _, _, stage in STAGE_BOUNDARIES]



def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def precision(name: str, device: torch.device) -> contextlib.AbstractContextManager:
    dtype = DTYPES[name]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class Workload:
    """A generator and one fixed batch of inputs on ``device``."""

    def __init__(self, preset: str, batch: int, device: torch.device, seed: int = 0) -> None:
        self.device = device
        torch.manual_seed(seed)
        head = default_head_model()
        self.generator = Next3DGenerator(GENERATOR_PRESETS.get(preset), head=head).eval().to(device)
        inputs = torch.Generator().manual_seed(seed)
        self.z = torch.randn(batch, self.generator.config.backbone.z_dim, generator=inputs).to(device)
        self.camera = PoseSampler().sample(batch, inputs).camera.to(device)
        self.vertices = head.vertices(head.random_params(batch, generator=inputs)).to(device)
        self.batch = batch

    def forward(self, dtype: str):
        render_seed = torch.Generator(device=self.device).manual_seed(0)
        with torch.inference_mode(), precision(dtype, self.device):
            return self.generator(self.z, self.camera, self.vertices, generator=render_seed)

    def time_forward(self, dtype: str) -> float:
        sync(self.device)
        start = time.perf_counter()
        self.forward(dtype)
        sync(self.device)
        return time.perf_counter() - start

    @contextlib.contextmanager
    def stage_clock(self) -> Iterator[list[tuple[str, float]]]:
        """Hooks that append (stage, timestamp) at every boundary of :data:`STAGE_BOUNDARIES`."""
        marks: list[tuple[str, float]] = []
        handles = []

        def make_hook(stage: str):
            def hook(*_args) -> None:
                sync(self.device)
                marks.append((stage, time.perf_counter()))
            return hook

        for path, kind, stage in STAGE_BOUNDARIES:
            module = self.generator.get_submodule(path)
            register = module.register_forward_pre_hook if kind == "pre" else module.register_forward_hook
            handles.append(register(make_hook(stage)))
        try:
            yield marks
        finally:
            for handle in handles:
                handle.remove()

    def time_stages(self, dtype: str) -> dict[str, float]:
        with self.stage_clock() as marks:
            sync(self.device)
            start = time.perf_counter()
            self.forward(dtype)
        if [stage for stage, _ in marks] != STAGES:
            raise RuntimeError(f"unexpected stage order {[stage for stage, _ in marks]}; "
                               "update STAGE_BOUNDARIES to the generator's call order")
        times, previous = {}, start
        for stage, stamp in marks:
            times[stage] = stamp - previous
            previous = stamp
        return times


def run(args: argparse.Namespace) -> tuple[list[dict], dict]:
    device = torch.device(args.device)
    dtypes = [name.strip() for name in args.dtypes.split(",") if name.strip()]
    unknown = sorted(set(dtypes) - set(DTYPES))
    if unknown or not dtypes:
        raise SystemExit(f"--dtypes: unknown {unknown or dtypes}; choose from {sorted(DTYPES)}")
    work = Workload(args.preset, args.batch, device, args.seed)

    reference = {name: work.forward(name) for name in dtypes}  # also the first warm-up
    for _ in range(max(0, args.warmup - 1)):
        for name in dtypes:
            work.forward(name)
    totals: dict[str, list[float]] = {name: [] for name in dtypes}
    stages: dict[str, list[dict[str, float]]] = {name: [] for name in dtypes}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.iters):  # interleaved: each iteration times every dtype once
        for name in dtypes:
            totals[name].append(work.time_forward(name))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    for _ in range(args.stage_iters if args.stage_iters > 0 else args.iters):
        for name in dtypes:
            stages[name].append(work.time_stages(name))

    base = reference[dtypes[0]].image.float()
    rows = []
    for name in dtypes:
        median = statistics.median(totals[name])
        image = reference[name].image.float()
        rows.append({
            "dtype": name, "ms_per_batch": 1e3 * median, "best_ms_per_batch": 1e3 * min(totals[name]),
            "ms_per_sample": 1e3 * median / args.batch, "samples_per_s": args.batch / median,
            "image_delta": (image - base).abs().mean().item(), "finite": bool(torch.isfinite(image).all()),
            "stages": {stage: 1e3 * statistics.median(s[stage] for s in stages[name]) for stage in STAGES},
        })
    cfg = work.generator.config
    env = {"date": args.date or datetime.date.today().isoformat(), "device": str(device),
           "device_name": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "preset": args.preset, "batch": args.batch, "iters": args.iters,
           "warmup": args.warmup, "stage_iters": len(next(iter(stages.values()))),
           "params": sum(p.numel() for p in work.generator.parameters()),
           "planes": f"3 × {cfg.plane_channels} × {cfg.plane_resolution}²",
           "neural": cfg.neural_resolution, "image": cfg.image_resolution,
           "samples": f"{cfg.rendering.depth_resolution} + {cfg.rendering.depth_resolution_importance}",
           "peak_gib": peak, "argv": args.argv}
    return rows, env


def throughput_table(rows: list[dict]) -> list[str]:
    lines = ["| dtype | ms/batch (median) | ms/batch (best) | ms/sample | samples/s | speed vs first "
             "| mean abs Δimage vs first |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        ratio = rows[0]["ms_per_batch"] / row["ms_per_batch"]
        delta = f"{row['image_delta']:.2e}" + ("" if row["finite"] else " (non-finite!)")
        lines.append(f"| {row['dtype']} | {row['ms_per_batch']:.1f} | {row['best_ms_per_batch']:.1f} | "
                     f"{row['ms_per_sample']:.1f} | {row['samples_per_s']:.2f} | {ratio:.2f}x | {delta} |")
    return lines


def stage_table(rows: list[dict]) -> list[str]:
    header = "| stage | " + " | ".join(f"{row['dtype']} ms | {row['dtype']} %" for row in rows) + " |"
    lines = [header, "|---|" + "---:|---:|" * len(rows)]
    for stage in [*STAGES, "sum"]:
        cells = []
        for row in rows:
            total = sum(row["stages"].values())
            value = total if stage == "sum" else row["stages"][stage]
            cells.append(f"{value:.1f} | {100 * value / total:.0f}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return lines


def report(rows: list[dict], env: dict) -> str:
    memory = f"; peak CUDA memory {env['peak_gib']:.2f} GiB" if env["peak_gib"] is not None else ""
    lines = ["# Next3D++ generator benchmark", "", f"- date: {env['date']}",
             f"- device: {env['device']} ({env['device_name']}); torch threads: {env['threads']}{memory}",
             f"- torch {env['torch']}, Python {env['python']}",
             f"- command: `python benchmarks/generator.py {' '.join(env['argv'])}`",
             f"- config: preset `{env['preset']}` ({env['params']:,} parameters; planes {env['planes']}; "
             f"neural rendering {env['neural']}², {env['samples']} samples per ray; images {env['image']}²), "
             f"batch {env['batch']}", f"- timing: {env['iters']} timed forwards per dtype (interleaved) after "
             f"{env['warmup']} warm-up; stage split from {env['stage_iters']} further hooked forwards (medians)",
             "", "## Full forward (torch.inference_mode)", ""]
    lines += throughput_table(rows)
    lines += ["", "## Time by stage (ms per batch, medians of the hooked passes)", ""]
    lines += stage_table(rows)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(GENERATOR_PRESETS.names()))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated, from fp32, bf16")
    parser.add_argument("--iters", type=int, default=10, help="timed forwards per dtype")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards per dtype")
    parser.add_argument("--stage-iters", type=int, default=0, help="hooked forwards per dtype (0: --iters)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--date", default="", help="date to record (default: today)")
    parser.add_argument("--report", default="", help="write a markdown report to this path")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.batch < 1 or args.iters < 1:
        parser.error("--batch and --iters must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows, env = run(args)
    print(f"Next3D++ `{env['preset']}` batch {env['batch']} on {env['device']} ({env['device_name']})")
    print("\n".join(throughput_table(rows)))
    print()
    print("\n".join(stage_table(rows)))
    if args.report:
        Path(args.report).write_text(report(rows, env))
        print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
