"""What every chunked stage run outside ``factory run`` shares (``factory encode``, ``factory stylize``):
the chunk ids a dataset already holds, one commit of finished chunks with its bookkeeping, and the
progress bar. The scheduler and the sink are :mod:`factory.scheduler` and :mod:`factory.sink`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from factory.pipeline import ChunkResult, CommitEvent, FactoryError, commit_results


class PlannedChunk(Protocol):
    chunk_id: str
    rows: int


class RunCounters(Protocol):
    committed_chunks: int
    rows_committed: int


def committed_chunk_ids(dataset: Any) -> set[str]:
    """Chunk ids already committed to ``dataset`` (None: nothing yet)."""
    if dataset is None:
        return set()
    return set(dataset.to_table(columns=["chunk_id"]).column("chunk_id").unique().to_pylist())


def record_commit(committer: Any, table: str, items: Sequence[tuple[PlannedChunk, ChunkResult]], summary: RunCounters,
                  bar: Any, on_commit: Callable[[CommitEvent], None] | None, actor_names: list[str],
                  in_flight: dict[str, int]) -> None:
    """Commit finished chunks once (each must hold the rows it planned), count them and tell ``on_commit``."""
    for chunk, result in items:
        if result.rows != chunk.rows:
            raise FactoryError(f"chunk {chunk.chunk_id}: the stage made {result.rows} rows, expected {chunk.rows}")
    rows = commit_results(committer, list(items))
    summary.committed_chunks += len(items)
    summary.rows_committed += rows
    bar.update(sum(chunk.rows for chunk, _ in items))
    if on_commit is not None:
        on_commit(CommitEvent(table, [c.chunk_id for c, _ in items], rows, actor_names, in_flight))


@contextlib.contextmanager
def progress_bar(chunks: Sequence[PlannedChunk], done: set[str], enabled: bool, *, desc: str,
                 unit: str) -> Iterator[Any]:
    """A tqdm bar over the planned rows, starting at what is already committed; log lines print above it."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    total = sum(c.rows for c in chunks)
    initial = sum(c.rows for c in chunks if c.chunk_id in done)
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled,
                                       dynamic_ncols=True))
        if enabled:
            stack.enter_context(logging_redirect_tqdm())
        yield bar
