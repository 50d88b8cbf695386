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


def _assert_no_orphans(server, prefix: str, tables: tuple[str, ...] = ("pairs", "multiview")) -> None:
    """Every data object in the bucket is referenced by the dataset's latest version."""
    import lance

    from avatar4d.storage import storage_options

    for table in tables:
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
    prefix, n = "actor-kill", 6  # 3 pair chunks per domain: enough to kill an actor mid-run
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


def test_factory_on_s3_resumes_after_driver_kill(s3_env, tmp_path, subprocess_env, capsys):
    """SIGKILL `avatar4d factory run --out s3://…` after its first commit; the same command resumes
    to exactly the requested rows; `factory status s3://…` reports them; no key in any output."""
    from factory.inspect import local_state_dir

    prefix, n = "driver-kill", 8
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

    from avatar4d.cli import main

    assert main(["factory", "status", out]) == 0  # in this process: it starts no Ray
    shown = capsys.readouterr()
    assert f"pairs: {total} rows" in shown.out
    _assert_secret_absent(s3_env, [first_stderr, rerun.stdout, rerun.stderr, shown.out, shown.err], prefix)


@pytest.fixture()
def s3_pairs(s3_env):
    """``s3://avatar4d/encode/pairs.lance`` (2 domains × 4 pairs, chunks of 2, written by the
    synthesize stage and the exactly-once sink straight into the bucket, no Ray) and a tiny VAE
    checkpoint in the bucket (``checkpoint.json`` uploaded last, as the trainer does)."""
    import tempfile

    import torch

    from avatar4d import storage
    from avatar4d.models.vae import VAE_PRESETS, TriplaneVAE, save_vae
    from factory.chunks import plan_chunks
    from factory.domains import load_domains
    from factory.generators import ensure_domain_generator
    from factory.sink import LanceCommitter, write_fragments
    from factory.stages import SynthesizeConfig, SynthesizeStage

    data = f"s3://{BUCKET}/encode"
    with tempfile.TemporaryDirectory(prefix="cluster2-encode-") as local:
        catalog = load_domains()
        stages = {d: SynthesizeStage(d, ensure_domain_generator(catalog.get(d), f"{data}/generators"),
                                     SynthesizeConfig(batch_size=2)) for d in DOMAINS}
        committer = None
        for chunk in plan_chunks(domains=DOMAINS, samples_per_domain=4, multiview_identities=0, chunk_size=2,
                                 multiview_chunk_size=1, run_seed=5):
            stage = stages[chunk.domain]
            committer = committer or LanceCommitter(f"{data}/pairs.lance", stage.schema)
            committer.commit([chunk.chunk_id], write_fragments(f"{data}/pairs.lance", stage(chunk), stage.schema))
        torch.manual_seed(0)
        save_vae(f"{local}/vae", TriplaneVAE(VAE_PRESETS.get("tiny")))
        storage.upload_dir(f"{local}/vae", f"s3://{BUCKET}/runs/vae/final", last="checkpoint.json")
    return data, f"s3://{BUCKET}/runs/vae/final"


def test_encode_on_s3_is_exactly_once_and_resumes(s3_pairs, s3_env, tmp_path, monkeypatch, capsys):
    """`factory encode --data s3://…` (pairs read from the bucket, encoded.lance and the null condition
    written there, the VAE checkpoint copied from the bucket): a Ray run that dies after its first
    commit, a stray uncommitted fragment, then the CLI resumes to exactly one row per pair; a rerun
    commits nothing; the DiT readers read the table and the null condition from the bucket;
    `factory preview` works on the bucket and `verify`/`repair` say in one line how to run them."""
    from avatar4d.cli import main
    from avatar4d.data.encoded_reader import EncodedShardReader, load_null_condition, null_condition_encoder_sha256
    from avatar4d.data.encoded_schema import META_ENCODER_SHA256
    from avatar4d.data.schema import schema_metadata
    from factory.encode import EncodeRunConfig, run_encode
    from factory.sink import write_fragments
    from factory.stages.encode import EncodeConfig

    monkeypatch.chdir(tmp_path)  # a URI mistaken for a path would show up as ./s3:/…
    data, vae = s3_pairs
    encoded = f"{data}/encoded.lance"

    class Crash(RuntimeError):
        pass

    def crash(event):
        raise Crash(event.chunk_ids)

    # one chunk in flight: when the first commit crashes the run, no second chunk has written a fragment yet, so the
    # only orphan below is the planted one (with two in flight, a quiet machine finished a second fragment too)
    config = EncodeRunConfig(data=data, vae_checkpoint=vae, encode=EncodeConfig(batch_size=2, num_threads=1),
                             num_cpus_per_actor=1.0, max_in_flight_per_actor=1)
    with pytest.raises(Crash):
        run_encode(config, num_cpus=1, progress=False, on_commit=crash)
    assert len(_rows(encoded, "sample_id")) == 2
    stray = _dataset(encoded)  # a worker that wrote its fragment and died before the commit
    write_fragments(encoded, stray.to_table().slice(0, 1), stray.schema)

    command = ["factory", "encode", "--data", data, "--vae-checkpoint", vae, "--local", "--batch-size", "2",
               "--no-progress"]
    assert main(command) == 0
    resumed = capsys.readouterr()
    assert "3 chunks committed (1 already done), 8 encoded rows" in resumed.out, resumed
    assert "1 orphan files removed" in resumed.out
    ids = _rows(encoded, "sample_id")
    assert sorted(ids) == sorted(_rows(f"{data}/pairs.lance", "sample_id")) and len(set(ids)) == 8
    _assert_no_orphans(s3_env, "encode", tables=("pairs", "encoded"))

    assert main(command) == 0  # exactly once: nothing left, nothing committed
    rerun = capsys.readouterr()
    assert "0 chunks committed (4 already done), 8 encoded rows" in rerun.out, rerun
    record = json.loads(s3_env.client().get_object(Bucket=BUCKET, Key="encode/.factory/encode/last-run.json")
                        ["Body"].read())
    assert (record["committed_chunks"], record["skipped_chunks"], record["rows_total"]) == (0, 4, 8)

    batch = next(iter(EncodedShardReader(encoded, batch_size=8)))
    null = load_null_condition(data)  # read from the bucket
    assert batch["latent"].shape[0] == 8 and null["clip_tokens"].shape == batch["clip_tokens"].shape[1:]
    assert null_condition_encoder_sha256(data) == schema_metadata(_dataset(encoded).schema)[META_ENCODER_SHA256]
    assert "encode/encoded_null_condition.safetensors" in s3_env.keys(BUCKET, "encode")

    assert main(["factory", "preview", data, "--out", str(tmp_path / "sheet.png")]) == 0
    assert (tmp_path / "sheet.png").stat().st_size > 0
    for command_name in ("verify", "repair"):
        assert main(["factory", command_name, data]) != 0
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and "works on a local folder" in error and "aws s3 sync" in error, error
    assert not (tmp_path / "s3:").exists()
    _assert_secret_absent(s3_env, [resumed.out, resumed.err, rerun.out, rerun.err], "encode")
