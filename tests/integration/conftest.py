"""Shared pieces of the factory integration tests: small configs, reading the datasets back, and
process hygiene (every Ray process a test starts is found by its own session and must be gone).

A Ray session started by ``ray.init`` is named ``session_<date>_<time>_<micros>_<pid of the
starting process>`` and every process of it names the session on its command line, so the Ray
processes of one driver are found exactly, whatever else runs on the machine.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
DOMAINS = ["pixar", "greek_statue"]


def small_config(out: Path, **overrides):
    """Two domains × 12 pairs (chunks of 3) + 1 identity per multiview set, tiny GANs, CPU actors
    on half a CPU each (1 torch thread)."""
    from factory.recipes import tiny
    from factory.stages import MultiviewConfig

    base = dict(out=str(out), domains=list(DOMAINS), samples_per_domain=12, multiview_identities=1, chunk_size=3,
                multiview_chunk_size=1, num_cpus_per_actor=0.5, max_in_flight_per_actor=2,
                multiview=MultiviewConfig(expressions=2, cameras=2, batch_size=2, num_threads=1))
    base.update(overrides)
    return tiny().replace(**base)


def read_table(out: Path, table: str, columns: list[str]):
    """All rows of ``<out>/<table>.lance`` (blobs as bytes) as a pyarrow Table, and the schema."""
    import lance

    dataset = lance.dataset(str(out / f"{table}.lance"))
    return dataset.to_table(columns=columns, blob_handling="all_binary"), dataset.schema


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "avatar4d.cli", "factory", *args]


_SESSION = re.compile(r"session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_(\d+)")


def ray_processes_of(driver_pid: int) -> list[psutil.Process]:
    """Live processes of the Ray sessions started by process ``driver_pid``."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            text = " ".join(proc.info["cmdline"] or ())
        except psutil.Error:
            continue
        if proc.pid != driver_pid and any(int(m) == driver_pid for m in _SESSION.findall(text)):
            found.append(proc)
    return found


def wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait for the processes to exit; return those still alive (same pid *and* start time)."""
    deadline = time.monotonic() + timeout_s
    alive = list(processes)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if alive:
            time.sleep(0.2)
    return alive


def kill_processes(processes: list[psutil.Process]) -> None:
    for proc in processes:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def assert_ray_gone(driver_pid: int, timeout_s: float = 30.0) -> None:
    """Every Ray process started by ``driver_pid`` exits within ``timeout_s`` (else: killed, and the
    test fails)."""
    alive = wait_gone(ray_processes_of(driver_pid), timeout_s)
    if alive:
        names = [(p.pid, p.name()) for p in alive]
        kill_processes(alive)
        pytest.fail(f"Ray processes of driver {driver_pid} outlived it: {names}")


@pytest.fixture(autouse=True)
def _no_ray_left_behind():
    """Tests that run the factory in this process must leave no Ray process behind."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
    assert_ray_gone(os.getpid())


@pytest.fixture()
def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env
