"""``factory verify`` and ``factory repair``: find damaged fragments, remove them so a rerun
regenerates exactly their chunks.

:func:`verify` reads every fragment of every dataset of a factory folder (``pairs``, ``multiview``,
``encoded``) in full, blobs included, and recomputes the per-row checksums
(:mod:`factory.checksum`); a fragment is *damaged* when a file is missing or truncated, a read
fails, its row count is off, or a checksum differs.

:func:`repair` (under the run lock) commits one Lance ``Delete`` per table that drops the damaged
fragments, then deletes the remaining rows of every chunk that lost rows (a compacted fragment may
hold part of a chunk): afterwards each chunk id is either complete or absent, so the next
``factory run`` (or ``factory encode``) regenerates exactly the removed chunks from their seeds.
A dataset whose newest manifests are unreadable is rolled back to its newest readable version
(the bad manifests are moved to ``_versions.damaged/``); the chunks committed after it are simply
absent and regenerated too.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from avatar4d.data.schema import TABLES, dataset_uri
from factory.checksum import CHECKSUM, row_checksums
from factory.fingerprint import read_fingerprint
from factory.sink import DatasetDamagedError, clean_error, open_dataset

logger = logging.getLogger(__name__)

ENCODED_TABLE = "encoded"
READ_BATCH_ROWS = 16


def table_uris(out: str | Path) -> dict[str, str]:
    """Every dataset a factory folder may hold: pairs, multiview, encoded."""
    uris = {table: dataset_uri(str(out), table) for table in TABLES}
    uris[ENCODED_TABLE] = f"{str(out).rstrip('/')}/{ENCODED_TABLE}.lance"
    return uris


@dataclasses.dataclass
class DamagedFragment:
    fragment_id: int
    files: list[str]
    reason: str
    chunk_ids: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TableReport:
    table: str
    uri: str
    version: int | None = None
    fragments: int = 0
    rows: int = 0
    rows_checked: int = 0
    checksummed: bool = False
    damaged: list[DamagedFragment] = dataclasses.field(default_factory=list)
    error: str | None = None  # the dataset itself cannot be opened

    @property
    def ok(self) -> bool:
        return self.error is None and not self.damaged


def quick_check(dataset: Any) -> list[str]:
    """Problems found without reading data (one stat per file of a local dataset): data files that
    are missing or not of the size their manifest records, and blob sidecar folders that are
    missing or empty while other fragments of the dataset have theirs."""
    root = Path(str(dataset.uri).removeprefix("file://"))
    if not root.is_dir():
        return []
    problems, sidecars = [], {}
    for fragment in dataset.get_fragments():
        for data_file in fragment.data_files():
            path = root / "data" / str(data_file.path)
            recorded = getattr(data_file, "file_size_bytes", None)
            if not path.is_file():
                problems.append(f"fragment {fragment.fragment_id}: data file {path.name} is missing")
            elif recorded and path.stat().st_size != recorded:
                problems.append(f"fragment {fragment.fragment_id}: data file {path.name} has "
                                f"{path.stat().st_size} of {recorded} bytes")
            sidecar = path.with_suffix("")
            sidecars[(fragment.fragment_id, sidecar.name)] = sidecar.is_dir() and any(sidecar.iterdir())
    if any(sidecars.values()):
        problems += [f"fragment {fragment_id}: blob folder {name} is missing or empty"
                     for (fragment_id, name), present in sidecars.items() if not present]
    return problems


def verify(out: str | Path) -> dict[str, TableReport]:
    """Check every fragment of every dataset under ``out`` (see the module docstring)."""
    reports = {}
    for table, uri in table_uris(out).items():
        if not Path(uri).exists():
            continue
        report = TableReport(table, uri)
        try:
            dataset = open_dataset(uri)
        except DatasetDamagedError as error:
            report.error = str(error)
            reports[table] = report
            continue
        if dataset is None:
            continue
        report.version, report.checksummed = dataset.version, CHECKSUM in dataset.schema.names
        for fragment in dataset.get_fragments():
            report.fragments += 1
            damage = _check_fragment(dataset, fragment, report)
            if damage is not None:
                report.damaged.append(damage)
        reports[table] = report
    return reports


def _check_fragment(dataset: Any, fragment: Any, report: TableReport) -> DamagedFragment | None:
    files = [str(data_file.path) for data_file in fragment.data_files()]
    expected = fragment.count_rows()
    report.rows += expected
    rows, mismatches = 0, 0
    try:
        scanner = dataset.scanner(fragments=[fragment], blob_handling="all_binary", batch_size=READ_BATCH_ROWS,
                                  scan_in_order=True)
        for batch in scanner.to_batches():
            rows += batch.num_rows
            if report.checksummed:
                stored = batch.column(CHECKSUM).to_pylist()
                mismatches += sum(a != b for a, b in zip(stored, row_checksums(batch)))
    except Exception as error:  # noqa: BLE001 - any read failure marks the fragment damaged
        return DamagedFragment(fragment.fragment_id, files, f"unreadable: {clean_error(error)}",
                               _chunk_ids(dataset, fragment))
    report.rows_checked += rows
    if rows != expected:
        return DamagedFragment(fragment.fragment_id, files, f"read {rows} rows of {expected}",
                               _chunk_ids(dataset, fragment))
    if mismatches:
        return DamagedFragment(fragment.fragment_id, files, f"{mismatches} row checksum(s) differ",
                               _chunk_ids(dataset, fragment))
    return None


def _chunk_ids(dataset: Any, fragment: Any) -> list[str]:
    """The chunk ids of a fragment, when its chunk_id column can still be read."""
    try:
        column = dataset.scanner(columns=["chunk_id"], fragments=[fragment]).to_table().column("chunk_id")
        return sorted(set(column.to_pylist()))
    except Exception:  # noqa: BLE001 - the column itself is damaged: partial chunks are found later
        return []


def format_verify(reports: dict[str, TableReport]) -> str:
    lines = []
    for table, report in reports.items():
        if report.error:
            lines.append(f"{table}: DAMAGED: {report.error}")
            continue
        state = "ok" if report.ok else f"{len(report.damaged)} DAMAGED fragment(s)"
        checks = "checksums match" if report.checksummed else "readable (no checksum column)"
        lines.append(f"{table}: {state}: {report.fragments} fragments, {report.rows_checked} of {report.rows} rows "
                     f"read back, {checks if report.ok else 'see below'} (version {report.version})")
        for damage in report.damaged:
            chunks = f"; chunks {', '.join(damage.chunk_ids[:4])}" if damage.chunk_ids else ""
            lines.append(f"  fragment {damage.fragment_id} ({', '.join(damage.files)}): {damage.reason}{chunks}")
    if not reports:
        lines.append("no dataset found")
    if any(not report.ok for report in reports.values()):
        lines.append("run `avatar4d factory repair DIR` to remove the damaged data, then rerun the same "
                     "`factory run` (and `factory encode`) to regenerate it")
    return "\n".join(lines)


@dataclasses.dataclass
class RepairResult:
    table: str
    fragments_removed: list[int] = dataclasses.field(default_factory=list)
    chunks_removed: list[str] = dataclasses.field(default_factory=list)
    rows_removed: int = 0
    versions_rolled_back: int = 0
    version: int | None = None


def repair(out: str | Path) -> dict[str, RepairResult]:
    """Remove every damaged fragment and every incomplete chunk (see the module docstring)."""
    from factory.inspect import STATE_DIR, run_lock

    out = Path(out)
    (out / STATE_DIR).mkdir(exist_ok=True)
    results = {}
    with run_lock(out / STATE_DIR / "run.lock"):
        for table, uri in table_uris(out).items():
            if Path(uri).exists():
                result = _repair_table(table, uri)
                if result is not None:
                    results[table] = result
    return results


def _repair_table(table: str, uri: str) -> RepairResult | None:
    import lance

    result = RepairResult(table)
    result.versions_rolled_back = _roll_back_unreadable(uri)
    dataset = open_dataset(uri)
    if dataset is None:
        return result if result.versions_rolled_back else None
    report = TableReport(table, uri, checksummed=CHECKSUM in dataset.schema.names)
    damaged = [d for f in dataset.get_fragments() if (d := _check_fragment(dataset, f, report)) is not None]
    if damaged:
        ids = [d.fragment_id for d in damaged]
        rows_before = dataset.count_rows()
        dataset = lance.LanceDataset.commit(uri, lance.LanceOperation.Delete([], ids, "factory repair"),
                                            read_version=dataset.version)
        result.fragments_removed, result.rows_removed = ids, rows_before - dataset.count_rows()
    known = sorted({chunk for d in damaged for chunk in d.chunk_ids})
    incomplete = _incomplete_chunks(dataset)
    chunks = sorted(set(known) | set(incomplete))
    if chunks:
        rows_before = dataset.count_rows()
        quoted = ", ".join("'" + chunk.replace("'", "''") + "'" for chunk in chunks)
        dataset.delete(f"chunk_id IN ({quoted})")
        dataset = lance.dataset(uri)
        result.rows_removed += rows_before - dataset.count_rows()
    result.chunks_removed = sorted(set(chunks) | _lost_chunk_label(damaged))
    result.version = dataset.version
    if result.fragments_removed or result.chunks_removed:
        logger.warning("%s: removed %d damaged fragment(s) and %d chunk(s) (%d rows)", uri,
                       len(result.fragments_removed), len(chunks), result.rows_removed)
    return result


def _lost_chunk_label(damaged: list[DamagedFragment]) -> set[str]:
    return {f"(unreadable chunk ids of fragment {d.fragment_id})" for d in damaged if not d.chunk_ids}


def _incomplete_chunks(dataset: Any) -> list[str]:
    """Chunks holding fewer rows than their planned size (from the stored fingerprint)."""
    from factory.chunks import ChunkPlan

    fingerprint = read_fingerprint(dataset)
    if fingerprint is None:
        return []
    settings, domains = fingerprint["settings"], fingerprint["domains"]
    counts = Counter(dataset.to_table(columns=["chunk_id"]).column("chunk_id").to_pylist())
    incomplete = []
    for chunk_id, rows in counts.items():
        domain = chunk_id.split("/")[1] if chunk_id.count("/") == 3 else None
        record = domains.get(domain)
        if record is None:
            continue
        plan = ChunkPlan((domain,), record["samples_per_domain"], record["multiview_identities"],
                         settings["chunk_size"], settings["multiview_chunk_size"], settings["run_seed"])
        try:
            expected = plan.chunk(chunk_id).size
        except KeyError:
            continue
        if rows != expected:
            incomplete.append(chunk_id)
    return sorted(incomplete)


def _roll_back_unreadable(uri: str) -> int:
    """Move unreadable newest manifests aside until the dataset opens; how many were moved."""
    versions = Path(uri) / "_versions"
    moved = 0
    while versions.is_dir():
        try:
            open_dataset(uri)
            return moved
        except DatasetDamagedError:
            manifests = sorted(versions.glob("*.manifest"), key=lambda p: p.stat().st_mtime)
            if not manifests:
                return moved
            aside = Path(uri) / "_versions.damaged"
            aside.mkdir(exist_ok=True)
            shutil.move(str(manifests[-1]), aside / manifests[-1].name)
            moved += 1
            logger.warning("%s: moved the unreadable manifest %s to %s", uri, manifests[-1].name, aside)
    return moved
