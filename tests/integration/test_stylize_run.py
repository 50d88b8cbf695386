"""`factory stylize` on real Ray actors: an actor killed in the middle of the run loses and duplicates
nothing; a rerun skips every committed chunk; the CLI explains bad input in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from train.fixtures import make_pairs

    root = tmp_path_factory.mktemp("stylize-sources")
    return make_pairs(root, domains=("realistic",), per_domain=12, kind="world")


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(tmp_path, sources):
    import lance
    import ray

    from factory.stages.stylize import StylizeConfig
    from factory.stylize_run import StylizeRunConfig, plan_chunks, run_stylize

    config = StylizeRunConfig(source=sources, out=str(tmp_path / "out"), domains=["pixar", "realistic"],
                              stylize=StylizeConfig(steps=2, batch_size=3), chunk_size=3, num_actors=2,
                              num_cpus_per_actor=0.5, num_gpus_per_actor=0, max_in_flight_per_actor=2)
    kills: list[str] = []

    def kill_once(event) -> None:
        if not kills:  # right after the first commit: the other actor is in the middle of a chunk
            busy = [name for name, depth in event.in_flight.items() if depth > 0] or event.actor_names
            ray.kill(ray.get_actor(busy[0]), no_restart=False)
            kills.append(busy[0])

    summary = run_stylize(config, num_cpus=2, progress=False, on_commit=kill_once)
    assert kills and summary.resubmitted_chunks >= 1
    table = lance.dataset(str(tmp_path / "out" / "stylized.lance")).to_table(
        columns=["sample_id", "chunk_id", "domain", "source_id", "camera", "face_params"])
    planned = plan_chunks(["pixar", "realistic"], 12, 3)
    assert table.num_rows == 24 == summary.rows_total
    assert len(set(table.column("sample_id").to_pylist())) == 24
    assert sorted(set(table.column("chunk_id").to_pylist())) == sorted(c.chunk_id for c in planned)
    source = lance.dataset(sources).to_table(columns=["sample_id", "camera", "face_params"]).to_pylist()
    by_id = {row["sample_id"]: row for row in source}
    for row in table.to_pylist():  # the source's mesh coefficients and camera, unchanged
        assert row["camera"] == pytest.approx(by_id[row["source_id"]]["camera"])
        assert row["face_params"] == pytest.approx(by_id[row["source_id"]]["face_params"])
    again = run_stylize(config, local=True, progress=False)
    assert again.committed_chunks == 0 and again.skipped_chunks == len(planned) and again.rows_total == 24


def test_cli_explains_bad_input_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    base = [sys.executable, "-m", "avatar4d.cli", "factory", "stylize"]
    for args, message in (
        (["--source", str(tmp_path / "missing.lance"), "--out", str(tmp_path / "o"), "--local"], "no Lance dataset"),
        (["--source", "x.lance", "--models", "pretrained"],
         "--models pretrained needs --sd-path and --controlnet-path"),
        (["--source", "x.lance", "--resolution", "30"], "--resolution must be a multiple of 8"),
    ):
        done = subprocess.run(base + args, capture_output=True, text=True, env=env, timeout=300)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 1 and len(lines) == 1 and message in lines[0], done.stderr
