"""Stylize throughput (images/s): the bare diffusers pipeline call vs the factory's stylize stage,
side by side on the same portraits (the stage adds landmark projection and drawing, resizing and PNG
encoding around the same call).

    python benchmarks/stylize.py                                   # tiny models, 64² world portraits
    python benchmarks/stylize.py --models paper-random --resolution 512 --steps 30 --device cuda
    python benchmarks/stylize.py ... --report benchmarks/results/stylize-cpu.md

``paper-random`` is Stable Diffusion 1.5's UNet, ControlNet, VAE and CLIP text encoder at their real
sizes with random weights: the same compute as the pretrained models. SDEdit runs
``strength × steps`` denoising steps (0.6 × 30 = 18 at the paper's settings), each a UNet + ControlNet
pass on the conditional and unconditional halves (CFG 7.5).
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


def portraits(count: int, folder: Path) -> tuple[dict, object]:
    import lance

    from avatar4d.data.reader import decode_batch
    from train.fixtures import make_pairs

    uri = make_pairs(folder, domains=("realistic",), per_domain=count, kind="world")
    dataset = lance.dataset(uri)
    table = dataset.to_table(columns=["sample_id", "image", "camera", "face_params"])
    return decode_batch(table.combine_chunks().to_batches()[0], dataset.schema), dataset.schema


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny", choices=["tiny", "paper-random"])
    parser.add_argument("--resolution", type=int, default=None, help="working resolution (default: the portraits')")
    parser.add_argument("--steps", type=int, default=30, help="sampler steps (SDEdit runs 0.6 of them)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--report", default="")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from avatar4d.data.schema import face_params_dims
    from factory.domains import load_domains
    from factory.stages.stylize import StylizeConfig, StylizeStage, landmark_images, row_seed

    with tempfile.TemporaryDirectory() as folder:
        rows, schema = portraits(args.batch, Path(folder))
    dims = face_params_dims(schema)
    config = StylizeConfig(models=args.models, steps=args.steps, resolution=args.resolution, batch_size=args.batch,
                           device=args.device, precision=args.precision, num_threads=args.threads)
    stage = StylizeStage(config, face_params_dim=dims["total"], identity_dim=dims["identity"],
                         image_resolution=rows["image"].shape[-1])
    domain = load_domains().get("pixar")
    pipe = stage.pipeline(None)
    res = stage.resolution
    from PIL import Image

    sources = [Image.fromarray(img.permute(1, 2, 0).numpy()).resize((res, res)) for img in rows["image"]]
    controls = [Image.fromarray(img.permute(1, 2, 0).numpy())
                for img in landmark_images(stage.head, rows["face_params"], rows["camera"], res)]
    seeds = [row_seed(0, domain.name, sid) for sid in rows["sample_id"]]

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def bare() -> None:
        pipe(prompt=[domain.prompt] * len(sources), negative_prompt=[domain.negative_prompt] * len(sources),
             image=sources, control_image=controls, strength=domain.strength, num_inference_steps=args.steps,
             guidance_scale=domain.guidance_scale, controlnet_conditioning_scale=domain.controlnet_scale,
             generator=[torch.Generator(args.device).manual_seed(s) for s in seeds], output_type="np",
             height=res, width=res)

    def staged() -> None:
        stage(domain, "bench", rows)

    timings: dict[str, list[float]] = {"bare pipeline": [], "stylize stage": []}
    bare()  # warm-up
    for _ in range(args.rounds):  # interleaved: the machine's load hits both alike
        for name, work in (("bare pipeline", bare), ("stylize stage", staged)):
            sync()
            started = time.perf_counter()
            work()
            sync()
            timings[name].append(time.perf_counter() - started)
    images = len(sources)
    rates = {name: images / statistics.median(values) for name, values in timings.items()}
    ratio = rates["stylize stage"] / rates["bare pipeline"]
    denoise = round(domain.strength * args.steps)
    print(f"{args.models} at {res}², {args.steps} steps ({denoise} SDEdit denoising steps), batch {images}, "
          f"{args.device} {args.precision}")
    for name, rate in rates.items():
        print(f"  {name:14s} {rate:8.3f} images/s  ({statistics.median(timings[name]):.2f} s per batch)")
    print(f"  stage / bare: {ratio:.3f}")
    if args.report:
        params = sum(p.numel() for name in ("unet", "controlnet", "vae", "text_encoder")
                     for p in getattr(pipe, name).parameters())
        lines = [
            "# Stylize benchmark (SDEdit + landmark ControlNet)", "",
            f"- date: {datetime.date.today().isoformat()}",
            f"- device: {args.device} ({platform.processor() or platform.machine()}); torch threads: "
            f"{torch.get_num_threads()}",
            f"- torch {torch.__version__}, diffusers {__import__('diffusers').__version__}, "
            f"transformers {__import__('transformers').__version__}, Python {platform.python_version()}",
            f"- command: `python benchmarks/stylize.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
            f"- models: `{args.models}` ({params:,} parameters in UNet + ControlNet + VAE + text encoder), "
            f"{res}² images, {args.steps} steps × strength {domain.strength} = {denoise} denoising steps, "
            f"CFG {domain.guidance_scale}, ControlNet scale {domain.controlnet_scale}, batch {images}",
            f"- timing: {args.rounds} interleaved rounds after one warm-up, medians", "",
            "| path | images/s | s per batch |", "|---|---:|---:|",
            *[f"| {name} | {rate:.3f} | {statistics.median(timings[name]):.2f} |" for name, rate in rates.items()],
            "", f"Stage / bare pipeline: **{ratio:.3f}** (the stage's own work: landmarks, resizing, PNG encoding).",
            "",
        ]
        Path(args.report).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
