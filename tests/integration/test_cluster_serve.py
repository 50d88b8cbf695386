"""Ray Serve on the local multi-node cluster (cluster/local.py): a real two-node Ray cluster on
127.0.0.1, the avatar4d application deployed on it the way an operator does (`serve run --address`
with serve/serve_config.yaml, the file the RayService embeds), its replicas placed on both nodes,
a health request and a create-avatar request answered over HTTP on 127.0.0.1, and every process
the test started (the `serve run` driver, the nodes and their workers) stopped by its own id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from tests.integration.conftest import REPO
from tests.integration.test_serve import _create, _free_port, _portrait_png, _ready, _wait
from tests.unit.pipeline.checkpoints import make_checkpoints

pytestmark = pytest.mark.integration


def _deployment_config(root: Path, port: int) -> Path:
    """serve/serve_config.yaml with this test's checkpoints, store and port; one HTTP proxy (on the
    head: two proxies on one machine would bind the same port) and fixed replica counts."""
    config = yaml.safe_load((REPO / "serve" / "serve_config.yaml").read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["port"] = port
    application = config["applications"][0]
    application["args"].update(checkpoints=str(make_checkpoints(root / "checkpoints")), store_dir=str(root / "store"),
                               max_replicas=1)
    for deployment in application["deployments"]:
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 1
    path = root / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _replica_nodes(cluster) -> dict[str, str]:
    """Serve replica (its ``ray::ServeReplica:…`` process title) → the role of the node it runs on
    (the node whose ``ray start`` process it descends from)."""
    placed = {}
    for role, pids in cluster.node_processes().items():
        for pid in pids:
            try:
                title = " ".join(psutil.Process(pid).cmdline())
            except psutil.Error:
                continue
            if "ServeReplica" in title:
                placed[title.split()[0]] = role
    return placed


def test_serve_app_on_the_two_node_cluster(tmp_path, subprocess_env):
    from cluster.local import LocalRayCluster

    port = _free_port()
    config = _deployment_config(tmp_path, port)
    cluster = LocalRayCluster(worker_nodes=1, cpus_per_node=1)
    node_env = cluster.client_env
    # the nodes import serve.app (the controller builds the graph there) with one torch thread each
    cluster.client_env = lambda: {**node_env(), "PYTHONPATH": subprocess_env["PYTHONPATH"], "OMP_NUM_THREADS": "1"}
    driver = None
    log_path = tmp_path / "serve-run.log"
    try:
        cluster.start()
        with log_path.open("wb") as log:
            driver = subprocess.Popen([str(Path(sys.executable).with_name("serve")), "run", "--address",
                                       cluster.address, str(config)], env=cluster.client_env(), cwd=tmp_path,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: driver.poll() is not None or _ready(url), 300, "the application on the cluster to be ready")
        assert driver.poll() is None, log_path.read_text()[-3000:]

        assert requests.get(f"{url}/v1/health", timeout=30).json() == {"status": "ok"}
        created = _create(url, _portrait_png())
        assert created.status_code == 201, created.text
        avatar_id = created.json()["avatar_id"]
        assert (tmp_path / "store").is_dir() and any(avatar_id in p.name for p in (tmp_path / "store").rglob("*"))

        placed = _replica_nodes(cluster)
        assert len(placed) == 6, placed  # Preprocess, Encoders, AvatarGenerator, AvatarStore, FrameRenderer, Ingress
        assert set(placed.values()) == {"head", "worker0"}, placed  # Serve spreads the replicas over both nodes
    finally:
        if driver is not None and driver.poll() is None:
            driver.send_signal(signal.SIGINT)  # `serve run` deletes the application, then exits
            try:
                driver.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
        cluster.stop()
    assert driver.returncode is not None
    assert not cluster.pids(), "processes of the local cluster survived stop()"
    assert not psutil.pid_exists(driver.pid) or psutil.Process(driver.pid).status() == psutil.STATUS_ZOMBIE
