"""`avatar4d pipeline run --recipe tiny` end to end on the CPU, as a user runs it: world portraits →
tiny Stable Diffusion + ControlNet stylization into two domains → one GAN fine-tune per domain →
the factory with the fine-tuned GANs; then the same command again, which skips everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import ray_processes_of, wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOMAINS = ["pixar", "greek_statue"]


def run_cli(out: Path) -> tuple[subprocess.CompletedProcess, float]:
    command = [sys.executable, "-m", "avatar4d.cli", "pipeline", "run", "--recipe", "tiny", "--out", str(out),
               "--domains", *DOMAINS, "--portraits", "8", "--gan-images", "16", "--samples-per-domain", "8",
               "--no-progress"]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        stdout, stderr = process.communicate(timeout=1500)
    finally:
        if process.poll() is None:
            process.kill()
    assert not wait_gone(ray_processes_of(process.pid), 60), "the pipeline left Ray processes behind"
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), time.monotonic() - started


def test_tiny_pipeline_makes_per_domain_gans_and_pairs_that_name_them(tmp_path):
    import lance

    from avatar4d.checkpoint.io import read_checkpoint_info
    from avatar4d.models.next3d.checkpoint import load_generator

    out = tmp_path / "pipeline"
    done, seconds = run_cli(out)
    assert done.returncode == 0, done.stderr[-2000:]
    print(f"tiny pipeline: {seconds:.0f}s; {done.stdout.strip()}")
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["stylized_rows"] == 8 * len(DOMAINS) and sorted(summary["trained"]) == sorted(DOMAINS)
    base_sha = read_checkpoint_info(out / "base-gan").weights_sha256
    shas = summary["checkpoint_sha256"]
    assert len({base_sha, *shas.values()}) == 1 + len(DOMAINS)  # every domain's GAN moved, each its own way
    base, _ = load_generator(out / "base-gan")
    for domain in DOMAINS:
        tuned, info = load_generator(summary["checkpoints"][domain])
        assert info.metadata["domain"] == domain and info.metadata["origin"] == "fine-tuned"
        moved = max(float((a - b).abs().max()) for a, b in zip(tuned.state_dict().values(),
                                                               base.state_dict().values()) if a.is_floating_point())
        assert moved > 1e-4
    pairs = lance.dataset(str(out / "data" / "pairs.lance")).to_table(columns=["domain", "generator_sha256"])
    assert pairs.num_rows == 8 * len(DOMAINS) == summary["pairs"]
    for row in pairs.to_pylist():  # each row names the fine-tuned checkpoint of its domain
        assert row["generator_sha256"] == shas[row["domain"]]
    assert summary["multiview"] > 0

    again, seconds = run_cli(out)  # resumable: everything is committed, nothing is redone
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 GANs fine-tuned (2 already done)" in again.stdout
    assert json.loads((out / "pipeline.json").read_text())["checkpoint_sha256"] == shas
    assert lance.dataset(str(out / "data" / "pairs.lance")).count_rows() == 8 * len(DOMAINS)
