"""Chunk scheduling over Ray actors that may die: backpressure, restart waits, per-chunk attempts.

One :class:`ChunkScheduler` drives a set of actors (:class:`WorkerSlot`, each serving one *key*:
a domain for the factory, the single key ``encoded`` for the encode stage). Policy:

- every healthy actor holds at most ``max_in_flight`` chunks (backpressure); work of a key goes to
  any healthy actor of that key;
- an actor whose task fails with ``RayActorError`` is marked *down*: nothing is sent to it until a
  ``ping`` succeeds. Pings back off exponentially (``backoff_s`` doubling up to ``max_backoff_s``)
  while Ray restarts the actor (``max_restarts=-1``); its chunks go back to the front of their
  key's queue, to be taken by another healthy actor of the key or by this one once it is back;
- attempts are counted per chunk, and only against that chunk's own failures: one death of an
  actor counts one attempt against the chunk it was running (the earliest one submitted to it;
  the others were only queued behind it and are re-queued without counting), and an I/O error
  raised by the chunk's task counts one. Nothing is sent to an actor while it restarts, so its
  restart window costs no attempts. A chunk fails the run after ``max_attempts`` failures of its own;
  an actor that stays down for ``restart_timeout_s`` fails it too (say which resources are free);
- a task that raised anything else (a bug, a bad checkpoint) fails the run at once: retrying a
  deterministic failure only wastes the cluster.

Sources are iterators (lazy chunk plans), so the driver holds only what is in flight or re-queued.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from factory.messages import clean_error

logger = logging.getLogger(__name__)

C = TypeVar("C")


class FactoryError(RuntimeError):
    """A run could not finish (a chunk failed on every attempt, a worker could not start)."""


def is_permanent_failure(error: RayActorError) -> bool:
    """An actor that cannot come back (its constructor raised)."""
    return isinstance(error, ActorDiedError) and "creation task" in str(error)


def last_line(error: BaseException) -> str:
    """The exception line of a Ray error's remote traceback (a one-line reason)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return clean_error(lines[-1]) if lines else type(error).__name__


@dataclasses.dataclass
class WorkerSlot:
    """One actor: its name, the key of the work it takes, its handle and its health."""

    name: str
    domain: str
    handle: Any
    in_flight: int = 0
    healthy: bool = True
    down_since: float = 0.0
    probe: Any = None
    next_probe_at: float = 0.0
    backoff_s: float = 0.0
    restarts: int = 0
    stale_through: int = 0  # tasks submitted up to this sequence number went to a process that died


@dataclasses.dataclass
class SchedulerStats:
    """What the scheduler saw: chunks re-queued, actor deaths and returns, seconds actors were down."""

    resubmitted_chunks: int = 0
    actor_failures: int = 0
    actor_restarts: int = 0
    down_seconds: float = 0.0


class ChunkScheduler(Generic[C]):
    """Runs every chunk of ``sources`` (key → iterator of chunks) on ``slots``; calls ``on_finished``
    with each batch of finished ``(chunk, result)`` pairs (the caller commits them)."""

    def __init__(self, slots: list[WorkerSlot], sources: dict[str, Iterator[C]], *,
                 on_finished: Callable[[list[tuple[C, Any]]], None], max_in_flight: int, max_attempts: int,
                 restart_timeout_s: float = 900.0, backoff_s: float = 0.25, max_backoff_s: float = 8.0,
                 chunk_id: Callable[[C], str] = lambda chunk: chunk.chunk_id) -> None:  # type: ignore[attr-defined]
        missing = sorted(set(sources) - {slot.domain for slot in slots})
        if missing:
            raise ValueError(f"no worker serves {missing}")
        self.slots, self.sources, self.on_finished = slots, dict(sources), on_finished
        self.max_in_flight, self.max_attempts = max_in_flight, max_attempts
        self.restart_timeout_s, self.initial_backoff_s, self.max_backoff_s = restart_timeout_s, backoff_s, max_backoff_s
        self.chunk_id = chunk_id
        self.retry: dict[str, deque[C]] = {key: deque() for key in sources}
        self.exhausted: set[str] = set()
        self.in_flight: dict[Any, tuple[WorkerSlot, C, int]] = {}
        self.attempts: Counter[str] = Counter()
        self.stats = SchedulerStats()
        self._sequence = 0

    # ---- main loop ------------------------------------------------------------------------------

    def run(self) -> SchedulerStats:
        while True:
            self._submit()
            if not self._has_pending_work():
                return self.stats
            self._wait()

    def _has_pending_work(self) -> bool:
        return bool(self.in_flight or any(self.retry.values()) or len(self.exhausted) < len(self.sources))

    def _take(self, key: str) -> C | None:
        if self.retry[key]:
            return self.retry[key].popleft()
        if key in self.exhausted:
            return None
        chunk = next(self.sources[key], None)
        if chunk is None:
            self.exhausted.add(key)
        return chunk

    def _submit(self) -> None:
        for slot in self.slots:
            if slot.domain not in self.sources:
                continue
            while slot.healthy and slot.in_flight < self.max_in_flight:
                chunk = self._take(slot.domain)
                if chunk is None:
                    break
                self._sequence += 1
                self.in_flight[slot.handle.run.remote(chunk)] = (slot, chunk, self._sequence)
                slot.in_flight += 1

    def _wait(self) -> None:
        now = time.monotonic()
        deadlines = []
        for slot in self.slots:  # ping actors that are down once their back-off is over
            if slot.healthy:
                continue
            if now - slot.down_since > self.restart_timeout_s:
                raise FactoryError(f"worker {slot.name} has not come back {now - slot.down_since:.0f}s after it died "
                                   f"(cluster resources free: {_free_resources()})")
            if slot.probe is None and now >= slot.next_probe_at:
                slot.probe = slot.handle.ping.remote()
            deadlines.append(slot.next_probe_at if slot.probe is None else slot.down_since + self.restart_timeout_s)
        probes = {slot.probe: slot for slot in self.slots if slot.probe is not None}
        refs = list(self.in_flight) + list(probes)
        timeout = max(0.0, min(deadlines) - now) + 0.01 if deadlines else None
        if not refs:
            time.sleep(timeout or 0.0)
            return
        ray.wait(refs, num_returns=1, timeout=timeout)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        finished: list[tuple[C, Any]] = []
        failed: list[tuple[WorkerSlot, C, int, RayActorError]] = []
        for ref in ready:
            if ref in probes:
                self._probed(probes[ref], ref)
                continue
            slot, chunk, sequence = self.in_flight.pop(ref)
            slot.in_flight -= 1
            try:
                finished.append((chunk, ray.get(ref)))
            except RayActorError as error:
                failed.append((slot, chunk, sequence, error))
            except RayTaskError as error:
                self._task_failed(slot, chunk, error)
        self._actors_failed(failed)
        if finished:
            self.on_finished(finished)

    # ---- failures -------------------------------------------------------------------------------

    def _actors_failed(self, failed: list[tuple[WorkerSlot, C, int, RayActorError]]) -> None:
        for slot, chunk, sequence, error in sorted(failed, key=lambda item: item[2]):  # submission order
            if is_permanent_failure(error):
                raise FactoryError(f"worker {slot.name} cannot start: {last_line(error)}")
            if slot.healthy and sequence > slot.stale_through:  # the first failure of this death: the
                self._mark_down(slot, chunk, error)                # chunk the actor was running
                self._count(chunk, error)
            self._requeue(slot.domain, chunk)

    def _requeue(self, key: str, chunk: C) -> None:
        # keep plan order among re-queued chunks: they go before the not-yet-started ones
        self.retry[key].append(chunk)
        self.stats.resubmitted_chunks += 1

    def _count(self, chunk: C, error: BaseException) -> None:
        chunk_id = self.chunk_id(chunk)
        self.attempts[chunk_id] += 1
        if self.attempts[chunk_id] >= self.max_attempts:
            raise FactoryError(f"chunk {chunk_id} failed {self.attempts[chunk_id]} times ({last_line(error)})")

    def _mark_down(self, slot: WorkerSlot, chunk: C, error: BaseException) -> None:
        slot.healthy, slot.down_since, slot.probe = False, time.monotonic(), None
        slot.stale_through = self._sequence  # its other tasks died with it: their failures are not new deaths
        slot.backoff_s = self.initial_backoff_s
        slot.next_probe_at = slot.down_since + slot.backoff_s
        self.stats.actor_failures += 1
        logger.warning("worker %s died while running %s (%s); its chunks are re-queued and it is restarted",
                       slot.name, self.chunk_id(chunk), last_line(error))

    def _task_failed(self, slot: WorkerSlot, chunk: C, error: RayTaskError) -> None:
        cause = getattr(error, "cause", None)
        if isinstance(cause, OSError):  # a storage hiccup: the chunk may succeed on another try
            logger.warning("chunk %s failed on %s (%s); retrying", self.chunk_id(chunk), slot.name, last_line(error))
            self._count(chunk, error)
            self._requeue(slot.domain, chunk)
            return
        raise FactoryError(f"chunk {self.chunk_id(chunk)} failed on {slot.name}: {last_line(error)}")

    def _probed(self, slot: WorkerSlot, ref: Any) -> None:
        slot.probe = None
        now = time.monotonic()
        try:
            ray.get(ref)
        except RayActorError as error:
            if is_permanent_failure(error):
                raise FactoryError(f"worker {slot.name} cannot restart: {last_line(error)}") from None
            slot.backoff_s = min(self.max_backoff_s, slot.backoff_s * 2)
            slot.next_probe_at = now + slot.backoff_s
            return
        slot.healthy = True
        slot.restarts += 1
        self.stats.actor_restarts += 1
        self.stats.down_seconds += now - slot.down_since
        logger.warning("worker %s is back after %.1fs", slot.name, now - slot.down_since)


def _free_resources() -> dict[str, float]:
    try:
        return {key: value for key, value in ray.available_resources().items() if not key.startswith("node:")}
    except Exception:  # noqa: BLE001 - only a hint in an error message
        return {}
