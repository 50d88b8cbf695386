"""``factory stylize``: source portraits × domains → ``<out>/stylized.lance``, exactly once, resumable.

Chunks: ``chunk_size`` consecutive rows of the (pinned) source dataset for one domain
(``stylized/<domain>/<start>-<stop>``), so chunk ids are deterministic and survive a rerun. Flow of
:func:`run_stylize` (the encode stage's, :mod:`factory.encode`):

1. lock ``<out>/.factory/stylize/run.lock``; check the source portraits (columns, face-parameter
   split, image size) and the domains (one-line errors);
2. plan the chunks, skip the ones ``stylized.lance`` already holds (its ``chunk_id`` column is the
   ledger, as for every factory table);
3. run :class:`StylizeWorker` in-process (``local=True``) or as Ray actors, one per GPU
   (``num_actors``; on a CPU-only cluster they take ``num_cpus_per_actor`` CPUs); each loads the
   Stable Diffusion + ControlNet pipeline once, reads its chunk's source rows by position, runs
   :class:`~factory.stages.stylize.StylizeStage` and writes uncommitted fragments;
4. the driver alone commits (:class:`~factory.sink.LanceCommitter`) through the one
   :class:`~factory.scheduler.ChunkScheduler`, which re-queues the chunks of dead actors; orphan
   files are removed before and after; ``last-run.json`` records the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from avatar4d.config import Config, ConfigError
from avatar4d.data.stylized_schema import META_IMAGE, SOURCE_COLUMNS, STYLIZED, check_source_schema, stylized_uri
from avatar4d.errors import UserError
from factory.inspect import write_json
from factory.pipeline import STATE_DIR, ChunkResult, CommitEvent, WorkerSlot, run_lock
from factory.ray_session import ray_session, resolve_address
from factory.stage_runs import committed_chunk_ids, progress_bar, record_commit
from factory.stages.stylize import StylizeConfig

logger = logging.getLogger(__name__)

STYLIZE_STATE = "stylize"


@dataclasses.dataclass
class StylizeRunConfig(Config):
    """One stylize run: the source portraits (a Lance dataset URI/folder), the output folder, the
    domains (catalog names; ``domains_file`` adds or overrides entries), the stage options, chunking,
    the run seed, and the actors (one per GPU by default)."""

    source: str = "data/sources/pairs.lance"
    out: str = "data"
    domains: list[str] = dataclasses.field(default_factory=lambda: ["pixar", "greek_statue"])
    domains_file: str | None = None
    stylize: StylizeConfig = dataclasses.field(default_factory=StylizeConfig)
    chunk_size: int = 8
    run_seed: int = 0
    num_actors: int = 1
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 1.0
    max_in_flight_per_actor: int = 2
    max_chunk_attempts: int = 3

    def __post_init__(self) -> None:
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ConfigError("stylize needs at least one domain, each named once")
        for name in ("chunk_size", "num_actors", "max_in_flight_per_actor", "max_chunk_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_cpus_per_actor <= 0 or self.num_gpus_per_actor < 0:
            raise ConfigError("num_cpus_per_actor must be > 0 and num_gpus_per_actor >= 0")


@dataclasses.dataclass(frozen=True)
class StylizeChunk:
    """Source rows ``start..stop - 1`` (positions in the pinned version) stylized into ``domain``."""

    domain: str
    start: int
    stop: int

    @property
    def chunk_id(self) -> str:
        return f"{STYLIZED}/{self.domain}/{self.start:08d}-{self.stop:08d}"

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass
class StylizeSummary:
    """What a run did; also written to ``<out>/.factory/stylize/last-run.json``."""

    out: str
    source: str
    source_version: int = 0
    ray_address: str = ""
    planned_chunks: int = 0
    skipped_chunks: int = 0
    committed_chunks: int = 0
    rows_committed: int = 0
    rows_total: int = 0
    resubmitted_chunks: int = 0
    orphans_removed: int = 0
    work_seconds: float = 0.0
    seconds: float = 0.0

    def images_per_second(self) -> float:
        return self.rows_committed / self.work_seconds if self.work_seconds > 0 else 0.0


def plan_chunks(domains: list[str], rows: int, chunk_size: int) -> list[StylizeChunk]:
    return [StylizeChunk(domain, start, min(start + chunk_size, rows)) for domain in domains
            for start in range(0, rows, chunk_size)]


def open_source(source: str, version: int | None = None) -> Any:
    """The source-portrait dataset (one-line errors when missing or not a portrait table)."""
    from factory.sink import open_dataset

    dataset = open_dataset(source, version)
    if dataset is None:
        raise UserError(f"--source {source}: no Lance dataset there (make portraits with `avatar4d factory run "
                        f"--domains realistic`, or from `avatar4d track` results; README \"Stylize\")")
    check_source_schema(dataset.schema, source)
    return dataset


def source_resolution(dataset: Any) -> int:
    """The portraits' side in px (schema metadata ``avatar4d.image``, else the first image)."""
    from avatar4d.data.codec import decode_png

    raw = (dataset.schema.metadata or {}).get(META_IMAGE.encode())
    if raw is not None:
        return int(json.loads(raw)["resolution"])
    first = dataset.take([0], columns=["image"]).column("image")[0].as_py()
    return int(decode_png(first).shape[-1])


class StylizeWorker:
    """Hosts one :class:`~factory.stages.stylize.StylizeStage`, in a Ray actor or in the driver."""

    def __init__(self, config: StylizeRunConfig, source_version: int, num_threads: int | None = None) -> None:
        import torch

        from factory.domains import load_domains
        from factory.stages.stylize import StylizeStage

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        stage_config = config.stylize
        if ray.is_initialized():  # in an actor
            if ray.get_gpu_ids() and torch.cuda.is_available():
                stage_config = stage_config.replace(device="cuda")
            self.node_id = ray.get_runtime_context().get_node_id()
        else:
            self.node_id = "local"
        self.source = open_source(config.source, source_version)
        dims = check_source_schema(self.source.schema, config.source)
        catalog = load_domains(config.domains_file)
        self.domains = {name: catalog.get(name) for name in config.domains}
        self.stage = StylizeStage(stage_config, face_params_dim=int(dims["total"]), identity_dim=dims.get("identity"),
                                  image_resolution=source_resolution(self.source), run_seed=config.run_seed)
        self.uri = stylized_uri(config.out)

    def ping(self) -> str:
        return self.node_id

    def describe(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "pid": os.getpid(), "schema": self.stage.schema}

    def run(self, chunk: StylizeChunk) -> ChunkResult:
        """Stylize ``chunk``, write it as uncommitted fragments, return their metadata."""
        from avatar4d.data.reader import decode_batch
        from factory.sink import write_fragments

        start = time.perf_counter()
        table = self.source.take(list(range(chunk.start, chunk.stop)), columns=list(SOURCE_COLUMNS))
        rows = decode_batch(table.combine_chunks().to_batches()[0], self.source.schema)
        batch = self.stage(self.domains[chunk.domain], chunk.chunk_id, rows)
        fragments = write_fragments(self.uri, batch, self.stage.schema)
        return ChunkResult(chunk.chunk_id, fragments, batch.num_rows, batch.nbytes, self.node_id,
                           time.perf_counter() - start)


def run_stylize(config: StylizeRunConfig, *, address: str | None = None, local: bool = False,
                num_cpus: int | None = None, progress: bool = True,
                on_commit: Callable[[CommitEvent], None] | None = None) -> StylizeSummary:
    """Stylize every (source row, domain) not stylized yet; see the module docstring.

    ``local``: no Ray, one in-process worker; else ``address`` None uses ``RAY_ADDRESS`` when set,
    else a local Ray with ``num_cpus`` CPUs for the run. ``on_commit`` runs after each commit (tests)."""
    from factory.domains import load_domains
    from factory.sink import LanceCommitter, open_dataset

    started = time.perf_counter()
    if "://" in config.out:
        raise UserError(f"--out {config.out}: give a folder")
    config = config.replace(out=str(Path(config.out).expanduser().absolute()),
                            source=config.source if "://" in config.source
                            else str(Path(config.source).expanduser().absolute()))
    catalog = load_domains(config.domains_file)
    for name in config.domains:
        catalog.get(name)  # unknown names: one line with suggestions
    source = open_source(config.source)
    state = Path(config.out) / STATE_DIR / STYLIZE_STATE
    state.mkdir(parents=True, exist_ok=True)
    chunks = plan_chunks(config.domains, source.count_rows(), config.chunk_size)
    summary = StylizeSummary(out=config.out, source=config.source, source_version=source.version,
                             planned_chunks=len(chunks))
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run_lock(state / "run.lock"))
        except UserError:
            raise UserError(f"another `factory stylize` is writing to {config.out}; wait for it to finish") from None
        existing = open_dataset(stylized_uri(config.out))
        done = committed_chunk_ids(existing)
        pending = [chunk for chunk in chunks if chunk.chunk_id not in done]
        summary.skipped_chunks = len(chunks) - len(pending)
        if not pending:
            return _finish(summary, state, started)
        if local:
            worker = StylizeWorker(config, source.version, config.stylize.num_threads)
            schema, slots = worker.describe()["schema"], []
        else:
            cpus = max(num_cpus or os.cpu_count() or 1, math.ceil(config.num_actors * config.num_cpus_per_actor))
            summary.ray_address = stack.enter_context(ray_session(resolve_address(address), cpus, state))
            slots, schema = _start_actors(config, source.version)
        committer = LanceCommitter(stylized_uri(config.out), schema)
        summary.orphans_removed += committer.cleanup_orphans()
        work_started = time.perf_counter()
        with progress_bar(chunks, done, progress, desc="stylize", unit="image") as bar:
            def commit(items: list[tuple[StylizeChunk, ChunkResult]]) -> None:
                record_commit(committer, STYLIZED, items, summary, bar, on_commit, [s.name for s in slots],
                              {s.name: s.in_flight for s in slots})

            if local:
                for chunk in pending:
                    commit([(chunk, worker.run(chunk))])
            else:
                from factory.scheduler import ChunkScheduler

                scheduler = ChunkScheduler(slots, {STYLIZED: iter(pending)}, on_finished=commit,
                                           max_in_flight=config.max_in_flight_per_actor,
                                           max_attempts=config.max_chunk_attempts)
                summary.resubmitted_chunks += scheduler.run().resubmitted_chunks
        summary.work_seconds = time.perf_counter() - work_started
        summary.orphans_removed += committer.cleanup_orphans()
        return _finish(summary, state, started)


def _start_actors(config: StylizeRunConfig, source_version: int) -> tuple[list[WorkerSlot], Any]:
    from factory.workers import actor_resources, wait_for_workers

    resources, use_gpus = actor_resources(config.num_cpus_per_actor, config.num_gpus_per_actor)
    worker_class = ray.remote(StylizeWorker)
    slots = []
    for index in range(config.num_actors):
        name = f"stylize/{index}"
        handle = worker_class.options(name=name, max_restarts=-1, max_task_retries=0, **resources).remote(
            config, source_version, max(1, round(config.num_cpus_per_actor)))
        slots.append(WorkerSlot(name, STYLIZED, handle))
    described = wait_for_workers(slots)
    logger.info("%d stylize workers up (%s)", len(slots), "GPU" if use_gpus else "CPU")
    return slots, described[0]["schema"]


def _finish(summary: StylizeSummary, state: Path, started: float) -> StylizeSummary:
    from factory.sink import open_dataset

    dataset = open_dataset(stylized_uri(summary.out))
    summary.rows_total = 0 if dataset is None else dataset.count_rows()
    summary.seconds = time.perf_counter() - started
    write_json(state / "last-run.json", dataclasses.asdict(summary))
    return summary
