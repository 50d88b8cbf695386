"""GAN fine-tune throughput (images/s): the task's full iteration vs its parts, side by side.

    python benchmarks/gan_train.py                          # tiny, CPU
    python benchmarks/gan_train.py --preset paper --device cuda --batch 4 --report ...

One fine-tune iteration of :class:`train.gan.task.GANTask` on a micro-batch: the G phase (G forward
with mesh conditioning and volume rendering, augmented and blurred dual D, non-saturating loss, the
density regulariser on its lazy steps, backward, Adam) then the D phase (fakes, D on augmented real and
fake images, logistic loss, lazy R1 with double backward, backward, Adam), as the trainer runs it
(plain modules stand in for the DeepSpeed engines: one process, no Ray). Side by side in one run:
``generator forward`` (no grad, the factory's cost per image) and ``G phase`` / ``D phase`` alone, so the
ratios say where a fine-tune's time goes. Regularisers run at their recipe intervals (images/s is
averaged over whole intervals). Goal on a GPU (issue 13): ≥ 30 images/s per H100 at paper size.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def build_task(folder: Path, preset: str, batch: int, device: str):
    from avatar4d.models.discriminator import DISCRIMINATOR_PRESETS
    from avatar4d.models.next3d import GENERATOR_PRESETS
    from train.config import apply_overrides
    from train.gan.fixtures import make_world_stylized
    from train.gan.recipes import get_recipe
    from train.gan.task import GANTask

    if preset == "tiny":
        make_world_stylized(folder, domains=("pixar",), per_domain=max(8, batch * 2))
    else:  # paper-size images: the world renders at 512² with a paper world preset
        _paper_world_rows(folder, max(8, batch * 2))
    config = apply_overrides(get_recipe(preset), {"data": str(folder), "domain": "pixar", "train.num_workers": 1,
                                                  "train.micro_batch_size": batch})
    config = config.replace(generator=GENERATOR_PRESETS.get(preset), discriminator=DISCRIMINATOR_PRESETS.get(preset))
    datasets = GANTask.check_data(config)
    return GANTask(GANTask.resolve_config(config, datasets), datasets, rank=0, world_size=1,
                   device=torch.device(device))


def _paper_world_rows(folder: Path, count: int) -> None:
    """Stylized rows at 512² (the world's paper preset), so the paper GAN's D sees its real input size."""
    import pyarrow as pa

    from avatar4d.data.stylized_schema import stylized_schema, stylized_uri
    from factory.chunks import PAIRS_SET, Chunk
    from factory.domains import load_domains
    from factory.generators import ensure_domain_generator
    from factory.sink import LanceCommitter, write_fragments
    from factory.stages import SynthesizeConfig, SynthesizeStage

    checkpoint = ensure_domain_generator(load_domains().get("pixar"), folder / "generators", "paper", "world")
    stage = SynthesizeStage("pixar", checkpoint, SynthesizeConfig(batch_size=4, num_threads=None))
    pairs = stage(Chunk(table="pairs", domain="pixar", set_name=PAIRS_SET, index=0, start=0, stop=count, run_seed=0))
    schema = stylized_schema(face_params_dim=stage.face_params_dim, identity_dim=stage.head.identity_dim,
                             image_resolution=stage.image_resolution)
    n = pairs.num_rows
    columns = {"sample_id": pairs.column("sample_id"), "chunk_id": pa.array(["bench"] * n),
               "domain": pa.array(["pixar"] * n), "source_id": pairs.column("sample_id"), "seed": pairs.column("seed"),
               "camera": pairs.column("camera"), "face_params": pairs.column("face_params"),
               "image": pairs.column("image"), "prompt": pa.array([""] * n),
               "strength": pa.array([0.0] * n, pa.float32()), "controlnet_scale": pa.array([0.0] * n, pa.float32()),
               "stylizer_sha256": pa.array(["world"] * n)}
    uri = stylized_uri(str(folder))
    table = pa.table({name: columns[name] for name in schema.names}).cast(schema)
    LanceCommitter(uri, schema).commit(["bench"], write_fragments(uri, table, schema))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "paper"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=16, help="timed iterations per round (a multiple of "
                                                                    "the R1 interval keeps the average fair)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        task = build_task(Path(folder), args.preset, args.batch, args.device)
        torch.manual_seed(0)
        model = task.build_model()
        parts = task.optimized_parts(model)
        optimizers = {name: torch.optim.Adam(part.parameters(), lr=2e-3, betas=(0.0, 0.99))
                      for name, part in parts.items()}
        batches = iter(task.batches(0))
        batch = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in next(batches).items()}
        gen = torch.Generator().manual_seed(0)
        step = [0]

        def sync() -> None:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        def phase(name: str) -> None:
            out = task.phase_step(name, parts, batch, gen, step[0])
            optimizers[name].zero_grad(set_to_none=True)
            out.loss.backward()
            optimizers[name].step()

        def iteration() -> None:
            step[0] += 1
            phase("G")
            phase("D")

        def g_only() -> None:
            step[0] += 1
            phase("G")

        def d_only() -> None:
            step[0] += 1
            phase("D")

        camera, _, vertices = task._condition(batch)

        @torch.no_grad()
        def forward() -> None:
            z = torch.randn(vertices.shape[0], model.G.z_dim, device=args.device)
            model.G(z, camera, vertices)

        work = {"fine-tune iteration (G + D)": iteration, "G phase": g_only, "D phase": d_only,
                "generator forward": forward}
        for function in work.values():
            function()  # warm-up
        timings: dict[str, list[float]] = {name: [] for name in work}
        for _ in range(args.rounds):
            for name, function in work.items():
                sync()
                started = time.perf_counter()
                for _ in range(args.iterations):
                    function()
                sync()
                timings[name].append(time.perf_counter() - started)
    rates = {name: args.iterations * args.batch / statistics.median(values) for name, values in timings.items()}
    full = rates["fine-tune iteration (G + D)"]
    print(f"GAN fine-tune, preset {args.preset}, batch {args.batch}, {args.device}, {args.threads} threads")
    for name, rate in rates.items():
        print(f"  {name:28s} {rate:9.2f} images/s   {rate / full:6.2f}x the fine-tune")
    if args.report:
        lines = [
            "# GAN fine-tune benchmark", "",
            f"- date: {datetime.date.today().isoformat()}",
            f"- device: {args.device} ({platform.processor() or platform.machine()}); torch threads: {args.threads}",
            f"- torch {torch.__version__}, Python {platform.python_version()}",
            f"- command: `python benchmarks/gan_train.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
            f"- config: `{args.preset}` recipe losses (R1 every {task.config.loss.r1_interval}, density every "
            f"{task.config.loss.density_interval} steps; ADA on), `{args.preset}` Next3D G and dual D, micro-batch "
            f"{args.batch}; one process, plain Adam (no Ray/DeepSpeed)",
            f"- timing: {args.rounds} interleaved rounds × {args.iterations} iterations after one warm-up, medians", "",
            "| work | images/s | × the fine-tune |", "|---|---:|---:|",
            *[f"| {name} | {rate:.2f} | {rate / full:.2f} |" for name, rate in rates.items()], "",
        ]
        Path(args.report).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
