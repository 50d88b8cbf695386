"""Logging an evaluation to MLflow (imported only when used; the core never imports mlflow at import time).

MLflow's own precedence: the explicit tracking URI / experiment, then ``MLFLOW_TRACKING_URI`` /
``MLFLOW_EXPERIMENT_NAME``, then ``sqlite:///<out>/mlflow.db`` and ``avatar4d-eval``. One run per
evaluation: the config as params, every summary number as a metric ``<model>/<task>/<metric>``, the
report (JSON, HTML, sample sheets) as artifacts under ``report/``. ``mlflow.set_tracking_uri`` writes
``MLFLOW_TRACKING_URI`` into the process's environment; it is put back afterwards, so a later run in
the same process is not sent to this store.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from avatar4d.evaluation.report import EvalReport

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "avatar4d-eval"


def tracking_uri(explicit: str | None, out: Path) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def _restored_environment() -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _metric_name(*parts: str) -> str:
    return "/".join(re.sub(r"[^0-9A-Za-z_\-. ]", "_", part) for part in parts)


def log_report(report: EvalReport, folder: Path, *, uri: str, experiment: str | None, params: dict[str, Any],
               run_name: str | None = None) -> str:
    """Log ``report`` (already written to ``folder``) to MLflow; returns the run id."""
    import mlflow

    experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    with _restored_environment():
        client_uri = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            mlflow.set_experiment(experiment)
            with mlflow.start_run(run_name=run_name) as run:
                mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
                for model in report.models:
                    for task, row in model.summary.items():
                        values = {_metric_name(model.name, task, k): float(v) for k, v in row.items()
                                  if math.isfinite(v)}
                        mlflow.log_metrics(values)
                mlflow.log_artifacts(str(folder), artifact_path="report")
                return run.info.run_id
        finally:
            mlflow.set_tracking_uri(client_uri)
