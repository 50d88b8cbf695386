"""The factory on object storage: ``--out s3://…`` against a real S3-compatible server (moto in
server mode, started here on 127.0.0.1 and stopped by its process id). Lance datasets, the
exactly-once ledger, orphan clean-up, the generator cache, the run record and the dataset card all
live in the bucket; an actor kill and a driver kill both end in exactly the requested rows; the
keys never appear in output, logs or stored records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from tests.integration.conftest import DOMAINS, assert_ray_gone, cli_command, kill_processes, small_config

pytestmark = pytest.mark.integration

BUCKET = "avatar4d"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    from cluster.local_s3 import LocalS3Server

    with LocalS3Server(buckets=[BUCKET], log_path=tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server
    assert server.process is not None and server.process.poll() is not None  # stopped by its own pid


@pytest.fixture()
def s3_env(s3_server, monkeypatch, tmp_path):
    """This process (and the local Ray it starts) sees the server through the standard AWS variables."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AVATAR4D_CACHE_DIR", str(tmp_path / "cache"))  # node-local copies and run state
    return s3_server


def _rows(uri: str, column: str) -> list:
    import lance

    from avatar4d.storage import storage_options

    return lance.dataset(uri, storage_options=storage_options(uri)).to_table(columns=[column]).column(
        column).to_pylist()


def _assert_no_orphans(server, prefix: str) -> None:
    """Every data object in the bucket is referenced by the dataset's latest version."""
    import lance

    from avatar4d.storage import storage_options

    for table in ("pairs", "multiview"):
        uri = f"s3://{BUCKET}/{prefix}/{table}.lance"
        dataset = lance.dataset(uri, storage_options=storage_options(uri))
        referenced = {f.path for fragment in dataset.get_fragments() for f in fragment.data_files()}
        # data files and blob sidecars (data/<data file stem>/…) of the referenced fragments only
        data = f"{prefix}/{table}.lance/data/"
        stored = {key[len(data):].split("/", 1)[0].removesuffix(".lance") for key in server.keys(BUCKET, data)}
        stems = {path.removesuffix(".lance") for path in referenced}
        assert stored == stems, f"{table}: unreferenced objects {sorted(stored - stems)[:3]}"


def _assert_secret_absent(server, texts: list[str], prefix: str) -> None:
    client = server.client()
    stored = [client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode("utf-8", "replace")
              for key in server.keys(BUCKET, prefix) if key.endswith((".json", ".md"))]
    assert stored, "no run record or dataset card in the bucket"
    for text in [*texts, *stored]:
        assert server.secret_key not in text and server.access_key not in text


def test_factory_on_s3_survives_actor_kill_with_exact_rows(s3_env, tmp_path, monkeypatch):
    import ray

    from factory.inspect import format_status, status
    from factory.pipeline import CommitEvent, run_factory
    from factory.sink import LanceCommitter, stored_schema, write_fragments

    monkeypatch.chdir(tmp_path)  # a URI mistaken for a path would show up as ./s3:/…
    prefix, n = "actor-kill", 8
    out = f"s3://{BUCKET}/{prefix}"
    killed: list[str] = []

    def kill_mid_chunk(event: CommitEvent) -> None:
        busy = [name for name, count in event.in_flight.items() if count > 0]
        if not killed and busy:
            ray.kill(ray.get_actor(busy[0]), no_restart=False)
            killed.append(busy[0])

    config = small_config(out, samples_per_domain=n, chunk_size=2, max_in_flight_per_actor=2)
    summary = run_factory(config, num_cpus=2, progress=False, on_commit=kill_mid_chunk)
    assert killed and summary.actor_failures >= 1 and summary.resubmitted_chunks >= 1

    ids = _rows(f"{out}/pairs.lance", "sample_id")
    assert len(ids) == len(set(ids)) == len(DOMAINS) * n
    assert set(ids) == {f"{d}/{i:08d}" for d in DOMAINS for i in range(n)}
    assert len(_rows(f"{out}/multiview.lance", "identity_id")) == len(DOMAINS) * 2
    _assert_no_orphans(s3_env, prefix)
    keys = s3_env.keys(BUCKET, prefix)
    for domain in DOMAINS:  # the generator cache lives next to the data, complete
        assert f"{prefix}/generators/world-tiny/{domain}/checkpoint.json" in keys
        assert f"{prefix}/generators/world-tiny/{domain}/model.safetensors" in keys
    assert f"{prefix}/.factory/last-run.json" in keys
    assert not (tmp_path / "s3:").exists()

    # an orphan of a crashed write (a data file and its blob sidecar) is found by listing and deleted
    committer = LanceCommitter(f"{out}/pairs.lance", stored_schema(_dataset(f"{out}/pairs.lance")))
    table = _dataset(f"{out}/pairs.lance").to_table(limit=2, blob_handling="all_binary")
    write_fragments(f"{out}/pairs.lance", table, committer.schema)
    assert committer.cleanup_orphans(keep_versions_days=7) == 1
    _assert_no_orphans(s3_env, prefix)
    again = run_factory(config, num_cpus=2, progress=False)  # nothing left to do: nothing committed
    assert again.committed_chunks == 0 and again.skipped_chunks == again.planned_chunks

    report = status(out)  # `factory status s3://…` reads the datasets and the stored run record
    assert report["tables"]["pairs"]["rows"] == len(DOMAINS) * n and report["tables"]["pairs"]["bytes"] > 0
    assert report["last_run"]["planned_chunks"] == summary.planned_chunks
    _assert_secret_absent(s3_env, [format_status(report), json.dumps(summary.to_dict())], prefix)


def _dataset(uri: str):
    import lance

    from avatar4d.storage import storage_options

    return lance.dataset(uri, storage_options=storage_options(uri))


def _committed(uri: str) -> int:
    from factory.sink import open_dataset

    dataset = open_dataset(uri)
    return 0 if dataset is None else dataset.count_rows()


def test_factory_on_s3_resumes_after_driver_kill(s3_env, tmp_path, subprocess_env):
    """SIGKILL `avatar4d factory run --out s3://…` after its first commit; the same command resumes
    to exactly the requested rows; `factory status s3://…` reports them; no key in any output."""
    from factory.inspect import local_state_dir

    prefix, n = "driver-kill", 12
    out = f"s3://{BUCKET}/{prefix}"
    env = {**subprocess_env, **s3_env.env(), "AVATAR4D_CACHE_DIR": str(tmp_path / "cache")}
    config_file = tmp_path / "factory.yaml"
    config_file.write_text(small_config(out, samples_per_domain=n, chunk_size=2).to_yaml())
    command = cli_command("run", "--config", str(config_file), "--out", out, "--no-progress", "--num-cpus", "2",
                          "-v")
    total = len(DOMAINS) * n
    driver = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    ray_children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while _committed(f"{out}/pairs.lance") == 0:
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no chunk committed within 120 s"
            time.sleep(0.2)
        record = json.loads((local_state_dir(out) / "ray-local.json").read_text())
        ray_children = [psutil.Process(p["pid"]) for p in record["processes"] if psutil.pid_exists(p["pid"])]
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        partial = _committed(f"{out}/pairs.lance")
        assert 0 < partial < total, f"kill came too late: {partial} of {total} rows committed"
        assert_ray_gone(driver.pid)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        kill_processes(ray_children)
    first_stderr = driver.stderr.read().decode()

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_ray_gone(os.getpid(), timeout_s=1)
    ids = _rows(f"{out}/pairs.lance", "sample_id")
    assert len(ids) == len(set(ids)) == total
    assert set(ids) == {f"{d}/{i:08d}" for d in DOMAINS for i in range(n)}
    _assert_no_orphans(s3_env, prefix)
    state = json.loads(s3_env.client().get_object(Bucket=BUCKET, Key=f"{prefix}/.factory/last-run.json")["Body"]
                       .read())
    assert state["skipped_chunks"] >= partial // 2 and state["committed_chunks"] > 0
    assert state["skipped_chunks"] + state["committed_chunks"] == state["planned_chunks"]

    shown = subprocess.run(cli_command("status", out), env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"pairs: {total} rows" in shown.stdout
    _assert_secret_absent(s3_env, [first_stderr, rerun.stdout, rerun.stderr, shown.stdout, shown.stderr], prefix)
