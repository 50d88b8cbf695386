"""Real training runs on CPU: Ray Train (2 workers), DeepSpeed ZeRO-2 (gloo), Lance data made by the
factory's own stages, MLflow on sqlite. Each run starts its own local Ray and stops it (the
conftest checks that no Ray process outlives a test).

- the tiny VAE and the tiny DiT overfit four pairs (loss thresholds), and their MLflow runs hold
  params, metrics, sample grids and a registered model;
- re-running a DiT run with the same name and more steps continues its step count, records the
  extension in MLflow and keeps one registered version for the run;
- a worker killed mid-run (fault injection) makes Ray restart the group from the last checkpoint,
  the replayed steps compute what an uninterrupted run computes, and MLflow holds each step once;
- a run that fails before its first checkpoint ends FAILED in MLflow and starts again without
  ``--resume``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from train.config import apply_overrides
from train.engine import FAULT_ENV, read_events

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Four real pairs (2 domains × 2, tiny GANs) and their encoded rows (tiny encoders, random tiny VAE)."""
    from train.fixtures import make_encoded, make_pairs

    folder = tmp_path_factory.mktemp("train") / "data"
    make_pairs(folder, per_domain=2)
    make_encoded(folder)
    return folder


def run(config, **kwargs):
    from train.runner import run_training

    return run_training(config, num_cpus=2, progress=False, **kwargs)


def mlflow_state(config):
    from mlflow.tracking import MlflowClient

    from train.runner import prepare_config

    config = prepare_config(config)
    client = MlflowClient(config.train.tracking_uri)
    from train.tracking import RUN_TAG, run_key

    experiment = client.get_experiment_by_name(config.train.experiment)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_key(config.train)}'")
    assert len(runs) == 1, "one MLflow run per training run, whatever the attempts"
    return client, runs[0]


def losses(client, run_id: str, key: str = "loss") -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def assert_tracked(config, client, mlflow_run, metric_keys: set[str], image_key: str, versions: int) -> None:
    params = mlflow_run.data.params
    assert params["train.zero_stage"] == "2" and params["train.num_workers"] == "2" and params["task"] == config.task
    assert metric_keys <= set(mlflow_run.data.metrics)
    images = [a.path for a in client.list_artifacts(mlflow_run.info.run_id, "images")]
    assert any(Path(p).name.startswith(f"{image_key}+step+") and p.endswith(".png") for p in images), images
    checkpoint = {Path(a.path).name for a in client.list_artifacts(mlflow_run.info.run_id, "checkpoint")}
    assert checkpoint == {"model.safetensors", "checkpoint.json", "config.json"}
    found = client.search_model_versions(f"name='{config.train.registered_model}'")
    assert len(found) == versions and {v.run_id for v in found} == {mlflow_run.info.run_id}
    assert mlflow_run.info.status == "FINISHED"


def test_vae_two_workers_overfit_and_are_tracked(data, tmp_path):
    from avatar4d.models.vae import load_vae
    from train.vae.recipes import tiny

    config = apply_overrides(tiny(), {
        "data": str(data), "train.storage_path": str(tmp_path / "runs"), "train.steps": 40,
        "train.checkpoint_every": 20, "train.log_every": 5}).with_defaults("tiny")
    result = run(config)
    assert result.final_step == 40
    client, mlflow_run = mlflow_state(config)
    curve = losses(client, mlflow_run.info.run_id)
    assert sorted(curve) == list(range(5, 41, 5))
    first, last = curve[5], (curve[35] + curve[40]) / 2
    assert last < 0.9 * first, f"VAE loss did not fall: {curve}"
    assert_tracked(config, client, mlflow_run, {"triplane_l1", "depth_l1", "lpips", "kl", "preview_triplane_l1"},
                   "reconstruction", versions=1)
    run_dir = Path(result.run_dir)
    shards = {p.name for p in (run_dir / "checkpoint_00000040" / "deepspeed").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= shards
    vae, info = load_vae(run_dir / "final")
    # the saved VAE carries its own latent scale (1 / std of its latents), not the release's
    assert info.step == 40 and vae.config == config.model.replace(latent_scale_factor=vae.config.latent_scale_factor)
    assert vae.config.latent_scale_factor != config.model.latent_scale_factor
    assert "estimated" in info.metadata["latent_scale"]


def test_dit_two_workers_overfit_are_tracked_and_resume_by_name(data, tmp_path, subprocess_env):
    from avatar4d.models.dit import load_dit
    from train.dit.recipes import tiny

    overrides = {"data": str(data), "train.storage_path": str(tmp_path / "runs"), "train.steps": 40,
                 "train.micro_batch_size": 2, "train.checkpoint_every": 20, "train.log_every": 5,
                 "vae_checkpoint": str(data / "vae-tiny")}
    config = apply_overrides(tiny(), overrides).with_defaults("tiny")
    result = run(config)
    assert result.final_step == 40
    client, mlflow_run = mlflow_state(config)
    curve = losses(client, mlflow_run.info.run_id)
    assert curve[40] < 0.8 * curve[5], f"DiT loss did not fall: {curve}"
    assert_tracked(config, client, mlflow_run, {"mse", "vb", "preview_sample_mse"}, "latents", versions=1)

    # the same run again, through the command line, with more steps
    command = [sys.executable, "-m", "avatar4d.cli", "train", "dit", "--data", str(data), "--storage",
               str(tmp_path / "runs"), "--resume", "--steps", "50", "--vae-checkpoint", str(data / "vae-tiny"),
               "--no-progress", "--set", "train.micro_batch_size=2", "--set", "train.checkpoint_every=20",
               "--set", "train.log_every=5"]
    resumed = subprocess.run(command, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip().splitlines()[-1].startswith("run dit-tiny: step 50, loss ")
    longer = apply_overrides(config, {"train.steps": 50})
    starts = [e for e in read_events(Path(result.run_dir)) if e["event"] == "start"]
    assert [(s["first_step"], s["restored_from"]) for s in starts] == [(1, None), (41, 40)]
    client, mlflow_run = mlflow_state(longer)
    assert sorted(losses(client, mlflow_run.info.run_id)) == list(range(5, 51, 5))
    assert len(client.get_metric_history(mlflow_run.info.run_id, "loss")) == 10  # each step once
    assert mlflow_run.data.params["train.steps"] == "40" and mlflow_run.data.tags["avatar4d.steps"] == "50"
    assert mlflow_run.data.params["extension.1.train.steps"] == "50"
    versions = client.search_model_versions(f"name='{config.train.registered_model}'")
    assert len(versions) == 1 and versions[0].tags["avatar4d.step"] == "50"  # one version per run
    model, info = load_dit(Path(result.run_dir) / "final")
    assert info.step == 50 and model.config.input_size == (64, 16)


def test_a_killed_worker_restarts_the_group_and_the_replay_is_the_same_computation(data, tmp_path, monkeypatch):
    from train.dit.recipes import tiny
    from train.runner import TrainingError

    def dit(storage: str, **extra):
        return apply_overrides(tiny(), {
            "data": str(data), "train.storage_path": str(tmp_path / storage), "train.steps": 24,
            "train.micro_batch_size": 2, "train.checkpoint_every": 10, "train.log_every": 2,
            "train.max_failures": 1, **extra}).with_defaults("tiny")

    fault = tmp_path / "fault.json"
    fault.write_text(json.dumps({"step": 13, "rank": 1}))
    monkeypatch.setenv(FAULT_ENV, str(fault))  # the local Ray's workers inherit it
    config = dit("runs")
    result = run(config)
    assert not fault.exists() and fault.with_name("fault.json.fired").is_file(), "the fault did not fire"
    assert result.final_step == 24
    events = read_events(Path(result.run_dir))
    starts = [e for e in events if e["event"] == "start"]
    checkpoints_before = [e["step"] for e in events[:events.index(starts[1])] if e["event"] == "checkpoint"]
    assert checkpoints_before == [10]
    assert [(s["first_step"], s["restored_from"]) for s in starts] == [(1, None), (11, 10)]
    assert [e["step"] for e in events if e["event"] == "end"] == [24]
    client, mlflow_run = mlflow_state(config)
    restarted = losses(client, mlflow_run.info.run_id)
    assert len(client.get_metric_history(mlflow_run.info.run_id, "loss")) == len(restarted) == 12  # steps 2..24 once

    # a run that fails before its first checkpoint: FAILED in MLflow, and the same config starts again
    fault.write_text(json.dumps({"step": 3, "rank": 0}))
    failing = dit("reference", **{"train.max_failures": 0})
    with pytest.raises(TrainingError):
        run(failing)
    client, failed_run = mlflow_state(failing)
    assert failed_run.info.status == "FAILED"
    assert not (failing.train.run_dir() / "run.json").exists()
    reference = run(failing)  # no resume needed; it is also the uninterrupted reference
    client, finished = mlflow_state(failing)
    assert finished.info.status == "FINISHED" and finished.info.run_id != failed_run.info.run_id
    uninterrupted = losses(client, finished.info.run_id)
    assert reference.final_step == 24 and sorted(uninterrupted) == sorted(restarted)
    for step in restarted:  # the steps replayed after the restart (12, 14 ...) were the same computation
        assert restarted[step] == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-6), step
