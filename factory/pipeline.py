"""The factory run: Ray actors (one domain's GAN each) write Lance fragments; the driver schedules
chunks with backpressure, retries chunks of dead actors and commits every chunk exactly once.

Flow of :func:`run_factory`:

1. take the run lock (``<out>/.factory/run.lock``: one driver per output), check the plan against
   the one recorded by earlier runs of this output (``plan.json``: same seed and chunking, or the
   chunk ids would mean other samples);
2. start a local Ray (``ray.init(address="local")``: a fresh instance even when another runs on
   this machine; the pids of its processes go to ``ray-local.json``) or connect to ``--address``;
   only a Ray we started is shut down at the end;
3. start ``actors_per_domain`` :class:`DomainWorker` actors per domain (``max_restarts=-1``; a GPU
   share when the cluster has GPUs, CPUs otherwise); each loads its domain's stages in ``__init__``;
4. open one :class:`~factory.sink.LanceCommitter` per table (an incompatible existing dataset is a
   one-line ``SchemaMismatchError``), delete orphan data files of crashed runs, skip the chunks the
   datasets already hold (the ledger is the datasets' own ``chunk_id`` column);
5. keep at most ``max_in_flight_per_actor`` chunks queued per actor; ``ray.wait`` for results; an
   actor's ``run`` writes its fragments itself (``lance.fragment.write_fragments``) and returns
   only their metadata, so the driver never holds data; the driver commits each batch of finished
   chunks (one Append per table), and re-queues the chunks of an actor that died (Ray restarts it);
6. delete orphans again (duplicate writes of retried chunks), write ``last-run.json``.

Ray Data's ``Dataset.write_lance`` is not used: with Ray 2.60 and pylance 14 it raises
``TypeError`` (``storage_options_provider``), and Ray Data's checkpointing with a Lance sink lost
rows on resume; fragments written by actors and committed by one committer are exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from avatar4d.data.schema import MULTIVIEW, PAIRS, TABLES, dataset_uri
from avatar4d.errors import UserError
from factory.chunks import Chunk, plan_chunks
from factory.inspect import STATE_DIR, check_plan, committed_chunks, row_counts, run_lock, write_json
from factory.recipes import FactoryConfig

logger = logging.getLogger(__name__)




class FactoryError(RuntimeError):
    """A run could not finish (a chunk failed on every attempt, a worker could not start)."""


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
    orphans_removed: int = 0
    actor_nodes: dict[str, str] = dataclasses.field(default_factory=dict)
    chunks_per_node: dict[str, int] = dataclasses.field(default_factory=dict)
    startup_seconds: float = 0.0
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
        checkpoint = ensure_domain_generator(domain, Path(cache_dir), config.generator_preset)
        self.stages: dict[str, Any] = {}
        if config.samples_per_domain > 0:
            self.stages[PAIRS] = SynthesizeStage(domain.name, checkpoint, config.synthesize.replace(device=device))
        if config.multiview_identities > 0:
            self.stages[MULTIVIEW] = MultiviewStage(domain.name, checkpoint, config.multiview.replace(device=device))
        self.uris = {table: dataset_uri(config.out, table) for table in TABLES}
        self.node_id = ray.get_runtime_context().get_node_id()
        self.device = device

    def describe(self) -> dict[str, Any]:
        """Node, process, device and the Arrow schema of each table this worker writes."""
        return {"node_id": self.node_id, "pid": os.getpid(), "device": self.device,
                "schemas": {table: stage.schema for table, stage in self.stages.items()}}

    def run(self, chunk: Chunk) -> ChunkResult:
        """Generate ``chunk``, write it as uncommitted fragments, return their metadata."""
        from factory.sink import write_fragments

        start = time.perf_counter()
        stage = self.stages[chunk.table]
        batch = stage(chunk)
        fragments = write_fragments(self.uris[chunk.table], batch, stage.schema)
        return ChunkResult(chunk.chunk_id, fragments, batch.num_rows, batch.nbytes, self.node_id,
                           time.perf_counter() - start)


class ProgressBars:
    """One tqdm bar per domain (pairs) plus one per multiview set (identities of all domains);
    bars start at what earlier runs already committed. Log lines go around the bars."""

    def __init__(self, chunks: list[Chunk], done: dict[str, set[str]], *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.totals: Counter[str] = Counter()
        self.initial: Counter[str] = Counter()
        for chunk in chunks:
            key = self.key(chunk)
            self.totals[key] += chunk.size
            if chunk.chunk_id in done.get(chunk.table, ()):
                self.initial[key] += chunk.size
        self.bars: dict[str, Any] = {}
        self._stack = contextlib.ExitStack()

    @staticmethod
    def key(chunk: Chunk) -> str:
        return chunk.domain if chunk.table == PAIRS else f"{MULTIVIEW}/{chunk.set_name}"

    def __enter__(self) -> ProgressBars:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        width = max((len(key) for key in self.totals), default=0)
        for position, key in enumerate(self.totals):
            unit = "pair" if "/" not in key else "identity"
            self.bars[key] = tqdm(total=self.totals[key], initial=self.initial[key], desc=key.ljust(width),
                                  unit=unit, position=position, leave=True, dynamic_ncols=True,
                                  disable=not self.enabled)
        if self.enabled:
            self._stack.enter_context(logging_redirect_tqdm())
        return self

    def advance(self, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            self.bars[self.key(chunk)].update(chunk.size)

    def __exit__(self, *exc: object) -> None:
        for bar in self.bars.values():
            bar.close()
        self._stack.close()


@dataclasses.dataclass
class WorkerSlot:
    name: str
    domain: str
    handle: Any
    in_flight: int = 0


@dataclasses.dataclass
class CommitEvent:
    """Passed to ``on_commit`` after each commit (tests use it to inject faults)."""

    table: str
    chunk_ids: list[str]
    rows: int
    actor_names: list[str]
    in_flight: dict[str, int]


def run_factory(config: FactoryConfig, *, address: str | None = None, num_cpus: int | None = None,
                progress: bool = True, on_commit: Callable[[CommitEvent], None] | None = None) -> RunSummary:
    """Run (or resume) the factory described by ``config``; see the module docstring.

    ``address``: None starts a local Ray with ``num_cpus`` CPUs (default: all) and stops it at
    the end; "auto", "host:port" or "ray://host:port" connect to a running cluster."""
    started = time.perf_counter()
    if "://" in config.out:
        raise UserError(f"--out {config.out}: give a folder (on a cluster: a shared file system mounted on every "
                        "node); object-store URIs are not supported")
    config = _absolute_paths(config)  # workers may run elsewhere (another cwd, another node)
    domains = _resolve_domains(config, local=address is None)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    state = out / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    # a local Ray gets at least the CPUs its actors ask for (they time-share the cores)
    wanted = len(domains) * config.actors_per_domain * config.num_cpus_per_actor
    local_cpus = max(num_cpus or os.cpu_count() or 1, math.ceil(wanted))
    chunks = plan_chunks(domains=list(config.domains), samples_per_domain=config.samples_per_domain,
                         multiview_identities=config.multiview_identities, chunk_size=config.chunk_size,
                         multiview_chunk_size=config.multiview_chunk_size, run_seed=config.run_seed)
    with run_lock(state / "run.lock"), contextlib.ExitStack() as stack:
        plan = check_plan(config, state / "plan.json")  # before starting anything
        if not _pending(chunks, committed_chunks(config.out)):  # nothing to do: no Ray needed
            summary = RunSummary(out=str(out), ray_address="", domains=list(config.domains),
                                 planned_chunks=len(chunks), skipped_chunks=len(chunks))
            return _finish(summary, state, row_counts(config.out), started)
        ray_address = stack.enter_context(ray_session(address, local_cpus, state))
        summary = RunSummary(out=str(out), ray_address=ray_address, domains=list(config.domains))
        slots, schemas = _start_workers(config, domains, summary)
        if address is None:
            _record_local_ray(state / "ray-local.json")
        committers = _open_committers(config, schemas)
        write_json(state / "plan.json", plan)
        summary.orphans_removed += _cleanup_orphans(committers)
        done = {table: committer.committed_chunks() for table, committer in committers.items()}
        pending = _pending(chunks, done)
        summary.planned_chunks, summary.skipped_chunks = len(chunks), len(chunks) - len(pending)
        summary.startup_seconds = time.perf_counter() - started
        with ProgressBars(chunks, done, enabled=progress) as bars:
            _schedule(config, slots, pending, committers, summary, bars, on_commit)
        summary.work_seconds = time.perf_counter() - started - summary.startup_seconds
        summary.orphans_removed += _cleanup_orphans(committers)
        return _finish(summary, state, row_counts(config.out), started)


def _finish(summary: RunSummary, state: Path, rows: dict[str, int], started: float) -> RunSummary:
    summary.rows_total = rows
    summary.seconds = time.perf_counter() - started
    write_json(state / "last-run.json", summary.to_dict())
    return summary


def _pending(chunks: list[Chunk], done: dict[str, set[str]]) -> list[Chunk]:
    return [c for c in chunks if c.chunk_id not in done.get(c.table, set())]


def _schedule(config: FactoryConfig, slots: list[WorkerSlot], pending: list[Chunk], committers: dict[str, Any],
              summary: RunSummary, bars: Any, on_commit: Callable[[CommitEvent], None] | None) -> None:
    queues: dict[str, deque[Chunk]] = {domain: deque() for domain in config.domains}
    for chunk in pending:
        queues[chunk.domain].append(chunk)
    in_flight: dict[Any, tuple[WorkerSlot, Chunk]] = {}
    attempts: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    while in_flight or any(queues.values()):
        for slot in slots:  # top up every actor to its in-flight bound (backpressure)
            queue = queues[slot.domain]
            while queue and slot.in_flight < config.max_in_flight_per_actor:
                chunk = queue.popleft()
                in_flight[slot.handle.run.remote(chunk)] = (slot, chunk)
                slot.in_flight += 1
        refs = list(in_flight)
        ray.wait(refs, num_returns=1)  # block until one chunk is done, then take all that are
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        finished: dict[str, list[tuple[Chunk, ChunkResult]]] = {table: [] for table in TABLES}
        for ref in ready:
            slot, chunk = in_flight.pop(ref)
            slot.in_flight -= 1
            try:
                result: ChunkResult = ray.get(ref)
            except RayActorError as error:  # the actor died (Ray restarts it): run the chunk again
                attempts[chunk.chunk_id] += 1
                if is_permanent_failure(error) or attempts[chunk.chunk_id] >= config.max_chunk_attempts:
                    raise FactoryError(f"chunk {chunk.chunk_id} failed {attempts[chunk.chunk_id]} times "
                                       f"({last_line(error)})") from None
                logger.warning("actor %s died while running %s; chunk re-queued", slot.name, chunk.chunk_id)
                queues[chunk.domain].appendleft(chunk)
                summary.resubmitted_chunks += 1
                continue
            except RayTaskError as error:  # the stage raised: deterministic, retrying will not help
                raise FactoryError(f"chunk {chunk.chunk_id} failed on {slot.name}: {last_line(error)}") from None
            if result.rows != chunk.size:
                raise FactoryError(f"chunk {chunk.chunk_id}: the stage made {result.rows} rows, expected {chunk.size}")
            finished[chunk.table].append((chunk, result))
            nodes[result.node_id] += 1
            summary.actor_busy_seconds += result.seconds
        for table, items in finished.items():
            if items:
                rows = commit_results(committers[table], items)
                summary.committed_chunks += len(items)
                summary.rows_committed[table] = summary.rows_committed.get(table, 0) + rows
                summary.bytes_written += sum(result.nbytes for _, result in items)
                bars.advance([chunk for chunk, _ in items])
                if on_commit is not None:
                    on_commit(CommitEvent(table, [c.chunk_id for c, _ in items], rows, [s.name for s in slots],
                                          {s.name: s.in_flight for s in slots}))
    summary.chunks_per_node = dict(nodes)


def _cleanup_orphans(committers: dict[str, Any]) -> int:
    """Delete uncommitted data files; only while no actor writes (before scheduling, after it)."""
    return sum(committer.cleanup_orphans() for committer in committers.values())


def commit_results(committer: Any, items: list[tuple[Chunk, ChunkResult]]) -> int:
    """One Append for all finished chunks of a table; chunk by chunk if some were committed already."""
    from factory.sink import ChunkConflictError

    try:
        return committer.commit([c.chunk_id for c, _ in items], [f for _, r in items for f in r.fragments_json])
    except ChunkConflictError:
        return sum(committer.commit([c.chunk_id], r.fragments_json) for c, r in items)


def is_permanent_failure(error: RayActorError) -> bool:
    """An actor that cannot come back (its constructor raised)."""
    return isinstance(error, ActorDiedError) and "creation task" in str(error)


def last_line(error: BaseException) -> str:
    """The exception line of a Ray error's remote traceback (a one-line reason)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


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
        if local and domain.generator_checkpoint and not Path(domain.generator_checkpoint).expanduser().is_dir():
            raise UserError(f"domain {domain.name}: generator checkpoint not found: {domain.generator_checkpoint}")
    return domains


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int, state: Path) -> Iterator[str]:
    """Start a local Ray (address None) or connect to one; shut down only what was started here."""
    if ray.is_initialized():
        raise UserError("Ray is already initialised in this process; run the factory in a fresh process")
    if address is not None:
        _check_reachable(address)
    try:
        with warnings.catch_warnings():
            # Ray forks only to exec its processes: safe after this process used Lance
            warnings.filterwarnings("ignore", message="lance is not fork-safe")
            if address is None:
                context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                                   log_to_driver=False, logging_level=logging.WARNING)
            else:
                context = ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as error:
        hint = " (a token-auth cluster needs RAY_AUTH_MODE=token)" if "token" in str(error).lower() else ""
        where = f"connect to Ray at {address}" if address else "start a local Ray"
        raise UserError(f"cannot {where}: {last_line(error)}{hint}") from None
    try:
        yield str(getattr(context, "address_info", {}).get("gcs_address") or address or "local")
    finally:
        ray.shutdown()  # for a cluster we connected to this only disconnects the driver
        if address is None:
            (state / "ray-local.json").unlink(missing_ok=True)


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a HOST:PORT (or ray://HOST:PORT) nothing listens on (Ray itself retries for minutes)."""
    import socket

    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if address == "auto" or not port.isdigit():
        return
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise UserError(f"cannot reach a Ray cluster at {address}: {error.strerror or error}") from None


def _record_local_ray(path: Path) -> None:
    """The pids of the local Ray this driver started (its child processes), so whoever kills the
    driver can check that they are gone (they exit with their parent; see tests/integration)."""
    import psutil

    me = psutil.Process()
    record = {"driver_pid": me.pid,
              "processes": [{"pid": p.pid, "create_time": p.create_time()} for p in me.children(recursive=True)]}
    path.write_text(json.dumps(record))


def _start_workers(config: FactoryConfig, domains: list[Any], summary: RunSummary
                   ) -> tuple[list[WorkerSlot], dict[str, Any]]:
    """Create the actors, wait until every one loaded its stages, check they agree on the schemas."""
    use_gpus = config.num_gpus_per_actor > 0 and ray.cluster_resources().get("GPU", 0) > 0
    resources = {"num_cpus": config.num_cpus_per_actor, "num_gpus": config.num_gpus_per_actor if use_gpus else 0}
    cache = config.generator_cache or str(Path(config.out) / "generators" / config.generator_preset)
    worker_class = ray.remote(DomainWorker)
    slots = []
    for domain in domains:
        for index in range(config.actors_per_domain):
            name = f"factory/{domain.name}/{index}"  # ray.get_actor(name) in this driver's namespace
            handle = worker_class.options(name=name, max_restarts=-1, max_task_retries=0, **resources).remote(
                domain, config, cache)
            slots.append(WorkerSlot(name, domain.name, handle))
    try:
        described = wait_for_workers(slots)
    except RayActorError as error:
        raise UserError(f"a factory worker could not start: {last_line(error)}") from None
    from avatar4d.data.schema import check_compatible

    schemas: dict[str, Any] = {}
    for slot, info in zip(slots, described):
        summary.actor_nodes[slot.name] = info["node_id"]
        for table, schema in info["schemas"].items():
            if table in schemas:  # e.g. a fine-tuned checkpoint of another size than the others
                try:
                    check_compatible(schemas[table], schema)
                except UserError as error:
                    raise UserError(f"worker {slot.name} writes another {table} layout: {error}") from None
            schemas.setdefault(table, schema)
    logger.info("%d workers up (%s)", len(slots), "GPU" if use_gpus else "CPU")
    return slots, schemas


def wait_for_workers(slots: list[WorkerSlot], report_every_s: float = 30.0) -> list[dict[str, Any]]:
    """``describe()`` of every worker; says so while some cannot be placed (a full cluster waits)."""
    refs = [slot.handle.describe.remote() for slot in slots]
    while True:
        ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=report_every_s)
        if not waiting:
            return ray.get(refs)
        logger.warning("%d of %d factory workers are not up yet (cluster resources free: %s)", len(waiting),
                       len(refs), ray.available_resources())


def _open_committers(config: FactoryConfig, schemas: dict[str, Any]) -> dict[str, Any]:
    from factory.sink import LanceCommitter

    return {table: LanceCommitter(dataset_uri(config.out, table), schema) for table, schema in schemas.items()}
