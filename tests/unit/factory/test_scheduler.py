"""The scheduler's policy with scripted actors (no Ray processes): a dead actor gets no work until
a ping says it is back, its chunks go to a healthy actor of the domain, and only the chunk an
actor was running when it died is charged an attempt (the old driver resent the chunk at once to
the restarting actor and spent all attempts inside Ray's restart window)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from ray.exceptions import RayActorError

import factory.scheduler as scheduler_module
from factory.scheduler import ChunkScheduler, FactoryError, WorkerSlot


@dataclass(eq=False)
class Ref:
    value: object = None
    error: BaseException | None = None


class FakeRay:
    """Every scripted call completes at once."""

    @staticmethod
    def wait(refs, num_returns=1, timeout=None):
        return list(refs), []

    @staticmethod
    def get(ref):
        if ref.error is not None:
            raise ref.error
        return ref.value

    @staticmethod
    def available_resources():
        return {}


@dataclass
class ScriptedActor:
    """Dies while running any chunk in ``kills`` (once per listed occurrence); after a death,
    ``pings_to_restart`` pings fail before it is back. Records every call."""

    name: str
    kills: list[str] = field(default_factory=list)
    pings_to_restart: int = 2
    alive: bool = True
    failed_pings: int = 0
    calls: list[tuple[str, bool]] = field(default_factory=list)  # (chunk or "ping", alive at the call)

    def __post_init__(self) -> None:
        actor = self

        class Method:
            def __init__(self, fn):
                self.remote = fn

        self.run = Method(actor._run)
        self.ping = Method(actor._ping)

    def _run(self, chunk: str) -> Ref:
        self.calls.append((chunk, self.alive))
        if not self.alive:
            return Ref(error=RayActorError())
        if chunk in self.kills:
            self.kills.remove(chunk)
            self.alive, self.failed_pings = False, 0
            return Ref(error=RayActorError())
        return Ref(value=f"{chunk}@{self.name}")

    def _ping(self) -> Ref:
        self.calls.append(("ping", self.alive))
        if not self.alive:
            self.failed_pings += 1
            if self.failed_pings >= self.pings_to_restart:
                self.alive = True
            return Ref(error=RayActorError())
        return Ref(value=self.name)


class Chunk(str):
    @property
    def chunk_id(self) -> str:
        return str(self)


@pytest.fixture(autouse=True)
def fake_ray(monkeypatch):
    monkeypatch.setattr(scheduler_module, "ray", FakeRay)


def _run(actors: list[ScriptedActor], chunks: list[str], max_attempts: int = 3):
    slots = [WorkerSlot(actor.name, "d", actor) for actor in actors]
    finished: list[tuple[str, str]] = []
    scheduler = ChunkScheduler(slots, {"d": iter(Chunk(c) for c in chunks)}, on_finished=finished.extend,
                               max_in_flight=2, max_attempts=max_attempts, backoff_s=0.001, max_backoff_s=0.002)
    return scheduler, scheduler.run(), finished


def test_a_dead_actor_gets_no_work_until_it_is_back_and_a_sibling_takes_its_chunks():
    a, b = ScriptedActor("a", kills=["c0"]), ScriptedActor("b")
    scheduler, stats, finished = _run([a, b], [f"c{i}" for i in range(8)])
    assert sorted(chunk for chunk, _ in finished) == [f"c{i}" for i in range(8)]  # each exactly once
    assert [chunk for chunk, alive in a.calls if chunk != "ping" and not alive] == ["c1"]  # only the one queued
    assert dict(scheduler.attempts) == {"c0": 1}  # c1 was queued behind c0: not charged
    assert stats.actor_failures == 1 and stats.resubmitted_chunks == 2
    assert {"c0", "c1"} <= {chunk for chunk, result in finished if result.endswith("@b")}


def test_a_long_restart_costs_no_attempts():
    a = ScriptedActor("a", kills=["c0"], pings_to_restart=50)  # 50 failed pings: a long restart
    scheduler, stats, finished = _run([a], [f"c{i}" for i in range(4)], max_attempts=2)
    assert sorted(chunk for chunk, _ in finished) == ["c0", "c1", "c2", "c3"]
    assert dict(scheduler.attempts) == {"c0": 1} and stats.actor_restarts == 1


def test_a_chunk_that_kills_every_actor_fails_the_run_naming_it():
    a, b = ScriptedActor("a", kills=["poison"] * 3), ScriptedActor("b", kills=["poison"] * 3)
    with pytest.raises(FactoryError, match="chunk poison failed 3 times"):
        _run([a, b], ["c0", "poison", "c1", "c2"], max_attempts=3)
