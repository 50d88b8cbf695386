"""Looking at a factory output folder: ``status`` (what is in it), ``compact`` (merge fragments),
and the folder's state files that runs share (``<out>/.factory``: the run lock, the last run's
summary). ``preview`` lives in :mod:`factory.preview`, ``verify``/``repair`` in :mod:`factory.verify`.
No Ray. Damaged datasets are one-line :class:`~factory.sink.DatasetDamagedError` s."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from avatar4d import storage
from avatar4d.data.schema import MULTIVIEW, PAIRS, TABLES, dataset_uri, schema_metadata
from avatar4d.errors import UserError
from factory.preview import plane_channels_rgb, preview

__all__ = ["STATE_DIR", "committed_chunks", "compact", "format_status", "local_state_dir", "plane_channels_rgb",
           "preview", "row_counts", "run_lock", "status", "write_json"]

logger = logging.getLogger(__name__)

STATE_DIR = ".factory"  # <out>/.factory: run.lock, last-run.json, ray-local.json, encode/
ENCODED = "encoded"
_GROUP_COLUMNS = {PAIRS: ["domain"], MULTIVIEW: ["domain", "set"], ENCODED: ["domain"]}


def status(out: str | Path) -> dict[str, Any]:
    """Rows per domain (and multiview set), bytes on disk, versions, committed chunks, every
    generator hash per domain, factory/schema versions and the stored fingerprint of each dataset
    (pairs, multiview, encoded), plus the last run; a table with data files but no committed
    version (lost manifests) is reported under ``vanished``."""
    from factory.fingerprint import read_fingerprint
    from factory.sink import data_files_on_disk, dataset_bytes, open_dataset
    from factory.verify import quick_check

    out = str(out) if storage.is_remote(out) else Path(out)
    report: dict[str, Any] = {"out": str(out), "tables": {}, "vanished": {}}
    for table in (*TABLES, ENCODED):
        uri = f"{str(out).rstrip('/')}/{table}.lance"
        dataset = open_dataset(uri)
        if dataset is None:
            if data_files_on_disk(uri):
                report["vanished"][table] = data_files_on_disk(uri)
            continue
        names = dataset.schema.names
        keys = [c for c in ["chunk_id", *_GROUP_COLUMNS[table], "generator_sha256", "factory_version"] if c in names]
        columns = _read_columns(dataset, keys)
        domains = columns.get("domain") or [c.split("/")[1] for c in columns["chunk_id"]]
        group = (domains if table != MULTIVIEW else [f"{d}/{s}" for d, s in zip(domains, columns["set"])])
        generators: dict[str, set[str]] = {}
        for domain, sha in zip(domains, columns.get("generator_sha256", [])):
            generators.setdefault(domain, set()).add(sha)
        metadata = schema_metadata(dataset.schema)
        fingerprint = read_fingerprint(dataset)
        report["tables"][table] = {
            "uri": uri,
            "rows": dataset.count_rows(),
            "rows_by_domain": dict(sorted(Counter(group).items())),
            "bytes": dataset_bytes(uri),
            "version": dataset.version,
            "versions": len(dataset.versions()),
            "fragments": len(dataset.get_fragments()),
            "committed_chunks": len(set(columns["chunk_id"])),
            "generators": {domain: sorted(shas) for domain, shas in sorted(generators.items())},
            "factory_versions": sorted(set(columns.get("factory_version", []))),
            "schema_version": metadata.get("avatar4d.schema_version"),
            "triplane": json.loads(metadata.get("avatar4d.triplane", "null")),
            "triplane_encoding": metadata.get("avatar4d.triplane_encoding"),
            "encoding": {key: metadata[key] for key in ("avatar4d.vae_sha256", "avatar4d.encoder_sha256")
                         if key in metadata},
            "fingerprint": fingerprint,
            "damaged": quick_check(dataset),
        }
    last_run = storage.read_text(storage.join(out, STATE_DIR, "last-run.json"))
    if last_run:
        report["last_run"] = json.loads(last_run)
    return report


def _read_columns(dataset: Any, columns: list[str]) -> dict[str, list[Any]]:
    from factory.sink import DatasetDamagedError, damaged_message

    try:
        return dataset.to_table(columns=columns).to_pydict()
    except Exception as error:  # noqa: BLE001 - a truncated or missing data file
        raise DatasetDamagedError(damaged_message(dataset.uri, error)) from None


def format_status(report: dict[str, Any]) -> str:
    """The status report as text, one block per table."""
    lines = [f"factory output {report['out']}"]
    for table, info in report["tables"].items():
        versions = ", ".join(info["factory_versions"])
        lines.append(f"{table}: {info['rows']} rows, {info['bytes'] / 2**20:.1f} MiB, version {info['version']} "
                     f"({info['versions']} kept, {info['fragments']} fragments), {info['committed_chunks']} chunks "
                     f"committed; schema v{info['schema_version']}" + (f", {versions}" if versions else ""))
        triplane = info["triplane"]
        if triplane:
            lines.append(f"  triplane {triplane['shape']} {triplane['dtype']} ({info['triplane_encoding']})")
        if info["damaged"]:
            lines.append(f"  DAMAGED: {info['damaged'][0]}" + (f" (and {len(info['damaged']) - 1} more)"
                                                               if len(info["damaged"]) > 1 else "")
                         + "; run `avatar4d factory verify`")
        for key, sha in info["encoding"].items():
            lines.append(f"  {key.removeprefix('avatar4d.')} {sha[:12]}")
        width = max((len(key) for key in info["rows_by_domain"]), default=0)
        for key, rows in info["rows_by_domain"].items():
            shas = info["generators"].get(key.split("/")[0], [])
            shown = ", ".join(sha[:12] for sha in shas)
            label = "generator" if len(shas) < 2 else f"{len(shas)} GENERATORS"
            lines.append(f"  {key.ljust(width)}  {rows:>8}" + (f"  {label} {shown}" if shas else ""))
    for table, files in report.get("vanished", {}).items():
        lines.append(f"{table}: NO COMMITTED VERSION but {files} data files on disk (manifests lost?); see "
                     "`avatar4d factory verify`")
    if not report["tables"]:
        lines.append("no dataset committed yet")
    last = report.get("last_run")
    if last:
        lines.append(f"last run: {last['committed_chunks']} chunks committed, {last['skipped_chunks']} skipped, "
                     f"{last['resubmitted_chunks']} retried, {last['seconds']:.1f}s, "
                     f"{len(last.get('chunks_per_node', {}))} node(s)")
    return "\n".join(lines)


# ---- the output folder's state (used by the pipeline) ---------------------------------------


def local_state_dir(out: str | Path) -> Path:
    """The folder of a run's local state (run lock, ``ray-local.json``, ``last-run.json``): ``<out>/.factory``
    for a local ``out``; for an object-store URI a folder on this machine named by the URI's hash
    under ``$AVATAR4D_CACHE_DIR`` (default ``~/.cache/avatar4d``)/``factory-state`` (the run also
    copies ``last-run.json`` to ``<out>/.factory/`` on the store)."""
    if not storage.is_remote(out):
        return Path(out) / STATE_DIR
    import hashlib

    digest = hashlib.sha256(str(out).rstrip("/").encode()).hexdigest()[:16]
    return storage.cache_root() / "factory-state" / digest


def committed_chunks(out: str) -> dict[str, set[str]]:
    """Chunk ids in each existing dataset (no schema needed: read before any worker starts)."""
    from factory.sink import open_dataset, read_chunk_ids

    done = {}
    for table in TABLES:
        dataset = open_dataset(dataset_uri(out, table))
        if dataset is not None:
            done[table] = read_chunk_ids(dataset)
    return done


def row_counts(out: str) -> dict[str, int]:
    """Rows in each existing dataset."""
    from factory.sink import open_dataset

    counts = {}
    for table in TABLES:
        dataset = open_dataset(dataset_uri(out, table))
        if dataset is not None:
            counts[table] = dataset.count_rows()
    return counts


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """One driver per output folder (released by the kernel even when the driver is killed)."""
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another `factory run` is writing to {path.parent.parent}; wait for it or "
                            "use another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_json(path: Path, record: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(temporary, path)


def compact(out: str | Path, *, keep_versions_days: float | None = None) -> dict[str, dict[str, Any]]:
    """Compact every dataset of ``out`` (rows unchanged) while holding the run lock; versions
    younger than ``keep_versions_days`` (default: the sink's) are kept."""
    from factory.sink import DEFAULT_KEEP_VERSIONS_DAYS

    keep = DEFAULT_KEEP_VERSIONS_DAYS if keep_versions_days is None else keep_versions_days
    from factory.sink import LanceCommitter, open_dataset, stored_schema

    state = local_state_dir(out)
    results = {}
    state.mkdir(parents=True, exist_ok=True)
    with run_lock(state / "run.lock"):
        for table in TABLES:
            uri = dataset_uri(str(out), table)
            dataset = open_dataset(uri)
            if dataset is not None:
                results[table] = LanceCommitter(uri, stored_schema(dataset)).compact(keep_versions_days=keep)
    return results
