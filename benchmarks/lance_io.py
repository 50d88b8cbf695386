"""Lance I/O of fp16 triplane rows: sink write MB/s and training-reader samples/s, each side by side
with per-sample ``.npy`` files in the same run.

Write: every chunk of rows goes through the factory's real path (``factory.sink.write_fragments``
then ``LanceCommitter.commit``), and the same rows are saved as one ``.npy`` file per sample right
after, chunk by chunk (interleaved, so a noisy machine slows both alike). MB/s counts triplane
payload bytes (MiB = 2**20 bytes... reported as MB/s = 1e6 bytes/s).

Read: ``LanceShardReader`` (columns ``triplane``; decoded to ``[B, 4, C, R, R]`` fp16 tensors) vs
``np.load`` of the per-sample files stacked into the same batches, alternating full passes; both
in order and shuffled (Lance: ``take`` / ``read_blobs``; npy: files in a random order). The files
were just written, so both read from the page cache: this compares the software paths, not disks.

Each configuration runs with the triplane column blob-encoded (``lance-encoding:blob``) and as a
plain ``large_binary`` column.

Object store (``--object-store``): the same sink and reader against a real S3-compatible server on
127.0.0.1 (moto in server mode, :mod:`cluster.local_s3`), side by side with a local-disk dataset of
the same rows in the same run: per chunk one write + commit to each (interleaved), then alternating
full read passes, then the commit latency on S3. moto is a single Python process keeping objects in
memory, so these figures are Lance's object-store code path (HTTP requests, multipart uploads,
conditional-PUT commits) on this CPU, not the speed of a real S3. The helpers (``triplane_schema``, ``make_rows``,
``measure_write``, ``measure_read``) are reused by ``benchmarks/factory.py``.

    python benchmarks/lance_io.py --shapes 4x8x64x64:128,4x32x64x64:64,4x32x256x256:24 --date 2026-11-21 \
        --report benchmarks/results/lance-io-cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lance  # noqa: E402
import pyarrow as pa  # noqa: E402

from avatar4d.data.reader import LanceShardReader  # noqa: E402
from avatar4d.data.schema import TensorSpec  # noqa: E402
from avatar4d.hardware import cpu_model
from factory.sink import LanceCommitter, dataset_bytes, write_fragments  # noqa: E402

MB = 1e6


def triplane_schema(shape: tuple[int, ...], dtype: str = "float16", *, blob: bool = True) -> pa.Schema:
    """sample_id, chunk_id and the raw triplane bytes; the TensorSpec in the schema metadata."""
    metadata = {"lance-encoding:blob": "true"} if blob else None
    fields = [pa.field("sample_id", pa.string()), pa.field("chunk_id", pa.string()),
              pa.field("triplane", pa.large_binary(), metadata=metadata)]
    return pa.schema(fields, metadata={"avatar4d.triplane": TensorSpec(shape, dtype).to_json()})


def make_rows(count: int, shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    """Random fp16 triplanes (incompressible, like trained features at this precision)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32).astype(np.float16) for _ in range(count)]


def chunk_table(schema: pa.Schema, chunk_index: int, first_row: int, arrays: list[np.ndarray]) -> tuple[str, pa.Table]:
    chunk_id = f"bench/{chunk_index:06d}"
    table = pa.table({"sample_id": [f"bench/{first_row + i:08d}" for i in range(len(arrays))],
                      "chunk_id": [chunk_id] * len(arrays),
                      "triplane": [array.tobytes() for array in arrays]}, schema=schema)
    return chunk_id, table


def measure_write(uri: Path, npy_dir: Path, schema: pa.Schema, rows: list[np.ndarray], chunk_rows: int
                  ) -> dict[str, float]:
    """Write ``rows`` chunk by chunk through the sink (write + commit) and as .npy files."""
    committer = LanceCommitter(str(uri), schema)
    npy_dir.mkdir(parents=True, exist_ok=True)
    lance_s = npy_s = 0.0
    for chunk_index, start in enumerate(range(0, len(rows), chunk_rows)):
        arrays = rows[start:start + chunk_rows]
        chunk_id, table = chunk_table(schema, chunk_index, start, arrays)  # Arrow build: not timed
        begin = time.perf_counter()
        committer.commit([chunk_id], write_fragments(str(uri), table, schema))
        lance_s += time.perf_counter() - begin
        begin = time.perf_counter()
        for offset, array in enumerate(arrays):
            np.save(npy_dir / f"{start + offset:08d}.npy", array)
        npy_s += time.perf_counter() - begin
    payload = sum(array.nbytes for array in rows)
    return {"payload_bytes": payload, "lance_write_mb_s": payload / MB / lance_s,
            "npy_write_mb_s": payload / MB / npy_s,
            "lance_disk_bytes_per_row": dataset_bytes(uri) / len(rows),
            "npy_disk_bytes_per_row": sum(p.stat().st_size for p in npy_dir.glob("*.npy")) / len(rows)}


def _lance_pass(uri: Path, batch_size: int, shuffle: bool, epoch: int) -> int:
    reader = LanceShardReader(str(uri), columns=["triplane"], batch_size=batch_size, shuffle=shuffle, seed=epoch)
    return sum(batch["triplane"].shape[0] for batch in reader)


def _npy_pass(npy_dir: Path, batch_size: int, shuffle: bool, epoch: int) -> int:
    paths = sorted(npy_dir.glob("*.npy"))
    if shuffle:
        paths = [paths[i] for i in np.random.default_rng(epoch).permutation(len(paths))]
    seen = 0
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([torch.from_numpy(np.load(path)) for path in paths[start:start + batch_size]])
        seen += batch.shape[0]
    return seen


def measure_read(uri: Path, npy_dir: Path, batch_size: int, rounds: int, *, shuffle: bool = False
                 ) -> dict[str, float]:
    """Median samples/s of ``rounds`` alternating full passes over both stores (after one warm-up)."""
    passes: dict[str, Callable[[int], int]] = {
        "lance": lambda epoch: _lance_pass(uri, batch_size, shuffle, epoch),
        "npy": lambda epoch: _npy_pass(npy_dir, batch_size, shuffle, epoch)}
    times: dict[str, list[float]] = {name: [] for name in passes}
    counts = {name: run(0) for name, run in passes.items()}  # warm-up; also checks both see every row
    if counts["lance"] != counts["npy"]:
        raise RuntimeError(f"row counts differ: {counts}")
    for epoch in range(rounds):
        for name, run in passes.items():
            begin = time.perf_counter()
            run(epoch)
            times[name].append(time.perf_counter() - begin)
    lance_rate = counts["lance"] / statistics.median(times["lance"])
    npy_rate = counts["npy"] / statistics.median(times["npy"])
    return {"lance_samples_s": lance_rate, "npy_samples_s": npy_rate, "ratio": lance_rate / npy_rate,
            "ratio_best": min(times["npy"]) / min(times["lance"])}


def check_roundtrip(uri: Path, rows: list[np.ndarray]) -> None:
    first = next(iter(LanceShardReader(str(uri), columns=["triplane"], batch_size=2)))["triplane"]
    if not torch.equal(first[0], torch.from_numpy(rows[0])):
        raise RuntimeError("the Lance reader returned different triplane values")


def run_config(work_dir: Path, shape: tuple[int, ...], count: int, *, blob: bool, chunk_rows: int,
               batch_size: int, rounds: int) -> dict[str, Any]:
    tag = f"{'x'.join(map(str, shape))}-{'blob' if blob else 'plain'}"
    uri, npy_dir = work_dir / f"{tag}.lance", work_dir / f"{tag}-npy"
    rows = make_rows(count, shape)
    result: dict[str, Any] = {"shape": shape, "rows": count, "row_mib": rows[0].nbytes / 2**20,
                              "encoding": "blob" if blob else "large_binary", "chunk_rows": chunk_rows,
                              "batch_size": batch_size}
    result.update(measure_write(uri, npy_dir, triplane_schema(shape, blob=blob), rows, chunk_rows))
    del rows[1:]
    check_roundtrip(uri, rows)
    result["fragments"] = len(lance.dataset(str(uri)).get_fragments())
    result["sequential"] = measure_read(uri, npy_dir, batch_size, rounds)
    result["shuffled"] = measure_read(uri, npy_dir, batch_size, rounds, shuffle=True)
    shutil.rmtree(uri.parent / f"{uri.name}", ignore_errors=True)
    shutil.rmtree(npy_dir, ignore_errors=True)
    return result


def measure_commit_latency(work_dir: Path, commits: int, window: int = 50, uri: str | None = None
                           ) -> dict[str, float]:
    """Median ms of one ``LanceCommitter.commit`` (one 2-row chunk, one fragment) over the first and
    the last ``window`` of ``commits`` commits: Lance rewrites the manifest (all fragments) per version.
    ``uri``: another place for the dataset (an ``s3://`` URI) than ``work_dir``."""
    shape = (4, 2, 4, 4)
    schema = triplane_schema(shape)
    uri = uri or work_dir / "commit-latency.lance"
    committer = LanceCommitter(str(uri), schema)
    rows = make_rows(2, shape)
    times = []
    for index in range(commits):
        chunk_id, table = chunk_table(schema, index, 2 * index, rows)
        fragments = write_fragments(str(uri), table, schema)
        begin = time.perf_counter()
        committer.commit([chunk_id], fragments)
        times.append(time.perf_counter() - begin)
    begin = time.perf_counter()
    committer.compact()
    compact_s = time.perf_counter() - begin
    if isinstance(uri, Path):
        shutil.rmtree(uri, ignore_errors=True)
    return {"commits": commits, "first_ms": 1e3 * statistics.median(times[:window]),
            "last_ms": 1e3 * statistics.median(times[-window:]), "compact_s": compact_s}



def report(results: list[dict[str, Any]], env: dict[str, Any], latency: dict[str, float] | None = None) -> str:
    lines = ["# Lance I/O benchmark (factory sink + training reader)", "",
             f"- date: {env['date']}; device: CPU ({env['cpu']}), {env['cores']} cores shared with other jobs",
             f"- lance (pylance) {env['lance']}, pyarrow {env['pyarrow']}, torch {env['torch']}, "
             f"numpy {env['numpy']}, Python {env['python']}",
             f"- command: `{env['argv']}`",
             "- write: per chunk `write_fragments` + `LanceCommitter.commit` vs `np.save` per sample, interleaved "
             "chunk by chunk; MB/s = triplane payload bytes / 1e6 / s (page-cache writes, no fsync)",
             f"- read: median samples/s of {env['rounds']} alternating full passes (after 1 warm-up), batches of "
             f"{env['batch_size']} decoded fp16 tensors, main process, torch threads 1; ratio = Lance / npy of the "
             "medians (best = of the fastest passes); the files are in the page cache (software path, not disk "
             "speed)", "",
             "| triplane (fp16) | MiB/row | rows | encoding | Lance write MB/s | npy write MB/s | Lance disk/row "
             "| read in order: Lance / npy samples/s (ratio) | shuffled: Lance / npy samples/s (ratio) |",
             "|---|---:|---:|---|---:|---:|---:|---|---|"]
    for row in results:
        seq, shuf = row["sequential"], row["shuffled"]
        lines.append(
            f"| {'×'.join(map(str, row['shape']))} | {row['row_mib']:.2f} | {row['rows']} | {row['encoding']} "
            f"| {row['lance_write_mb_s']:.0f} | {row['npy_write_mb_s']:.0f} "
            f"| {row['lance_disk_bytes_per_row'] / 2**20:.3f} MiB "
            f"| {seq['lance_samples_s']:.0f} / {seq['npy_samples_s']:.0f} ({seq['ratio']:.2f}x; "
            f"best {seq['ratio_best']:.2f}x) "
            f"| {shuf['lance_samples_s']:.0f} / {shuf['npy_samples_s']:.0f} ({shuf['ratio']:.2f}x; "
            f"best {shuf['ratio_best']:.2f}x) |")
    if latency is not None:
        lines += ["", f"Commit latency (one 2-row chunk per commit, one fragment each): median "
                      f"{latency['first_ms']:.1f} ms over the first 50 commits, {latency['last_ms']:.1f} ms over the "
                      f"last 50 of {latency['commits']} (the manifest lists every fragment); compacting the "
                      f"{latency['commits']} fragments into one took {latency['compact_s']:.2f} s."]
    return "\n".join(lines) + "\n"


def measure_object_store(work_dir: Path, shape: tuple[int, ...], count: int, *, chunk_rows: int, batch_size: int,
                         rounds: int, commits: int) -> dict[str, Any]:
    """Sink writes and reader passes to a local S3 server vs local disk, side by side (see the module
    docstring); the S3 commit latency next to the local one, measured the same way."""
    import os
    from unittest import mock

    from cluster.local_s3 import LocalS3Server

    with LocalS3Server(buckets=["bench"]) as server, mock.patch.dict(os.environ, server.env()):
        rows = make_rows(count, shape)
        schema = triplane_schema(shape)
        tag = "x".join(map(str, shape))
        uris = {"disk": str(work_dir / f"{tag}-disk.lance"), "s3": f"s3://bench/{tag}.lance"}
        committers = {name: LanceCommitter(uri, schema) for name, uri in uris.items()}
        seconds = {name: 0.0 for name in uris}
        for chunk_index, start in enumerate(range(0, count, chunk_rows)):
            chunk_id, table = chunk_table(schema, chunk_index, start, rows[start:start + chunk_rows])
            for name, uri in uris.items():
                begin = time.perf_counter()
                committers[name].commit([chunk_id], write_fragments(uri, table, schema))
                seconds[name] += time.perf_counter() - begin
        payload = sum(array.nbytes for array in rows)
        passes = {name: (lambda epoch, uri=uri: _lance_pass(uri, batch_size, False, epoch))
                  for name, uri in uris.items()}
        times: dict[str, list[float]] = {name: [] for name in uris}
        counts = {name: run(0) for name, run in passes.items()}
        for epoch in range(rounds):
            for name, run in passes.items():
                begin = time.perf_counter()
                run(epoch)
                times[name].append(time.perf_counter() - begin)
        rates = {name: counts[name] / statistics.median(times[name]) for name in uris}
        latency = {name: measure_commit_latency(work_dir, commits, window=min(50, commits // 2),
                                                uri="s3://bench/latency.lance" if name == "s3" else
                                                str(work_dir / "latency-disk.lance"))
                   for name in ("disk", "s3")}
        stored = {name: dataset_bytes(uri) / count for name, uri in uris.items()}
        return {"shape": shape, "rows": count, "row_mib": rows[0].nbytes / 2**20, "chunk_rows": chunk_rows,
                "write_mb_s": {name: payload / MB / s for name, s in seconds.items()},
                "read_samples_s": rates, "bytes_per_row": stored, "latency": latency,
                "moto": __import__("moto").__version__}


def object_store_report(results: list[dict[str, Any]]) -> str:
    if not results:
        return ""
    lines = ["", f"## Object store: local S3 server (moto {results[0]['moto']}) vs local disk, same run", "",
             "Chunks of the same rows written and committed to both, interleaved; reads alternate full in-order "
             "passes of `LanceShardReader` (median samples/s). moto is one Python process holding objects in "
             "memory: this is Lance's S3 code path on this CPU, not the speed of a real S3.", "",
             "| triplane (fp16) | MiB/row | rows | write MB/s: disk / S3 (ratio) | read samples/s: disk / S3 (ratio) "
             "| stored bytes/row: disk / S3 | commit ms first→last: disk / S3 |",
             "|---|---:|---:|---|---|---|---|"]
    for row in results:
        write, read, size, lat = row["write_mb_s"], row["read_samples_s"], row["bytes_per_row"], row["latency"]
        lines.append(
            f"| {'×'.join(map(str, row['shape']))} | {row['row_mib']:.2f} | {row['rows']} "
            f"| {write['disk']:.0f} / {write['s3']:.0f} ({write['s3'] / write['disk']:.2f}x) "
            f"| {read['disk']:.0f} / {read['s3']:.0f} ({read['s3'] / read['disk']:.2f}x) "
            f"| {size['disk']:.0f} / {size['s3']:.0f} "
            f"| {lat['disk']['first_ms']:.1f}→{lat['disk']['last_ms']:.1f} / "
            f"{lat['s3']['first_ms']:.1f}→{lat['s3']['last_ms']:.1f} ({lat['s3']['commits']} commits) |")
    return "\n".join(lines) + "\n"


def parse_shapes(text: str) -> list[tuple[tuple[int, ...], int]]:
    """'4x32x64x64:64,4x32x256x256:24' → [((4, 32, 64, 64), 64), ((4, 32, 256, 256), 24)]."""
    configs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        shape_text, _, rows_text = item.partition(":")
        configs.append((tuple(int(size) for size in shape_text.split("x")), int(rows_text or 32)))
    return configs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="4x8x64x64:128,4x32x64x64:64,4x32x256x256:24",
                        help="triplane shapes [4,C,R,R] with row counts, e.g. 4x32x256x256:24 (paper: 16 MiB/row)")
    parser.add_argument("--encodings", default="blob,plain")
    parser.add_argument("--chunk-rows", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--commits", type=int, default=600, help="commits of the latency measurement (0: skip)")
    parser.add_argument("--object-store", default=None, metavar="SHAPES",
                        help="also measure against a local S3 server (moto) for these shapes, e.g. "
                             "4x32x256x256:16 (side by side with local disk; needs the dev extra)")
    parser.add_argument("--object-store-commits", type=int, default=100, help="S3 commit-latency commits")
    parser.add_argument("--work-dir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--date", default=None)
    parser.add_argument("--report", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="lance-io-"))
    results = []
    try:
        for shape, count in parse_shapes(args.shapes):
            for encoding in filter(None, args.encodings.split(",")):
                results.append(run_config(work_dir, shape, count, blob=encoding == "blob",
                                          chunk_rows=args.chunk_rows, batch_size=args.batch_size, rounds=args.rounds))
        latency = measure_commit_latency(work_dir, args.commits) if args.commits > 0 else None
        object_store = [measure_object_store(work_dir, shape, count, chunk_rows=args.chunk_rows,
                                             batch_size=args.batch_size, rounds=args.rounds,
                                             commits=args.object_store_commits)
                        for shape, count in parse_shapes(args.object_store or "")]
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    env = {"date": args.date or datetime.date.today().isoformat(), "cpu": cpu_model(), "cores": len(
        __import__("os").sched_getaffinity(0)), "lance": lance.__version__, "pyarrow": pa.__version__,
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "rounds": args.rounds, "batch_size": args.batch_size,
        "argv": "python benchmarks/lance_io.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    text = report(results, env, latency) + object_store_report(object_store)
    sys.stdout.write(text)
    if args.report:
        Path(args.report).write_text(text)


if __name__ == "__main__":
    main()
