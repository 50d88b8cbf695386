"""Checks a factory run makes before it writes anything: no committed table vanished, and the
datasets were made with this run's settings (their stored fingerprint)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avatar4d import storage
from avatar4d.data.schema import TABLES, check_camera_convention, dataset_uri
from avatar4d.errors import UserError
from factory.fingerprint import build_fingerprint, check_fingerprint, read_fingerprint
from factory.inspect import STATE_DIR
from factory.sink import data_files_on_disk, has_versions, open_dataset

if TYPE_CHECKING:  # pragma: no cover
    from factory.recipes import FactoryConfig

logger = logging.getLogger(__name__)


class TableVanishedError(UserError):
    """A table that earlier runs committed rows to has no committed version any more."""


def check_tables_present(out: str, state: Path) -> None:
    """Refuse a folder whose committed table lost its manifests while data files remain (they would
    otherwise be deleted as orphans and regenerated), or whose data files are missing or truncated
    (:func:`factory.verify.quick_check`); warn loudly when a committed table is gone."""
    last_run = storage.join(out, STATE_DIR, "last-run.json") if storage.is_remote(out) else state / "last-run.json"
    try:
        text = storage.read_text(last_run)
        recorded = json.loads(text).get("rows_total", {}) if text else {}
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        recorded = {}
    from factory.sink import DatasetDamagedError, damaged_message
    from factory.verify import quick_check

    for table in TABLES:
        uri = dataset_uri(out, table)
        if has_versions(uri):
            dataset = open_dataset(uri)
            problems = quick_check(dataset) if dataset is not None else []
            if problems:
                more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
                raise DatasetDamagedError(damaged_message(uri, problems[0] + more))
            continue
        files = data_files_on_disk(uri)
        rows = recorded.get(table, 0)
        if files:  # a run creates each dataset before any chunk is written: these were committed once
            held = f"held {rows} committed rows but " if rows else ""
            raise TableVanishedError(
                f"{uri} {held}has no version manifests (_versions/) any more while {files} data files remain: "
                "the committed table vanished. Restore _versions/ from a backup, or move the table away to "
                "regenerate it (nothing was deleted)")
        if rows:
            logger.warning("%s held %d committed rows (last run) but is gone: it is regenerated from scratch", uri,
                           rows)


def _local_generator_sha(domain: Any, config: FactoryConfig) -> str | None:
    """The weights sha256 of a domain's generator when its checkpoint is readable here (a named
    checkpoint, or the random one already in the cache); None otherwise (the workers report it)."""
    from avatar4d.checkpoint.io import CheckpointError, read_checkpoint_info

    if domain.generator_checkpoint:
        path = Path(domain.generator_checkpoint).expanduser()
    else:
        cache = config.generator_cache or config.default_generator_cache
        path = Path(cache) / domain.name
    try:
        return read_checkpoint_info(path).weights_sha256 if path.is_dir() else None
    except CheckpointError:
        return None


def fingerprint_before_start(config: FactoryConfig, domains: list[Any]) -> dict[str, Any]:
    """The run's fingerprint as far as it is known before any worker starts."""
    return build_fingerprint(config, {domain.name: _local_generator_sha(domain, config) for domain in domains})


def check_stored_fingerprints(config: FactoryConfig, fingerprint: dict[str, Any], done: dict[str, set[str]]) -> None:
    """Compare ``fingerprint`` with the one stored in each existing dataset (only domains with rows)."""
    for table in TABLES:
        dataset = open_dataset(dataset_uri(config.out, table))
        if dataset is None:
            continue
        with_rows = {chunk_id.split("/")[1] for chunk_id in done.get(table, ()) if chunk_id.count("/") == 3}
        if with_rows:  # rows from before the camera change: refused with that reason, not as a settings diff
            from factory.sink import stored_schema

            check_camera_convention(stored_schema(dataset), f"{config.out}/{table}.lance")
        check_fingerprint(f"{config.out}/{table}.lance", read_fingerprint(dataset), fingerprint,
                          domains_with_rows=with_rows)
