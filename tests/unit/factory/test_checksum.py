"""Per-row checksums: stable, independent of chunking, sensitive to every payload byte."""

from __future__ import annotations

import pyarrow as pa

from factory.checksum import CHECKSUM, add_checksums, row_checksums, with_checksum


def _table(chunk_id: str = "pairs/a/pairs/000000", triplane: bytes = b"\x01\x02" * 64) -> pa.Table:
    views = pa.array([[{"camera": [0.5, 1.0], "image": b"png"}, {"camera": [0.25, 2.0], "image": b"png2"}]])
    return pa.table({"chunk_id": [chunk_id], "domain": ["a"], "w": [[0.1, 0.2]], "triplane": [triplane],
                     "views": views})


def test_checksum_ignores_the_chunk_id_and_sees_every_byte():
    base = row_checksums(_table())[0]
    assert base == row_checksums(_table(chunk_id="pairs/a/pairs/000009"))[0]
    flipped = bytearray(b"\x01\x02" * 64)
    flipped[77] ^= 1
    assert row_checksums(_table(triplane=bytes(flipped)))[0] != base
    assert len(base) == 32


def test_checksum_column_is_appended_last_with_the_schema_metadata():
    table = _table().replace_schema_metadata({"avatar4d.table": "pairs"})
    schema = with_checksum(table.schema)
    assert schema.names[-1] == CHECKSUM and schema.metadata == table.schema.metadata
    assert with_checksum(schema) == schema
    checked = add_checksums(table)
    assert checked.column_names[-1] == CHECKSUM and checked.column(CHECKSUM).to_pylist() == row_checksums(table)
    assert add_checksums(checked).column(CHECKSUM).to_pylist() == row_checksums(table)
