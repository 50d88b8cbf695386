"""Fault injection: an actor killed in the middle of a run. Ray restarts it (max_restarts=-1), the
driver re-queues the chunks it was running, and the run ends with exactly the requested rows."""

from __future__ import annotations

import pytest

from tests.integration.conftest import DOMAINS, read_table, small_config

pytestmark = pytest.mark.integration

N = 18


def test_killing_an_actor_mid_run_loses_and_duplicates_nothing(tmp_path):
    import ray

    from factory.pipeline import CommitEvent, run_factory

    killed: list[tuple[str, int]] = []

    def kill_a_busy_actor(event: CommitEvent) -> None:
        if killed:
            return
        busy = [name for name, count in event.in_flight.items() if count > 0]
        if busy:  # force-kill the process while it generates or writes a chunk
            ray.kill(ray.get_actor(busy[0]), no_restart=False)
            killed.append((busy[0], event.in_flight[busy[0]]))

    out = tmp_path / "data"
    config = small_config(out, samples_per_domain=N, chunk_size=2, max_in_flight_per_actor=2)
    summary = run_factory(config, num_cpus=2, progress=False, on_commit=kill_a_busy_actor)

    assert killed, "no commit found an actor with work in flight"
    assert summary.resubmitted_chunks >= 1
    table, _ = read_table(out, "pairs", ["sample_id", "chunk_id"])
    ids = table.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(DOMAINS) * N
    assert set(ids) == {f"{d}/{i:08d}" for d in DOMAINS for i in range(N)}
    assert summary.committed_chunks == summary.planned_chunks
    multiview, _ = read_table(out, "multiview", ["identity_id"])
    assert multiview.num_rows == len(set(multiview.column("identity_id").to_pylist())) == len(DOMAINS) * 2
    # no data file is left that the dataset does not reference (half-written or duplicate chunks)
    import lance

    dataset = lance.dataset(str(out / "pairs.lance"))
    referenced = {f.path for fragment in dataset.get_fragments() for f in fragment.data_files()}
    on_disk = {p.name for p in (out / "pairs.lance" / "data").iterdir() if p.suffix == ".lance"}
    assert on_disk == referenced
