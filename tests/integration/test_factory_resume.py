"""SIGKILL the driver (`avatar4d factory run` in its own process group) mid-run: its local Ray goes
away with it, and re-running the same command resumes to exactly the requested rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from tests.integration.conftest import (
    DOMAINS,
    assert_ray_gone,
    cli_command,
    kill_processes,
    ray_processes_of,
    read_table,
    small_config,
    wait_gone,
)

pytestmark = pytest.mark.integration

N = 24


def _committed_rows(uri) -> int:
    import lance

    if not (uri / "_versions").is_dir():
        return 0
    return lance.dataset(str(uri)).count_rows()


def test_sigkill_driver_then_rerun_resumes_to_exact_rows(tmp_path, subprocess_env):
    out = tmp_path / "data"
    config_file = tmp_path / "factory.yaml"
    config_file.write_text(small_config(out, samples_per_domain=N, chunk_size=2).to_yaml())
    command = cli_command("run", "--config", str(config_file), "--out", str(out), "--no-progress", "--num-cpus", "2")
    total = len(DOMAINS) * N

    driver = subprocess.Popen(command, env=subprocess_env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ray_children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while _committed_rows(out / "pairs.lance") == 0:
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no chunk committed within 120 s"
            time.sleep(0.1)
        record = json.loads((out / ".factory" / "ray-local.json").read_text())
        ray_children = [psutil.Process(p["pid"]) for p in record["processes"] if psutil.pid_exists(p["pid"])]
        ray_children = [p for p in ray_children if p.create_time() == pytest.approx(
            next(r["create_time"] for r in record["processes"] if r["pid"] == p.pid))]
        assert record["driver_pid"] == driver.pid and ray_children
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        partial = _committed_rows(out / "pairs.lance")
        assert 0 < partial < total, f"kill came too late: {partial} of {total} rows committed"
        # the local Ray of the killed driver exits with it (kernel parent-death signal + raylet gone)
        assert not wait_gone(ray_children, timeout_s=30), "Ray processes outlived the killed driver"
        assert_ray_gone(driver.pid)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        kill_processes(ray_children + ray_processes_of(driver.pid))

    rerun = subprocess.Popen(command, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = rerun.communicate(timeout=300)
    finally:
        if rerun.poll() is None:
            rerun.kill()
            rerun.wait()
    assert rerun.returncode == 0, stderr[-3000:]
    assert_ray_gone(rerun.pid)
    assert not (out / ".factory" / "ray-local.json").exists()  # a finished run removes its Ray record
    table, _ = read_table(out, "pairs", ["sample_id"])
    ids = table.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == total
    assert set(ids) == {f"{d}/{i:08d}" for d in DOMAINS for i in range(N)}
    summary = json.loads((out / ".factory" / "last-run.json").read_text())
    assert summary["skipped_chunks"] >= partial // 2 and summary["committed_chunks"] > 0
    assert summary["skipped_chunks"] + summary["committed_chunks"] == summary["planned_chunks"]
    multiview, _ = read_table(out, "multiview", ["identity_id"])
    assert multiview.num_rows == len(set(multiview.column("identity_id").to_pylist())) == len(DOMAINS) * 2

