"""MLflow tracking: the driver owns the MLflow run, rank 0 logs into it.

(Ray Train V2 rejects ``MLflowLoggerCallback``.)

- **Where** (:func:`resolve_tracking`, on the driver): MLflow's precedence, the ``--tracking-uri`` /
  ``--experiment`` flags, then ``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_NAME``, then our default
  ``sqlite:///<storage>/mlflow.db`` and ``avatar4d``. A relative sqlite path is made absolute. A new
  experiment in a sqlite store keeps its artifacts next to the database (``<db folder>/mlartifacts``);
  any other store (an MLflow server) decides itself.
- **One MLflow run per training run** (:class:`RunTracking`, on the driver): found again on resume by
  the tag ``avatar4d.run`` = ``<storage>/<run name>``. Params are the flattened config; MLflow params
  are immutable, so extending a run (more steps) records ``extension.<n>.train.steps`` (and
  ``…from_step``) and updates the tag ``avatar4d.steps``. The driver ends the run FINISHED, FAILED
  (training failed) or KILLED (interrupted).
- **Metrics and sample grids** (:class:`WorkerTracker`, rank 0, plain ``MlflowClient`` calls so no
  worker process ever ends the run): each step is logged once; after a restart the steps already
  logged are skipped (the replay computes the same values, see :mod:`train.data`).
- **The final model** (:meth:`RunTracking.log_final`): our checkpoint folder as artifacts under
  ``checkpoint/`` and a pyfunc (:mod:`train.mlflow_model`) with a signature, an input example, the
  avatar4d core as ``code_paths`` and installable requirements, registered as
  ``registered_model``: one version per MLflow run (a resumed or extended run replaces its own
  earlier version unless that version has an alias).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from train.config import TrainConfig

logger = logging.getLogger(__name__)

RUN_TAG = "avatar4d.run"
TASK_TAG = "avatar4d.task"
STEPS_TAG = "avatar4d.steps"
EXTENSIONS_TAG = "avatar4d.extensions"
MAX_PARAM_CHARS = 6000
PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "avatar4d"
MAX_EXAMPLE_VALUES = 1 << 20  # input examples above this size are left out (JSON in the model folder)


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


def _absolute_sqlite(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).expanduser().resolve()}"
    return uri


def resolve_tracking(train: TrainConfig, environ: Mapping[str, str] | None = None) -> TrainConfig:
    """``train`` with ``tracking_uri`` and ``experiment`` fixed by MLflow's precedence (flag, then
    environment, then our default); call on the driver, where the user's environment is."""
    environ = os.environ if environ is None else environ
    uri = train.tracking_uri or environ.get(ENV_TRACKING_URI) or None
    experiment = train.experiment or environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT
    resolved = train.replace(tracking_uri=_absolute_sqlite(uri) if uri else None, experiment=experiment)
    return resolved.replace(tracking_uri=resolved.resolved_tracking_uri())


def _param_batches(params: Mapping[str, str]) -> list[list[Any]]:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    return [items[i:i + PARAMS_PER_BATCH] for i in range(0, len(items), PARAMS_PER_BATCH)]


class RunTracking:
    """The driver's side of a run's MLflow run (see the module docstring)."""

    def __init__(self, train: TrainConfig, task: str) -> None:
        from mlflow.tracking import MlflowClient

        if not train.tracking_uri or not train.experiment:
            raise ValueError("resolve the tracking settings first (train.tracking.resolve_tracking)")
        self.train, self.task = train, task
        self.client = MlflowClient(tracking_uri=train.tracking_uri)
        self.run_id: str | None = None

    def open(self, config: Mapping[str, Any], *, fresh: bool = False) -> str:
        """Start the MLflow run, or re-open the one of an earlier attempt (recording an extension).
        ``fresh``: the run starts from scratch (an earlier attempt left no checkpoint), so an MLflow
        run of that attempt is set aside (its tag gets an ``#abandoned`` suffix) and a new one starts."""
        client, train = self.client, self.train
        experiment = client.get_experiment_by_name(train.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None else
                         client.create_experiment(train.experiment, artifact_location=train.artifact_location()))
        key = run_key(train)
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{key}'", max_results=1,
                                   order_by=["attributes.start_time DESC"])
        if found and fresh:
            client.set_tag(found[0].info.run_id, RUN_TAG, f"{key}#abandoned")
            found = []
        if found:
            run = found[0]
            self.run_id = run.info.run_id
            client.update_run(self.run_id, status="RUNNING")
            self._record_extension(run)
            logger.info("continuing MLflow run %s of %s", self.run_id, key)
        else:
            run = client.create_run(experiment_id, run_name=train.run_name, tags={RUN_TAG: key, TASK_TAG: self.task})
            self.run_id = run.info.run_id
            for batch in _param_batches(flatten_params(config)):
                client.log_batch(self.run_id, params=batch)
            logger.info("started MLflow run %s (%s) at %s", self.run_id, key, train.tracking_uri)
        client.set_tag(self.run_id, STEPS_TAG, str(train.steps))
        return self.run_id

    def _record_extension(self, run: Any) -> None:
        previous = int(run.data.tags.get(STEPS_TAG, run.data.params.get("train.steps", self.train.steps)))
        if previous == self.train.steps:
            return
        count = int(run.data.tags.get(EXTENSIONS_TAG, "0")) + 1
        assert self.run_id is not None
        self.client.log_batch(self.run_id, params=_param_batches({
            f"extension.{count}.train.steps": str(self.train.steps),
            f"extension.{count}.from_steps": str(previous)})[0])
        self.client.set_tag(self.run_id, EXTENSIONS_TAG, str(count))
        logger.info("run extended from %d to %d steps", previous, self.train.steps)

    def end(self, status: str) -> None:
        """FINISHED, FAILED or KILLED."""
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)

    def log_final(self, checkpoint_dir: Path, registered_model: str) -> str:
        """Log the checkpoint and the pyfunc, register it (one version per run); return the model URI."""
        import mlflow

        import avatar4d
        from avatar4d.checkpoint.io import read_checkpoint_info

        assert self.run_id is not None
        self.client.log_artifacts(self.run_id, str(checkpoint_dir), artifact_path="checkpoint")
        info = read_checkpoint_info(checkpoint_dir)
        example = input_example(info.component, info.config)
        previous = os.environ.get(ENV_TRACKING_URI)
        mlflow.set_tracking_uri(self.train.tracking_uri)  # MLflow also writes it into os.environ, so the
        try:  # next run in this process would take it for the user's: the user's value is put back below
            # MLflow suggests type hints on predict(); this model declares its signature instead
            with mlflow.start_run(run_id=self.run_id), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                outputs = _predict_example(checkpoint_dir, example)
                model = mlflow.pyfunc.log_model(
                    name="model", python_model=str(Path(__file__).with_name("mlflow_model.py")),
                    artifacts={"checkpoint": str(checkpoint_dir)}, code_paths=[str(Path(avatar4d.__file__).parent)],
                    signature=mlflow.models.infer_signature(example, outputs),
                    input_example=example if sum(v.size for v in example.values()) <= MAX_EXAMPLE_VALUES else None,
                    pip_requirements=requirements())
            self._register(model.model_uri, registered_model, info.weights_sha256, info.step)
        finally:  # only the environment: MLflow's in-process URI stays, artifact downloads still resolve
            if previous is None:
                os.environ.pop(ENV_TRACKING_URI, None)
            else:
                os.environ[ENV_TRACKING_URI] = previous
        return model.model_uri

    def _register(self, model_uri: str, name: str, weights_sha256: str, step: int) -> None:
        import mlflow

        earlier = [v for v in self.client.search_model_versions(f"name='{name}'") if v.run_id == self.run_id]
        if any(v.tags.get("avatar4d.weights_sha256") == weights_sha256 for v in earlier):
            logger.info("model %s of this run is registered already", name)
            return
        printed = io.StringIO()
        with contextlib.redirect_stderr(printed):  # register_model prints its progress to stderr
            version = mlflow.register_model(model_uri, name, tags={"avatar4d.weights_sha256": weights_sha256,
                                                                  "avatar4d.step": str(step),
                                                                  RUN_TAG: run_key(self.train)})
        logger.info("%s", printed.getvalue().strip())
        for old in earlier:
            if getattr(old, "aliases", None):
                logger.warning("version %s of %s has aliases %s: kept", old.version, name, old.aliases)
            else:
                self.client.delete_model_version(name, old.version)
        logger.info("registered the final model as %s version %s", name, version.version)


def requirements() -> list[str]:
    """pip requirements of the pyfunc: the avatar4d core's dependencies (avatar4d itself is code)."""
    from importlib.metadata import version

    pins = []
    for package in ("torch", "numpy", "safetensors", "pyyaml"):
        text = version(package).split("+")[0]
        pins.append(f"{package}=={text}")
    return pins


def input_example(component: str, config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A one-sample input of the right shapes for the pyfunc's signature."""
    rng = np.random.default_rng(0)
    if component == "triplane_vae":
        shape = (1, config["num_planes"], config["in_channels"], config["resolution"], config["resolution"])
        return {"triplane": rng.standard_normal(shape).astype(np.float32)}
    if component == "dit":
        height, width = config["input_size"]

        def normal(*shape: int) -> np.ndarray:
            return rng.standard_normal(shape).astype(np.float32)

        return {"latent": normal(1, config["in_channels"], height, width),
                "timestep": np.array([500.0], dtype=np.float32),
                "clip_tokens": normal(1, config["clip_tokens"], config["clip_channels"]),
                "dino_tokens": normal(1, config["dino_tokens"], config["dino_channels"])}
    if component == "next3d_generator":
        from avatar4d.geometry.morphable import default_head_model

        head = default_head_model()
        z_dim = config["backbone"]["z_dim"]
        return {"z": rng.standard_normal((1, z_dim)).astype(np.float32),
                "camera": frontal_label(),
                "face_params": np.zeros((1, head.identity_dim + head.expression_dim + 3), dtype=np.float32)}
    if component == "motion_aware_renderer":
        from avatar4d.geometry.morphable import default_head_model

        head, sr = default_head_model(), config["superresolution"]
        side = sr["input_resolution"] * 2 ** len(sr["block_channels"])
        res, channels = config["plane_resolution"], config["plane_channels"]
        return {"source_image": rng.uniform(-1, 1, (1, 3, side, side)).astype(np.float32),
                "triplane": (0.3 * rng.standard_normal((1, 4, channels, res, res))).astype(np.float32),
                "motion": rng.standard_normal((1, config["motion_dim"])).astype(np.float32),
                "source_motion": rng.standard_normal((1, config["motion_dim"])).astype(np.float32),
                "face_params": np.zeros((1, head.identity_dim + head.expression_dim + 3), dtype=np.float32),
                "camera": frontal_label()}
    raise ValueError(f"no pyfunc for {component!r} checkpoints")


def frontal_label() -> np.ndarray:
    """[1, 25] the EG3D label of the frontal camera (the generator's example input)."""
    from avatar4d.geometry.camera import orbit_camera

    return orbit_camera(0.0, 0.0).to_label().numpy().astype(np.float32)


def _predict_example(checkpoint_dir: Path, example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from types import SimpleNamespace

    from train.mlflow_model import Avatar4dModel

    model = Avatar4dModel()
    model.load_context(SimpleNamespace(artifacts={"checkpoint": str(checkpoint_dir)}))
    return model.predict(None, example)


class WorkerTracker:
    """Rank 0's logging into the driver's MLflow run (no fluent API: the run's status is the driver's)."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id
        history = self.client.get_metric_history(run_id, "step")
        self.replayed_up_to = max((int(m.step) for m in history), default=0)  # logged by an earlier attempt

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Finite scalars at ``step``; steps an earlier attempt already logged are skipped."""
        import time

        from mlflow.entities import Metric

        if step <= self.replayed_up_to:
            return

        now = int(time.time() * 1000)
        finite = [Metric(k, float(v), now, step) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and math.isfinite(v)]
        if finite:
            self.client.log_batch(self.run_id, metrics=finite)

    def log_images(self, images: Mapping[str, np.ndarray], step: int) -> None:
        """uint8 [H, W, 3] images, one series per key (steps of an earlier attempt skipped)."""
        if step <= self.replayed_up_to:
            return
        for key, image in images.items():
            self.client.log_image(self.run_id, image, key=key, step=step)
