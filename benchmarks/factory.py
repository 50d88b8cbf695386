"""Factory throughput vs the bare generator loop, side by side in one run; Lance I/O vs .npy.

Throughput (pairs/s), alternating rounds so a noisy machine slows both alike:

- bare loop: ``SynthesizeStage`` called on the run's chunks in a plain Python loop in this process
  (model loaded beforehand; generation, PNG and triplane encoding timed; nothing written);
- factory: ``run_factory`` on the same chunks (local Ray, real actors, Lance fragments written by
  the actors, every chunk committed by the driver); pairs/s over the scheduling phase (first
  submission to last commit: Ray start-up and model loading excluded, reported separately).

Two comparisons, both against the loop on one torch thread: ``1 actor`` (one domain, one
single-thread actor) — the Ray + Lance overhead on the same compute; and ``N actors`` (one per
core, one domain each) against N × the loop's rate (perfect scaling) — what the factory makes of
the whole machine. (The loop with N torch threads is no fair baseline for the tiny model on a
shared 2-core machine: intra-op threads of its small kernels mostly wait on each other.)

Lance I/O: ``benchmarks/lance_io.py``'s helpers on rows of the factory's triplane shape — sink
write MB/s (write_fragments + commit) vs ``np.save`` per sample, and ``LanceShardReader``
samples/s vs ``np.load`` of per-sample files.

    python benchmarks/factory.py --samples 320 --rounds 3 --date 2026-11-21 --report benchmarks/results/factory-cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# this file is named like the `factory` package: take its folder off the path (Ray workers inherit
# the driver's sys.path too) and load the sibling lance_io.py by file name
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from factory.chunks import plan_chunks  # noqa: E402
from factory.domains import load_domains  # noqa: E402
from factory.generators import ensure_domain_generator  # noqa: E402
from factory.pipeline import run_factory  # noqa: E402
from factory.recipes import FactoryConfig, tiny  # noqa: E402
from factory.sink import LanceCommitter, write_fragments  # noqa: E402
from factory.stages import SynthesizeStage  # noqa: E402

DOMAINS = ["pixar", "greek_statue", "realistic", "lego"]


def bench_config(out: Path, domains: list[str], samples: int, threads: int, chunk_size: int = 8) -> FactoryConfig:
    """The tiny recipe, pairs only (the bare loop makes pairs), ``threads`` torch threads per actor."""
    base = tiny()
    return base.replace(out=str(out), domains=domains, samples_per_domain=samples, multiview_identities=0,
                        chunk_size=chunk_size,
                        num_cpus_per_actor=float(threads), synthesize=base.synthesize.replace(num_threads=threads))


def bare_loop(config: FactoryConfig, cache: Path, sink_uri: Path | None = None) -> float:
    """pairs/s of the stages called in a plain loop over the run's chunks (models loaded first);
    with ``sink_uri`` each chunk is also written and committed there (the factory's Lance path,
    in this process, without Ray)."""
    catalog = load_domains()
    stages = {d: SynthesizeStage(d, ensure_domain_generator(catalog.get(d), cache, config.generator_preset),
                                 config.synthesize) for d in config.domains}
    chunks = plan_chunks(domains=config.domains, samples_per_domain=config.samples_per_domain,
                         multiview_identities=0, chunk_size=config.chunk_size,
                         multiview_chunk_size=config.multiview_chunk_size, run_seed=config.run_seed)
    stages[chunks[0].domain](chunks[0])  # warm-up (first-call allocations)
    committer = None
    if sink_uri is not None:
        shutil.rmtree(sink_uri, ignore_errors=True)
        committer = LanceCommitter(str(sink_uri), stages[chunks[0].domain].schema)
    begin = time.perf_counter()
    rows = 0
    for chunk in chunks:
        stage = stages[chunk.domain]
        batch = stage(chunk)
        rows += batch.num_rows
        if committer is not None:
            committer.commit([chunk.chunk_id], write_fragments(str(sink_uri), batch, stage.schema))
    return rows / (time.perf_counter() - begin)


def factory_run(config: FactoryConfig, num_cpus: int) -> dict[str, float]:
    shutil.rmtree(config.out, ignore_errors=True)
    summary = run_factory(config, num_cpus=num_cpus, progress=False)
    expected = len(config.domains) * config.samples_per_domain
    if summary.rows_total.get("pairs") != expected:
        raise RuntimeError(f"the factory wrote {summary.rows_total} rows, expected {expected} pairs")
    busy = summary.actor_busy_seconds / (summary.work_seconds * len(config.domains))
    return {"pairs_s": summary.pairs_per_second(), "startup_s": summary.startup_seconds,
            "total_s": summary.seconds, "busy": busy}


def compare(work: Path, name: str, domains: list[str], samples: int, rounds: int, num_cpus: int,
            chunk_size: int) -> dict[str, Any]:
    """Alternate the bare loop (one torch thread, all domains in turn) and the factory (one
    single-thread actor per domain) ``rounds`` times on the same chunks. ``ideal`` is the loop's
    rate times the number of actors (perfect scaling); the ratio is factory / ideal."""
    cache = work / "generators"
    config = bench_config(work / name, domains, samples, 1, chunk_size).replace(generator_cache=str(cache))
    bare, sink, fact, startup, total, busy = [], [], [], [], [], []
    torch.set_num_threads(1)
    for _ in range(rounds):
        bare.append(bare_loop(config, cache))
        sink.append(bare_loop(config, cache, work / f"{name}-loop-sink.lance"))
        result = factory_run(config, num_cpus)
        fact.append(result["pairs_s"])
        startup.append(result["startup_s"])
        total.append(result["total_s"])
        busy.append(result["busy"])
        print(f"  {name}: bare {bare[-1]:.2f} pairs/s, loop + Lance {sink[-1]:.2f}, factory {fact[-1]:.2f} pairs/s "
              f"(start-up {startup[-1]:.1f}s, actors busy {busy[-1]:.0%})", flush=True)
    actors = len(domains)
    return {"name": name, "actors": actors, "pairs": actors * samples, "bare": statistics.median(bare),
            "sink": statistics.median(sink), "sink_ratio": statistics.median(s / b for s, b in zip(sink, bare)),
            "round_ratios": [f / (actors * b) for f, b in zip(fact, bare)],
            "best_ratio": max(fact) / (actors * max(bare)),
            "ideal": actors * statistics.median(bare), "factory": statistics.median(fact),
            "ratio": statistics.median(f / (actors * b) for f, b in zip(fact, bare)),
            "startup": statistics.median(startup), "total": statistics.median(total),
            "busy": statistics.median(busy), "rounds": rounds}


def load_lance_io():
    """benchmarks/lance_io.py (the sink's I/O benchmark) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lance_io", HERE / "lance_io.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lance_io(work: Path, rows: int, rounds: int) -> dict[str, Any]:
    lio = load_lance_io()
    shape = (4, 8, 64, 64)  # the tiny generator's parametric triplane
    return lio.run_config(work / "io", shape, rows, blob=True, chunk_rows=8, batch_size=32, rounds=rounds)


def versions() -> str:
    import lance
    import pyarrow
    import ray

    return (f"Python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, "
            f"pylance {lance.__version__}, pyarrow {pyarrow.__version__}")


def report(results: list[dict[str, Any]], io: dict[str, Any], args: argparse.Namespace, date: str) -> str:
    cpu_model = load_lance_io().cpu_model
    lines = ["# Data factory benchmark (CPU)", "",
             f"- date: {date}", f"- device: cpu ({cpu_model()}, {os.cpu_count()} cores, shared with other jobs)",
             f"- {versions()}",
             f"- command: `python benchmarks/factory.py --samples {args.samples} --rounds {args.rounds}"
             f" --chunk-size {args.chunk_size} --io-rows {args.io_rows} --date {date}`",
             f"- config: `tiny` recipe, pairs only (no multiview), chunks of {args.chunk_size} pairs, stage batch 8, "
             "fp16 triplanes "
             "[4, 8, 64, 64] blob-encoded, PNG images 64²",
             f"- factory pairs/s: scheduling phase (first submission → last commit); medians of {args.rounds} "
             "alternating rounds; ratio = median of per-round factory / ideal; best / best = the fastest factory "
             "round over the fastest loop round (least disturbed by the other jobs on the cores)",
             "- actors busy: time the actors spent in `run` (generate + write fragments) / (scheduling time × actors)",
             "",
             "## Factory vs bare generator loop", "",
             "| factory | pairs | bare loop pairs/s (1 thread) | loop + Lance sink (ratio) | ideal = actors × loop | "
             "factory pairs/s | factory / ideal: median (rounds) | best / best | actors busy | factory start-up s | "
             "factory total s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rounds = ", ".join(f"{x:.2f}" for x in r["round_ratios"])
        lines.append(f"| {r['actors']} actor(s) × 1 thread | {r['pairs']} | {r['bare']:.2f} | {r['sink']:.2f} "
                     f"({r['sink_ratio']:.2f}) | {r['ideal']:.2f} | {r['factory']:.2f} | **{r['ratio']:.2f}** "
                     f"({rounds}) | {r['best_ratio']:.2f} | {r['busy']:.0%} | {r['startup']:.1f} | {r['total']:.1f} |")
    seq, shuf = io["sequential"], io["shuffled"]
    lines += ["", "## Lance I/O vs .npy (factory triplane shape, page cache)", "",
              f"{io['rows']} rows of {io['row_mib'] * 1024:.0f} KiB, chunks of {io['chunk_rows']}, batch "
              f"{io['batch_size']}, {io['fragments']} fragments.", "",
              "| measure | Lance | .npy | ratio |", "|---|---:|---:|---:|",
              f"| write MB/s (write_fragments + commit vs np.save) | {io['lance_write_mb_s']:.1f} | "
              f"{io['npy_write_mb_s']:.1f} | {io['lance_write_mb_s'] / io['npy_write_mb_s']:.2f} |",
              f"| read samples/s, in order | {seq['lance_samples_s']:.0f} | {seq['npy_samples_s']:.0f} | "
              f"{seq['ratio']:.2f} |",
              f"| read samples/s, shuffled | {shuf['lance_samples_s']:.0f} | {shuf['npy_samples_s']:.0f} | "
              f"{shuf['ratio']:.2f} |",
              f"| bytes on disk per row | {io['lance_disk_bytes_per_row']:.0f} | "
              f"{io['npy_disk_bytes_per_row']:.0f} | |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=320, help="pairs per domain")
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/factory rounds")
    parser.add_argument("--chunk-size", type=int, default=8, help="pairs per chunk (the tiny recipe's: 8)")
    parser.add_argument("--io-rows", type=int, default=512, help="rows of the Lance/.npy I/O comparison")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    parser.add_argument("--report", type=Path, default=None, help="write the Markdown report here")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="a4d-factory-bench-"))
    try:
        results = [compare(work, "one-actor", DOMAINS[:1], args.samples, args.rounds, cores, args.chunk_size)]
        if cores > 1:
            domains = DOMAINS[:min(cores, len(DOMAINS))]
            results.append(compare(work, "all-cores", domains, args.samples, args.rounds, cores, args.chunk_size))
        io = lance_io(work, args.io_rows, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(results, io, args, args.date)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)


if __name__ == "__main__":
    main()
