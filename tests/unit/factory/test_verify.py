"""`repair` leaves every chunk complete or absent, also when compaction split a chunk over two
fragments and only one of them is damaged (no Ray: datasets written with the sink directly)."""

from __future__ import annotations

import shutil
from pathlib import Path

import lance
import pyarrow as pa

from factory.checksum import add_checksums, with_checksum
from factory.fingerprint import META_FINGERPRINT, encode_fingerprint
from factory.sink import LanceCommitter, write_fragments
from factory.verify import quick_check, repair, verify
from tests.unit.factory.test_sink import chunk_table, pairs_like_schema


def _dataset(root: Path, chunks: int = 3, size: int = 4) -> Path:
    schema = with_checksum(pairs_like_schema())
    uri = root / "pairs.lance"
    committer = LanceCommitter(str(uri), schema)
    fingerprint = {"format": 1, "settings": {"chunk_size": size, "multiview_chunk_size": 1, "run_seed": 0},
                   "domains": {"ink": {"generator_sha256": "ab" * 32, "samples_per_domain": chunks * size,
                                       "multiview_identities": 0}}}
    committer.update_metadata(META_FINGERPRINT, encode_fingerprint(fingerprint))
    for index in range(chunks):
        chunk_id, table = chunk_table(pairs_like_schema(), "ink", index, index * size, size)
        committer.commit([chunk_id], write_fragments(str(uri), add_checksums(table), schema))
    return uri


def test_a_clean_dataset_verifies(tmp_path: Path) -> None:
    uri = _dataset(tmp_path)
    report = verify(tmp_path)["pairs"]
    assert report.ok and report.checksummed and report.rows_checked == 12 and report.fragments == 3
    assert quick_check(lance.dataset(str(uri))) == []


def test_repair_removes_whole_chunks_when_compaction_split_one(tmp_path: Path) -> None:
    uri = _dataset(tmp_path)
    dataset = lance.dataset(str(uri))
    dataset.optimize.compact_files(target_rows_per_fragment=6)  # rows 0-5 | 6-11: chunk 1 (rows 4-7) is split
    dataset = lance.dataset(str(uri))
    assert [f.count_rows() for f in dataset.get_fragments()] == [6, 6]
    first = dataset.get_fragments()[0].data_files()[0].path
    sidecar = uri / "data" / Path(first).stem
    if sidecar.is_dir():
        shutil.rmtree(sidecar)  # the first fragment loses its blobs
    else:  # blobs inline in this Lance version: truncate the data file instead
        path = uri / "data" / first
        path.write_bytes(path.read_bytes()[:200])
    assert not verify(tmp_path)["pairs"].ok
    result = repair(tmp_path)["pairs"]
    assert result.fragments_removed == [dataset.get_fragments()[0].fragment_id]
    assert set(result.chunks_removed) >= {"pairs/ink/pairs/000001"}
    left = lance.dataset(str(uri)).to_table(columns=["chunk_id", "sample_index"])
    assert set(left.column("chunk_id").to_pylist()) == {"pairs/ink/pairs/000002"}  # complete or absent
    assert sorted(left.column("sample_index").to_pylist()) == [8, 9, 10, 11]
    assert verify(tmp_path)["pairs"].ok


def test_checksum_mismatch_is_damage(tmp_path: Path) -> None:
    schema = with_checksum(pairs_like_schema())
    uri = tmp_path / "pairs.lance"
    chunk_id, table = chunk_table(pairs_like_schema(), "ink", 0, 0, 2)
    table = add_checksums(table)
    wrong = table.set_column(table.schema.get_field_index("row_checksum"), "row_checksum",
                             pa.array(["0" * 32, table.column("row_checksum")[1].as_py()]))
    LanceCommitter(str(uri), schema).commit([chunk_id], write_fragments(str(uri), wrong, schema))
    damaged = verify(tmp_path)["pairs"].damaged
    assert len(damaged) == 1 and damaged[0].reason == "1 row checksum(s) differ"
    assert damaged[0].chunk_ids == [chunk_id]
