"""A real multi-node Ray cluster on this machine, for tests and for trying the factory on "a cluster".

Each node is a ``ray start --block`` process started in its own process group (session), so its
GCS, raylet, agents and workers are all members of that group; stopping the cluster kills exactly
those process groups (SIGTERM, then SIGKILL after a grace period) — never ``ray stop``, which would
also stop every other Ray instance of the user. All ports are picked free on 127.0.0.1, and the
cluster gets its own temp dir, so it runs beside other local Ray instances.

    with LocalRayCluster(worker_nodes=1, cpus_per_node=1) as cluster:
        run_factory(config, address=cluster.address)

or from a shell (blocks until Ctrl-C, then stops the nodes it started):

    python -m cluster.local --worker-nodes 1 --cpus-per-node 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

WORKER_NODE_RESOURCE = "avatar4d_worker_node"
"""Custom resource every worker node (not the head) advertises, one unit each."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 a moment ago (all sockets held open while
    picking, so the OS cannot hand the same port out twice, as back-to-back :func:`free_port` calls can)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _ray_executable() -> str:
    beside_python = Path(sys.executable).with_name("ray")
    found = str(beside_python) if beside_python.exists() else shutil.which("ray")
    if not found:
        raise RuntimeError("the `ray` command is not installed next to this Python")
    return found


@dataclass
class RayNodeProcess:
    """One ``ray start --block`` process; its process group holds every process of the node."""

    role: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pgid(self) -> int:
        return self.process.pid  # started with start_new_session=True: it leads its own group

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class LocalRayCluster:
    """A head node plus ``worker_nodes`` worker nodes, each a separate raylet on 127.0.0.1."""

    worker_nodes: int = 1
    cpus_per_node: int = 1
    start_timeout_s: float = 60.0
    object_store_bytes: int = 128 * 1024**2
    fast_failure_detection: bool = False  # the GCS declares a silent node dead after ~3 s (Ray: ~15-30 s)
    temp_dir: Path | None = None
    nodes: list[RayNodeProcess] = field(default_factory=list)
    address: str = ""
    _own_temp_dir: bool = False

    def start(self) -> LocalRayCluster:
        """Start the head and the worker nodes; wait until all of them joined; return self."""
        if self.temp_dir is None:
            # short path: Ray's unix sockets live under it (108-byte limit)
            self.temp_dir = Path(tempfile.mkdtemp(prefix="a4d-ray-"))
            self._own_temp_dir = True
        self._ensure_token()
        port, client_port = free_ports(2)
        try:
            self._start_node("head", ["--head", f"--port={port}", "--include-dashboard=false",
                                      f"--ray-client-server-port={client_port}"])
            self.address = self._head_address(port)
            self._wait_for_nodes(1)
            for index in range(self.worker_nodes):
                resources = json.dumps({WORKER_NODE_RESOURCE: 1})
                self._start_node(f"worker{index}", [f"--address={self.address}", f"--resources={resources}"])
            self._wait_for_nodes(1 + self.worker_nodes)
        except BaseException:
            self.stop()
            raise
        logger.info("local Ray cluster up at %s (%d nodes)", self.address, 1 + self.worker_nodes)
        return self

    def _start_node(self, role: str, role_args: list[str]) -> None:
        assert self.temp_dir is not None
        log_path = self.temp_dir / f"{role}.log"
        node, objects, metrics, runtime_env, agent, agent_grpc = free_ports(6)
        command = [
            _ray_executable(), "start", "--block", *role_args,
            f"--num-cpus={self.cpus_per_node}", "--num-gpus=0",
            f"--object-store-memory={self.object_store_bytes}",
            f"--node-manager-port={node}", f"--object-manager-port={objects}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats",
        ]
        if role == "head":
            command.append(f"--temp-dir={self.temp_dir}")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=self.client_env(), start_new_session=True)
        self.nodes.append(RayNodeProcess(role, process, log_path))

    @property
    def token_path(self) -> Path:
        assert self.temp_dir is not None
        return self.temp_dir / "auth_token"

    def _ensure_token(self) -> None:
        """The cluster's own token-auth secret (Ray 2.60 clusters require one; ``~/.ray`` is not used)."""
        import secrets

        if not self.token_path.is_file():
            self.token_path.write_text(secrets.token_hex(32))
            self.token_path.chmod(0o600)

    def client_env(self) -> dict[str, str]:
        """Environment for processes that connect to this cluster (drivers, ``avatar4d factory run
        --address``): Ray 2.60 clusters use token authentication; a driver given an explicit
        address needs ``RAY_AUTH_MODE=token`` and the token (here ``RAY_AUTH_TOKEN_PATH``)."""
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_AUTH_TOKEN_PATH": str(self.token_path)}
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_AUTH_TOKEN", None)
        if self.fast_failure_detection:
            env.update({"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                        "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"})
        return env

    def _head_address(self, port: int) -> str:
        """The GCS address as the head advertises it (Ray picks the node IP, not 127.0.0.1)."""
        assert self.temp_dir is not None
        record = self.temp_dir / "ray_current_cluster"
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            if record.is_file():
                address = record.read_text().strip()
                if address.endswith(f":{port}"):
                    return address
            time.sleep(0.2)
        raise TimeoutError(f"the Ray head did not start in {self.start_timeout_s:.0f}s; see {self.nodes[0].log_path}")

    def _check_alive(self) -> None:
        for node in self.nodes:
            if not node.alive():
                raise RuntimeError(f"Ray {node.role} node exited (rc={node.process.returncode}); "
                                   f"see {node.log_path}:\n{node.log_path.read_text()[-2000:]}")

    def _wait_for_nodes(self, expected: int) -> None:
        """Poll the GCS (in a short-lived subprocess, so this process stays unconnected) until
        ``expected`` nodes are alive."""
        deadline = time.monotonic() + self.start_timeout_s
        probe = ("import ray, sys\n"
                 f"ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False)\n"
                 "print(sum(1 for n in ray.nodes() if n['Alive']))\n")
        while time.monotonic() < deadline:
            self._check_alive()
            result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                    env=self.client_env(), timeout=60)
            if result.returncode == 0 and result.stdout.strip().splitlines()[-1:] == [str(expected)]:
                return
            time.sleep(0.5)
        raise TimeoutError(f"the local Ray cluster did not reach {expected} nodes in {self.start_timeout_s:.0f}s")

    def pids(self) -> set[int]:
        """Process ids of every live process of this cluster: the members of the node process groups
        (GCS, raylets, agents), the descendants of the node processes (workers lead their own groups
        and rename themselves ``ray::…``), and processes naming this cluster's unique temp dir on
        their command line (workers whose raylet already died)."""
        import psutil

        groups = {node.pgid for node in self.nodes}
        marker = str(self.temp_dir) if self.temp_dir is not None else None
        found = {pid for processes in self.node_processes().values() for pid in processes}
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                ours = marker is not None and any(marker in arg for arg in proc.info["cmdline"] or ())
                if ours or os.getpgid(proc.pid) in groups:
                    found.add(proc.pid)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        found.discard(os.getpid())
        return found

    def node_processes(self) -> dict[str, set[int]]:
        """Node role → the live process ids under its ``ray start`` process (GCS, raylet, agents, and
        the workers and actors the raylet started)."""
        import psutil

        tree = {}
        for node in self.nodes:
            try:
                root = psutil.Process(node.process.pid)
                tree[node.role] = {root.pid, *(child.pid for child in root.children(recursive=True))}
            except psutil.Error:
                tree[node.role] = set()
        return tree

    def remove_node(self, role: str) -> None:
        """Kill one worker node abruptly (SIGKILL to its process group, as when a machine is lost);
        the cluster keeps running without it."""
        node = next((n for n in self.nodes if n.role == role), None)
        if node is None or role == "head":
            raise ValueError(f"no worker node {role!r}; worker nodes: {[n.role for n in self.nodes[1:]]}")
        _signal_group(node.pgid, signal.SIGKILL)
        node.process.wait(timeout=30)
        self.nodes.remove(node)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the nodes this object started (worker nodes first): SIGTERM to their process groups,
        then SIGKILL to the groups and to any of this cluster's workers still alive; idempotent."""
        for node in reversed(self.nodes):
            _signal_group(node.pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.2)
        for node in reversed(self.nodes):
            _signal_group(node.pgid, signal.SIGKILL)
        for pid in self.pids() if self.nodes else ():
            _signal_pid(pid, signal.SIGKILL)
        for node in self.nodes:
            try:
                node.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("Ray %s node (pid %d) did not exit", node.role, node.process.pid)
        self.nodes.clear()
        if self._own_temp_dir and self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start a local multi-node Ray cluster; Ctrl-C stops it.")
    parser.add_argument("--worker-nodes", type=int, default=1, help="worker nodes beside the head")
    parser.add_argument("--cpus-per-node", type=int, default=1, help="CPUs each node advertises")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with LocalRayCluster(worker_nodes=args.worker_nodes, cpus_per_node=args.cpus_per_node) as cluster:
        serve_until_interrupted(f"Ray cluster at {cluster.address}; run e.g.\n"
                                f"  RAY_AUTH_MODE=token avatar4d factory run --address {cluster.address}\n")
    return 0


def serve_until_interrupted(message: str) -> None:
    """Print ``message`` and block until Ctrl-C (the caller's ``with`` block then stops what it started)."""
    sys.stdout.write(f"{message}Ctrl-C stops it.\n")
    sys.stdout.flush()
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
