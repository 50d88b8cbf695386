"""The driver side of a training run: checks, run folder, Ray Train ``TorchTrainer``, progress bar,
the MLflow run's life cycle.

:func:`run_training` makes every path absolute and settles the MLflow URI and experiment
(:func:`prepare_config`: Ray Train workers run in folders of their own and may not see the user's
environment), checks the datasets and the run folder before anything starts (one-line
``UserError`` s), records the run's config in ``<storage>/<run>/run.json``, connects to Ray
(:mod:`train.cluster`), opens the MLflow run (:class:`train.tracking.RunTracking`), runs a
``TorchTrainer`` of ``num_workers`` workers with ``RunConfig(storage_path, name,
FailureConfig(max_failures), CheckpointConfig(num_to_keep), callbacks=[ReportForwarder])`` and shows
a progress bar fed by Ray Train's reports (:mod:`train.progress`). At the end the driver logs and
registers the final model and ends the MLflow run FINISHED; a failed run ends FAILED, an
interrupted one KILLED. A run that stopped before its first checkpoint leaves nothing behind that
would demand ``--resume``.

Resume = construct the trainer again with the same ``RunConfig(storage_path, name)``: Ray Train
finds the run's latest checkpoint and hands it to the workers. A run folder with a checkpoint is
only re-used with ``resume=True``, and only with the same config apart from the fields in
:data:`RESUMABLE_CHANGES` (more steps, logging cadence, failure budget); the worker count must stay
the same (ZeRO shards are per rank).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from avatar4d.errors import UserError
from train.engine import EVENTS_FILE, FINAL_DIR, PROGRESS_FILE, STATE_FILE, is_local, worker_main
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
    tracking_uri: str = ""
    experiment: str = ""
    mlflow_run_id: str = ""
    model_uri: str = ""
    registered_model: str = ""


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


def has_checkpoint(run_dir: Path) -> bool:
    return any((p / STATE_FILE).is_file() for p in run_dir.glob("checkpoint_*"))


def _foreign(path: Path) -> bool:
    """An entry of a run folder that neither Ray Train nor an earlier attempt of ours wrote."""
    ours = {EVENTS_FILE, PROGRESS_FILE, "checkpoint_manager_snapshot.json"}
    return not (path.name.startswith(".") or path.name in ours or path.name.startswith("checkpoint_"))


def forget_failed_start(config: TaskConfig) -> None:
    """A run that stopped before its first checkpoint leaves nothing to resume: drop its records so
    the same command (without ``--resume``) starts it again."""
    train = config.train
    if not is_local(train.storage_path) or has_checkpoint(train.run_dir()):
        return
    for name in (RUN_FILE, EVENTS_FILE, PROGRESS_FILE):
        (train.run_dir() / name).unlink(missing_ok=True)


def check_run_folder(config: TaskConfig, resume: bool) -> bool:
    """A new run must not overwrite another; a resumed run must exist and keep its config. Returns
    whether the run starts from scratch (no checkpoint to continue from)."""
    train = config.train
    if not is_local(train.storage_path):
        return not resume  # remote storage: Ray Train's own run state decides
    run_dir = train.run_dir()
    record = run_dir / RUN_FILE
    if not has_checkpoint(run_dir):
        if resume and not record.is_file():
            raise UserError(f"nothing to resume: no run {train.run_name!r} in {train.storage_path} "
                            "(drop --resume to start it)")
        if not record.is_file() and run_dir.exists() and any(_foreign(p) for p in run_dir.iterdir()):
            raise UserError(f"{run_dir} exists and is not an avatar4d run; choose another --run-name or --storage")
        forget_failed_start(config)  # a start that failed before its first checkpoint: begin again
        return True
    if not record.is_file():
        raise UserError(f"{run_dir} exists and is not an avatar4d run; choose another --run-name or --storage")
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
    return False


def _use_gpu(config: TaskConfig) -> bool:
    import ray

    if config.train.use_gpu is not None:
        return config.train.use_gpu
    return ray.cluster_resources().get("GPU", 0) >= config.train.num_workers


def prepare_config(config: TaskConfig) -> TaskConfig:
    """What the driver settles before anything starts: absolute paths (workers run in folders of
    their own) and the MLflow tracking URI / experiment (flag, then environment, then default)."""
    from train.tracking import resolve_tracking

    config = config.absolute_paths()
    return config.replace(train=resolve_tracking(config.train))


def run_training(config: TaskConfig, *, resume: bool = False, address: str | None = None,
                 num_cpus: int | None = None, progress: bool = True, verbose: bool = False) -> TrainResult:
    """Run (or resume) the training described by ``config``; see the module docstring."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from train.cluster import ray_session
    from train.progress import ProgressBar, ReportForwarder, make_queue
    from train.tracking import RunTracking

    started = time.perf_counter()
    task_class, _ = task_classes(config.task)
    if not config.train.run_name:
        raise UserError("the run needs a name (TaskConfig.with_defaults sets one)")
    config = prepare_config(config)
    datasets = task_class.check_data(config)
    config = task_class.resolve_config(config, datasets)
    fresh = check_run_folder(config, resume)
    train = config.train
    local = is_local(train.storage_path)
    storage = train.storage_path.removeprefix("file://") if local else train.storage_path
    with ProgressBar(total=train.steps, description=train.run_name, enabled=progress) as bar:
        bar.status("starting Ray")
        with ray_session(address, num_cpus or max(2, train.num_workers * round(train.cpus_per_worker)),
                         verbose=verbose) as where:
            config = config.replace(train=train.replace(use_gpu=_use_gpu(config)))
            train = config.train
            if local:
                train.run_dir().mkdir(parents=True, exist_ok=True)
                (train.run_dir() / RUN_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
            bar.status("opening the MLflow run")
            tracking = RunTracking(train, config.task)
            run_id = tracking.open(config.to_dict(), fresh=fresh)
            payload = {"config": config.to_dict(), "datasets": {k: dataclasses.asdict(v) for k, v in datasets.items()},
                       "mlflow_run_id": run_id}
            resources = {"CPU": train.cpus_per_worker, **({"GPU": 1} if train.use_gpu else {})}
            queue = make_queue()
            bar.attach(queue)
            trainer = TorchTrainer(
                worker_main, train_loop_config=payload,
                scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=bool(train.use_gpu),
                                             resources_per_worker=resources),
                run_config=RunConfig(storage_path=storage, name=train.run_name,
                                     failure_config=FailureConfig(max_failures=train.max_failures),
                                     checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints),
                                     callbacks=[ReportForwarder(queue)]))
            bar.status(f"starting {train.num_workers} workers on {where}")
            logger.info("training %s: %d workers, %d steps, storage %s", train.run_name, train.num_workers,
                        train.steps, storage)
            try:
                try:
                    result = trainer.fit()
                finally:
                    bar.detach()
            except KeyboardInterrupt:
                tracking.end("KILLED")
                forget_failed_start(config)
                raise
            except Exception as exc:  # Ray's TrainingFailedError wraps the workers' errors
                tracking.end("FAILED")
                forget_failed_start(config)
                raise TrainingError(f"training {train.run_name} failed: {_reason(exc)}") from exc
            bar.status("registering the model")
    try:
        model_uri = _log_final(tracking, train, storage)
    except BaseException:
        tracking.end("FAILED")
        raise
    tracking.end("FINISHED")
    metrics = dict(result.metrics or {})
    return TrainResult(run_dir=f"{storage.rstrip('/')}/{train.run_name}", final_step=int(metrics.get("step", 0)),
                       metrics=metrics, checkpoint=result.checkpoint.path if result.checkpoint else None,
                       seconds=time.perf_counter() - started, tracking_uri=str(train.tracking_uri),
                       experiment=str(train.experiment), mlflow_run_id=run_id, model_uri=model_uri,
                       registered_model=train.registered_model or f"avatar4d-{config.task}")


def _log_final(tracking: Any, train: Any, storage: str) -> str:
    """Log and register ``<storage>/<run>/final`` (downloaded first from remote storage)."""
    import tempfile

    registered = train.registered_model or f"avatar4d-{tracking.task}"
    if is_local(train.storage_path):
        return tracking.log_final(train.run_dir() / FINAL_DIR, registered)
    import pyarrow.fs

    with tempfile.TemporaryDirectory(prefix="avatar4d-final-") as scratch:
        pyarrow.fs.copy_files(f"{storage.rstrip('/')}/{train.run_name}/{FINAL_DIR}", scratch)
        return tracking.log_final(Path(scratch), registered)


def _reason(error: BaseException) -> str:
    """A one-line reason from a Ray error (the last exception line of the remote traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    user = [line for line in lines if "Error:" in line]
    return (user or lines or [type(error).__name__])[-1]
