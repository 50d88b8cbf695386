"""What a trainer plugs into the shared engine: a task config and a :class:`TrainTask`.

The engine (:mod:`train.engine`) owns distribution, optimisation, EMA, checkpoints and tracking;
a task owns its model, its data columns, its loss and its sample grids. Tasks are found by name in
:data:`TASKS` and imported lazily, so the CLI stays light.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from avatar4d.config import Config, ConfigError
from train.config import TrainConfig
from train.data import DatasetInfo

#: task name → (module, task class, config class)
TASKS: dict[str, tuple[str, str, str]] = {
    "vae": ("train.vae.task", "VAETask", "VAETrainConfig"),
    "dit": ("train.dit.task", "DiTTask", "DiTTrainConfig"),
    "renderer": ("train.renderer.task", "RendererTask", "RendererTrainConfig"),
    "gan": ("train.gan.task", "GANTask", "GANTrainConfig"),
}
#: the part name of a task that optimises its whole model with one optimiser (the default)
MAIN_PART = "model"


@dataclasses.dataclass
class TaskConfig(Config):
    """Fields every task config has: the task's name, the data folder and the shared options."""

    task: str = ""
    data: str = "data"
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    #: dotted config paths holding local paths (str or list of str), made absolute on the driver
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("data", "train.storage_path")

    def absolute_paths(self, base: Path | None = None) -> TaskConfig:
        """Every local path of :attr:`PATH_FIELDS` made absolute against ``base`` (default: the
        current folder) and ``~`` expanded; URIs (``s3://…``) stay as they are. The driver calls
        this: Ray Train workers run in folders of their own, where relative paths mean nothing."""
        from train.config import apply_overrides

        base = (base or Path.cwd()).resolve()

        def absolute(value: str) -> str:
            if "://" in value:
                return value
            return str((base / Path(value).expanduser()).resolve())

        data = self.to_dict()
        overrides: dict[str, Any] = {}
        for path in self.PATH_FIELDS:
            node: Any = data
            for part in path.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, str) and node:
                overrides[path] = absolute(node)
            elif isinstance(node, list):
                overrides[path] = [absolute(str(v)) for v in node]
        tracking = self.train.tracking_uri
        if tracking and tracking.startswith("sqlite:///") and not tracking.startswith("sqlite:////"):
            overrides["train.tracking_uri"] = f"sqlite:///{absolute(tracking.removeprefix('sqlite:///'))}"
        return apply_overrides(self, overrides) if overrides else self  # type: ignore[return-value]

    def with_defaults(self, recipe: str) -> TaskConfig:
        """Fill what depends on the run: the run name (``<task>-<recipe>``) and the registered model."""
        train = self.train
        updates: dict[str, Any] = {}
        if not train.run_name:
            updates["run_name"] = f"{self.task}-{recipe}"
        if not train.registered_model:
            updates["registered_model"] = f"avatar4d-{self.task}"
        return self.replace(train=train.replace(**updates)) if updates else self


@dataclasses.dataclass
class StepOutput:
    """One micro-batch's loss (a scalar with grad) and its detached scalar terms for logging."""

    loss: Tensor
    metrics: dict[str, float]


class TrainTask(abc.ABC):
    """A model, its data and its loss, for one rank (see :mod:`train.engine`)."""

    name: str = ""

    def __init__(self, config: TaskConfig, datasets: dict[str, DatasetInfo], *, rank: int, world_size: int,
                 device: torch.device) -> None:
        self.config = config
        self.datasets = datasets
        self.rank = rank
        self.world_size = world_size
        self.device = device

    # --- driver side (before any worker starts) ------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def check_data(cls, config: TaskConfig) -> dict[str, DatasetInfo]:
        """Inspect the datasets the task reads; raise a one-line ``UserError`` when they do not fit."""

    @classmethod
    def resolve_config(cls, config: TaskConfig, datasets: dict[str, DatasetInfo]) -> TaskConfig:
        """The config the workers run, completed from what the datasets hold (default: unchanged)."""
        return config

    # --- worker side ---------------------------------------------------------------------------
    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (same weights on every rank: the engine seeds torch first)."""

    def prepare(self, model: nn.Module) -> None:  # noqa: B027 (optional hook)
        """Set data-dependent state before training starts (e.g. normalisation statistics); must
        give the same result on every rank. Not called when resuming from a checkpoint."""

    @abc.abstractmethod
    def batches(self, start_epoch: int, start_position: int = 0) -> Iterator[dict[str, Any]]:
        """This rank's endless micro-batches from batch ``start_position`` of epoch ``start_epoch``;
        ``.epoch`` / ``.position`` of the returned iterable tell where it is (a :class:`train.data.RankStream`)."""

    def step(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> StepOutput:
        """Loss of one micro-batch. ``model`` is the DeepSpeed engine (call it like the module);
        ``generator`` (CPU) draws this step's randomness. Every single-part task implements it;
        a task with several parts implements :meth:`phase_step` instead."""
        raise NotImplementedError(f"task {self.name!r} has several optimised parts: it implements phase_step")

    @abc.abstractmethod
    def sample_images(self, model: nn.Module, step: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Sample grids of the (EMA) ``model`` as uint8 [H, W, 3] images by name, and scalar metrics
        of those samples (rank 0 only)."""

    @abc.abstractmethod
    def save_model(self, model: nn.Module, directory: Path, *, step: int, metadata: dict[str, Any]) -> None:
        """Write ``model`` as an avatar4d checkpoint (safetensors + config JSON) to ``directory``."""

    # --- several optimised parts (optional) ----------------------------------------------------
    def optimized_parts(self, model: nn.Module) -> dict[str, nn.Module]:
        """Sub-modules of ``model`` optimised separately, by part name: each gets its own AdamW
        (:meth:`optimizer_options`) and DeepSpeed engine. Default: the whole model, one part."""
        return {MAIN_PART: model}

    def optimizer_options(self, part: str) -> dict[str, Any]:
        """AdamW options of ``part`` that differ from the run's (``lr``, ``betas``, ``eps``, ``weight_decay``)."""
        return {}

    def phases(self, step: int) -> tuple[str, ...]:
        """The phases of one micro-batch at ``step``, in order (e.g. a GAN's generator then discriminator
        step); each phase's loss steps the engine of :meth:`phase_part`. Default: one phase."""
        return (MAIN_PART,)

    def phase_part(self, phase: str) -> str:
        """The optimised part whose engine a phase's loss steps (default: the part of the phase's name)."""
        return phase

    def phase_step(self, phase: str, engines: dict[str, nn.Module], batch: dict[str, Any],
                   generator: torch.Generator, step: int) -> StepOutput:
        """Loss of one phase of a micro-batch (``engines``: the parts' DeepSpeed engines by part name).
        Default: :meth:`step` on the one engine."""
        return self.step(engines[MAIN_PART], batch, generator)

    def model_dtype(self, model: nn.Module) -> torch.dtype:
        return next(model.parameters()).dtype


def task_classes(name: str) -> tuple[type[TrainTask], type[TaskConfig]]:
    """The task class and config class registered as ``name``."""
    if name not in TASKS:
        raise ConfigError(f"unknown training task {name!r}; choose from {sorted(TASKS)}")
    module_name, task_name, config_name = TASKS[name]
    module = importlib.import_module(module_name)
    return getattr(module, task_name), getattr(module, config_name)


def config_from_dict(data: dict[str, Any]) -> TaskConfig:
    """Rebuild a task config from ``to_dict()`` output (the ``task`` field picks the class)."""
    _, config_class = task_classes(str(data.get("task", "")))
    return config_class.from_dict(data)
