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


def row_checksums(table: pa.Table | pa.RecordBatch) -> list[str]:
    """The checksum of every row of ``table`` (all columns but :data:`SKIPPED`, in schema order)."""
    names = [name for name in table.schema.names if name not in SKIPPED]
    columns = [table.column(name) for name in names]
    sums = []
    for row in range(table.num_rows):
        digest = hashlib.blake2b(digest_size=16, person=b"avatar4d-row")
        for name, column in zip(names, columns):
            _feed(digest, name)
            _feed(digest, column[row].as_py())
        sums.append(digest.hexdigest())
    return sums


def add_checksums(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """``batch`` as a table with the checksum column (recomputed when present) appended last."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    if CHECKSUM in table.schema.names:
        table = table.drop_columns([CHECKSUM])
    values = pa.array(row_checksums(table), pa.string())
    return table.append_column(pa.field(CHECKSUM, pa.string(), nullable=False), values)
