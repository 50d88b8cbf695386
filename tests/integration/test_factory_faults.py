"""Fault injection: actors killed again and again, at different moments, under CPU load. Ray
restarts them (max_restarts=-1); the scheduler waits for them with back-off, re-queues their
chunks and counts attempts only against a chunk's own failures, so the run ends by itself with
exactly the requested rows (before, the re-queued chunk was resent at once to the restarting
actor and its five attempts were spent within seconds: `chunk … failed 5 times`)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from tests.integration.conftest import DOMAINS, read_table, small_config

pytestmark = pytest.mark.integration

N = 18


@pytest.fixture()
def cpu_load():
    """One busy process for the test's duration (the machine is loaded anyway: this makes it worse)."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield burner
    burner.kill()
    burner.wait()


def test_repeated_actor_kills_under_load_end_in_exact_rows(tmp_path, cpu_load):
    """Kills at four moments: while an actor starts, mid-chunk, while it restarts, and all actors at once."""
    import ray

    from factory.pipeline import CommitEvent, run_factory
    from factory.verify import verify

    kills: list[tuple[str, str]] = []  # (moment, actor)
    victim = f"factory/{DOMAINS[0]}/0"

    def inject(event: CommitEvent) -> None:
        """Kill 1: an actor in the middle of a chunk; kill 2: the same actor at the next commit,
        while Ray is still restarting it; kill 3: once it has committed work again, both domains'
        actors at the same moment."""
        if not kills:
            busy = [name for name, count in event.in_flight.items() if count > 0]
            if busy:
                ray.kill(ray.get_actor(busy[0]), no_restart=False)
                kills.append(("mid-chunk", busy[0]))
        elif len(kills) == 1:
            ray.kill(ray.get_actor(kills[0][1]), no_restart=False)
            kills.append(("restarting", kills[0][1]))
        elif len(kills) == 2 and any(chunk.split("/")[1] == kills[0][1].split("/")[1] for chunk in event.chunk_ids):
            for name in event.actor_names:
                ray.kill(ray.get_actor(name), no_restart=False)
            kills.append(("all at once", ",".join(event.actor_names)))

    starting = f"factory/{DOMAINS[1]}/0"
    at_start: list[str] = []

    def kill_while_starting() -> None:
        """Kill 0: the other domain's actor as soon as it exists (while it loads its generator)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not at_start:
            if not ray.is_initialized():  # (get_actor would start a Ray of its own)
                time.sleep(0.02)
                continue
            try:
                ray.kill(ray.get_actor(starting), no_restart=False)
                at_start.append(starting)
            except ValueError:  # not registered yet
                time.sleep(0.02)

    out = tmp_path / "data"
    config = small_config(out, samples_per_domain=N, chunk_size=2, max_in_flight_per_actor=2, max_chunk_attempts=3)
    killer = threading.Thread(target=kill_while_starting, daemon=True)
    killer.start()
    summary = run_factory(config, num_cpus=2, progress=False, on_commit=inject)
    killer.join(timeout=5)

    assert at_start == [starting]
    assert [moment for moment, _ in kills] == ["mid-chunk", "restarting", "all at once"], kills
    assert victim in {name for _, names in kills for name in names.split(",")}
    # deaths the scheduler saw (a kill during a restart or of an idle actor shows as one death)
    assert summary.actor_failures >= 2 and summary.actor_restarts >= 2 and summary.resubmitted_chunks >= 2
    table, _ = read_table(out, "pairs", ["sample_id", "chunk_id"])
    ids = table.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(DOMAINS) * N
    assert set(ids) == {f"{d}/{i:08d}" for d in DOMAINS for i in range(N)}
    assert summary.committed_chunks == summary.planned_chunks
    multiview, _ = read_table(out, "multiview", ["identity_id"])
    assert multiview.num_rows == len(set(multiview.column("identity_id").to_pylist())) == len(DOMAINS) * 2
    # no data file is left that the dataset does not reference (half-written or duplicate chunks),
    # and every row reads back with its checksum
    import lance

    dataset = lance.dataset(str(out / "pairs.lance"))
    referenced = {f.path for fragment in dataset.get_fragments() for f in fragment.data_files()}
    on_disk = {p.name for p in (out / "pairs.lance" / "data").iterdir() if p.suffix == ".lance"}
    assert on_disk == referenced
    assert all(report.ok and report.checksummed for report in verify(out).values())
