"""``factory encode``: CLIP/DINO tokens and VAE latents of every pair into ``<data>/encoded.lance``,
exactly once and resumable (runs after VAE training; DiT training then reads only this table).

Chunks: one encoded chunk per chunk of ``pairs.lance`` (``pairs/<domain>/pairs/<i>`` →
``encoded/<domain>/pairs/<i>``), so chunk ids are deterministic, survive compaction of the pairs
and pick up pairs appended later. The driver pins the pairs version it planned from, so every
worker reads the same rows. Flow of :func:`run_encode`:

1. lock ``<data>/.factory/encode/run.lock`` (one encode driver per folder; for ``s3://`` data a lock
   in this machine's state folder, :func:`~factory.inspect.local_state_dir`); check the inputs and
   that an existing ``encoded.lance`` was made with the same VAE (else a one-line error);
2. plan the chunks from the pinned pairs version, skip the ones ``encoded.lance`` already holds
   (its own ``chunk_id`` column is the ledger, as for the factory's tables);
3. run :class:`EncodeWorker` in-process (``local=True``) or as Ray actors (a local Ray started
   for the run, or ``address``); a worker reads its chunk's rows (a filtered scan of the chunk's
   fragments), runs :class:`~factory.stages.encode.EncodeStage` and writes uncommitted fragments;
4. the driver alone commits (:class:`~factory.sink.LanceCommitter`), re-queues chunks of dead
   actors, deletes orphan files before and after, writes the null condition (CLIP/DINO tokens of a
   zero input) next to the dataset, and ``<data>/.factory/encode/last-run.json``.

Object storage: ``data`` may be ``s3://bucket/prefix`` (the factory's ``--out``): pairs are read and
``encoded.lance`` written through Lance's object store, the null condition is one PUT (readers see
all of it or nothing) and the run record is copied to ``<data>/.factory/encode/last-run.json`` in the
bucket; ``vae_checkpoint`` may be a bucket folder too (the trainer's ``…/final``), copied once per
machine (:func:`avatar4d.storage.local_copy`). Credentials come from the AWS environment variables
of each process (:mod:`avatar4d.storage`).

The Ray helpers (session, commit batching, error handling) are :mod:`factory.pipeline`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError

from avatar4d import storage
from avatar4d.config import Config, ConfigError
from avatar4d.data.encoded_schema import (
    ENCODED,
    META_ENCODER_SHA256,
    META_VAE_SHA256,
    check_same_encoding,
    encoded_chunk_id,
    encoded_uri,
    null_condition_uri,
)
from avatar4d.data.schema import PAIRS, dataset_uri, schema_metadata
from avatar4d.errors import UserError
from factory.encode_inputs import check_data_folder, check_vae_checkpoint, vae_folder, write_null_condition
from factory.inspect import local_state_dir, write_json
from factory.pipeline import (
    STATE_DIR,
    ChunkResult,
    CommitEvent,
    WorkerSlot,
    last_line,
    ray_session,
    run_lock,
    wait_for_workers,
)
from factory.ray_session import resolve_address
from factory.scheduler import ChunkScheduler
from factory.sink import LanceCommitter, open_dataset, stored_schema, write_fragments
from factory.stage_runs import committed_chunk_ids, progress_bar, record_commit
from factory.stages.encode import PAIRS_COLUMNS, EncodeConfig, EncodeStage
from factory.workers import actor_resources

logger = logging.getLogger(__name__)

ENCODE_STATE = "encode"


@dataclasses.dataclass
class EncodeRunConfig(Config):
    """One encode run: ``data`` (the factory output folder holding ``pairs.lance``), the VAE
    checkpoint folder, the stage options, and the actors (``num_actors``, each asking for
    ``num_cpus_per_actor`` CPUs, and ``num_gpus_per_actor`` GPUs when the cluster has GPUs)."""

    data: str = "data"
    vae_checkpoint: str = ""
    encode: EncodeConfig = dataclasses.field(default_factory=EncodeConfig)
    num_actors: int = 1
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 1.0
    max_in_flight_per_actor: int = 2
    max_chunk_attempts: int = 3

    def __post_init__(self) -> None:
        for name in ("num_actors", "max_in_flight_per_actor", "max_chunk_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_cpus_per_actor <= 0 or self.num_gpus_per_actor < 0:
            raise ConfigError("num_cpus_per_actor must be > 0 and num_gpus_per_actor >= 0")


@dataclasses.dataclass(frozen=True)
class EncodeChunk:
    """The rows of one pairs chunk (``rows`` of them, in ``fragment_ids`` of the pinned version)."""

    source_chunk_id: str
    fragment_ids: tuple[int, ...]
    rows: int

    @property
    def chunk_id(self) -> str:
        return encoded_chunk_id(self.source_chunk_id)


@dataclasses.dataclass
class EncodeSummary:
    """What a run did; also written to ``<data>/.factory/encode/last-run.json``."""

    data: str
    ray_address: str
    pairs_version: int = 0
    planned_chunks: int = 0
    skipped_chunks: int = 0
    committed_chunks: int = 0
    rows_committed: int = 0
    rows_total: int = 0
    resubmitted_chunks: int = 0
    orphans_removed: int = 0
    vae_sha256: str = ""
    encoder_sha256: str = ""
    startup_seconds: float = 0.0
    work_seconds: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rows_per_second(self) -> float:
        """Committed rows per second of work (start-up and model loading excluded)."""
        return self.rows_committed / self.work_seconds if self.work_seconds > 0 else 0.0


def plan_encode_chunks(pairs: Any) -> list[EncodeChunk]:
    """One :class:`EncodeChunk` per pairs chunk of the (pinned) Lance dataset ``pairs``, sorted by id."""
    table = pairs.to_table(columns=["chunk_id"], with_row_address=True)
    rows: Counter[str] = Counter()
    fragments: dict[str, set[int]] = {}
    for chunk_id, address in zip(table.column("chunk_id").to_pylist(), table.column("_rowaddr").to_pylist()):
        rows[chunk_id] += 1
        fragments.setdefault(chunk_id, set()).add(address >> 32)  # row address = fragment id << 32 | offset
    return [EncodeChunk(chunk_id, tuple(sorted(fragments[chunk_id])), rows[chunk_id]) for chunk_id in sorted(rows)]


def read_pairs_chunk(pairs: Any, chunk: EncodeChunk) -> Any:
    """The rows of ``chunk`` (columns the stage needs, blobs as bytes) as a pyarrow Table."""
    quoted = chunk.source_chunk_id.replace("'", "''")
    scanner = pairs.scanner(columns=list(PAIRS_COLUMNS), filter=f"chunk_id = '{quoted}'",
                            fragments=[pairs.get_fragment(fragment_id) for fragment_id in chunk.fragment_ids],
                            blob_handling="all_binary", scan_in_order=True)
    return scanner.to_table()


class EncodeWorker:
    """Hosts one :class:`~factory.stages.encode.EncodeStage`, in a Ray actor or in the driver."""

    def __init__(self, vae_checkpoint: str, data: str, pairs_version: int, config: EncodeConfig,
                 num_threads: int | None = None) -> None:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        if ray.is_initialized():  # in an actor
            if ray.get_gpu_ids() and torch.cuda.is_available():
                config = config.replace(device="cuda")
            self.node_id = ray.get_runtime_context().get_node_id()
        else:
            self.node_id = "local"
        self.pairs = open_dataset(dataset_uri(data, PAIRS), version=pairs_version)
        if self.pairs is None:
            raise FileNotFoundError(f"{dataset_uri(data, PAIRS)}: no such dataset on this node")
        self.stage = EncodeStage(vae_folder(vae_checkpoint), self.pairs.schema, config)
        self.encoded_uri = encoded_uri(data)

    def ping(self) -> str:
        """The node this worker runs on (the scheduler's liveness probe after a restart)."""
        return self.node_id

    def describe(self) -> dict[str, Any]:
        """Node, process, device, the encoded schema and the null condition (small tensors)."""
        return {"node_id": self.node_id, "pid": os.getpid(), "device": self.stage.config.device,
                "schema": self.stage.schema, "null_condition": self.stage.null_condition()}

    def run(self, chunk: EncodeChunk) -> ChunkResult:
        """Encode ``chunk``, write it as uncommitted fragments, return their metadata."""
        start = time.perf_counter()
        table = read_pairs_chunk(self.pairs, chunk)
        if table.num_rows != chunk.rows:
            raise RuntimeError(f"{chunk.source_chunk_id}: read {table.num_rows} rows, planned {chunk.rows}")
        batch = self.stage(table, chunk.chunk_id)
        fragments = write_fragments(self.encoded_uri, batch, self.stage.schema)
        return ChunkResult(chunk.chunk_id, fragments, batch.num_rows, batch.nbytes, self.node_id,
                           time.perf_counter() - start)


def run_encode(config: EncodeRunConfig, *, address: str | None = None, local: bool = False,
               num_cpus: int | None = None, progress: bool = True,
               on_commit: Callable[[CommitEvent], None] | None = None) -> EncodeSummary:
    """Encode every pair of ``config.data`` not encoded yet; see the module docstring.

    ``local``: no Ray, one in-process worker. Otherwise ``address`` None uses ``RAY_ADDRESS`` when
    set, else starts a local Ray with ``num_cpus`` CPUs (default: all) for the run; "auto",
    "host:port" or "ray://…" connect to a cluster.
    ``on_commit`` is called after each commit (tests inject faults with it)."""
    started = time.perf_counter()
    data = check_data_folder(config.data)
    address = None if local else resolve_address(address)
    on_this_machine = local or address is None
    vae_sha = check_vae_checkpoint(config.vae_checkpoint) if on_this_machine else None
    state = local_state_dir(data) / ENCODE_STATE  # <data>/.factory/encode, or this machine's for s3://
    state.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run_lock(state / "run.lock"))
        except UserError:
            raise UserError(f"another `factory encode` is writing to {data}; wait for it to finish") from None
        pairs = open_dataset(dataset_uri(str(data), PAIRS))
        if pairs is None:
            raise UserError(f"{data}/pairs.lance has no committed version yet")
        existing = open_dataset(encoded_uri(str(data)))
        if existing is not None and vae_sha is not None:
            _check_existing_vae(existing, vae_sha)
        chunks = plan_encode_chunks(pairs)
        done = committed_chunk_ids(existing)
        summary = EncodeSummary(data=str(data), ray_address="", pairs_version=pairs.version,
                                planned_chunks=len(chunks))
        if not [c for c in chunks if c.chunk_id not in done] and storage.exists(null_condition_uri(data)):
            summary.skipped_chunks = len(chunks)
            return _finish(summary, state, started)
        if local:
            workers = [EncodeWorker(config.vae_checkpoint, str(data), pairs.version, config.encode,
                                    config.encode.num_threads)]
            described = [workers[0].describe()]
            slots: list[WorkerSlot] = []
        else:
            cpus = max(num_cpus or os.cpu_count() or 1, math.ceil(config.num_actors * config.num_cpus_per_actor))
            summary.ray_address = stack.enter_context(ray_session(address, cpus, state))
            slots, described = _start_actors(config, str(data), pairs.version)
            workers = []
        schema = described[0]["schema"]
        committer = _open_committer(data, schema)
        summary.vae_sha256, summary.encoder_sha256 = (schema_metadata(schema)[META_VAE_SHA256],
                                                      schema_metadata(schema)[META_ENCODER_SHA256])
        write_null_condition(data, described[0]["null_condition"], summary.encoder_sha256)
        summary.orphans_removed += committer.cleanup_orphans()
        done = committer.committed_chunks()
        pending = [c for c in chunks if c.chunk_id not in done]
        summary.skipped_chunks = len(chunks) - len(pending)
        summary.startup_seconds = time.perf_counter() - started
        with progress_bar(chunks, done, progress, desc="encode", unit="pair") as bar:
            if local:
                _run_local(workers[0], pending, committer, summary, bar, on_commit)
            else:
                _schedule(config, slots, pending, committer, summary, bar, on_commit)
        summary.work_seconds = time.perf_counter() - started - summary.startup_seconds
        summary.orphans_removed += committer.cleanup_orphans()
        return _finish(summary, state, started)


def _check_existing_vae(dataset: Any, vae_sha: str) -> None:
    old = schema_metadata(dataset.schema).get(META_VAE_SHA256)
    if old is not None and old != vae_sha:
        raise UserError(f"{dataset.uri} holds latents of another VAE (sha256 {old[:12]}…, this checkpoint "
                        f"{vae_sha[:12]}…); delete it to re-encode with this VAE")


def _open_committer(data: str | Path, schema: Any) -> Any:
    uri = encoded_uri(str(data))
    committer = LanceCommitter(uri, schema)  # column layout: check_compatible (one-line SchemaMismatchError)
    existing = open_dataset(uri)
    if existing is not None:
        check_same_encoding(stored_schema(existing), schema)
    return committer


def _start_actors(config: EncodeRunConfig, data: str,
                  pairs_version: int) -> tuple[list[WorkerSlot], list[dict[str, Any]]]:
    resources, use_gpus = actor_resources(config.num_cpus_per_actor, config.num_gpus_per_actor)
    threads = max(1, round(config.num_cpus_per_actor))
    worker_class = ray.remote(EncodeWorker)
    slots = []
    for index in range(config.num_actors):
        name = f"encode/{index}"
        handle = worker_class.options(name=name, max_restarts=-1, max_task_retries=0, **resources).remote(
            config.vae_checkpoint, data, pairs_version, config.encode, threads)
        slots.append(WorkerSlot(name, ENCODED, handle))
    try:
        described = wait_for_workers(slots)
    except RayActorError as error:
        raise UserError(f"an encode worker could not start: {last_line(error)}") from None
    hashes = {(schema_metadata(info["schema"])[META_VAE_SHA256], schema_metadata(info["schema"])[META_ENCODER_SHA256])
              for info in described}
    if len(hashes) > 1:
        raise UserError(f"encode workers loaded different weights {sorted(hashes)}: "
                        "the checkpoints differ between nodes")
    logger.info("%d encode workers up (%s)", len(slots), "GPU" if use_gpus else "CPU")
    return slots, described


def _run_local(worker: EncodeWorker, pending: list[EncodeChunk], committer: Any, summary: EncodeSummary, bar: Any,
               on_commit: Callable[[CommitEvent], None] | None) -> None:
    for chunk in pending:
        result = worker.run(chunk)
        record_commit(committer, ENCODED, [(chunk, result)], summary, bar, on_commit, ["local"], {"local": 0})


def _schedule(config: EncodeRunConfig, slots: list[WorkerSlot], pending: list[EncodeChunk], committer: Any,
              summary: EncodeSummary, bar: Any, on_commit: Callable[[CommitEvent], None] | None) -> None:
    """Keep every actor at most ``max_in_flight_per_actor`` chunks deep, survive actor deaths
    (:class:`~factory.scheduler.ChunkScheduler`); commit what finishes."""

    def commit(items: list[tuple[EncodeChunk, ChunkResult]]) -> None:
        in_flight = {slot.name: slot.in_flight for slot in slots}
        record_commit(committer, ENCODED, items, summary, bar, on_commit, [slot.name for slot in slots], in_flight)

    scheduler = ChunkScheduler(slots, {ENCODED: iter(pending)}, on_finished=commit,
                               max_in_flight=config.max_in_flight_per_actor, max_attempts=config.max_chunk_attempts)
    summary.resubmitted_chunks += scheduler.run().resubmitted_chunks


def _finish(summary: EncodeSummary, state: Path, started: float) -> EncodeSummary:
    dataset = open_dataset(encoded_uri(summary.data))
    summary.rows_total = 0 if dataset is None else dataset.count_rows()
    summary.seconds = time.perf_counter() - started
    write_json(state / "last-run.json", summary.to_dict())
    if storage.is_remote(summary.data):  # next to the data, where `factory status` users look
        storage.write_text(storage.join(summary.data, STATE_DIR, ENCODE_STATE, "last-run.json"),
                           json.dumps(summary.to_dict(), indent=2, sort_keys=True))
    return summary
