"""A real two-node Ray cluster on this machine (cluster/local.py: `ray start --head` + a second
`ray start --address=…` node). The factory finds it through RAY_ADDRESS, spreads its actors over
both nodes, and survives losing the worker node mid-run (its actor is restarted on the head);
a driver without the cluster's token gets one line saying what to set, and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.integration.conftest import DOMAINS, cli_command, read_table, small_config

pytestmark = pytest.mark.integration

N = 48  # with the tiny GANs: enough work left on the removed node when both domains first commit


def _domains_with_rows(out) -> set[str]:
    import lance

    uri = out / "pairs.lance"
    if not (uri / "_versions").is_dir():
        return set()
    return set(lance.dataset(str(uri)).to_table(columns=["domain"]).column("domain").to_pylist())


def test_two_node_cluster_via_ray_address_survives_losing_a_node(tmp_path, subprocess_env):
    from cluster.local import LocalRayCluster

    out = tmp_path / "data"
    config_file = tmp_path / "factory.yaml"
    # one whole CPU per actor, two CPUs per node: the actors are spread one per node, and after the
    # worker node is lost its actor fits on the head
    config_file.write_text(small_config(out, samples_per_domain=N, chunk_size=2, num_cpus_per_actor=1.0,
                                        generator_kind="gan").to_yaml())
    cluster = LocalRayCluster(worker_nodes=1, cpus_per_node=2, fast_failure_detection=True)
    try:
        cluster.start()
        assert len(cluster.nodes) == 2 and cluster.pids()
        client = {**subprocess_env, **{k: v for k, v in cluster.client_env().items() if k.startswith("RAY_")}}

        # no token: one line naming what to set, within Ray's connect timeout, and no folder left
        no_token = {k: v for k, v in client.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
        refused_out = tmp_path / "refused"
        begin = time.monotonic()
        refused = subprocess.run(cli_command("run", "--out", str(refused_out), "--no-progress", "--address",
                                             cluster.address), env=no_token, capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode == 1, refused.stderr[-2000:]
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "RAY_AUTH_MODE=token" in lines[0] and "Traceback" not in refused.stderr, lines
        assert time.monotonic() - begin < 60 and not refused_out.exists()

        driver = subprocess.Popen(cli_command("run", "--config", str(config_file), "--out", str(out), "--no-progress"),
                                  env={**client, "RAY_ADDRESS": cluster.address}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            while _domains_with_rows(out) != set(DOMAINS):  # both actors (one per node) have committed
                assert driver.poll() is None, driver.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "the two actors did not both commit within 300 s"
                time.sleep(0.2)
            cluster.remove_node("worker0")
            stdout, stderr = driver.communicate(timeout=400)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        assert driver.returncode == 0, stderr[-3000:]
        assert "2 node(s)" in stdout
    finally:
        cluster.stop()
    assert not cluster.pids(), "processes of the local cluster survived stop()"

    summary = json.loads((out / ".factory" / "last-run.json").read_text())
    assert summary["ray_address"] == cluster.address
    assert len(set(summary["actor_nodes"].values())) == 2
    assert len(summary["chunks_per_node"]) == 2 and all(count > 0 for count in summary["chunks_per_node"].values())
    assert summary["actor_failures"] >= 1 and summary["actor_restarts"] >= 1
    assert summary["committed_chunks"] == summary["planned_chunks"]
    table, _ = read_table(out, "pairs", ["sample_id"])
    ids = table.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(DOMAINS) * N
    multiview, _ = read_table(out, "multiview", ["identity_id"])
    assert multiview.num_rows == len(set(multiview.column("identity_id").to_pylist())) == len(DOMAINS) * 2
