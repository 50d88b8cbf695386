"""The driver side of a training run: checks, run folder, Ray Train ``TorchTrainer``, progress bar.

:func:`run_training` checks the datasets and the run folder before anything starts (one-line
``UserError`` s), records the run's config in ``<storage>/<run>/run.json``, starts a local Ray when
none is running (or connects to ``address``), runs a ``TorchTrainer`` of ``num_workers`` workers
with ``RunConfig(storage_path, name, FailureConfig(max_failures), CheckpointConfig(num_to_keep))``
and shows a progress bar fed by rank 0's ``progress.json``.

Resume = construct the trainer again with the same ``RunConfig(storage_path, name)``: Ray Train
finds the run's latest checkpoint and hands it to the workers. A run folder that exists is only
re-used with ``resume=True``, and only with the same config apart from the fields in
:data:`RESUMABLE_CHANGES` (more steps, logging cadence, failure budget); the worker count must stay
the same (ZeRO shards are per rank).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from avatar4d.errors import UserError
from train.engine import PROGRESS_FILE, STATE_FILE, is_local, worker_main
from train.task import TaskConfig, task_classes

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "keep_checkpoints", "log_every", "image_every", "max_failures",
                     "data_workers", "tracking_uri", "use_gpu", "cpus_per_worker")


class TrainingError(RuntimeError):
    """Training stopped: a worker failed more often than ``max_failures`` allows."""


@dataclasses.dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: str
    final_step: int
    metrics: dict[str, Any]
    checkpoint: str | None
    seconds: float


def latest_checkpoint_state(run_dir: Path) -> dict[str, Any] | None:
    """``trainer_state.json`` of the newest ``checkpoint_*`` folder of a run (None without one)."""
    states = sorted(p for p in run_dir.glob("checkpoint_*") if (p / STATE_FILE).is_file())
    return json.loads((states[-1] / STATE_FILE).read_text()) if states else None


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}")
    return found


def check_run_folder(config: TaskConfig, resume: bool) -> None:
    """A new run must not overwrite another; a resumed run must exist and keep its config."""
    train = config.train
    if not is_local(train.storage_path):
        return  # remote storage: Ray Train's own run state decides
    run_dir = train.run_dir()
    record = run_dir / RUN_FILE
    if not record.is_file():
        if resume:
            raise UserError(f"nothing to resume: no run {train.run_name!r} in {train.storage_path} "
                            "(drop --resume to start it)")
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"{run_dir} exists and is not an avatar4d run; choose another --run-name or --storage")
        return
    if not resume:
        raise UserError(f"run {train.run_name!r} already exists in {train.storage_path}: pass --resume to continue "
                        "it, or choose another --run-name")
    old = json.loads(record.read_text())
    changed = [path for path in _differences(old, config.to_dict())
               if not (path.startswith("train.") and path.split(".", 1)[1] in RESUMABLE_CHANGES)]
    if changed:
        raise UserError(f"run {train.run_name!r} was started with other settings ({', '.join(changed[:5])}); "
                        "resume it with the same recipe and options")
    state = latest_checkpoint_state(run_dir)
    if state is not None and state["step"] >= train.steps:
        raise UserError(f"run {train.run_name!r} is already at step {state['step']}; "
                        f"pass --steps above it to train further")


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Use the Ray this process is connected to, connect to ``address``, or start a local one
    (stopped again at the end)."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=num_cpus, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


class ProgressMonitor:
    """A tqdm bar on the driver, following rank 0's ``progress.json`` (local storage only)."""

    def __init__(self, run_dir: Path | None, total: int, enabled: bool) -> None:
        self.run_dir, self.total, self.enabled = run_dir, total, enabled and run_dir is not None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ProgressMonitor:
        if self.enabled:
            self._thread = threading.Thread(target=self._follow, name="train-progress", daemon=True)
            self._thread.start()
        return self

    def _follow(self) -> None:
        from tqdm import tqdm

        assert self.run_dir is not None
        path = self.run_dir / PROGRESS_FILE
        seen = 0.0
        with tqdm(total=self.total, unit="step", dynamic_ncols=True, desc=self.run_dir.name) as bar:
            while not self._stop.wait(0.5):
                try:
                    progress = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if progress.get("time", 0) <= seen:
                    continue
                seen = progress["time"]
                bar.n = int(progress["step"])
                metrics = progress.get("metrics", {})
                if "loss" in metrics:
                    bar.set_postfix(loss=f"{metrics['loss']:.4g}", refresh=False)
                bar.refresh()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _use_gpu(config: TaskConfig) -> bool:
    import ray

    if config.train.use_gpu is not None:
        return config.train.use_gpu
    return ray.cluster_resources().get("GPU", 0) >= config.train.num_workers


def run_training(config: TaskConfig, *, resume: bool = False, address: str | None = None,
                 num_cpus: int | None = None, progress: bool = True) -> TrainResult:
    """Run (or resume) the training described by ``config``; see the module docstring."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = time.perf_counter()
    task_class, _ = task_classes(config.task)
    train = config.train
    if not train.run_name:
        raise UserError("the run needs a name (TaskConfig.with_defaults sets one)")
    datasets = task_class.check_data(config)
    config = task_class.resolve_config(config, datasets)
    check_run_folder(config, resume)
    local = is_local(train.storage_path)
    storage = str(Path(train.storage_path).expanduser().resolve()) if local else train.storage_path
    with ray_session(address, num_cpus or max(2, train.num_workers * round(train.cpus_per_worker))):
        config = config.replace(train=train.replace(use_gpu=_use_gpu(config)))
        train = config.train
        if local:
            train.run_dir().mkdir(parents=True, exist_ok=True)
            (train.run_dir() / RUN_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        payload = {"config": config.to_dict(), "datasets": {k: dataclasses.asdict(v) for k, v in datasets.items()}}
        resources = {"CPU": train.cpus_per_worker, **({"GPU": 1} if train.use_gpu else {})}
        trainer = TorchTrainer(
            worker_main, train_loop_config=payload,
            scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=bool(train.use_gpu),
                                         resources_per_worker=resources),
            run_config=RunConfig(storage_path=storage, name=train.run_name,
                                 failure_config=FailureConfig(max_failures=train.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints)))
        logger.info("training %s: %d workers, %d steps, storage %s", train.run_name, train.num_workers,
                    train.steps, storage)
        with ProgressMonitor(train.run_dir() if local else None, train.steps, progress):
            try:
                result = trainer.fit()
            except Exception as exc:  # Ray's TrainingFailedError wraps the workers' errors
                raise TrainingError(f"training {train.run_name} failed: {_reason(exc)}") from exc
    metrics = dict(result.metrics or {})
    return TrainResult(run_dir=f"{storage.rstrip('/')}/{train.run_name}", final_step=int(metrics.get("step", 0)),
                       metrics=metrics, checkpoint=result.checkpoint.path if result.checkpoint else None,
                       seconds=time.perf_counter() - started)


def _reason(error: BaseException) -> str:
    """A one-line reason from a Ray error (the last exception line of the remote traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    user = [line for line in lines if "Error:" in line]
    return (user or lines or [type(error).__name__])[-1]
