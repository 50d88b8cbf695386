"""Sharded streaming reader of the factory's Lance datasets (pairs, multiview) for the trainers.

``LanceShardReader`` is a ``torch.utils.data.IterableDataset`` that yields whole batches (use
``DataLoader(reader, batch_size=None, ...)``) as dicts of torch tensors:

- PNG columns (``image``, ``views.image``: binary values with the PNG signature) → uint8 ``[B, 3, H, W]``;
- binary columns with a ``TensorSpec`` in the schema metadata (``avatar4d.<column>``: ``triplane``,
  ``depth``, ``features``; ``opacity`` uses the ``depth`` spec) → ``[B, *spec.shape]`` in the stored
  dtype, a view of the flat little-endian bytes (no copy);
- fixed-size lists (``w``, ``camera``, ``face_params``) → ``[B, D]``; integers/floats → ``[B]``;
- strings → ``list[str]``; the multiview ``views`` list<struct> → a dict of the decoded view fields
  stacked over all views of the batch (``[V_total, ...]``) plus ``row_splits`` ``[B + 1]`` (the views
  of row ``i`` are ``row_splits[i]:row_splits[i + 1]``).

Sharding: each rank reads a disjoint, contiguous share of the dataset's rows (row ranges inside
fragments, so shares are equal to within one row even with fewer fragments than ranks), and the
DataLoader workers of a rank split that share again; the share is read by one in-order scan. With
``shuffle=True`` a permutation of all rows, drawn from ``seed`` and the epoch (``set_epoch``), is split
the same way and read by random access (``take``; ``read_blobs`` for blob columns), one sorted read
per ``shuffle_read_ahead`` batches (fewer when their blobs exceed 64 MiB). ``drop_remainder=True``
gives every rank exactly ``rows // world_size`` rows (equal batch counts for DDP). Blob columns are
read as bytes (``blob_handling="all_binary"``); ``io_buffer_bytes`` sizes Lance's read buffer.

Every ``__iter__`` opens the latest version unless ``version`` pins one: pin it (the same on every
rank) while the factory may still be appending, or ranks could split different row counts.
Decoded tensor columns share memory with the Arrow batch they came from (no copy).

Lance is not fork-safe: the dataset is opened inside ``__iter__`` (never in ``__init__``), so the
reader pickles as plain configuration; use ``multiprocessing_context="spawn"`` (or
``"forkserver"``) for DataLoader workers when the parent process has used Lance.
lance and pyarrow are imported lazily: ``avatar4d`` imports without them.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TENSOR_COLUMNS = ("triplane", "depth", "opacity", "features")  # raw tensors with a TensorSpec (schema contract)
SPEC_ALIASES = {"opacity": "depth"}  # the multiview opacity shares the depth TensorSpec
BLOB_EXTENSION_NAME = "lance.blob.v2"
SHUFFLE_READ_AHEAD_BYTES = 64 << 20  # shuffled reads fetch several batches at once, up to this many blob bytes


@dataclass(frozen=True)
class RowRange:
    """``count`` consecutive rows of one fragment, starting at ``offset`` within it."""

    fragment_id: int
    offset: int
    count: int


def share_bounds(total: int, part: int, num_parts: int, *, drop_remainder: bool = False) -> tuple[int, int]:
    """[start, stop) of part ``part`` of ``total`` items split into ``num_parts`` contiguous shares
    (sizes differ by at most one; all equal to ``total // num_parts`` with ``drop_remainder``)."""
    if num_parts < 1 or not 0 <= part < num_parts:
        raise ValueError(f"part {part} out of range for {num_parts} parts")
    if drop_remainder:
        size = total // num_parts
        return part * size, (part + 1) * size
    return total * part // num_parts, total * (part + 1) // num_parts


def split_ranges(ranges: Sequence[RowRange], part: int, num_parts: int, *,
                 drop_remainder: bool = False) -> list[RowRange]:
    """The ``part``-th contiguous share of the rows covered by ``ranges`` (in order)."""
    start, stop = share_bounds(sum(r.count for r in ranges), part, num_parts, drop_remainder=drop_remainder)
    shares, position = [], 0
    for row_range in ranges:
        low, high = max(start, position), min(stop, position + row_range.count)
        if low < high:
            shares.append(RowRange(row_range.fragment_id, row_range.offset + low - position, high - low))
        position += row_range.count
    return shares


class LanceShardReader(IterableDataset):
    """Per-rank streaming reader of a Lance dataset (see the module docstring)."""

    def __init__(self, uri: str, *, columns: list[str] | None = None, rank: int = 0, world_size: int = 1,
                 batch_size: int = 32, shuffle: bool = False, seed: int = 0, decode: bool = True,
                 drop_last: bool = False, drop_remainder: bool = False, io_buffer_bytes: int | None = 256 << 20,
                 shuffle_read_ahead: int = 4, version: int | None = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.uri = str(uri)
        self.columns = list(columns) if columns is not None else None
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.shuffle, self.seed, self.decode = shuffle, seed, decode
        self.drop_last, self.drop_remainder = drop_last, drop_remainder
        self.io_buffer_bytes, self.shuffle_read_ahead = io_buffer_bytes, max(1, shuffle_read_ahead)
        self.version = version
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (like ``DistributedSampler.set_epoch``); call before iterating."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import lance

        from avatar4d.storage import storage_options  # s3://: endpoint and region from the AWS_* variables

        dataset = lance.dataset(self.uri, version=self.version,  # opened here, inside the worker process
                                storage_options=storage_options(self.uri))
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        columns = self.columns or dataset.schema.names
        unknown = set(columns) - set(dataset.schema.names)
        if unknown:
            raise ValueError(f"unknown columns {sorted(unknown)}; the dataset has {dataset.schema.names}")
        logger.debug("reading %s (version %d) rank %d/%d worker %d/%d", self.uri, dataset.version, self.rank,
                     self.world_size, worker_id, num_workers)
        if self.shuffle:
            batches = self._shuffled_batches(dataset, columns, worker_id, num_workers)
        else:
            batches = _rebatch(self._sequential_batches(dataset, columns, worker_id, num_workers),
                               self.batch_size, self.drop_last)
        schema = dataset.schema
        for batch in batches:
            yield decode_batch(batch, schema, decode=self.decode)

    def _sequential_batches(self, dataset: Any, columns: list[str], worker_id: int, num_workers: int) -> Iterator[Any]:
        fragments = {fragment.fragment_id: fragment for fragment in dataset.get_fragments()}
        ranges = [RowRange(fragment_id, 0, fragment.count_rows()) for fragment_id, fragment in fragments.items()]
        ranges = split_ranges(ranges, self.rank, self.world_size, drop_remainder=self.drop_remainder)
        ranges = split_ranges(ranges, worker_id, num_workers)
        if not ranges:
            return
        # a share is contiguous: one in-order scan over its fragments, offset into the first one
        scanner = dataset.scanner(
            columns=columns, fragments=[fragments[r.fragment_id] for r in ranges], offset=ranges[0].offset,
            limit=sum(r.count for r in ranges), batch_size=self.batch_size, scan_in_order=True,
            io_buffer_size=self.io_buffer_bytes, blob_handling="all_binary")
        yield from scanner.to_batches()

    def _shuffled_batches(self, dataset: Any, columns: list[str], worker_id: int, num_workers: int) -> Iterator[Any]:
        import pyarrow as pa

        total = dataset.count_rows()
        permutation = np.random.default_rng([self.seed, self.epoch]).permutation(total)
        start, stop = share_bounds(total, self.rank, self.world_size, drop_remainder=self.drop_remainder)
        indices = permutation[start:stop]
        low, high = share_bounds(len(indices), worker_id, num_workers)
        indices = indices[low:high]
        blob_columns = [name for name in columns if _is_blob(dataset.schema.field(name))]
        plain_columns = [name for name in columns if name not in blob_columns]
        group_start, batches_per_read = 0, 1  # grows to shuffle_read_ahead once the row size is known
        while group_start < len(indices):
            group = indices[group_start:group_start + self.batch_size * batches_per_read]
            group_start += len(group)
            wanted = np.sort(group)  # one sorted random-access read per group of batches
            plain = dataset.take(wanted.tolist(), columns=plain_columns) if plain_columns else None
            blobs = {name: [data for _, data in dataset.read_blobs(
                name, indices=wanted.tolist(), preserve_order=True, io_buffer_size=self.io_buffer_bytes)]
                for name in blob_columns}
            row_bytes = sum(len(data) for values in blobs.values() for data in values) / len(group)
            fitting = int(SHUFFLE_READ_AHEAD_BYTES // max(1.0, row_bytes * self.batch_size))
            batches_per_read = max(1, min(self.shuffle_read_ahead, fitting))
            for begin in range(0, len(group), self.batch_size):
                rows = group[begin:begin + self.batch_size]
                if len(rows) < self.batch_size and self.drop_last:
                    return
                positions = np.searchsorted(wanted, rows)  # the batch keeps the permutation's order
                arrays = {name: plain.column(name).take(pa.array(positions)) for name in plain_columns}
                for name in blob_columns:
                    arrays[name] = pa.array([blobs[name][p] for p in positions], type=pa.large_binary())
                yield pa.table({name: arrays[name] for name in columns}).combine_chunks().to_batches()[0]


def decode_batch(batch: Any, schema: Any, *, decode: bool = True) -> dict[str, Any]:
    """Arrow record batch → dict of tensors / lists (see the module docstring). ``schema`` is the
    dataset schema (its metadata holds the TensorSpecs); ``decode=False`` keeps binary columns as
    lists of bytes."""
    return {name: _decode_column(name, batch.column(index), schema, decode)
            for index, name in enumerate(batch.schema.names)}


def _decode_column(name: str, array: Any, schema: Any, decode: bool) -> Any:
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count:
        raise ValueError(f"column {name!r} has {array.null_count} nulls; factory rows never do")
    kind = array.type
    if pa.types.is_fixed_size_list(kind):
        flat = array.flatten().to_numpy(zero_copy_only=False)
        return torch.from_numpy(flat.copy()).reshape(len(array), kind.list_size)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return torch.from_numpy(array.to_numpy(zero_copy_only=False).copy())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return array.to_pylist()
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        if not decode or len(array) == 0:
            return array.to_pylist()
        spec = _spec_for(schema, name)
        if spec is not None:
            return _decode_tensor_column(array, spec, name)
        if array[0].as_py().startswith(PNG_SIGNATURE):
            return _decode_png_column(array)
        return array.to_pylist()
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_struct(kind.value_type):
        offsets = array.offsets.to_numpy()
        fields = array.flatten().flatten()  # list → its structs (this slice) → their child arrays
        decoded = {kind.value_type.field(i).name: _decode_column(kind.value_type.field(i).name, child, schema, decode)
                   for i, child in enumerate(fields)}
        decoded["row_splits"] = torch.from_numpy((offsets - offsets[0]).astype(np.int64))
        return decoded
    return array.to_pylist()


def _spec_for(schema: Any, name: str) -> Any:
    """The TensorSpec of a tensor column recorded in the schema metadata, else None."""
    if name not in TENSOR_COLUMNS:
        return None
    if f"avatar4d.{SPEC_ALIASES.get(name, name)}".encode() not in (schema.metadata or {}):
        return None
    from avatar4d.data.schema import tensor_spec

    return tensor_spec(schema, name)


def _decode_tensor_column(array: Any, spec: Any, name: str) -> torch.Tensor:
    """Fixed-size raw tensors → [B, *spec.shape], sharing memory with the Arrow value buffer (no copy)."""
    import pyarrow as pa

    from avatar4d.data.codec import decode_tensors, torch_dtype

    if sys.byteorder != "little":  # the stored layout is little-endian: let the codec swap bytes
        return decode_tensors(array.to_pylist(), spec)
    offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], dtype=offset_type)[array.offset:array.offset + len(array) + 1]
    lengths = np.diff(offsets)
    if not np.all(lengths == spec.nbytes):
        bad = int(lengths[lengths != spec.nbytes][0])
        raise ValueError(f"column {name!r}: a value has {bad} bytes, its spec {spec} needs {spec.nbytes}")
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8, count=len(array) * spec.nbytes, offset=int(offsets[0]))
    with warnings.catch_warnings():  # Arrow buffers are read-only to Python; this tensor is their only user
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        flat = torch.from_numpy(data)
    return flat.view(torch_dtype(spec)).reshape(len(array), *spec.shape)


def _decode_png_column(array: Any) -> torch.Tensor | list[torch.Tensor]:
    from avatar4d.data.codec import decode_png

    images = [decode_png(value) for value in array.to_pylist()]
    if all(image.shape == images[0].shape for image in images):
        return torch.stack(images)
    return images


def _is_blob(field: Any) -> bool:
    import pyarrow as pa

    if isinstance(field.type, pa.ExtensionType) and field.type.extension_name == BLOB_EXTENSION_NAME:
        return True
    return (field.metadata or {}).get(b"lance-encoding:blob") == b"true"


def _rebatch(batches: Iterator[Any], batch_size: int, drop_last: bool) -> Iterator[Any]:
    """Regroup record batches into batches of exactly ``batch_size`` rows (the last may be short
    unless ``drop_last``); batches that already have the size pass through without a copy."""
    import pyarrow as pa

    pending: list[Any] = []
    pending_rows = 0
    for batch in batches:
        if not pending and batch.num_rows == batch_size:
            yield batch
            continue
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= batch_size:
            merged = pa.Table.from_batches(pending).combine_chunks()
            yield merged.slice(0, batch_size).to_batches()[0]
            rest = merged.slice(batch_size)
            pending = rest.to_batches() if rest.num_rows else []
            pending_rows = rest.num_rows
    if pending_rows and not drop_last:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
