"""The factory run: Ray actors (one domain's GAN each) write Lance fragments; the driver schedules
chunks with backpressure, survives actor deaths and commits every chunk exactly once.

Flow of :func:`run_factory`:

1. check the sizes (:class:`~factory.chunks.ChunkPlan`, lazy: nothing is listed up front) and the
   address (``--address``, else ``RAY_ADDRESS``, else a local Ray); take the run lock
   (``<out>/.factory/run.lock``: one driver per output); refuse a folder whose committed table
   vanished (:mod:`factory.guards`) and a run whose fingerprint (every setting that determines a
   row, :mod:`factory.fingerprint`) differs from the one stored in the datasets' own metadata;
2. start a local Ray (``ray.init(address="local")``: a fresh instance even when another runs on
   this machine; the pids of its processes go to ``ray-local.json``) or connect to the cluster;
   only a Ray we started is shut down at the end; a status line says what start-up is doing;
3. start ``actors_per_domain`` :class:`DomainWorker` actors per domain (``max_restarts=-1``; a GPU
   share when the cluster has GPUs, CPUs otherwise); each loads its domain's stages in ``__init__``
   and reports its generator's weights sha256, which completes the fingerprint;
4. open one :class:`~factory.sink.LanceCommitter` per table (an incompatible existing dataset is a
   one-line ``SchemaMismatchError``), store the fingerprint, delete orphan data files of crashed
   runs, skip the chunks the datasets already hold (the ledger is the datasets' own ``chunk_id``);
5. :class:`~factory.scheduler.ChunkScheduler` keeps at most ``max_in_flight_per_actor`` chunks
   queued per actor, waits for dead actors to come back (backing off), sends their chunks to
   healthy actors of the domain, and counts attempts per chunk against that chunk's own failures;
   an actor writes its fragments itself (with a per-row checksum column) and returns only their
   metadata, so the driver never holds data; the driver commits each batch of finished chunks
   (one Append per table);
6. delete orphans again (duplicate writes of retried chunks; versions younger than
   ``keep_versions_days`` and their files are kept), write ``last-run.json`` and the dataset card.

A failed run that committed nothing removes the folders it created. Ray Data's
``Dataset.write_lance`` is not used: with Ray 2.60 and pylance 14 it raises ``TypeError``
(``storage_options_provider``), and Ray Data's checkpointing with a Lance sink lost rows on resume;
fragments written by actors and committed by one committer are exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import ray

from avatar4d import storage
from avatar4d.data.schema import MULTIVIEW, PAIRS, TABLES, dataset_uri
from avatar4d.errors import UserError
from factory.card import write_dataset_card
from factory.checksum import add_checksums, with_checksum
from factory.chunks import Chunk, ChunkPlan
from factory.fingerprint import (
    META_FINGERPRINT,
    build_fingerprint,
    encode_fingerprint,
    merge_fingerprint,
    read_fingerprint,
)
from factory.guards import check_stored_fingerprints, check_tables_present, fingerprint_before_start
from factory.inspect import STATE_DIR, committed_chunks, local_state_dir, row_counts, run_lock, write_json
from factory.progress import ProgressBars, StartupStatus
from factory.ray_session import check_reachable, ray_session, resolve_address
from factory.recipes import FactoryConfig
from factory.scheduler import (
    ChunkScheduler,
    FactoryError,
    WorkerSlot,
    is_permanent_failure,
    last_line,
)
from factory.sink import DEFAULT_KEEP_VERSIONS_DAYS, open_dataset
from factory.workers import start_workers, wait_for_workers

__all__ = ["ChunkResult", "CommitEvent", "DomainWorker", "FactoryError", "RunSummary", "STATE_DIR", "WorkerSlot",
           "commit_results", "is_permanent_failure", "last_line", "ray_session", "run_factory", "run_lock",
           "wait_for_workers"]

logger = logging.getLogger(__name__)


class ChunkResult(NamedTuple):
    """What an actor returns for one chunk: fragment metadata, never the data."""

    chunk_id: str
    fragments_json: list[str]
    rows: int
    nbytes: int
    node_id: str
    seconds: float


@dataclasses.dataclass
class RunSummary:
    """What a run did; also written to ``<out>/.factory/last-run.json``."""

    out: str
    ray_address: str
    domains: list[str]
    planned_chunks: int = 0
    skipped_chunks: int = 0
    committed_chunks: int = 0
    rows_committed: dict[str, int] = dataclasses.field(default_factory=dict)
    rows_total: dict[str, int] = dataclasses.field(default_factory=dict)
    bytes_written: int = 0
    resubmitted_chunks: int = 0
    actor_failures: int = 0
    actor_restarts: int = 0
    orphans_removed: int = 0
    actor_nodes: dict[str, str] = dataclasses.field(default_factory=dict)
    chunks_per_node: dict[str, int] = dataclasses.field(default_factory=dict)
    startup_seconds: float = 0.0
    startup_phases: dict[str, float] = dataclasses.field(default_factory=dict)
    work_seconds: float = 0.0
    actor_busy_seconds: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def pairs_per_second(self) -> float:
        """Committed pairs per second of scheduling (from the first submission to the last commit:
        Ray start-up and model loading excluded; generation, Lance writes and commits included)."""
        return self.rows_committed.get(PAIRS, 0) / self.work_seconds if self.work_seconds > 0 else 0.0


class DomainWorker:
    """Hosts one domain's GAN (its synthesize and multiview stages) in a Ray actor process."""

    def __init__(self, domain: Any, config: FactoryConfig, cache_dir: str) -> None:
        import torch

        from factory.generators import ensure_domain_generator
        from factory.stages import MultiviewStage, SynthesizeStage

        torch.set_num_threads(config.actor_threads)
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        checkpoint = ensure_domain_generator(domain, cache_dir, config.generator_preset, config.generator_kind)
        self.stages: dict[str, Any] = {}
        if config.samples_per_domain > 0:
            self.stages[PAIRS] = SynthesizeStage(domain.name, checkpoint, config.synthesize.replace(device=device))
        if config.multiview_identities > 0:
            self.stages[MULTIVIEW] = MultiviewStage(domain.name, checkpoint, config.multiview.replace(device=device))
        self.uris = {table: dataset_uri(config.out, table) for table in TABLES}
        self.node_id = ray.get_runtime_context().get_node_id()
        self.device = device
        self.checksum_threads = config.actor_threads

    def describe(self) -> dict[str, Any]:
        """Node, process, device, the weights sha256 of the generator and the Arrow schema of each
        table this worker writes (the stage's columns + ``row_checksum``)."""
        shas = {getattr(stage, "generator_sha256", None) for stage in self.stages.values()} - {None}
        return {"node_id": self.node_id, "pid": os.getpid(), "device": self.device,
                "generator_sha256": min(shas) if len(shas) == 1 else (sorted(shas) or None),
                "schemas": {table: with_checksum(stage.schema) for table, stage in self.stages.items()}}

    def ping(self) -> str:
        """The node this worker runs on (the scheduler's liveness probe after a restart)."""
        return self.node_id

    def run(self, chunk: Chunk) -> ChunkResult:
        """Generate ``chunk``, add the per-row checksums, write it as uncommitted fragments, return
        their metadata."""
        from factory.sink import write_fragments

        start = time.perf_counter()
        stage = self.stages[chunk.table]
        table = add_checksums(stage(chunk), threads=self.checksum_threads)
        fragments = write_fragments(self.uris[chunk.table], table, with_checksum(stage.schema))
        return ChunkResult(chunk.chunk_id, fragments, table.num_rows, table.nbytes, self.node_id,
                           time.perf_counter() - start)


@dataclasses.dataclass
class CommitEvent:
    """Passed to ``on_commit`` after each commit (tests use it to inject faults)."""

    table: str
    chunk_ids: list[str]
    rows: int
    actor_names: list[str]
    in_flight: dict[str, int]


def run_factory(config: FactoryConfig, *, address: str | None = None, num_cpus: int | None = None,
                progress: bool = True, on_commit: Callable[[CommitEvent], None] | None = None,
                keep_versions_days: float = DEFAULT_KEEP_VERSIONS_DAYS,
                restart_timeout_s: float = 900.0) -> RunSummary:
    """Run (or resume) the factory described by ``config``; see the module docstring.

    ``address``: None uses ``RAY_ADDRESS`` when set, else starts a local Ray with ``num_cpus`` CPUs
    (default: all) and stops it at the end; "auto", "host:port" or "ray://host:port" connect to a
    running cluster. ``keep_versions_days``: old Lance versions younger than this are kept.
    ``restart_timeout_s``: how long a dead actor may take to come back before the run fails."""
    started = time.perf_counter()
    storage.check_uri(config.out, "--out")  # a folder or s3://bucket/prefix (one-line error otherwise)
    config = _absolute_paths(config)  # workers may run elsewhere (another cwd, another node)
    address = resolve_address(address)
    plan = ChunkPlan(tuple(config.domains), config.samples_per_domain, config.multiview_identities,
                     config.chunk_size, config.multiview_chunk_size, config.run_seed)  # validates the sizes
    domains = _resolve_domains(config, local=address is None)
    if not storage.is_remote(config.out) and Path(config.out).exists() and not Path(config.out).is_dir():
        raise UserError(f"--out {config.out} exists and is not a folder")
    if address is not None:
        check_reachable(address)  # before anything is created on disk
    created = _create_state(config.out)
    try:
        return _run(config, plan, domains, address, num_cpus, progress, on_commit, keep_versions_days,
                    restart_timeout_s, started)
    except BaseException:
        _remove_created(created)
        raise


def _run(config: FactoryConfig, plan: ChunkPlan, domains: list[Any], address: str | None, num_cpus: int | None,
         progress: bool, on_commit: Callable[[CommitEvent], None] | None, keep_versions_days: float,
         restart_timeout_s: float, started: float) -> RunSummary:
    out = config.out
    state = local_state_dir(out)
    # a local Ray gets at least the CPUs its actors ask for (they time-share the cores)
    wanted = len(domains) * config.actors_per_domain * config.num_cpus_per_actor
    local_cpus = max(num_cpus or os.cpu_count() or 1, math.ceil(wanted))
    with run_lock(state / "run.lock"), contextlib.ExitStack() as stack:
        check_tables_present(config.out, state)
        done = committed_chunks(config.out)
        check_stored_fingerprints(config, fingerprint_before_start(config, domains), done)
        if not any(chunk.chunk_id not in done.get(chunk.table, ()) for chunk in plan):
            summary = RunSummary(out=out, ray_address="", domains=list(config.domains),
                                 planned_chunks=len(plan), skipped_chunks=len(plan))
            return _finish(summary, state, config, started)
        status = stack.enter_context(StartupStatus("factory run", enabled=progress))
        status.phase("ray", "starting Ray" if address is None else f"connecting to Ray at {address}")
        ray_address = stack.enter_context(ray_session(address, local_cpus, state))
        summary = RunSummary(out=out, ray_address=ray_address, domains=list(config.domains))
        if address is None:
            _record_local_ray(state / "ray-local.json")
        status.phase("workers", f"starting {len(domains) * config.actors_per_domain} workers (loading generators)")
        slots, schemas, generators = start_workers(DomainWorker, config, domains, summary.actor_nodes)
        status.phase("datasets", "checking the datasets")
        committers = _open_committers(config, schemas)
        fingerprint = build_fingerprint(config, generators)
        check_stored_fingerprints(config, fingerprint, done)
        for committer in committers.values():
            existing = open_dataset(committer.uri)
            old = read_fingerprint(existing) if existing is not None else None
            committer.update_metadata(META_FINGERPRINT, encode_fingerprint(merge_fingerprint(old, fingerprint)))
        summary.orphans_removed += _cleanup_orphans(committers, keep_versions_days)
        done = {table: committer.committed_chunks() for table, committer in committers.items()}
        sources = {domain: _pending(plan, domain, done) for domain in config.domains}
        summary.planned_chunks = len(plan)
        summary.skipped_chunks = sum(len(ids) for ids in done.values())
        status.__exit__(None, None, None)
        summary.startup_phases = status.phases
        summary.startup_seconds = time.perf_counter() - started
        with ProgressBars(plan, done, enabled=progress) as bars:
            nodes: Counter[str] = Counter()
            scheduler = ChunkScheduler(
                slots, sources, max_in_flight=config.max_in_flight_per_actor,
                max_attempts=config.max_chunk_attempts, restart_timeout_s=restart_timeout_s,
                on_finished=lambda items: _commit(items, committers, summary, bars, slots, nodes, on_commit))
            stats = scheduler.run()
        summary.chunks_per_node = dict(nodes)
        summary.resubmitted_chunks, summary.actor_failures = stats.resubmitted_chunks, stats.actor_failures
        summary.actor_restarts = stats.actor_restarts
        summary.work_seconds = time.perf_counter() - started - summary.startup_seconds
        summary.orphans_removed += _cleanup_orphans(committers, keep_versions_days)
        return _finish(summary, state, config, started)


def _pending(plan: ChunkPlan, domain: str, done: dict[str, set[str]]) -> Iterator[Chunk]:
    return (chunk for chunk in plan.domain_chunks(domain) if chunk.chunk_id not in done.get(chunk.table, ()))


def _commit(items: list[tuple[Chunk, ChunkResult]], committers: dict[str, Any], summary: RunSummary, bars: Any,
            slots: list[WorkerSlot], nodes: Counter[str], on_commit: Callable[[CommitEvent], None] | None) -> None:
    """Commit a batch of finished chunks: one Append per table."""
    by_table: dict[str, list[tuple[Chunk, ChunkResult]]] = {}
    for chunk, result in items:
        if result.rows != chunk.size:
            raise FactoryError(f"chunk {chunk.chunk_id}: the stage made {result.rows} rows, expected {chunk.size}")
        by_table.setdefault(chunk.table, []).append((chunk, result))
        nodes[result.node_id] += 1
        summary.actor_busy_seconds += result.seconds
    for table, table_items in by_table.items():
        rows = commit_results(committers[table], table_items)
        summary.committed_chunks += len(table_items)
        summary.rows_committed[table] = summary.rows_committed.get(table, 0) + rows
        summary.bytes_written += sum(result.nbytes for _, result in table_items)
        bars.advance([chunk for chunk, _ in table_items])
        if on_commit is not None:
            on_commit(CommitEvent(table, [c.chunk_id for c, _ in table_items], rows, [s.name for s in slots],
                                  {s.name: s.in_flight for s in slots}))


def _finish(summary: RunSummary, state: Path, config: FactoryConfig, started: float) -> RunSummary:
    summary.rows_total = row_counts(config.out)
    summary.seconds = time.perf_counter() - started
    write_json(state / "last-run.json", summary.to_dict())
    if storage.is_remote(config.out):  # where `factory status` and the next run's guards read it
        storage.write_text(storage.join(config.out, STATE_DIR, "last-run.json"),
                           json.dumps(summary.to_dict(), indent=2, sort_keys=True))
    try:
        write_dataset_card(config)
    except Exception as error:  # noqa: BLE001 - the card is documentation: never fail a finished run on it
        logger.warning("could not write the dataset card: %s", error)
    return summary


def _create_state(out: str) -> list[Path]:
    """Create the run's state folder (``<out>/.factory``, or a local one for an object-store ``out``:
    :func:`~factory.inspect.local_state_dir`); return what did not exist before (removed again if
    the run fails before committing anything)."""
    state = local_state_dir(out)
    candidates = (state,) if storage.is_remote(out) else (Path(out), state)
    created = [path for path in candidates if not path.exists()]
    state.mkdir(parents=True, exist_ok=True)
    return created


def _remove_created(created: list[Path]) -> None:
    """After a failed run: remove the folders this run created, unless a dataset was committed there."""
    for path in created:
        holds_data = path.is_dir() and any(path.glob("*.lance/_versions"))
        if path.is_dir() and not holds_data:
            shutil.rmtree(path, ignore_errors=True)
            return  # the outermost created folder held everything else


def _cleanup_orphans(committers: dict[str, Any], keep_versions_days: float) -> int:
    """Delete uncommitted data files; only while no actor writes (before scheduling, after it)."""
    return sum(committer.cleanup_orphans(keep_versions_days=keep_versions_days) for committer in committers.values())


def commit_results(committer: Any, items: list[tuple[Any, ChunkResult]]) -> int:
    """One Append for all finished chunks of a table; chunk by chunk if some were committed already."""
    from factory.sink import ChunkConflictError

    try:
        return committer.commit([c.chunk_id for c, _ in items], [f for _, r in items for f in r.fragments_json])
    except ChunkConflictError:
        return sum(committer.commit([c.chunk_id], r.fragments_json) for c, r in items)



def _absolute_paths(config: FactoryConfig) -> FactoryConfig:
    def absolute(path: str | None) -> str | None:
        return path if path is None or "://" in path else str(Path(path).expanduser().absolute())

    return config.replace(out=absolute(config.out), generator_cache=absolute(config.generator_cache),
                          domains_file=absolute(config.domains_file))


def _resolve_domains(config: FactoryConfig, *, local: bool) -> list[Any]:
    from factory.domains import load_domains

    catalog = load_domains(config.domains_file)
    domains = [catalog.get(name) for name in config.domains]
    for domain in domains:  # on a cluster the path is checked by the worker, on its node
        checkpoint = domain.generator_checkpoint
        if local and checkpoint and not storage.is_remote(checkpoint) and not Path(checkpoint).expanduser().is_dir():
            raise UserError(f"domain {domain.name}: generator checkpoint not found: {domain.generator_checkpoint}")
    return domains


def _record_local_ray(path: Path) -> None:
    """The pids of the local Ray this driver started (its child processes), so whoever kills the
    driver can check that they are gone (they exit with their parent; see tests/integration)."""
    import psutil

    me = psutil.Process()
    record = {"driver_pid": me.pid,
              "processes": [{"pid": p.pid, "create_time": p.create_time()} for p in me.children(recursive=True)]}
    path.write_text(json.dumps(record))


def _open_committers(config: FactoryConfig, schemas: dict[str, Any]) -> dict[str, Any]:
    from factory.sink import LanceCommitter

    return {table: LanceCommitter(dataset_uri(config.out, table), schema) for table, schema in schemas.items()}
