"""Exactly-once Lance sink: actors write fragments, ONE committer makes them visible.

Why not Ray Data's ``write_lance``: with Ray 2.60 and pylance 14 it raises ``TypeError``
(``storage_options_provider``), and Ray Data's checkpointing with a Lance sink lost rows on resume
(see DESIGN.md, "Known pitfalls"). The factory therefore uses Lance's two-phase distributed write:

1. actors call :func:`write_fragments` — data files land under ``<uri>/data/`` but are invisible
   (no manifest references them); the fragments' metadata comes back as JSON strings;
2. the driver's :class:`LanceCommitter` commits them with ``LanceOperation.Append`` (the first
   commit creates the dataset, empty, with ``write_dataset`` just before).

Exactly once: the ledger of committed chunks *is* the dataset's own ``chunk_id`` column, so a chunk
is recorded in the same atomic manifest swap that makes its rows visible. ``commit`` refuses chunk
ids already in the dataset (a retried actor, a resumed driver) and refuses data files the dataset
already references (re-committing a fragment duplicates its rows in Lance). A fragment written but
never committed (a crashed actor, a duplicate retry, a driver killed between write and commit) is
an orphan: :meth:`LanceCommitter.cleanup_orphans` compares the files under ``data/`` with those the
latest version references and deletes the rest.

Old versions: orphan cleanup keeps every version younger than ``keep_versions_days`` (default
:data:`DEFAULT_KEEP_VERSIONS_DAYS`), and the files they reference, so a trainer pinned to a
version keeps reading it; older versions are dropped through Lance's ``cleanup_old_versions``.

Damage: a dataset that cannot be opened or scanned raises :class:`DatasetDamagedError`, one line
without Lance's source paths, pointing at ``avatar4d factory verify``.

Object storage (``s3://``): every Lance call gets :func:`avatar4d.storage.storage_options` (endpoint,
region; the keys come from the environment), and file listing and deletion go through
:mod:`avatar4d.storage` (pyarrow's S3 filesystem). Lance commits a version with a conditional PUT,
so a manifest is never half visible; orphan clean-up lists ``data/`` instead of a folder walk.

Concurrency: every mutating call holds a lock file next to the dataset (``<uri>.commit.lock``,
``fcntl.flock``; local paths only — on object storage one driver commits, see cluster/README.md)
plus a thread lock, so several committers on one path (threads
or processes) serialise and each re-reads the ledger under the lock: all their chunks land, none
twice. Orphan cleanup must not run while actors are still writing (their fresh files are not yet
referenced): call it before launching actors and after the last commit, or pass ``min_age_s``.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lance
import lance.file
import pyarrow as pa
import pyarrow.compute as pc
from lance.fragment import FragmentMetadata

from avatar4d import storage
from avatar4d.data.schema import check_compatible
from avatar4d.errors import UserError
from factory.messages import clean_error

logger = logging.getLogger(__name__)

CHUNK_ID = "chunk_id"
BLOB_METADATA = {b"lance-encoding:blob": b"true"}
BLOB_EXTENSION_NAME = "lance.blob.v2"
DEFAULT_TARGET_FRAGMENT_BYTES = 1 << 30  # compaction target: ~1 GiB per fragment
DEFAULT_KEEP_VERSIONS_DAYS = 7.0  # old versions kept for readers pinned to them

__all__ = ["ChunkConflictError", "DatasetDamagedError", "FragmentReuseError", "LanceCommitter", "clean_error",
           "open_dataset", "write_fragments"]


class DatasetDamagedError(UserError):
    """A dataset's manifest or data files cannot be read."""


class ChunkConflictError(ValueError):
    """A commit mixes chunks that are already committed with chunks that are not."""


class FragmentReuseError(ValueError):
    """A commit names data files the dataset already references (would duplicate rows)."""


def write_fragments(uri: str | Path, batch: pa.RecordBatch | pa.Table, schema: pa.Schema, *,
                    max_rows_per_file: int = 1024 * 1024, data_storage_version: str | None = None) -> list[str]:
    """Write ``batch`` as uncommitted Lance data files under ``<uri>/data/``; return each
    fragment's metadata as a JSON string (small, cheap to send through Ray) for
    :meth:`LanceCommitter.commit`. The data stays invisible until committed."""
    table = _conform(batch, schema)
    if table.num_rows == 0:
        return []
    fragments = lance.fragment.write_fragments(
        table, str(uri), schema=schema, max_rows_per_file=max_rows_per_file,
        data_storage_version=data_storage_version, storage_options=storage.storage_options(uri))
    return [json.dumps(fragment.to_json()) for fragment in fragments]


def fragments_from_json(fragments_json: list[str]) -> list[FragmentMetadata]:
    """Inverse of the serialisation in :func:`write_fragments`."""
    return [FragmentMetadata.from_json(text) for text in fragments_json]


def stored_schema(dataset: lance.LanceDataset) -> pa.Schema:
    """The dataset's Arrow schema as written: Lance reports blob columns as the
    ``lance.blob.v2`` extension type; they are mapped back to ``large_binary`` with the blob
    field metadata, so the result compares equal to the schema the writer was given."""
    fields = []
    for field in dataset.schema:
        if isinstance(field.type, pa.ExtensionType) and field.type.extension_name == BLOB_EXTENSION_NAME:
            metadata = {**(field.metadata or {}), **BLOB_METADATA}
            field = pa.field(field.name, pa.large_binary(), nullable=field.nullable, metadata=metadata)
        fields.append(field)
    return pa.schema(fields, metadata=dataset.schema.metadata)


def open_dataset(uri: str | Path, version: int | None = None) -> lance.LanceDataset | None:
    """Open the latest version (or ``version``), or None when no version has been committed yet;
    an unreadable manifest raises :class:`DatasetDamagedError`."""
    if _is_local(str(uri)) and not (_local_path(uri) / "_versions").is_dir():
        return None
    try:
        return lance.dataset(str(uri), version=version, storage_options=storage.storage_options(uri))
    except ValueError as error:  # lance reports a missing dataset as ValueError("... was not found")
        if "not found" in str(error).lower() and version is None:
            return None
        raise DatasetDamagedError(damaged_message(uri, error)) from None
    except Exception as error:  # noqa: BLE001 - LanceError(IO), OSError, pyo3 panics: all mean a damaged manifest
        raise DatasetDamagedError(damaged_message(uri, error)) from None


def damaged_message(uri: str | Path, error: BaseException | str) -> str:
    out = storage.parent(uri) if storage.is_remote(uri) else _local_path(uri).parent
    return (f"{uri} is damaged ({clean_error(error)}); run `avatar4d factory verify {out}` to see what, "
            f"`avatar4d factory repair {out}` to remove it")


def read_chunk_ids(dataset: lance.LanceDataset) -> set[str]:
    """The distinct chunk ids of a dataset version (:class:`DatasetDamagedError` when unreadable)."""
    try:
        column = dataset.to_table(columns=[CHUNK_ID]).column(CHUNK_ID)
    except Exception as error:  # noqa: BLE001 - a truncated or missing data file
        raise DatasetDamagedError(damaged_message(dataset.uri, error)) from None
    return set(pc.unique(column).to_pylist()) - {None}


def has_versions(uri: str | Path) -> bool:
    """Whether the dataset at ``uri`` has version manifests (``_versions/``), without opening it."""
    if storage.is_remote(uri):
        return storage.exists(storage.join(uri, "_versions"))
    return (_local_path(uri) / "_versions").is_dir()


def data_files_on_disk(uri: str | Path) -> int:
    """Lance data files under a dataset's ``data/`` (committed or not)."""
    if storage.is_remote(uri):
        return sum(1 for name in storage.list_files(storage.join(uri, "data")) if name.endswith(".lance"))
    data = _local_path(uri) / "data"
    return sum(1 for _ in data.glob("*.lance")) if data.is_dir() else 0


def referenced_data_files(dataset: lance.LanceDataset | None) -> set[str]:
    """Paths (relative to ``data/``) of the data files the given version references."""
    if dataset is None:
        return set()
    return {str(data_file.path) for fragment in dataset.get_fragments() for data_file in fragment.data_files()}


class LanceCommitter:
    """The one place that commits fragments of ``uri`` (see the module docstring).

    Construction checks an existing dataset's schema against ``schema`` with
    :func:`avatar4d.data.schema.check_compatible` (``SchemaMismatchError``, a ``UserError``)."""

    def __init__(self, uri: str | Path, schema: pa.Schema, *, verify_chunk_ids: bool = True,
                 lock_timeout_s: float = 600.0) -> None:
        if CHUNK_ID not in schema.names:
            raise ValueError(f"the schema has no {CHUNK_ID!r} column; the committer's ledger needs it")
        self.uri = str(uri).rstrip("/")
        self.schema = schema
        self.verify_chunk_ids = verify_chunk_ids
        self.lock_timeout_s = lock_timeout_s
        self._thread_lock = threading.RLock()
        # the latest version's chunk ids and data files, cached for the version they were read at
        self._ledger: set[str] = set()
        self._referenced: set[str] = set()
        self._state_version: int | None = None
        dataset = open_dataset(self.uri)
        if dataset is not None:
            check_compatible(stored_schema(dataset), schema)

    # ---- ledger -------------------------------------------------------------------------------

    def committed_chunks(self) -> set[str]:
        """Chunk ids present in the latest version (read from its ``chunk_id`` column)."""
        with self._thread_lock:
            return set(self._state_for(open_dataset(self.uri))[0])

    def num_rows(self) -> int:
        """Rows in the latest version (0 before the first commit)."""
        dataset = open_dataset(self.uri)
        return 0 if dataset is None else dataset.count_rows()

    # ---- commit -------------------------------------------------------------------------------

    def commit(self, chunk_ids: list[str], fragments_json: list[str]) -> int:
        """Make the fragments holding ``chunk_ids`` visible in one atomic version; return the rows
        committed. Chunks already committed are ignored (returns 0; their duplicate data files are
        deleted). Raises ``ChunkConflictError`` when only some of the chunks are committed,
        ``FragmentReuseError`` when a data file is already referenced, ``ValueError`` when the
        fragments' rows carry other chunk ids than ``chunk_ids``."""
        if not chunk_ids:
            raise ValueError("commit needs at least one chunk id")
        if len(set(chunk_ids)) != len(chunk_ids):
            raise ValueError(f"duplicate chunk ids in one commit: {sorted(chunk_ids)}")
        if not fragments_json:
            raise ValueError(f"no fragments given for chunks {chunk_ids}")
        fragments = fragments_from_json(fragments_json)
        with self._locked():
            dataset = open_dataset(self.uri)
            ledger, referenced = self._state_for(dataset)
            already = [chunk_id for chunk_id in chunk_ids if chunk_id in ledger]
            if already:
                if len(already) < len(chunk_ids):
                    raise ChunkConflictError(
                        f"chunks {sorted(already)} are committed but {sorted(set(chunk_ids) - set(already))} "
                        "are not; commit each chunk's fragments separately")
                removed = self._delete_files(_fragment_paths(fragments) - referenced)
                logger.info("chunks %s already committed: ignored (%d duplicate data files deleted)",
                            chunk_ids, removed)
                return 0
            reused = _fragment_paths(fragments) & referenced
            if reused:
                raise FragmentReuseError(f"data files already committed (re-committing duplicates rows): "
                                         f"{sorted(reused)[:3]}")
            if self.verify_chunk_ids:
                self._verify_fragment_chunks(fragments, set(chunk_ids))
            if dataset is None:
                dataset = self._create_empty()
            operation = lance.LanceOperation.Append(fragments)
            new_dataset = lance.LanceDataset.commit(dataset, operation, read_version=dataset.version,
                                                    storage_options=storage.storage_options(self.uri))
            rows = sum(fragment.physical_rows for fragment in fragments)
            expected_version = dataset.version + 1
            if new_dataset.version == expected_version:
                self._ledger |= set(chunk_ids)
                self._referenced |= _fragment_paths(fragments)
                self._state_version = new_dataset.version
            else:  # another writer (outside our lock) committed in between: re-read next time
                self._state_version = None
            logger.debug("committed %s: %d rows, version %d", chunk_ids, rows, new_dataset.version)
            return rows

    # ---- maintenance --------------------------------------------------------------------------

    def cleanup_orphans(self, *, min_age_s: float = 0.0, prune_old_versions: bool = True,
                        keep_versions_days: float = DEFAULT_KEEP_VERSIONS_DAYS) -> int:
        """Delete data files that no kept version references (leftovers of crashed or duplicated
        writes); return how many data files were deleted. ``prune_old_versions`` first lets Lance
        drop the versions older than ``keep_versions_days`` (0: all but the latest) and the files
        only they reference. Files younger than ``min_age_s`` are kept. Do not run it while actors
        may still be writing fragments for this dataset."""
        if not _is_local(self.uri):
            return self._cleanup_remote_orphans(min_age_s, prune_old_versions, keep_versions_days)
        with self._locked():
            data_dir = _local_path(self.uri) / "data"
            if not data_dir.is_dir():
                return 0
            before = {path.name for path in data_dir.glob("*.lance")}
            dataset = open_dataset(self.uri)
            if dataset is not None and prune_old_versions and min_age_s <= 0:
                # Lance drops the old versions and every data file no kept version references (our
                # orphans included: delete_unverified), reading each manifest once in Rust
                self._prune_versions(dataset, keep_versions_days, delete_unverified=True)
                kept = {path.name[: -len(".lance")] for path in data_dir.glob("*.lance")}
            else:
                if dataset is not None and prune_old_versions:
                    self._prune_versions(dataset, keep_versions_days)
                    dataset = open_dataset(self.uri)
                kept = {Path(path).stem for path in referenced_by_kept_versions(dataset)}
            now, removed_bytes = time.time(), 0
            for entry in sorted(data_dir.iterdir()):  # orphan data files and blob sidecar folders
                stem = entry.name[: -len(".lance")] if entry.name.endswith(".lance") else entry.name
                if stem in kept or now - entry.stat().st_mtime < min_age_s:
                    continue
                removed_bytes += _tree_bytes(entry)
                _remove(entry)
            removed = len(before - {path.name for path in data_dir.glob("*.lance")})
            logger.info("removed %d orphan data files (%d bytes) from %s", removed, removed_bytes, self.uri)
            return removed

    def compact(self, *, target_rows_per_fragment: int | None = None,
                target_fragment_bytes: int = DEFAULT_TARGET_FRAGMENT_BYTES, prune_old_versions: bool = True,
                keep_versions_days: float = DEFAULT_KEEP_VERSIONS_DAYS) -> dict[str, Any]:
        """Merge small fragments (keeps every row; checked) and, by default, drop the replaced
        files. The target rows per fragment default to ``target_fragment_bytes`` / bytes per row."""
        with self._locked():
            dataset = open_dataset(self.uri)
            if dataset is None:
                return {"rows": 0, "fragments_before": 0, "fragments_after": 0, "version": None}
            rows_before, fragments_before = dataset.count_rows(), len(dataset.get_fragments())
            if target_rows_per_fragment is None:
                bytes_per_row = max(1, dataset_bytes(self.uri) // max(1, rows_before))
                target_rows_per_fragment = max(1, target_fragment_bytes // bytes_per_row)
            metrics = dataset.optimize.compact_files(target_rows_per_fragment=target_rows_per_fragment)
            dataset = open_dataset(self.uri)
            if dataset.count_rows() != rows_before:
                raise RuntimeError(f"compaction changed the row count {rows_before} → {dataset.count_rows()}")
            bytes_removed = self._prune_versions(dataset, keep_versions_days) if prune_old_versions else 0
            self._state_version = None
            return {"rows": rows_before, "fragments_before": fragments_before,
                    "fragments_after": len(dataset.get_fragments()), "fragments_removed": metrics.fragments_removed,
                    "fragments_added": metrics.fragments_added, "target_rows_per_fragment": target_rows_per_fragment,
                    "bytes_removed": bytes_removed, "version": dataset.version}

    def update_metadata(self, key: str, value: str) -> None:
        """Set one key of the dataset's table metadata (a new version; creates the dataset, empty,
        when it does not exist yet)."""
        with self._locked():
            dataset = open_dataset(self.uri)
            if dataset is None:  # (not `or`: an empty LanceDataset is falsy)
                dataset = self._create_empty()
            if (dataset.metadata or {}).get(key) != value:
                dataset.update_metadata({key: value})
            self._state_version = None

    # ---- internals ----------------------------------------------------------------------------

    def _cleanup_remote_orphans(self, min_age_s: float, prune_old_versions: bool, keep_versions_days: float) -> int:
        """:meth:`cleanup_orphans` on object storage: Lance prunes old versions (and, with no age
        limit, every unreferenced file); then objects under ``data/`` that no kept version
        references (blob sidecars included) and older than ``min_age_s`` are deleted by listing."""
        with self._locked():
            data_uri = storage.join(self.uri, "data")
            before = {name for name in storage.list_files(data_uri) if "/" not in name and name.endswith(".lance")}
            dataset = open_dataset(self.uri)
            if dataset is not None and prune_old_versions:
                self._prune_versions(dataset, keep_versions_days, delete_unverified=min_age_s <= 0)
                dataset = open_dataset(self.uri)
            kept = {Path(path).stem for path in referenced_by_kept_versions(dataset)}
            now, removed_bytes = time.time(), 0
            for name, (size, mtime) in storage.list_files(data_uri).items():
                stem = name.split("/", 1)[0].removesuffix(".lance")
                if stem in kept or now - mtime < min_age_s:
                    continue
                removed_bytes += size
                storage.delete(storage.join(data_uri, name))
            after = {name for name in storage.list_files(data_uri) if "/" not in name and name.endswith(".lance")}
            removed = len(before - after)
            logger.info("removed %d orphan data files (%d bytes) from %s", removed, removed_bytes, self.uri)
            return removed

    @staticmethod
    def _prune_versions(dataset: lance.LanceDataset, keep_versions_days: float, *,
                        delete_unverified: bool = False) -> int:
        if keep_versions_days < 0:
            raise ValueError(f"keep_versions_days must be >= 0, got {keep_versions_days}")
        stats = dataset.cleanup_old_versions(older_than=datetime.timedelta(days=keep_versions_days),
                                             delete_unverified=delete_unverified, error_if_tagged_old_versions=False)
        logger.info("pruned %d versions older than %g days (%d bytes)", stats.old_versions, keep_versions_days,
                    stats.bytes_removed)
        return int(stats.bytes_removed)

    def _state_for(self, dataset: lance.LanceDataset | None) -> tuple[set[str], set[str]]:
        """(committed chunk ids, referenced data files) of ``dataset``; re-read only when the version
        differs from the one this committer last saw (its own commits update the cache)."""
        if dataset is None:
            self._ledger, self._referenced, self._state_version = set(), set(), None
        elif self._state_version != dataset.version:
            self._ledger = read_chunk_ids(dataset)
            self._referenced = referenced_data_files(dataset)
            self._state_version = dataset.version
        return self._ledger, self._referenced

    def _create_empty(self) -> lance.LanceDataset:
        """Version 1: the schema and no rows. Not ``Overwrite(schema, fragments)``: Lance gives a blob
        column child field ids, so a raw Arrow schema's field ids do not match the fragments' once a
        column follows a blob column; ``write_dataset`` assigns them the way ``write_fragments`` does.
        A crash right after this leaves an empty dataset, which the next commit appends to."""
        empty = pa.Table.from_batches([], schema=self.schema)
        return lance.write_dataset(empty, self.uri, schema=self.schema, mode="create",
                                   storage_options=storage.storage_options(self.uri))

    def _verify_fragment_chunks(self, fragments: list[FragmentMetadata], expected: set[str]) -> None:
        found: set[str] = set()
        for path in _fragment_paths(fragments):
            reader = lance.file.LanceFileReader(f"{self.uri}/data/{path}", columns=[CHUNK_ID],
                                                storage_options=storage.storage_options(self.uri))
            found |= set(pc.unique(reader.read_all().to_table().column(CHUNK_ID)).to_pylist())
        if found != expected:
            raise ValueError(f"the fragments hold chunks {sorted(found)[:5]}, the commit names {sorted(expected)[:5]}")

    def _delete_files(self, paths: set[str]) -> int:
        if not _is_local(self.uri):
            data_uri = storage.join(self.uri, "data")
            removed = 0
            for path in paths:
                removed += storage.delete(storage.join(data_uri, path))
                storage.delete(storage.join(data_uri, Path(path).stem))  # blob sidecar prefix, if any
            return removed
        data_dir = _local_path(self.uri) / "data"
        removed = 0
        for path in paths:
            removed += _remove(data_dir / path)
            _remove(data_dir / Path(path).stem)  # blob sidecar folder, if any
        return removed

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if not _is_local(self.uri):
                yield
                return
            root = _local_path(self.uri)
            lock_path = root.parent / f"{root.name}.commit.lock"
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            with open(lock_path, "a+") as handle:
                deadline = time.monotonic() + self.lock_timeout_s
                while True:
                    try:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"another committer holds {lock_path}") from None
                        time.sleep(0.01)
                try:
                    yield
                finally:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def referenced_by_kept_versions(dataset: lance.LanceDataset | None) -> set[str]:
    """Data files (relative to ``data/``) referenced by any version the dataset still has."""
    if dataset is None:
        return set()
    files = referenced_data_files(dataset)
    for info in dataset.versions():
        if info["version"] != dataset.version:
            files |= referenced_data_files(open_dataset(dataset.uri, version=info["version"]))
    return files


def dataset_bytes(uri: str | Path) -> int:
    """Bytes stored under a dataset (data, manifests, transactions), local or on object storage."""
    if storage.is_remote(uri):
        return storage.tree_bytes(uri)
    root = _local_path(uri)
    return _tree_bytes(root) if root.exists() else 0


def _conform(batch: pa.RecordBatch | pa.Table, schema: pa.Schema) -> pa.Table:
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    if table.schema.equals(schema, check_metadata=True):
        return table
    if sorted(table.schema.names) != sorted(schema.names):
        missing, extra = set(schema.names) - set(table.schema.names), set(table.schema.names) - set(schema.names)
        raise ValueError(f"batch columns differ from the schema: missing {sorted(missing)}, extra {sorted(extra)}")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
        raise ValueError(f"batch does not match the dataset schema: {error}") from error


def _fragment_paths(fragments: list[FragmentMetadata]) -> set[str]:
    return {str(data_file.path) for fragment in fragments for data_file in fragment.files}


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str | Path) -> Path:
    text = str(uri)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(child.stat().st_size for child in path.rglob("*") if child.is_file())


def _remove(path: Path) -> int:
    """Delete a file or folder; 1 if something was deleted."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
        return 1
    if path.exists():
        path.unlink(missing_ok=True)
        return 1
    return 0
