"""A real two-node Ray cluster on this machine (cluster/local.py: `ray start --head` + a second
`ray start --address=…` node): `avatar4d factory run --address …` places actors on both nodes."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.integration.conftest import DOMAINS, cli_command, read_table, small_config

pytestmark = pytest.mark.integration

N = 6


def test_factory_runs_actors_on_both_nodes_of_a_two_node_cluster(tmp_path, subprocess_env):
    from cluster.local import LocalRayCluster

    out = tmp_path / "data"
    config_file = tmp_path / "factory.yaml"
    # one whole CPU per actor and one CPU per node: the two domains' actors must land on different nodes
    config_file.write_text(small_config(out, samples_per_domain=N, num_cpus_per_actor=1.0).to_yaml())
    cluster = LocalRayCluster(worker_nodes=1, cpus_per_node=1)
    try:
        cluster.start()
        assert len(cluster.nodes) == 2 and cluster.pids()
        env = {**subprocess_env, **{k: v for k, v in cluster.client_env().items() if k.startswith("RAY_")}}
        run = subprocess.run(cli_command("run", "--config", str(config_file), "--out", str(out), "--no-progress",
                                         "--address", cluster.address),
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "2 node(s)" in run.stdout
    finally:
        cluster.stop()
    assert not cluster.pids(), "processes of the local cluster survived stop()"

    summary = json.loads((out / ".factory" / "last-run.json").read_text())
    assert len(set(summary["actor_nodes"].values())) == 2
    assert len(summary["chunks_per_node"]) == 2 and all(count > 0 for count in summary["chunks_per_node"].values())
    assert summary["ray_address"] == cluster.address
    table, _ = read_table(out, "pairs", ["sample_id"])
    ids = table.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(DOMAINS) * N
