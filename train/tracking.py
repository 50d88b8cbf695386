"""MLflow tracking from rank 0 only, with the plain ``mlflow`` client.

(Ray Train V2 rejects ``MLflowLoggerCallback``.) One MLflow run per training run: it is found
again on resume (and after a worker-group restart) by the tag ``avatar4d.run`` =
``<storage>/<run name>``, so the metrics of every attempt land in the same run. Logged: the
flattened config as params, scalar metrics per step, sample grids as images (``mlflow.log_image``
with a key and step), and at the end our safetensors checkpoint as artifacts under ``checkpoint/``
plus the EMA model through ``mlflow.pytorch.log_model(..., registered_model_name=...)`` (a new
version of the registered model per finished run).

The default store is ``sqlite:///<storage>/mlflow.db`` (MLflow 3.17's file store raises) with
artifacts under ``<storage>/mlartifacts``; any tracking URI works through the config.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from train.config import TrainConfig

logger = logging.getLogger(__name__)

RUN_TAG = "avatar4d.run"
TASK_TAG = "avatar4d.task"
MAX_PARAM_CHARS = 6000


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dict → ``{"train.lr": "0.0001", ...}`` (values as text, lists as JSON-ish text)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


def run_key(train: TrainConfig) -> str:
    """The value of the ``avatar4d.run`` tag: the run's storage folder."""
    storage = train.storage_path
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    return f"{storage.rstrip('/')}/{train.run_name}"


class MlflowTracker:
    """The rank-0 MLflow run of one training run (see the module docstring)."""

    def __init__(self, train: TrainConfig, task: str) -> None:
        import mlflow

        self.mlflow = mlflow
        self.train = train
        self.task = task
        self.client = mlflow.tracking.MlflowClient(tracking_uri=train.resolved_tracking_uri())
        self.run_id: str | None = None

    def start(self, params: Mapping[str, Any]) -> str:
        """Start the MLflow run, or re-open the one of an earlier attempt; return its id."""
        mlflow = self.mlflow
        mlflow.set_tracking_uri(self.train.resolved_tracking_uri())
        experiment = self.client.get_experiment_by_name(self.train.experiment)
        if experiment is None:
            experiment_id = self.client.create_experiment(self.train.experiment,
                                                          artifact_location=self.train.artifact_location())
        else:
            experiment_id = experiment.experiment_id
        key = run_key(self.train)
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{key}'",
                                        max_results=1, order_by=["attributes.start_time DESC"])
        if found:
            self.run_id = found[0].info.run_id
            mlflow.start_run(run_id=self.run_id)
            logger.info("continuing MLflow run %s of %s", self.run_id, key)
        else:
            run = mlflow.start_run(experiment_id=experiment_id, run_name=self.train.run_name,
                                   tags={RUN_TAG: key, TASK_TAG: self.task})
            self.run_id = run.info.run_id
            mlflow.log_params(flatten_params(params))
            logger.info("started MLflow run %s (%s) at %s", self.run_id, key, self.train.resolved_tracking_uri())
        return self.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if finite:
            self.mlflow.log_metrics(finite, step=step)

    def log_images(self, images: Mapping[str, np.ndarray], step: int) -> None:
        """uint8 [H, W, 3] images, one series per key."""
        for key, image in images.items():
            self.mlflow.log_image(image, key=key, step=step)

    def log_final(self, model: Any, checkpoint_dir: Path, registered_model: str) -> None:
        """Our checkpoint folder as artifacts, and the model logged and registered."""
        import torch

        import avatar4d

        self.mlflow.log_artifacts(str(checkpoint_dir), artifact_path="checkpoint")
        # explicit requirements: MLflow's inference would re-import the model in a subprocess;
        # "pickle": MLflow 3.17 defaults to the torch.export format ("pt2"), which needs an input example
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"avatar4d=={avatar4d.__version__}"]
        self.mlflow.pytorch.log_model(model, name="model", registered_model_name=registered_model,
                                      pip_requirements=requirements, serialization_format="pickle")
        logger.info("registered the final model as %s", registered_model)

    def end(self, status: str = "FINISHED") -> None:
        if self.mlflow.active_run() is not None:
            self.mlflow.end_run(status=status)
