"""Training steps/s of every ``tiny`` model at micro-batch 4 on one CPU thread, side by side.

    python benchmarks/tiny_steps.py                  # print the table
    python benchmarks/tiny_steps.py --report         # also write benchmarks/results/tiny_steps.md

Each row is one model's real training step: forward + backward + AdamW (+ what the trainer adds):

- ``vae``: :meth:`train.vae.task.VAETask.step` of the tiny recipe on a tiny factory dataset made
  on the fly (triplane L1 + KL + the rendered depth-L1 and LPIPS through each row's own generator,
  :mod:`train.vae.losses`), then gradient clipping, AdamW and the EMA update
  (:func:`benchmarks.train_step.plain_loop`, the trainer's step without Ray and DeepSpeed);
- ``dit``: :meth:`train.dit.task.DiTTask.step` (IDDPM objective, condition dropout) on the
  ``encoded.lance`` of the same dataset (CLIP/DINO tokens of the factory's tiny encoders), the same
  loop;
- ``gan-generator`` / ``gan-discriminator``: the two phases of an EG3D-style fine-tune iteration of
  the tiny Next3D++ GAN (:class:`GanFineTune`): G phase = G forward (mapping, backbones, mesh
  conditioning, volume rendering, super-resolution) → dual discriminator (frozen) → non-saturating
  loss → backward → AdamW on G; D phase = fakes from G (frozen) → D on fakes and reals → logistic
  loss → backward → AdamW on D. EG3D's lazy regularisers (R1 every 16 D steps, density every 4 G
  steps) are left out; one fine-tune iteration is one G phase plus one D phase.

The models run in rounds (every model one timing window per round, ``--rounds`` rounds, each window
after a few warm-up steps), medians over rounds. The machine is shared: besides wall-clock steps/s the
table gives the share of a core the process got (CPU ÷ wall seconds) and steps/s per core (wall rate ÷
share), the rate of the thread with a core to itself, which pass/fail uses. FLOPs/step: ``FlopCounterMode``
over one whole step, forward + backward (matmuls, convolutions, attention; grid sampling,
normalisation and element-wise work are not counted). The FLOP budgets of
``tests/unit/models/test_tiny_budgets.py`` are :data:`FLOP_BUDGETS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.train_step import make_data, plain_loop, task_config, versions  # noqa: E402

logger = logging.getLogger("benchmarks.tiny_steps")

MICRO_BATCH = 4
TARGET_STEPS_PER_SECOND = 5.0
MODELS = ("vae", "dit", "gan-generator", "gan-discriminator")
TASKS = {"vae": "vae", "dit": "dit"}
REPORT = REPO / "benchmarks" / "results" / "tiny_steps.md"

# FLOPs of one training step at micro-batch 4 that a tiny model may not exceed
# (tests/unit/models/test_tiny_budgets.py). Derived from the run recorded in
# benchmarks/results/tiny_steps.md: each model's step FLOPs × (its steps/s per core ÷ 5), rounded down,
# i.e. the FLOPs at which the step would run at exactly 5 steps/s if its time grew in proportion to its
# FLOPs. That overstates the slow-down (much of each step is fixed per-call work that does not grow with
# the widths), which is the margin.
FLOP_BUDGETS: dict[str, float] = {
    "vae": 2.6e9,
    "dit": 3.3e9,
    "gan-generator": 0.80e9,
    "gan-discriminator": 0.44e9,
}


@dataclasses.dataclass
class GanFineTune:
    """One EG3D-style fine-tune iteration of the tiny Next3D++ GAN, split into its two phases.

    Inputs are fixed per instance: ``batch`` cameras from the paper's pose ranges (their 25-d labels
    condition G's mapping and D), expression meshes of the procedural head, and random "real"
    images (their raw twin is the image resized to the neural resolution, as EG3D feeds D). Adam
    hyper-parameters are EG3D's (betas (0, 0.99); G lr 0.0025, D lr 0.002), without weight decay, in
    torch's multi-tensor (``foreach``) form: the G has ~150 small tensors, and the per-tensor loop
    would add ~1,700 tiny kernels (~10 ms on one CPU thread) to every step.
    """

    generator: torch.nn.Module
    discriminator: torch.nn.Module
    camera: object
    label: torch.Tensor
    vertices: torch.Tensor
    real: torch.Tensor
    real_raw: torch.Tensor
    g_optimizer: torch.optim.Optimizer
    d_optimizer: torch.optim.Optimizer

    @classmethod
    def build(cls, batch: int = MICRO_BATCH, seed: int = 0, preset: str = "tiny") -> GanFineTune:
        from avatar4d.geometry.camera import PoseSampler
        from avatar4d.geometry.morphable import default_head_model
        from avatar4d.models.discriminator import DISCRIMINATOR_PRESETS, DualDiscriminator
        from avatar4d.models.next3d import GENERATOR_PRESETS, Next3DGenerator

        head = default_head_model()
        torch.manual_seed(seed)
        generator = Next3DGenerator(GENERATOR_PRESETS.get(preset), head=head).train()
        discriminator = DualDiscriminator(DISCRIMINATOR_PRESETS.get(preset)).train()
        inputs = torch.Generator().manual_seed(seed)
        camera = PoseSampler().sample(batch, inputs).camera
        vertices = head.vertices(head.random_params(batch, generator=inputs))
        side, raw = generator.config.image_resolution, generator.config.neural_resolution
        real = torch.rand(batch, 3, side, side, generator=inputs) * 2 - 1  # [B, 3, S, S]
        real_raw = F.interpolate(real, size=(raw, raw), mode="bilinear", align_corners=False, antialias=True)
        return cls(generator=generator, discriminator=discriminator, camera=camera, label=camera.to_label(),
                   vertices=vertices, real=real, real_raw=real_raw,
                   g_optimizer=torch.optim.AdamW(generator.parameters(), lr=0.0025, betas=(0.0, 0.99),
                                                 weight_decay=0.0, foreach=True),
                   d_optimizer=torch.optim.AdamW(discriminator.parameters(), lr=0.002, betas=(0.0, 0.99),
                                                 weight_decay=0.0, foreach=True))

    def _fakes(self, index: int):
        seeds = torch.Generator().manual_seed(index)
        z = torch.randn(self.label.shape[0], self.generator.z_dim, generator=seeds)  # [B, z_dim]
        return self.generator(z, self.camera, self.vertices, generator=torch.Generator().manual_seed(index))

    def generator_loss(self, index: int) -> torch.Tensor:
        """Non-saturating G loss softplus(−D(G(z))) of one micro-batch (D frozen, no D gradients)."""
        self.discriminator.requires_grad_(False)
        try:
            out = self._fakes(index)
            return F.softplus(-self.discriminator(out.image, out.image_raw, self.label)).mean()
        finally:
            self.discriminator.requires_grad_(True)

    def discriminator_loss(self, index: int) -> torch.Tensor:
        """Logistic D loss softplus(D(fake)) + softplus(−D(real)) of one micro-batch.

        G is frozen by ``requires_grad_(False)`` rather than ``torch.no_grad()`` (the same work: no
        graph is built through G), which keeps the step countable by ``FlopCounterMode``.
        """
        self.generator.requires_grad_(False)
        try:
            out = self._fakes(index + 1_000_000)
        finally:
            self.generator.requires_grad_(True)
        fake = self.discriminator(out.image.detach(), out.image_raw.detach(), self.label)
        real = self.discriminator(self.real, self.real_raw, self.label)
        return F.softplus(fake).mean() + F.softplus(-real).mean()

    def step(self, phase: str, index: int) -> None:
        """One phase (``generator`` or ``discriminator``): loss, backward, AdamW."""
        loss, optimizer = ((self.generator_loss, self.g_optimizer) if phase == "generator"
                           else (self.discriminator_loss, self.d_optimizer))
        loss(index).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def count_flops(run: Callable[[], None]) -> float:
    """FLOPs that ``FlopCounterMode`` counts while ``run`` executes."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


class TinyWorkloads:
    """The training step of every tiny model on one dataset made under ``folder``."""

    def __init__(self, folder: Path, *, micro_batch: int = MICRO_BATCH) -> None:
        from train.task import task_classes

        self.folder = folder
        self.micro_batch = micro_batch
        self.data = make_data(folder)
        self.configs: dict[str, object] = {}
        self.datasets: dict[str, dict] = {}
        for name, task in TASKS.items():
            task_class, _ = task_classes(task)
            config = task_config(task, self.data, folder / "runs", micro_batch, 1, 1, 1)
            datasets = task_class.check_data(config)
            self.configs[name] = task_class.resolve_config(config, datasets)
            self.datasets[name] = datasets
        self.gan = GanFineTune.build(micro_batch)

    def task(self, name: str):
        """A fresh task instance of ``vae`` / ``dit`` on this dataset (rank 0 of 1, CPU)."""
        from train.task import task_classes

        task_class, _ = task_classes(TASKS[name])
        return task_class(self.configs[name], self.datasets[name], rank=0, world_size=1, device=torch.device("cpu"))

    def parameters(self, name: str) -> int:
        if name == "gan-generator":
            module = self.gan.generator
        elif name == "gan-discriminator":
            module = self.gan.discriminator
        else:
            module = self.task(name).build_model()
        return sum(p.numel() for p in module.parameters())

    def step_flops(self, name: str) -> float:
        """FLOPs of one training step (forward + backward) of ``name`` at the micro-batch."""
        if name.startswith("gan-"):
            phase = name.removeprefix("gan-")
            loss = self.gan.generator_loss if phase == "generator" else self.gan.discriminator_loss
            flops = count_flops(lambda: loss(0).backward())
            self.gan.generator.zero_grad(set_to_none=True)
            self.gan.discriminator.zero_grad(set_to_none=True)
            return flops
        task = self.task(name)
        torch.manual_seed(0)
        model = task.build_model()
        task.prepare(model)
        batch = next(iter(task.batches(0)))
        return count_flops(lambda: task.step(model, batch, torch.Generator().manual_seed(0)).loss.backward())

    def steps_per_second(self, name: str, steps: int, warmup: int) -> float:
        """Steps/s (wall clock) of ``name``'s training step on one thread, after ``warmup`` untimed steps."""
        torch.set_num_threads(1)
        if not name.startswith("gan-"):
            return plain_loop(TASKS[name], self.configs[name], self.datasets[name], steps, warmup)
        phase = name.removeprefix("gan-")
        for index in range(warmup):
            self.gan.step(phase, index)
        start = time.perf_counter()
        for index in range(steps):
            self.gan.step(phase, warmup + index)
        return steps / (time.perf_counter() - start)


def timed(run: Callable[[], float]) -> tuple[float, float]:
    """(``run()``'s steps/s, the share of a core this process got meanwhile: CPU seconds ÷ wall seconds).

    On a shared machine the thread waits for a core part of the time; steps/s ÷ share estimates the
    rate of the thread when it has a core to itself (it still pays for the neighbours' cache and
    memory traffic, so it does not flatter the numbers).
    """
    wall, cpu = time.perf_counter(), time.process_time()
    rate = run()
    return rate, (time.process_time() - cpu) / (time.perf_counter() - wall)


def measure(args: argparse.Namespace, folder: Path) -> list[dict]:
    torch.set_num_threads(1)
    workloads = TinyWorkloads(folder)
    rows = {name: {"model": name, "params": workloads.parameters(name), "flops": workloads.step_flops(name),
                   "rates": [], "shares": []} for name in MODELS}
    for round_index in range(args.rounds):
        for name in MODELS:
            rate, share = timed(lambda name=name: workloads.steps_per_second(name, args.steps, args.warmup))
            rows[name]["rates"].append(rate)
            rows[name]["shares"].append(share)
        logger.info("round %d: %s", round_index,
                    {n: f"{r['rates'][-1]:.2f} steps/s at {r['shares'][-1]:.2f} core" for n, r in rows.items()})
    for row in rows.values():
        row["median"] = statistics.median(row["rates"])
        row["share"] = statistics.median(row["shares"])
        row["per_core"] = statistics.median(rate / share for rate, share in zip(row["rates"], row["shares"]))
        row["budget"] = FLOP_BUDGETS[row["model"]]
        # the FLOPs at which the step would run at 5 steps/s if its time grew in proportion (see FLOP_BUDGETS)
        row["implied_budget"] = row["flops"] * row["per_core"] / TARGET_STEPS_PER_SECOND
    return list(rows.values())


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | parameters | GFLOP/step | FLOP budget (test) | steps/s (wall) | core share "
             "| steps/s per core | target | pass |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ok = "pass" if r["per_core"] >= TARGET_STEPS_PER_SECOND else "FAIL"
        lines.append(f"| {r['model']} | {r['params']:,} | {r['flops'] / 1e9:.3f} | {r['budget'] / 1e9:.2f} | "
                     f"{r['median']:.2f} | {r['share']:.2f} | {r['per_core']:.2f} | ≥ {TARGET_STEPS_PER_SECOND:g} | "
                     f"{ok} |")
    return lines


def report(rows: list[dict], args: argparse.Namespace, seconds: float) -> str:
    from avatar4d.hardware import cpu_model

    by_name = {r["model"]: r for r in rows}
    gan = 1.0 / (1.0 / by_name["gan-generator"]["per_core"] + 1.0 / by_name["gan-discriminator"]["per_core"])
    lines = [f"# Tiny models: training steps/s on one CPU thread — {args.date}", "",
             f"- device: CPU: {cpu_model()}, {os.cpu_count()} logical CPUs (shared with other jobs while "
             "measuring); torch threads: 1; fp32",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
             f"- command: `python benchmarks/tiny_steps.py --rounds {args.rounds} --steps {args.steps} "
             f"--warmup {args.warmup} --report` ({seconds / 60:.1f} min)",
             f"- micro-batch {MICRO_BATCH}; {args.rounds} rounds, each model {args.steps} timed steps per round "
             f"after {args.warmup} warm-up steps; medians over the rounds. steps/s (wall): wall clock; core share: "
             "CPU seconds ÷ wall seconds of the process while it ran; steps/s per core = wall ÷ share, the rate "
             "with a core to itself (pass/fail)",
             f"- target: every tiny model ≥ {TARGET_STEPS_PER_SECOND:g} training steps/s", "",
             *table(rows), "",
             f"One GAN fine-tune iteration (G phase + D phase): {gan:.2f} iterations/s per core.", "",
             "FLOP budgets implied by this run (step FLOPs × steps/s per core ÷ 5; the test's budgets are these, "
             "rounded down): "
             + ", ".join(f"{r['model']} {r['implied_budget'] / 1e9:.2f} G" for r in rows) + ".", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (every model once per round)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each timing window")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    parser.add_argument("--report", nargs="?", const=REPORT, default=None, type=Path,
                        help=f"write the Markdown report (default path {REPORT.relative_to(REPO)})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger().setLevel(logging.WARNING)
    logger.setLevel(logging.INFO)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="avatar4d-tiny-steps-") as folder:
        rows = measure(args, Path(folder))
    text = report(rows, args, time.perf_counter() - started)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)


if __name__ == "__main__":
    main()
