"""A real renderer training run on CPU: Ray Train (2 workers), DeepSpeed (gloo), the factory's world
multiview sets in Lance, MLflow on sqlite.

- the decoder/SR unfreeze and the adversarial terms switch on at the configured image count (logged
  per step, each step once), also across a worker killed after the switch's step: Ray restarts the
  group from the last checkpoint and the step count continues;
- MLflow holds the source | driving | output | ground-truth grid, the checkpoint and a registered model;
- the final folder holds the renderer and its motion encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.config import apply_overrides
from train.engine import FAULT_ENV, read_events

pytestmark = pytest.mark.integration

SWITCH_IMAGES = 12  # 2 workers × micro-batch 2 = 4 images per step: steps 1-3 frozen, 4-6 not


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from train.renderer.data import make_multiview

    folder = tmp_path_factory.mktemp("renderer") / "data"
    make_multiview(folder, domains=("pixar",), identities=2, expressions=2, cameras=2)
    return folder


def test_switches_happen_at_the_image_count_and_a_killed_worker_resumes(data, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from avatar4d.models.renderer import MotionAwareRenderer, MotionEncoder
    from train.renderer.recipes import tiny
    from train.runner import prepare_config, run_training
    from train.tracking import RUN_TAG, run_key

    config = apply_overrides(tiny(), {
        "data": str(data), "train.storage_path": str(tmp_path / "runs"), "train.steps": 6,
        "train.micro_batch_size": 2, "train.checkpoint_every": 3, "train.log_every": 1, "train.max_failures": 1,
        "loss.freeze_images": SWITCH_IMAGES, "loss.high_resolution_images": SWITCH_IMAGES}).with_defaults("tiny")
    fault = tmp_path / "fault.json"
    fault.write_text(json.dumps({"step": 5, "rank": 1}))
    monkeypatch.setenv(FAULT_ENV, str(fault))  # the local Ray's workers inherit it
    result = run_training(config, num_cpus=2, progress=False)
    assert fault.with_name("fault.json.fired").is_file(), "the fault did not fire"
    assert result.final_step == 6
    starts = [e for e in read_events(Path(result.run_dir)) if e["event"] == "start"]
    assert [(s["first_step"], s["restored_from"]) for s in starts] == [(1, None), (4, 3)]

    config = prepare_config(config)
    client = MlflowClient(config.train.tracking_uri)
    experiment = client.get_experiment_by_name(config.train.experiment)
    (run,) = client.search_runs([experiment.experiment_id],
                                filter_string=f"tags.`{RUN_TAG}` = '{run_key(config.train)}'")
    history = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
               for key in ("renderer_tail_trained", "images_seen", "neural_resolution", "adv_d", "loss")}
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 6  # each step once, replay included
    assert history["images_seen"] == {step: 4.0 * (step - 1) for step in range(1, 7)}
    assert history["renderer_tail_trained"] == {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 1.0, 6: 1.0}
    assert history["neural_resolution"] == {1: 16.0, 2: 16.0, 3: 16.0, 4: 32.0, 5: 32.0, 6: 32.0}
    assert sorted(history["adv_d"]) == [4, 5, 6]  # adversarial terms only after the switch
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any(Path(p).name.startswith("reenactment+step+") for p in images), images
    assert client.search_model_versions(f"name='{config.train.registered_model}'")
    assert run.info.status == "FINISHED"

    final = Path(result.run_dir) / "final"
    renderer = MotionAwareRenderer.from_pretrained(final)
    encoder = MotionEncoder.from_pretrained(final / "motion_encoder")
    assert renderer.config == config.model and encoder.config == config.motion_encoder
