"""Procedural world vs tiny GAN: pairs/s of the factory's synthesize stage, side by side.

Each kind's ``SynthesizeStage`` (the code the factory's actors run: seeded draws, generation,
PNG and tensor encoding into an Arrow batch) makes the same chunks of pairs; the two kinds are
interleaved chunk by chunk so a noisy machine slows them alike. One torch thread per stage, as
the tiny recipe's CPU actors use.

    python benchmarks/world.py --chunks 6 --chunk-size 16 [--report]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatar4d.hardware import cpu_model  # noqa: E402
from factory.chunks import PAIRS_SET, Chunk  # noqa: E402
from factory.domains import load_domains  # noqa: E402
from factory.generators import ensure_domain_generator  # noqa: E402
from factory.stages import SynthesizeConfig, SynthesizeStage  # noqa: E402

KINDS = ("world", "gan")
REPORT = Path(__file__).resolve().parent / "results" / "world-cpu.md"


def measure(chunks: int, chunk_size: int, domain: str, threads: int) -> dict[str, list[float]]:
    catalog, cache = load_domains(), Path(tempfile.mkdtemp(prefix="world-bench-"))
    config = SynthesizeConfig(batch_size=min(chunk_size, 8), num_threads=threads)
    stages = {kind: SynthesizeStage(domain, ensure_domain_generator(catalog.get(domain), cache / kind, "tiny", kind),
                                    config) for kind in KINDS}
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for index in range(chunks + 1):  # chunk 0 warms up
        for kind, stage in stages.items():
            chunk = Chunk(table="pairs", domain=domain, set_name=PAIRS_SET, index=index, start=index * chunk_size,
                          stop=(index + 1) * chunk_size, run_seed=0)
            start = time.perf_counter()
            batch = stage(chunk)
            elapsed = time.perf_counter() - start
            assert batch.num_rows == chunk_size
            if index:
                rates[kind].append(chunk_size / elapsed)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=6)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--domain", default="pixar")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help=f"write {REPORT.relative_to(REPORT.parents[2])}")
    args = parser.parse_args()
    rates = measure(args.chunks, args.chunk_size, args.domain, args.threads)
    median = {kind: statistics.median(values) for kind, values in rates.items()}
    lines = [f"| {kind} | {median[kind]:.1f} | {min(rates[kind]):.1f}–{max(rates[kind]):.1f} |" for kind in KINDS]
    ratio = median["world"] / median["gan"]
    table = "\n".join(["| generator (tiny) | pairs/s (median) | range over chunks |", "| --- | --- | --- |", *lines])
    print(table)
    print(f"world / tiny GAN: {ratio:.2f}×")
    if args.report:
        REPORT.write_text(f"""# Procedural world vs tiny GAN: synthesize-stage throughput (CPU)

`python benchmarks/world.py --chunks {args.chunks} --chunk-size {args.chunk_size} --threads {args.threads} --report`

- date: {datetime.date.today().isoformat()}; device: {cpu_model()} ({platform.machine()}),
  {args.threads} torch thread(s)
- torch {torch.__version__}, Python {platform.python_version()}
- what: `SynthesizeStage` of domain `{args.domain}` (draws, generation, PNG + tensor encoding to Arrow), chunks of
  {args.chunk_size} pairs, the two kinds interleaved chunk by chunk; 64² images, 4 × 8 × 64² triplanes for both.
  The world renders 32² (16 + 16 samples per ray) and upsamples; the tiny GAN renders 16² (12 + 12) and super-resolves.

{table}

**world / tiny GAN: {ratio:.2f}×** (median pairs/s). The machine is shared and noisy: read the ratio, not the
absolute figures.
""")
        print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
