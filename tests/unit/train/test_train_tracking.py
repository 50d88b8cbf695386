"""MLflow tracking without Ray: the driver's run life cycle, steps logged once, the registered
pyfunc loaded and called in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from train.config import TrainConfig
from train.tracking import RunTracking, WorkerTracker, resolve_tracking


@pytest.fixture()
def train(tmp_path, monkeypatch) -> TrainConfig:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return resolve_tracking(TrainConfig(run_name="r", storage_path=str(tmp_path / "runs"), steps=10,
                                         registered_model="avatar4d-test"))


def test_a_run_is_found_again_extensions_are_recorded_and_status_is_set(train):
    tracking = RunTracking(train, "vae")
    run_id = tracking.open({"train": {"steps": 10}})
    tracking.end("FAILED")
    assert tracking.client.get_run(run_id).info.status == "FAILED"
    longer = RunTracking(train.replace(steps=30), "vae")
    assert longer.open({"train": {"steps": 30}}) == run_id
    run = longer.client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags["avatar4d.steps"] == "30"
    assert run.data.params["extension.1.train.steps"] == "30" and run.data.params["extension.1.from_steps"] == "10"
    longer.end("KILLED")
    assert longer.client.get_run(run_id).info.status == "KILLED"
    fresh = RunTracking(train, "vae").open({"train": {"steps": 10}}, fresh=True)
    assert fresh != run_id  # a start from scratch does not inherit the abandoned attempt's history


def test_steps_logged_by_an_earlier_attempt_are_not_logged_again(train):
    tracking = RunTracking(train, "vae")
    run_id = tracking.open({})
    first = WorkerTracker(train.tracking_uri, run_id)
    for step in (5, 10, 15):
        first.log_metrics({"loss": float(step), "step": step}, step)
    replay = WorkerTracker(train.tracking_uri, run_id)  # restarted from the checkpoint at step 10
    for step in (15, 20):
        replay.log_metrics({"loss": -1.0 if step == 15 else float(step), "step": step}, step)
    history = {m.step: m.value for m in tracking.client.get_metric_history(run_id, "loss")}
    assert history == {5: 5.0, 10: 10.0, 15: 15.0, 20: 20.0}
    assert len(tracking.client.get_metric_history(run_id, "loss")) == 4


def test_the_registered_model_loads_and_predicts_in_a_fresh_process(train, tmp_path):
    import torch

    from avatar4d.models.vae import VAE_PRESETS, TriplaneVAE

    torch.manual_seed(0)
    vae = TriplaneVAE(VAE_PRESETS.get("tiny"))
    vae.save_pretrained(tmp_path / "final", step=10)
    with torch.no_grad():
        planes = torch.zeros(1, vae.config.num_planes, vae.config.in_channels, vae.config.resolution,
                             vae.config.resolution)
        latent_shape = list(vae.encode_triplane(planes).shape)
    tracking = RunTracking(train, "vae")
    run_id = tracking.open({})
    tracking.log_final(tmp_path / "final", "avatar4d-test")
    tracking.log_final(tmp_path / "final", "avatar4d-test")  # the same model again: no second version
    versions = tracking.client.search_model_versions("name='avatar4d-test'")
    assert [v.run_id for v in versions] == [run_id]
    requirements = Path(tracking.client.download_artifacts(run_id, "model/requirements.txt", str(tmp_path)))
    assert "avatar4d" not in requirements.read_text()  # avatar4d travels as code, pins are installable
    code = (f"import json, mlflow\nmlflow.set_tracking_uri({train.tracking_uri!r})\n"
            "model = mlflow.pyfunc.load_model('models:/avatar4d-test/1')\n"
            "out = model.predict(model.input_example)\n"
            "print(json.dumps({k: list(v.shape) for k, v in out.items()}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    shapes = json.loads(result.stdout.strip().splitlines()[-1])
    assert shapes == {"latent": latent_shape, "reconstruction": list(planes.shape)}
