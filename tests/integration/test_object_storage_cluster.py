"""The multi-node story on this machine with object storage instead of a shared filesystem: a real
two-node Ray cluster (cluster/local.py, one CPU per node) and a real S3-compatible server
(cluster/local_s3.py). The factory writes its datasets and generator cache to the bucket; the VAE
trainer reads them from there with two workers, one per node (two 1-CPU workers on two 1-CPU
nodes), and keeps its checkpoints and final model in the bucket (Ray Train on ``s3://``), with
MLflow's artifacts there too. Every process the test started is stopped by its own id."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.conftest import small_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # trains the VAE (DeepSpeed, 2 workers) for 4 steps

BUCKET = "avatar4d"
DOMAINS = ["pixar", "greek_statue"]


def test_factory_and_two_node_trainer_on_object_storage(tmp_path, subprocess_env, monkeypatch):
    """Both drivers run as the user would (`avatar4d factory run` / `avatar4d train vae` with
    ``--address`` and the cluster's token in the environment: Ray reads the token settings at import)."""
    from cluster.local import LocalRayCluster
    from cluster.local_s3 import LocalS3Server

    with LocalS3Server(buckets=[BUCKET], log_path=tmp_path / "moto.log") as s3:
        env = {**subprocess_env, **s3.env(), "AVATAR4D_CACHE_DIR": str(tmp_path / "node-cache")}
        cluster = LocalRayCluster(worker_nodes=1, cpus_per_node=1)
        cluster_env = cluster.client_env
        cluster.client_env = lambda: {**cluster_env(), **env}  # the nodes read the same bucket
        try:
            cluster.start()
            client = {**cluster.client_env(), "PYTHONPATH": env["PYTHONPATH"]}
            data = f"s3://{BUCKET}/data"
            config_file = tmp_path / "factory.yaml"
            config_file.write_text(small_config(data, domains=DOMAINS, samples_per_domain=4, chunk_size=2,
                                                multiview_identities=0).to_yaml())
            factory = subprocess.run([sys.executable, "-m", "avatar4d.cli", "factory", "run", "--config",
                                      str(config_file), "--out", data, "--address", cluster.address, "--no-progress"],
                                     env=client, capture_output=True, text=True, timeout=600, cwd=tmp_path)
            assert factory.returncode == 0, factory.stderr[-3000:]
            assert "8 pairs" in factory.stdout and "2 actors on 2 node(s)" in factory.stdout, factory.stdout

            trainer = subprocess.run(
                [sys.executable, "-m", "avatar4d.cli", "train", "vae", "--data", data, "--storage",
                 f"s3://{BUCKET}/runs", "--run-name", "vae-tiny", "--workers", "2", "--steps", "4", "--address",
                 cluster.address, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-progress",
                 "--set", "train.checkpoint_every=2", "--set", "train.log_every=2", "--set",
                 "train.micro_batch_size=2", "--set", "train.cpus_per_worker=1"],
                env=client, capture_output=True, text=True, timeout=600, cwd=tmp_path)
            assert trainer.returncode == 0, trainer.stderr[-3000:]
        finally:
            cluster.stop()
        assert not cluster.pids(), "processes of the local cluster survived stop()"

        keys = s3.keys(BUCKET)
        run = "runs/vae-tiny"
        for step in (2, 4):  # both ranks' ZeRO shards in the bucket: two workers trained
            for rank in (0, 1):
                assert f"{run}/checkpoint_{step:08d}/deepspeed/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in keys
        assert {f"{run}/final/{name}" for name in ("model.safetensors", "config.json", "checkpoint.json")} <= set(keys)
        assert any(key.startswith("runs/mlartifacts/") and key.endswith("model.safetensors") for key in keys), keys
        for domain in DOMAINS:
            assert f"data/generators/world-tiny/{domain}/checkpoint.json" in keys
        assert not (tmp_path / "s3:").exists()
        for output in (factory.stdout, factory.stderr, trainer.stdout, trainer.stderr):
            assert s3.secret_key not in output

        # the final model reads back from the bucket
        from avatar4d import storage
        from avatar4d.models.vae import load_vae
        from train.vae.recipes import tiny

        for key, value in {**s3.env(), "AVATAR4D_CACHE_DIR": str(tmp_path / "reader-cache")}.items():
            monkeypatch.setenv(key, value)
        vae, info = load_vae(storage.local_copy(f"s3://{BUCKET}/{run}/final", marker="checkpoint.json"))
        # (the trainer estimates the latent scale from the data; every other field is the recipe's)
        assert info.step == 4 and vae.config.replace(latent_scale_factor=1.0) == tiny().model.replace(
            latent_scale_factor=1.0)
    assert s3.process is not None and s3.process.poll() is not None

