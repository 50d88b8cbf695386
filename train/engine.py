"""The training loop every rank runs under Ray Train: a DeepSpeed engine around the task's model.

Per rank (:func:`worker_main`, the ``train_loop_per_worker`` of a ``TorchTrainer``):

1. Ray Train has set up ``torch.distributed`` (gloo on CPUs, NCCL on GPUs);
   ``deepspeed.init_distributed`` adopts that process group;
2. torch is seeded with the run seed, so every rank builds the same initial weights; the task's
   ``prepare`` sets data-dependent state; AdamW (the task's hyper-parameters) and
   ``deepspeed.initialize`` (ZeRO stage, micro-batch, accumulation, clipping, bf16 on GPUs / fp32
   on CPUs, DeepSpeed's ``WarmupLR``) make the engine; the EMA starts from the initial weights;
3. if Ray Train hands over a checkpoint (``ray.train.get_checkpoint()``: a worker-group restart
   after a failure, or a re-run with the same run name) the engine loads its DeepSpeed state
   (sharded optimiser states included) and rank 0's files restore the step, the data position
   (epoch and micro-batches consumed: every rank consumes the same number) and the EMA, so replayed
   steps repeat the same computation;
4. steps ``start..steps``: ``grad_accumulation`` micro-batches (``engine.backward``/``engine.step``),
   then the EMA update. Every ``log_every`` steps the metrics are averaged over ranks and
   reported; every ``checkpoint_every`` steps (and after the last) every rank writes its DeepSpeed
   shard into a temporary folder, rank 0 adds ``trainer_state.json`` and ``ema.safetensors``, and
   all ranks call ``ray.train.report(..., checkpoint=...)``: Ray merges the folders into
   ``<storage>/<run>/checkpoint_<step>``;
Tasks that optimise several parts of their model separately (a GAN's generator and discriminator)
name them in ``TrainTask.optimized_parts``: each part gets its own AdamW (the task's per-part
hyper-parameters) and its own DeepSpeed engine, saved under the tag ``deepspeed-<part>``; every
micro-batch runs the task's ``phases(step)`` in order, each phase's loss stepping its part's engine.
The default is one part (the whole model, tag ``deepspeed``), one phase: the loop above.

5. rank 0 logs metrics and labelled sample grids of the EMA model into the driver's MLflow run
   (:class:`train.tracking.WorkerTracker`; steps an earlier attempt logged are not logged again),
   and at the end saves the EMA model as an avatar4d checkpoint in ``<storage>/<run>/final``; the
   driver logs and registers it.

On CPUs DeepSpeed's shared-memory all-reduce op (a C++ extension JIT-compiled on first use, ~1 min
and a compiler) is not built: gloo's all-reduce does the work. ``AVATAR4D_DEEPSPEED_SHM=1`` builds
and uses it anyway.

Fault injection for tests: when the environment variable ``AVATAR4D_TRAIN_FAULT_FILE`` names an
existing JSON file ``{"step": k, "rank": r}``, rank r renames the file (so the fault fires once)
and exits the process with status 1 right after step k.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from train.config import TrainConfig, deepspeed_config
from train.data import DatasetInfo
from train.ema import ExponentialMovingAverage
from train.task import MAIN_PART, TaskConfig, TrainTask, config_from_dict, task_classes

logger = logging.getLogger(__name__)

DEEPSPEED_TAG = "deepspeed"
STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
PROGRESS_FILE = "progress.json"
EVENTS_FILE = "events.jsonl"
FINAL_DIR = "final"
FAULT_ENV = "AVATAR4D_TRAIN_FAULT_FILE"
SHM_ENV = "AVATAR4D_DEEPSPEED_SHM"


@dataclasses.dataclass
class TrainerState:
    """What a checkpoint records besides the DeepSpeed state: steps done, the data position (epoch
    and micro-batches of it consumed), EMA updates."""

    step: int = 0
    epoch: int = 0
    ema_updates: int = 0
    samples: int = 0
    batches_in_epoch: int = 0


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for one rank's randomness at one step (the same after a resume)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def is_local(storage_path: str) -> bool:
    return "://" not in storage_path or storage_path.startswith("file://")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(data))
    os.replace(staging, path)


def append_event(run_dir: Path | None, event: str, **fields: Any) -> None:
    """One JSON line in ``<run>/events.jsonl`` (start, checkpoint, end; local storage only)."""
    if run_dir is None:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / EVENTS_FILE).open("a") as handle:
        handle.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / EVENTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def maybe_inject_fault(step: int, rank: int) -> None:
    """Exit the process once at the step/rank named by ``$AVATAR4D_TRAIN_FAULT_FILE`` (tests)."""
    path = os.environ.get(FAULT_ENV)
    if not path or not os.path.isfile(path):
        return
    fault = json.loads(Path(path).read_text())
    if fault.get("step") != step or fault.get("rank", 0) != rank:
        return
    try:
        os.replace(path, f"{path}.fired")  # one process wins; the fault fires once
    except FileNotFoundError:
        return
    logger.warning("fault injection: rank %d exits after step %d", rank, step)
    os._exit(1)


def skip_cpu_shm_op() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce op on CPUs (see the module
    docstring); without it DeepSpeed's comm layer uses torch.distributed (gloo) directly."""
    if os.environ.get(SHM_ENV) == "1":
        return
    import importlib

    # by module name: the attribute `deepspeed.comm.torch` is the torch package itself
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def broadcast_scalar_parameters() -> None:
    """Let DeepSpeed's start-up broadcast handle 0-d parameters (StyleGAN2's ``noise_strength``):
    DeepSpeed 0.19.8 views every parameter as bytes (``p.data.view(torch.uint8)``), which fails for
    0-d tensors. The patched broadcast gives them a one-element shape for the call and back."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    original = DeepSpeedEngine._broadcast_model
    if getattr(original, "avatar4d_patched", False):
        return

    def broadcast(engine: Any) -> None:
        scalars = [p for p in engine.module.parameters() if p.dim() == 0]
        for parameter in scalars:
            parameter.data = parameter.data.reshape(1)
        try:
            original(engine)
        finally:
            for parameter in scalars:
                parameter.data = parameter.data.reshape(())

    broadcast.avatar4d_patched = True  # type: ignore[attr-defined]
    DeepSpeedEngine._broadcast_model = broadcast  # type: ignore[method-assign]


def reduce_metrics(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each metric over all ranks (every rank must pass the same keys)."""
    import torch.distributed as dist

    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return dict(zip(keys, values.tolist()))


def build_optimizer(model: nn.Module, train: TrainConfig, **overrides: Any) -> torch.optim.Optimizer:
    """AdamW over ``model``'s trainable parameters; ``overrides`` (lr, betas, eps, weight_decay)
    replace the run's values for one part of a multi-part task."""
    params = [p for p in model.parameters() if p.requires_grad]
    options = {"lr": train.lr, "betas": tuple(train.betas), "eps": train.eps, "weight_decay": train.weight_decay,
               **overrides}
    return torch.optim.AdamW(params, **options)


def deepspeed_tag(part: str) -> str:
    """The checkpoint tag of one optimised part (the single-part default keeps ``deepspeed``)."""
    return DEEPSPEED_TAG if part == MAIN_PART else f"{DEEPSPEED_TAG}-{part}"


def restore(checkpoint: Any, engines: dict[str, Any], ema: ExponentialMovingAverage) -> TrainerState:
    """Load the DeepSpeed state of every part (every rank its own shard) and rank 0's step, epoch and EMA."""
    from safetensors.torch import load_file

    with checkpoint.as_directory() as directory:
        for part, engine in engines.items():
            tag = deepspeed_tag(part)
            path, _ = engine.load_checkpoint(directory, tag=tag, load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
            if path is None:
                raise RuntimeError(f"DeepSpeed found no checkpoint under {directory}/{tag}")
        fields = json.loads((Path(directory) / STATE_FILE).read_text())
        state = TrainerState(**{k: v for k, v in fields.items() if k in TrainerState.__dataclass_fields__})
        ema.load_state_dict(load_file(str(Path(directory) / EMA_FILE)), state.ema_updates)
    return state


def save_checkpoint(engines: dict[str, Any], ema: ExponentialMovingAverage, state: TrainerState, rank: int,
                    metrics: dict[str, float]) -> None:
    """Every rank writes its DeepSpeed shards (one per part), rank 0 the trainer state and EMA; one
    Ray checkpoint."""
    import ray.train
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="avatar4d-ckpt-") as directory:
        for part, engine in engines.items():
            engine.save_checkpoint(directory, tag=deepspeed_tag(part), client_state={"step": state.step})
        if rank == 0:
            (Path(directory) / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state)))
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()},
                      str(Path(directory) / EMA_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"checkpoint_{state.step:08d}")


class Loop:
    """One rank's training loop (see the module docstring)."""

    def __init__(self, config: TaskConfig, datasets: dict[str, DatasetInfo], mlflow_run_id: str | None = None) -> None:
        import ray.train

        self.config = config
        self.mlflow_run_id = mlflow_run_id
        self.train = config.train
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.on_gpu = bool(self.train.use_gpu) and torch.cuda.is_available()
        if self.on_gpu:
            import ray.train.torch

            self.device = ray.train.torch.get_device()
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(max(1, round(self.train.cpus_per_worker)))
        task_class, _ = task_classes(config.task)
        self.task: TrainTask = task_class(config, datasets, rank=self.rank, world_size=self.world_size,
                                          device=self.device)
        local = is_local(self.train.storage_path)
        self.run_dir = self.train.run_dir() if local and self.rank == 0 else None
        self.tracker = None

    def run(self) -> None:
        import deepspeed
        import ray.train

        train = self.train
        if not self.on_gpu:
            skip_cpu_shm_op()
        deepspeed.init_distributed(dist_backend="nccl" if self.on_gpu else "gloo")
        broadcast_scalar_parameters()
        torch.manual_seed(train.seed)
        model = self.task.build_model()
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            self.task.prepare(model)
        engines = {}
        for part, module in self.task.optimized_parts(model).items():
            optimizer = build_optimizer(module, train, **self.task.optimizer_options(part))
            engines[part], _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                                          config=deepspeed_config(train, on_gpu=self.on_gpu))
        ema = ExponentialMovingAverage(model, train.ema_decay)  # the parts' engines wrap this model's modules
        state = restore(checkpoint, engines, ema) if checkpoint is not None else TrainerState()
        restored_from = state.step if checkpoint is not None else None
        if self.rank == 0:
            self._start_tracking()
            append_event(self.run_dir, "start", first_step=state.step + 1, restored_from=restored_from,
                         world_size=self.world_size)
        logger.info("rank %d/%d: steps %d..%d on %s", self.rank, self.world_size, state.step + 1, train.steps,
                    self.device)
        stream = self.task.batches(state.epoch, state.batches_in_epoch)
        self._loop(engines, model, ema, state, stream)

    def _start_tracking(self) -> None:
        from train.tracking import WorkerTracker

        if self.mlflow_run_id and self.train.tracking_uri:
            self.tracker = WorkerTracker(self.train.tracking_uri, self.mlflow_run_id)

    def _loop(self, engines: dict[str, Any], model: nn.Module, ema: ExponentialMovingAverage, state: TrainerState,
              stream: Any) -> None:
        train = self.train
        batches = iter(stream)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        window_start, window_samples = time.perf_counter(), 0
        first_engine = next(iter(engines.values()))
        for step in range(state.step + 1, train.steps + 1):
            generator = torch.Generator().manual_seed(step_seed(train.seed, self.rank, step))
            for _ in range(train.grad_accumulation):
                batch = next(batches)
                for phase in self.task.phases(step):
                    out = self.task.phase_step(phase, engines, batch, generator, step)
                    engine = engines[self.task.phase_part(phase)]
                    engine.backward(out.loss)
                    engine.step()
                    for key, value in out.metrics.items():
                        sums[key] = sums.get(key, 0.0) + value
                        counts[key] = counts.get(key, 0) + 1
            ema.update(model)
            state = TrainerState(step=step, epoch=getattr(stream, "epoch", 0), ema_updates=ema.num_updates,
                                 samples=state.samples + train.samples_per_step,
                                 batches_in_epoch=getattr(stream, "position", 0))
            window_samples += train.samples_per_step
            maybe_inject_fault(step, self.rank)
            is_last = step == train.steps
            wants_checkpoint = step % train.checkpoint_every == 0 or is_last
            if step % train.log_every == 0 or wants_checkpoint:
                elapsed = time.perf_counter() - window_start
                local = {key: value / counts[key] for key, value in sums.items()}
                metrics = reduce_metrics(local, self.device)
                metrics.update(step=step, lr=float(first_engine.get_lr()[0]), epoch=state.epoch,
                               steps_per_second=(window_samples / train.samples_per_step) / max(elapsed, 1e-9),
                               samples_per_second=window_samples / max(elapsed, 1e-9))
                self._log(metrics, step)
                if wants_checkpoint:
                    save_checkpoint(engines, ema, state, self.rank, metrics)
                    if self.rank == 0:
                        append_event(self.run_dir, "checkpoint", step=step)
                else:
                    import ray.train

                    ray.train.report(metrics)
                sums, counts, window_start, window_samples = {}, {}, time.perf_counter(), 0
            if self.rank == 0 and ((train.image_every and step % train.image_every == 0) or is_last):
                self._log_images(ema, step)
        if self.rank == 0:
            self._finish(ema, state)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if self.rank != 0:
            return
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step)
        if self.run_dir is not None:
            write_json_atomic(self.run_dir / PROGRESS_FILE, {"step": step, "steps": self.train.steps,
                                                            "metrics": metrics, "time": time.time()})

    def _ema_model(self, ema: ExponentialMovingAverage) -> nn.Module:
        model = self.task.build_model().to(self.device)
        ema.copy_to(model)
        return model.eval().requires_grad_(False)

    def _log_images(self, ema: ExponentialMovingAverage, step: int) -> None:
        started = time.perf_counter()
        images, metrics = self.task.sample_images(self._ema_model(ema), step)
        if self.tracker is not None:
            self.tracker.log_images(images, step)
            self.tracker.log_metrics(metrics, step)
        logger.info("sample grids at step %d took %.1f s", step, time.perf_counter() - started)

    def _finish(self, ema: ExponentialMovingAverage, state: TrainerState) -> None:
        model = self._ema_model(ema)
        metadata = {"run_name": self.train.run_name, "task": self.config.task, "samples": state.samples,
                    "ema_decay": self.train.ema_decay, "config": self.config.to_dict()}
        with tempfile.TemporaryDirectory(prefix="avatar4d-final-") as scratch:
            final = self.run_dir / FINAL_DIR if self.run_dir is not None else Path(scratch) / FINAL_DIR
            self.task.save_model(model, final, step=state.step, metadata=metadata)
            if self.run_dir is None:  # remote storage: the driver fetches it from there
                import pyarrow.fs

                pyarrow.fs.copy_files(str(final), f"{self.train.storage_path.rstrip('/')}/{self.train.run_name}/"
                                                  f"{FINAL_DIR}")
        append_event(self.run_dir, "end", step=state.step)


def worker_main(payload: dict[str, Any]) -> None:
    """``train_loop_per_worker``: ``payload`` = {"config": task config dict, "datasets": {name: DatasetInfo
    dict}, "mlflow_run_id": the driver's MLflow run}."""
    import warnings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes, once per worker
    config = config_from_dict(payload["config"])
    datasets = {name: DatasetInfo(**{**info, "columns": tuple(info["columns"])})
                for name, info in payload["datasets"].items()}
    Loop(config, datasets, payload.get("mlflow_run_id")).run()
