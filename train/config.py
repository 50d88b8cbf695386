"""The typed configuration every trainer shares: the run, the DeepSpeed engine, the optimiser and
schedule, checkpointing, EMA and MLflow tracking.

A trainer's complete config is a task config (:class:`train.vae.recipes.VAETrainConfig`,
:class:`train.dit.recipes.DiTTrainConfig`) holding one :class:`TrainConfig` under ``train``; recipes
are Python functions returning a complete task config, the CLI picks one and applies a few
overrides (:func:`apply_overrides`).

Steps are optimiser steps, counted from 1: a run of ``steps = N`` performs steps 1..N; a checkpoint
written after step ``s`` resumes at step ``s + 1``. One step consumes ``micro_batch_size ×
grad_accumulation`` samples on each of the ``num_workers`` ranks.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from avatar4d.config import Config, ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PAPER_EMA_DECAY = 0.9999


@dataclasses.dataclass
class TrainConfig(Config):
    """Run, engine, optimiser, checkpoint, EMA and tracking options shared by every trainer.

    ``storage_path``: folder of the run folders (Ray Train's ``RunConfig.storage_path``); the run's
    checkpoints, progress file and (by default) the MLflow database live under it.
    ``use_gpu`` None: use GPUs when the Ray cluster has them. ``precision`` "auto": bf16 on GPUs,
    fp32 on CPUs (DeepSpeed's fp16 is never used). ``cpus_per_worker`` is also the torch thread count
    of a CPU worker. ``checkpoint_every``: steps between checkpoints (the last step is always
    checkpointed). ``log_every`` / ``image_every``: steps between metric reports / sample grids (0:
    sample grids only after the last step). ``tracking_uri`` / ``experiment`` None: MLflow's
    precedence, resolved on the driver by :func:`train.tracking.resolve_tracking` (the flag, then
    ``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_NAME``, then ``sqlite:///<storage>/mlflow.db`` and
    ``avatar4d``); artifacts of a sqlite store go next to its database (``<db folder>/mlartifacts``).
    ``registered_model`` None: ``avatar4d-<task>``.
    ``max_failures``: worker-group restarts Ray Train makes from the last checkpoint.
    """

    run_name: str = ""
    storage_path: str = "runs"
    num_workers: int = 2
    use_gpu: bool | None = None
    cpus_per_worker: float = 1.0
    zero_stage: int = 2
    precision: str = "auto"
    micro_batch_size: int = 4
    grad_accumulation: int = 1
    steps: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = PAPER_EMA_DECAY
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 1
    image_every: int = 0
    max_failures: int = 1
    data_workers: int = 0
    tracking_uri: str | None = None
    experiment: str | None = None
    registered_model: str | None = None

    def __post_init__(self) -> None:
        if self.run_name and not RUN_NAME.match(self.run_name):
            raise ConfigError(f"run name {self.run_name!r} must be 1-128 letters, digits, '.', '_' or '-' "
                              "(starting with a letter or digit)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        for name in ("num_workers", "micro_batch_size", "grad_accumulation", "steps", "checkpoint_every",
                     "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "image_every", "max_failures", "data_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.lr <= 0 or self.eps <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("need lr > 0, eps > 0, weight_decay >= 0 and grad_clip >= 0 (0 disables clipping)")
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ConfigError(f"betas must lie in [0, 1), got {self.betas}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    # --- derived values ------------------------------------------------------------------
    @property
    def samples_per_step(self) -> int:
        """Samples of one optimiser step over all ranks (the global batch)."""
        return self.micro_batch_size * self.grad_accumulation * self.num_workers

    def run_dir(self) -> Path:
        """``<storage_path>/<run_name>`` (local storage only)."""
        if not self.run_name:
            raise ConfigError("the run has no name yet (set run_name)")
        return Path(self.storage_path).expanduser() / self.run_name

    def resolved_tracking_uri(self) -> str:
        """The MLflow tracking URI: the configured one, else a sqlite file next to the runs (the
        environment is consulted on the driver only, by :func:`train.tracking.resolve_tracking`)."""
        if self.tracking_uri:
            return self.tracking_uri
        if "://" in self.storage_path and not self.storage_path.startswith("file://"):
            raise ConfigError(f"--storage {self.storage_path} is on object storage, where MLflow cannot keep a sqlite "
                              "database: pass --tracking-uri (an MLflow server, or sqlite:///PATH on this machine) "
                              "or set MLFLOW_TRACKING_URI")
        return f"sqlite:///{Path(self.storage_path).expanduser().resolve() / 'mlflow.db'}"

    def artifact_location(self) -> str | None:
        """Where a new MLflow experiment keeps artifacts: ``<db folder>/mlartifacts`` for a sqlite
        store (MLflow would otherwise use ./mlruns of whatever folder the process runs in); None
        (the tracking server decides) for any other store."""
        uri = self.resolved_tracking_uri()
        if not uri.startswith("sqlite:///"):
            return None
        if "://" in self.storage_path and not self.storage_path.startswith("file://"):
            return f"{self.storage_path.rstrip('/')}/mlartifacts"  # next to the runs, in the bucket (boto3: AWS_*)
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()

    def resolved_precision(self, on_gpu: bool) -> str:
        if self.precision == "auto":
            return "bf16" if on_gpu else "fp32"
        return self.precision


def deepspeed_config(train: TrainConfig, *, on_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config dict of ``train`` (the optimiser itself is built by the trainer and
    handed to ``deepspeed.initialize``; the warm-up schedule is DeepSpeed's ``WarmupLR``)."""
    precision = train.resolved_precision(on_gpu)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accumulation,
        "train_batch_size": train.samples_per_step,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "steps_per_print": 1 << 30,  # DeepSpeed's own step logging off: MLflow has the metrics
        "wall_clock_breakdown": False,
    }
    if train.warmup_steps > 0:
        config["scheduler"] = {"type": "WarmupLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": train.lr, "warmup_num_steps": train.warmup_steps,
            "warmup_type": "linear"}}
    return config


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """``config`` with dotted-path overrides applied (``{"train.steps": 10, "model.depth": 2}``);
    unknown paths and badly typed values raise :class:`ConfigError` naming the path."""
    data = config.to_dict()
    for path, value in overrides.items():
        node = data
        parts = path.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config path {path!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config path {path!r}")
        node[parts[-1]] = value
    return type(config).from_dict(data)
