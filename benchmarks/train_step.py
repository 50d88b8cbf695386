"""Training-step throughput of the VAE and the DiT: steps/s, samples/s, MFU, and the cost of running
the step under DeepSpeed on Ray Train instead of a plain torch loop.

    python benchmarks/train_step.py                 # tiny presets on CPU (+ paper presets in bf16 on a GPU)
    python benchmarks/train_step.py --steps 30 --out benchmarks/results/train-step-cpu.md

CPU (tiny presets, measured side by side in one run, on a tiny factory dataset made on the fly):

- ``plain``: one process, the task's own step (same data stream, same loss) with torch AdamW,
  gradient clipping and the EMA update; measured before and after the Ray runs (drift check);
- ``ray+ds x1``: ``avatar4d train`` machinery with one worker (DeepSpeed ZeRO-2, fp32, gloo):
  the same per-step work plus the engine, metric all-reduce, ``ray.train.report`` and MLflow;
  overhead ratio = plain steps/s ÷ ray+ds steps/s (both one thread);
- ``ray+ds x2``: two workers (data parallel, one thread each): samples/s over both.

Timing excludes start-up: the Ray runs report steps/s per logging window of ``--window`` steps
(checkpoints and sample grids fall outside the windows) and the first window is dropped; the plain
loop drops ``--window`` warm-up steps.

FLOPs: DiT, 3 × :func:`avatar4d.models.dit.dit_flops` per sample (forward + backward); VAE,
``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward of the VAE alone (its 3D
convolutions; renders and LPIPS are counted separately as "step FLOPs"). CPU MFU is relative to the
measured fp32 GEMM throughput of one thread (this machine's practical peak); GPU MFU to the dense
bf16 peak of the device (H100/H200 SXM: 989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from avatar4d.hardware import cpu_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

logger = logging.getLogger("benchmarks.train_step")
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def gemm_peak(threads: int = 1, size: int = 1024, seconds: float = 2.0) -> float:
    """Measured fp32 matmul FLOP/s with ``threads`` threads (the CPU's practical peak)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def make_data(folder: Path) -> Path:
    from train.fixtures import make_encoded, make_pairs

    data = folder / "data"
    make_pairs(data, per_domain=4)
    make_encoded(data)
    return data


def task_config(task: str, data: Path, storage: Path, micro_batch: int, workers: int, steps: int, window: int):
    from train.config import apply_overrides

    if task == "vae":
        from train.vae.recipes import tiny
    else:
        from train.dit.recipes import tiny
    overrides = {"data": str(data), "train.storage_path": str(storage), "train.num_workers": workers,
                 "train.micro_batch_size": micro_batch, "train.steps": steps, "train.log_every": window,
                 "train.checkpoint_every": steps, "train.run_name": f"bench-{task}-x{workers}"}
    return apply_overrides(tiny(), overrides)


def step_flops(task: str, config, datasets) -> tuple[float, float]:
    """(model FLOPs, whole-step FLOPs) of one training step of one micro-batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from train.task import task_classes

    task_class, _ = task_classes(task)
    config = task_class.resolve_config(config, datasets)
    if task == "dit":
        from avatar4d.models.dit import dit_flops

        model_flops = 3.0 * dit_flops(config.model, config.train.micro_batch_size)
    instance = task_class(config, datasets, rank=0, world_size=1, device=torch.device("cpu"))
    model = instance.build_model()
    instance.prepare(model)
    batch = next(iter(instance.batches(0)))
    with FlopCounterMode(display=False) as counter:
        instance.step(model, batch, torch.Generator().manual_seed(0)).loss.backward()
    total = float(counter.get_total_flops())
    if task == "vae":
        from avatar4d.models.vae import stacked_to_vae_layout

        x = stacked_to_vae_layout(batch["triplane"].float())
        with FlopCounterMode(display=False) as counter:
            out = model(x, sample_posterior=True)
            (out.reconstruction.mean() + out.posterior.kl().mean()).backward()
        model_flops = float(counter.get_total_flops())
    return model_flops, total


def plain_loop(task: str, config, datasets, steps: int, warmup: int) -> float:
    """Steps/s of the task's step in one process (AdamW, clipping, EMA), after ``warmup`` steps."""
    from train.ema import ExponentialMovingAverage
    from train.engine import build_optimizer
    from train.task import task_classes

    torch.set_num_threads(1)
    task_class, _ = task_classes(task)
    config = task_class.resolve_config(config, datasets)
    instance = task_class(config, datasets, rank=0, world_size=1, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = instance.build_model()
    instance.prepare(model)
    optimizer = build_optimizer(model, config.train)
    ema = ExponentialMovingAverage(model, config.train.ema_decay)
    batches = iter(instance.batches(0))
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        out = instance.step(model, next(batches), torch.Generator().manual_seed(step))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)
    return steps / (time.perf_counter() - start)


def ray_run(task: str, config) -> float:
    """Steps/s of a real ``run_training`` (first logging window dropped)."""
    from mlflow.tracking import MlflowClient

    from train.runner import run_training

    config = config.with_defaults("tiny")
    run_training(config, num_cpus=2, progress=False)
    client = MlflowClient(config.train.resolved_tracking_uri())
    experiment = client.get_experiment_by_name(config.train.experiment)
    run = client.search_runs([experiment.experiment_id],
                             filter_string=f"tags.`avatar4d.task` = '{task}' and attributes.run_name = "
                                           f"'{config.train.run_name}'")[0]
    windows = sorted(client.get_metric_history(run.info.run_id, "steps_per_second"), key=lambda m: m.step)[1:]
    seconds = sum(config.train.log_every / m.value for m in windows)
    return len(windows) * config.train.log_every / seconds


def cpu_benchmarks(args: argparse.Namespace, folder: Path) -> list[dict]:
    from train.task import task_classes

    data = make_data(folder)
    peak = gemm_peak(1)
    rows = []
    for task, micro_batch in (("vae", 2), ("dit", 4)):
        storage = folder / "runs"
        steps = args.window * (args.windows + 1)
        single = task_config(task, data, storage, micro_batch, 1, steps, args.window)
        task_class, _ = task_classes(task)
        datasets = task_class.check_data(single)
        model_flops, total_flops = step_flops(task, single, datasets)
        plain_before = plain_loop(task, single, datasets, args.window * args.windows, args.window)
        ray_single = ray_run(task, single)
        ray_double = ray_run(task, task_config(task, data, storage, micro_batch, 2, steps, args.window))
        plain_after = plain_loop(task, single, datasets, args.window * args.windows, args.window)
        plain = (plain_before + plain_after) / 2
        rows.append({"task": task, "micro_batch": micro_batch, "model_flops": model_flops, "step_flops": total_flops,
                     "plain_before": plain_before, "plain_after": plain_after, "ray1": ray_single, "ray2": ray_double,
                     "overhead": plain / ray_single, "peak": peak,
                     "mfu_plain": plain * model_flops / peak, "mfu_ray1": ray_single * model_flops / peak})
        logger.info("%s: %s", task, rows[-1])
    return rows


def gpu_benchmarks(steps: int) -> list[dict]:
    """Paper presets, bf16, one GPU, plain loop on synthetic inputs (the models' own step cost)."""
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
    return [_gpu_dit(steps, peak, name), _gpu_vae(steps, peak, name)]


def _gpu_dit(steps: int, peak: float | None, name: str, batch: int = 32) -> dict:
    from avatar4d.models.dit import DIT_PRESETS, ImageConditionedDiT, dit_flops

    device = torch.device("cuda")
    dit = ImageConditionedDiT(DIT_PRESETS.get("paper")).to(device, torch.bfloat16)
    cfg = dit.config
    x = torch.randn(batch, cfg.in_channels, *cfg.input_size, device=device, dtype=torch.bfloat16)
    clip = torch.randn(batch, cfg.clip_tokens, cfg.clip_channels, device=device, dtype=torch.bfloat16)
    dino = torch.randn(batch, cfg.dino_tokens, cfg.dino_channels, device=device, dtype=torch.bfloat16)
    t = torch.randint(0, 1000, (batch,), device=device)
    return _gpu_loop("dit-paper", dit, lambda: dit(x, t, clip, dino).float().square().mean(), steps, batch,
                     3.0 * dit_flops(cfg, batch), peak, name)


def _gpu_vae(steps: int, peak: float | None, name: str, batch: int = 4) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from avatar4d.models.vae import VAE_PRESETS, TriplaneVAE

    device = torch.device("cuda")
    vae = TriplaneVAE(VAE_PRESETS.get("paper")).to(device, torch.bfloat16)
    vae.set_gradient_checkpointing(True)
    planes = torch.randn(batch, *vae.config.triplane_shape(), device=device, dtype=torch.bfloat16)

    def vae_loss() -> torch.Tensor:
        out = vae(planes)
        return (out.reconstruction.float() - planes.float()).abs().mean() + 1e-6 * out.posterior.kl().float().mean()

    with FlopCounterMode(display=False) as counter:
        vae_loss().backward()
    return _gpu_loop("vae-paper", vae, vae_loss, steps, batch, float(counter.get_total_flops()), peak, name)


def _gpu_loop(label: str, model: torch.nn.Module, loss_fn, steps: int, batch: int, flops: float,
              peak: float | None, device_name: str) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(3):
        loss_fn().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss_fn().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    rate = steps / (time.perf_counter() - start)
    return {"task": label, "device": device_name, "batch": batch, "steps_per_second": rate,
            "samples_per_second": rate * batch, "flops": flops, "mfu": rate * flops / peak if peak else None}


def versions() -> dict[str, str]:
    import deepspeed
    import lance
    import mlflow
    import ray

    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "deepspeed": deepspeed.__version__, "mlflow": mlflow.__version__, "pylance": lance.__version__}


def report(rows: list[dict], gpu_rows: list[dict], args: argparse.Namespace, seconds: float) -> str:
    import os

    lines = [f"# Training step throughput (CPU, tiny presets) — {args.date}", "",
             f"Machine: {cpu_model()}, {os.cpu_count()} logical CPUs (shared with other jobs while measuring); "
             "no GPU in this session.", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
             f"Command: `python benchmarks/train_step.py --window {args.window} --windows {args.windows}` "
             f"({seconds / 60:.1f} min).", "",
             "Each worker and the plain loop use one torch thread; micro-batch per worker as listed; fp32; "
             "ZeRO-2 over gloo. steps/s exclude start-up (first window dropped).", "",
             "| task | micro-batch | plain steps/s (before / after) | ray+ds x1 steps/s | overhead (plain ÷ ray+ds x1) "
             "| ray+ds x2 samples/s | model GFLOP/step | step GFLOP | MFU plain / ray+ds x1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        samples2 = r["ray2"] * r["micro_batch"] * 2
        lines.append(f"| {r['task']} tiny | {r['micro_batch']} | {r['plain_before']:.2f} / {r['plain_after']:.2f} | "
                     f"{r['ray1']:.2f} | {r['overhead']:.3f} | {samples2:.1f} | {r['model_flops'] / 1e9:.2f} | "
                     f"{r['step_flops'] / 1e9:.2f} | {100 * r['mfu_plain']:.1f} % / {100 * r['mfu_ray1']:.1f} % |")
    lines += ["", f"MFU reference: measured fp32 GEMM of one thread, {rows[0]['peak'] / 1e9:.1f} GFLOP/s. "
              "Model FLOPs: DiT 3 × dit_flops per sample; VAE FlopCounterMode over its forward + backward. "
              "Step FLOPs add the VAE's renders and LPIPS (FlopCounterMode over the whole step).", ""]
    if gpu_rows:
        lines += ["## Paper presets, bf16, one GPU (plain loop, synthetic inputs)", "",
                  "| model | device | batch | steps/s | samples/s | TFLOP/step | MFU |",
                  "|---|---|---|---|---|---|---|"]
        for r in gpu_rows:
            mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
            lines.append(f"| {r['task']} | {r['device']} | {r['batch']} | {r['steps_per_second']:.2f} | "
                         f"{r['samples_per_second']:.1f} | {r['flops'] / 1e12:.2f} | {mfu} |")
    else:
        lines += ["Paper presets in bf16 need a GPU; none was available in this session, so no paper-size "
                  "numbers are reported here (run this script on a GPU machine: it adds them)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=5, help="steps per timing window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows (after one warm-up window)")
    parser.add_argument("--gpu-steps", type=int, default=20)
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="avatar4d-bench-") as folder:
        rows = cpu_benchmarks(args, Path(folder))
    gpu_rows = gpu_benchmarks(args.gpu_steps) if torch.cuda.is_available() else []
    text = report(rows, gpu_rows, args, time.perf_counter() - started)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
