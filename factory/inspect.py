"""Looking at a factory output folder: ``status`` (what is in it), ``preview`` (a contact sheet),
``compact`` (merge fragments), and the folder's state files that runs share (``<out>/.factory``:
the run lock, the recorded plan, the last run's summary). No Ray."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from avatar4d.data.schema import MULTIVIEW, PAIRS, SCHEMA_VERSION, TABLES, dataset_uri, schema_metadata
from avatar4d.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from factory.recipes import FactoryConfig

logger = logging.getLogger(__name__)

PREVIEW_CELL = 96  # pixels per image / plane in the contact sheet
STATE_DIR = ".factory"  # <out>/.factory: run.lock, plan.json, last-run.json, ray-local.json
PLAN_KEYS = ("run_seed", "chunk_size", "multiview_chunk_size", "generator_preset")


def status(out: str | Path) -> dict[str, Any]:
    """Rows per domain (and multiview set), bytes on disk, versions, committed chunks, generator
    hashes and factory/schema versions of each dataset, plus the recorded plan and last run."""
    from factory.sink import dataset_bytes, open_dataset

    out = Path(out)
    report: dict[str, Any] = {"out": str(out), "tables": {}}
    for table in TABLES:
        uri = dataset_uri(str(out), table)
        dataset = open_dataset(uri)
        if dataset is None:
            continue
        keys = ["domain", "chunk_id", "generator_sha256", "factory_version"] + (["set"] if table == MULTIVIEW else [])
        columns = dataset.to_table(columns=keys).to_pydict()
        group = (columns["domain"] if table == PAIRS
                 else [f"{d}/{s}" for d, s in zip(columns["domain"], columns["set"])])
        metadata = schema_metadata(dataset.schema)
        report["tables"][table] = {
            "uri": uri,
            "rows": dataset.count_rows(),
            "rows_by_domain": dict(sorted(Counter(group).items())),
            "bytes": dataset_bytes(uri),
            "version": dataset.version,
            "versions": len(dataset.versions()),
            "fragments": len(dataset.get_fragments()),
            "committed_chunks": len(set(columns["chunk_id"])),
            "generators": dict(sorted(set(zip(columns["domain"], columns["generator_sha256"])))),
            "factory_versions": sorted(set(columns["factory_version"])),
            "schema_version": metadata.get("avatar4d.schema_version"),
            "triplane": json.loads(metadata.get("avatar4d.triplane", "null")),
            "triplane_encoding": metadata.get("avatar4d.triplane_encoding"),
        }
    for name in ("plan", "last-run"):
        path = out / ".factory" / f"{name}.json"
        if path.is_file():
            report[name.replace("-", "_")] = json.loads(path.read_text())
    return report


def format_status(report: dict[str, Any]) -> str:
    """The status report as text, one block per table."""
    lines = [f"factory output {report['out']}"]
    for table, info in report["tables"].items():
        lines.append(f"{table}: {info['rows']} rows, {info['bytes'] / 2**20:.1f} MiB, version {info['version']} "
                     f"({info['versions']} kept, {info['fragments']} fragments), {info['committed_chunks']} chunks "
                     f"committed; schema v{info['schema_version']}, {', '.join(info['factory_versions'])}")
        triplane = info["triplane"]
        if triplane:
            lines.append(f"  triplane {triplane['shape']} {triplane['dtype']} ({info['triplane_encoding']})")
        width = max((len(key) for key in info["rows_by_domain"]), default=0)
        for key, rows in info["rows_by_domain"].items():
            sha = info["generators"].get(key.split("/")[0], "")
            lines.append(f"  {key.ljust(width)}  {rows:>8}  generator {sha[:12]}")
    if not report["tables"]:
        lines.append("no dataset committed yet")
    last = report.get("last_run")
    if last:
        lines.append(f"last run: {last['committed_chunks']} chunks committed, {last['skipped_chunks']} skipped, "
                     f"{last['resubmitted_chunks']} retried, {last['seconds']:.1f}s, "
                     f"{len(last.get('chunks_per_node', {}))} node(s)")
    return "\n".join(lines)


def plane_channels_rgb(triplane: torch.Tensor) -> torch.Tensor:
    """Parametric triplane [4, C, R, R] → [4, 3, R, R] in [0, 1]: the first three channels of each
    plane, min-max normalised per plane (fewer than 3 channels are repeated)."""
    planes = triplane.float()
    rgb = planes[:, :3] if planes.shape[1] >= 3 else planes[:, :1].expand(-1, 3, -1, -1)
    low = rgb.amin(dim=(1, 2, 3), keepdim=True)
    high = rgb.amax(dim=(1, 2, 3), keepdim=True)
    return (rgb - low) / (high - low).clamp(min=1e-8)


def _cell(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] in [0, 1] → [3, PREVIEW_CELL, PREVIEW_CELL]."""
    return F.interpolate(image[None].float(), size=(PREVIEW_CELL, PREVIEW_CELL), mode="nearest")[0]


def _read_rows(uri: str, domain: str, limit: int, columns: list[str]) -> dict[str, list[Any]] | None:
    """Up to ``limit`` rows of ``domain``: PNG columns decoded to uint8 [3, H, W], the triplane to
    [4, C, R, R]; multiview ``views`` as a list of view dicts per row."""
    from avatar4d.data.codec import decode_png, decode_tensor
    from avatar4d.data.schema import tensor_spec
    from factory.sink import open_dataset

    dataset = open_dataset(uri)
    if dataset is None:
        return None
    escaped = domain.replace("'", "''")
    table = dataset.to_table(columns=columns, filter=f"domain = '{escaped}'", limit=limit,
                             blob_handling="all_binary")
    if table.num_rows == 0:
        return None
    rows = table.to_pydict()
    if "image" in rows:
        rows["image"] = [decode_png(data) for data in rows["image"]]
    if "triplane" in rows:
        spec = tensor_spec(dataset.schema, "triplane")
        rows["triplane"] = [decode_tensor(data, spec) for data in rows["triplane"]]
    if "views" in rows:
        rows["views"] = [[{**view, "image": decode_png(view["image"])} for view in views] for views in rows["views"]]
    return rows


def preview(out: str | Path, out_png: str | Path, *, per_domain: int = 4, domains: list[str] | None = None) -> Path:
    """Contact sheet: per pair a row of [image | 4 planes (first 3 channels)], ``per_domain`` rows
    per domain; then, per domain, the views of its first dynamic multiview identity."""
    from avatar4d.viz import make_grid, save_png

    out = Path(out)
    known = status(out)["tables"]
    present = sorted({key.split("/")[0] for info in known.values() for key in info["rows_by_domain"]})
    missing = sorted(set(domains or ()) - set(present))
    if missing:
        raise UserError(f"{out} holds no rows of domain(s) {', '.join(missing)}; it has {', '.join(present)}")
    names = domains or present
    cells: list[torch.Tensor] = []
    columns = 5
    for domain in names:
        rows = _read_rows(dataset_uri(str(out), PAIRS), domain, per_domain, ["image", "triplane"])
        for index in range(0 if rows is None else len(rows["image"])):
            cells.append(_cell(rows["image"][index].float() / 255))
            cells += [_cell(plane) for plane in plane_channels_rgb(rows["triplane"][index])]
    for domain in names:
        rows = _read_rows(dataset_uri(str(out), MULTIVIEW), domain, 1, ["views", "set"])
        if rows is None:
            continue
        strip = [_cell(view["image"].float() / 255) for view in rows["views"][0][:columns]]
        cells += strip + [torch.ones(3, PREVIEW_CELL, PREVIEW_CELL)] * (columns - len(strip))
    if not cells:
        raise UserError(f"{out} holds no rows for domains {names}")
    sheet = make_grid(torch.stack(cells), nrow=columns, padding=2, pad_value=1.0)
    path = save_png(sheet, out_png)
    logger.info("wrote a %dx%d contact sheet of %d domains to %s", sheet.shape[2], sheet.shape[1], len(names), path)
    return path


# ---- the output folder's state (used by the pipeline) ---------------------------------------


def committed_chunks(out: str) -> dict[str, set[str]]:
    """Chunk ids in each existing dataset (no schema needed: read before any worker starts)."""
    from factory.sink import CHUNK_ID, open_dataset

    done = {}
    for table in TABLES:
        dataset = open_dataset(dataset_uri(out, table))
        if dataset is not None:
            done[table] = set(dataset.to_table(columns=[CHUNK_ID]).column(CHUNK_ID).unique().to_pylist())
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


def check_plan(config: FactoryConfig, path: Path) -> dict[str, Any]:
    """Resuming needs the chunk ids to mean the same samples as before: same seed, chunking and
    generator preset, and the same sizes for domains already present (new domains may be added).
    Returns the plan record to write once the run has checked the datasets."""
    plan = {key: getattr(config, key) for key in PLAN_KEYS}
    sizes = {d: [config.samples_per_domain, config.multiview_identities] for d in config.domains}
    if path.is_file():
        old = json.loads(path.read_text())
        for key in PLAN_KEYS:
            if old.get(key) != plan[key]:
                raise UserError(f"{path.parent.parent} was made with {key}={old.get(key)}, this run has "
                                f"{key}={plan[key]}; use the same setting or another --out")
        for domain, old_sizes in old.get("sizes", {}).items():
            if domain in sizes and sizes[domain] != old_sizes:
                raise UserError(f"{path.parent.parent} holds domain {domain} with {old_sizes[0]} samples and "
                                f"{old_sizes[1]} multiview identities; resume with the same numbers or use "
                                "another --out")
        sizes = {**old.get("sizes", {}), **sizes}
    return {**plan, "sizes": sizes, "schema_version": SCHEMA_VERSION}


def write_json(path: Path, record: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(temporary, path)


def compact(out: str | Path) -> dict[str, dict[str, Any]]:
    """Compact every dataset of ``out`` (rows unchanged) while holding the run lock."""
    from factory.sink import LanceCommitter, open_dataset, stored_schema

    out = Path(out)
    results = {}
    (out / STATE_DIR).mkdir(exist_ok=True)
    with run_lock(out / STATE_DIR / "run.lock"):
        for table in TABLES:
            uri = dataset_uri(str(out), table)
            dataset = open_dataset(uri)
            if dataset is not None:
                results[table] = LanceCommitter(uri, stored_schema(dataset)).compact()
    return results
