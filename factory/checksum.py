"""Per-row checksums of the payload columns (the ``row_checksum`` column, last in the schema).

Each actor computes the checksum of every row it writes, before the data leave its memory;
``avatar4d factory verify`` recomputes it from what Lance reads back, so a flipped bit, a
truncated file or a lost blob shows up as a checksum mismatch or a read error of the fragment.

The checksum is BLAKE2b-128 over a canonical encoding of every column of the row except the
bookkeeping ones (``chunk_id``, ``row_checksum``): values are fed in schema order with a type tag
and length, binary values byte for byte, floats as IEEE doubles, nested lists and structs
recursively. It therefore does not depend on how rows were cut into chunks or fragments.
"""

from __future__ import annotations

import hashlib
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

CHECKSUM = "row_checksum"
SKIPPED = ("chunk_id", CHECKSUM)


def with_checksum(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the checksum column appended (unchanged when it has one)."""
    if CHECKSUM in schema.names:
        return schema
    return schema.append(pa.field(CHECKSUM, pa.string(), nullable=False))


def _feed(digest: Any, value: Any) -> None:
    if value is None:
        digest.update(b"n")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        digest.update(b"b" + len(value).to_bytes(8, "little"))
        digest.update(value)
    elif isinstance(value, str):
        data = value.encode()
        digest.update(b"s" + len(data).to_bytes(8, "little") + data)
    elif isinstance(value, bool):
        digest.update(b"?1" if value else b"?0")
    elif isinstance(value, int):
        digest.update(b"i" + value.to_bytes(16, "little", signed=True))
    elif isinstance(value, float):
        digest.update(b"f" + struct.pack("<d", value))
    elif isinstance(value, dict):
        digest.update(b"d" + len(value).to_bytes(8, "little"))
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(b"l" + len(value).to_bytes(8, "little"))
        for item in value:
            _feed(digest, item)
    else:
        raise TypeError(f"cannot checksum a {type(value).__name__}")


def _is_binary(data_type: pa.DataType) -> bool:
    return pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type)


def _row_checksum(names: list[str], columns: list[Any], row: int) -> str:
    digest = hashlib.blake2b(digest_size=16, person=b"avatar4d-row")
    for name, column in zip(names, columns):
        _feed(digest, name)
        scalar = column[row]
        if _is_binary(scalar.type) and scalar.is_valid:  # zero copy: hash the Arrow buffer itself
            buffer = scalar.as_buffer()
            digest.update(b"b" + buffer.size.to_bytes(8, "little"))
            digest.update(buffer)
        else:
            _feed(digest, scalar.as_py())
    return digest.hexdigest()


def row_checksums(table: pa.Table | pa.RecordBatch, *, threads: int = 1) -> list[str]:
    """The checksum of every row of ``table`` (all columns but :data:`SKIPPED`, in schema order).
    hashlib releases the GIL on large buffers, so ``threads`` > 1 hashes rows in parallel."""
    names = [name for name in table.schema.names if name not in SKIPPED]
    columns = [table.column(name) for name in names]
    if threads <= 1 or table.num_rows < 2:
        return [_row_checksum(names, columns, row) for row in range(table.num_rows)]
    with ThreadPoolExecutor(threads, thread_name_prefix="checksum") as pool:
        return list(pool.map(lambda row: _row_checksum(names, columns, row), range(table.num_rows)))


def add_checksums(batch: pa.RecordBatch | pa.Table, *, threads: int = 1) -> pa.Table:
    """``batch`` as a table with the checksum column (recomputed when present) appended last."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    if CHECKSUM in table.schema.names:
        table = table.drop_columns([CHECKSUM])
    values = pa.array(row_checksums(table, threads=threads), pa.string())
    return table.append_column(pa.field(CHECKSUM, pa.string(), nullable=False), values)
