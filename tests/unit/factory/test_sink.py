"""Exactly-once Lance sink on real Lance datasets in tmp_path (no mocks)."""

from __future__ import annotations

import threading
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from avatar4d.data.schema import TensorSpec, pairs_schema
from avatar4d.errors import UserError
from factory.sink import (
    ChunkConflictError,
    DatasetDamagedError,
    FragmentReuseError,
    LanceCommitter,
    clean_error,
    fragments_from_json,
    open_dataset,
    referenced_data_files,
    stored_schema,
    write_fragments,
)

TRIPLANE_SHAPE = (4, 8, 32, 48)  # fp16: 96 KiB per row, above Lance's inline limit: blob sidecar files
W_DIM, FACE_DIM = 8, 6


def pairs_like_schema(triplane_shape: tuple[int, ...] = TRIPLANE_SHAPE) -> pa.Schema:
    """The contract's pairs schema with small sizes (blob-encoded triplane)."""
    return pairs_schema(w_dim=W_DIM, face_params_dim=FACE_DIM, triplane=TensorSpec(triplane_shape, "float16"))


def chunk_table(schema: pa.Schema, domain: str, index: int, start: int, size: int) -> tuple[str, pa.Table]:
    chunk_id = f"pairs/{domain}/pairs/{index:06d}"
    rows = range(start, start + size)
    rng = np.random.default_rng(start)
    triplane_bytes = int(np.prod(TRIPLANE_SHAPE)) * 2
    table = pa.table({
        "sample_id": [f"{domain}/{i:08d}" for i in rows], "chunk_id": [chunk_id] * size,
        "domain": [domain] * size, "sample_index": list(rows), "seed": [1000 + i for i in rows],
        "w": [rng.standard_normal(W_DIM).tolist() for _ in rows], "camera": [[float(i)] * 25 for i in rows],
        "face_params": [[0.5] * FACE_DIM for _ in rows], "image": [b"png%d" % i for i in rows],
        "triplane": [bytes([i % 251]) * triplane_bytes for i in rows],
        "generator_sha256": ["ab" * 32] * size, "factory_version": ["0.1.0"] * size,
        **({"generator_kind": ["gan"] * size} if "generator_kind" in schema.names else {}),
    }, schema=schema)
    return chunk_id, table


def data_file_names(uri: Path) -> set[str]:
    return {path.name for path in (uri / "data").glob("*.lance")}


@pytest.fixture
def schema() -> pa.Schema:
    return pairs_like_schema()


def test_commit_chunks_gives_exactly_their_rows(tmp_path: Path, schema: pa.Schema) -> None:
    uri = tmp_path / "pairs.lance"
    committer = LanceCommitter(str(uri), schema)
    sizes = [3, 5, 2]
    chunk_ids = []
    for index, size in enumerate(sizes):
        chunk_id, table = chunk_table(schema, "pixar", index, sum(sizes[:index]), size)
        assert committer.commit([chunk_id], write_fragments(str(uri), table, schema)) == size
        chunk_ids.append(chunk_id)
    dataset = lance.dataset(str(uri))
    table = dataset.to_table(blob_handling="all_binary")
    assert table.num_rows == sum(sizes) == committer.num_rows()
    assert sorted(table.column("sample_index").to_pylist()) == list(range(sum(sizes)))
    assert len(set(table.column("sample_id").to_pylist())) == sum(sizes)
    assert committer.committed_chunks() == set(chunk_ids)
    first = table.filter(pa.compute.equal(table.column("sample_index"), 4))
    assert first.column("triplane")[0].as_py() == bytes([4]) * (int(np.prod(TRIPLANE_SHAPE)) * 2)
    assert stored_schema(dataset).equals(schema, check_metadata=True)


def test_several_chunks_commit_in_one_version(tmp_path: Path, schema: pa.Schema) -> None:
    uri = tmp_path / "pairs.lance"
    committer = LanceCommitter(str(uri), schema)
    written = [chunk_table(schema, "tekken", index, 2 * index, 2) for index in range(3)]
    fragments = [text for _, table in written for text in write_fragments(str(uri), table, schema)]
    assert committer.commit([chunk_id for chunk_id, _ in written], fragments) == 6
    dataset = lance.dataset(str(uri))
    assert dataset.version == 2  # version 1 is the empty dataset the first commit creates
    assert dataset.count_rows() == 6 and len(dataset.get_fragments()) == 3
    assert committer.committed_chunks() == {chunk_id for chunk_id, _ in written}


def test_committing_a_committed_chunk_again_is_ignored(tmp_path: Path, schema: pa.Schema) -> None:
    uri = tmp_path / "pairs.lance"
    committer = LanceCommitter(str(uri), schema)
    chunk_id, table = chunk_table(schema, "lego", 0, 0, 4)
    fragments = write_fragments(str(uri), table, schema)
    assert committer.commit([chunk_id], fragments) == 4
    # the same fragments again (a retried commit) and a fresh write of the same chunk (a retried actor)
    assert committer.commit([chunk_id], fragments) == 0
    duplicate = write_fragments(str(uri), table, schema)
    assert len(data_file_names(uri)) == 2
    assert committer.commit([chunk_id], duplicate) == 0
    assert lance.dataset(str(uri)).count_rows() == 4
    # the duplicate's data files (and blob folders) were deleted; the committed ones are intact
    assert data_file_names(uri) == referenced_data_files(lance.dataset(str(uri)))
    assert len(list((uri / "data").iterdir())) == 2  # one data file + its blob sidecar folder


def test_reused_fragments_and_mislabelled_chunks_are_refused(tmp_path: Path, schema: pa.Schema) -> None:
    uri = tmp_path / "pairs.lance"
    chunk_id, table = chunk_table(schema, "orc", 0, 0, 3)
    fragments = write_fragments(str(uri), table, schema)
    LanceCommitter(str(uri), schema).commit([chunk_id], fragments)
    with pytest.raises(FragmentReuseError):
        LanceCommitter(str(uri), schema).commit(["pairs/orc/pairs/000001"], fragments)
    # fresh fragments whose rows belong to another chunk than the one named: the ledger would lie
    with pytest.raises(ValueError, match="fragments hold chunks"):
        LanceCommitter(str(uri), schema).commit(["pairs/orc/pairs/000001"], write_fragments(str(uri), table, schema))
    assert lance.dataset(str(uri)).count_rows() == 3


def test_partly_committed_chunk_list_and_bad_arguments_are_refused(tmp_path: Path, schema: pa.Schema) -> None:
    uri = tmp_path / "pairs.lance"
    committer = LanceCommitter(str(uri), schema)
    first, table_a = chunk_table(schema, "elf", 0, 0, 2)
    second, table_b = chunk_table(schema, "elf", 1, 2, 2)
    committer.commit([first], write_fragments(str(uri), table_a, schema))
    both = write_fragments(str(uri), pa.concat_tables([table_a, table_b]), schema)
    with pytest.raises(ChunkConflictError):
        committer.commit([first, second], both)
    with pytest.raises(ValueError, match="at least one"):
        committer.commit([], both)
    with pytest.raises(ValueError, match="duplicate chunk ids"):
        committer.commit([second, second], both)
    with pytest.raises(ValueError, match="no fragments"):
        committer.commit([second], [])
    with pytest.raises(ValueError, match="missing"):
        write_fragments(str(uri), table_b.drop_columns(["seed"]), schema)
    assert write_fragments(str(uri), table_b.slice(0, 0), schema) == []
    assert committer.num_rows() == 2


def test_uncommitted_fragment_is_an_orphan_that_cleanup_removes(tmp_path: Path, schema: pa.Schema) -> None:
    uri = tmp_path / "pairs.lance"
    committer = LanceCommitter(str(uri), schema)
    committed_id, table_a = chunk_table(schema, "yoda", 0, 0, 3)
    committer.commit([committed_id], write_fragments(str(uri), table_a, schema))
    _, table_b = chunk_table(schema, "yoda", 1, 3, 3)
    write_fragments(str(uri), table_b, schema)  # an actor that crashed before its commit
    assert len(data_file_names(uri)) == 2
    assert committer.cleanup_orphans(min_age_s=3600) == 0  # too young: could be a write in flight
    assert committer.cleanup_orphans() == 1
    dataset = lance.dataset(str(uri))
    assert data_file_names(uri) == referenced_data_files(dataset)
    assert {path.name.removesuffix(".lance") for path in (uri / "data").iterdir()} == {
        name.removesuffix(".lance") for name in referenced_data_files(dataset)}
    restored = dataset.to_table(blob_handling="all_binary").sort_by("sample_index")
    assert restored.column("triplane").to_pylist() == table_a.column("triplane").to_pylist()


def test_resume_after_driver_killed_between_write_and_commit(tmp_path: Path, schema: pa.Schema) -> None:
    uri = tmp_path / "pairs.lance"
    first, table_a = chunk_table(schema, "mario", 0, 0, 4)
    second, table_b = chunk_table(schema, "mario", 1, 4, 4)
    LanceCommitter(str(uri), schema).commit([first], write_fragments(str(uri), table_a, schema))
    write_fragments(str(uri), table_b, schema)  # driver "killed" here: written, never committed
    resumed = LanceCommitter(str(uri), schema)  # a new driver on the same path
    assert resumed.committed_chunks() == {first}
    assert resumed.cleanup_orphans() == 1
    assert resumed.commit([first], write_fragments(str(uri), table_a, schema)) == 0  # skipped chunk
    assert resumed.commit([second], write_fragments(str(uri), table_b, schema)) == 4
    indices = lance.dataset(str(uri)).to_table(columns=["sample_index"]).column("sample_index").to_pylist()
    assert sorted(indices) == list(range(8))


def test_fragments_written_before_the_dataset_exists_are_appended(tmp_path: Path, schema: pa.Schema) -> None:
    uri = tmp_path / "pairs.lance"
    written = [chunk_table(schema, "zombie", index, 2 * index, 2) for index in range(3)]
    fragments = [(chunk_id, write_fragments(str(uri), table, schema)) for chunk_id, table in written]
    committer = LanceCommitter(str(uri), schema)
    for chunk_id, fragment_json in reversed(fragments):  # the last-written chunk creates the dataset
        committer.commit([chunk_id], fragment_json)
    table = lance.dataset(str(uri)).to_table(blob_handling="all_binary").sort_by("sample_index")
    assert table.column("sample_index").to_pylist() == list(range(6))
    assert table.column("w").to_pylist() == pa.concat_tables([t for _, t in written]).column("w").to_pylist()


def test_two_committers_in_threads_each_chunk_lands_once(tmp_path: Path, schema: pa.Schema) -> None:
    uri = tmp_path / "pairs.lance"
    chunks = [chunk_table(schema, "ink", index, 2 * index, 2) for index in range(8)]
    written = [(chunk_id, write_fragments(str(uri), table, schema)) for chunk_id, table in chunks]
    shared_id, shared_table = chunk_table(schema, "ink", 99, 1000, 2)
    committers = [LanceCommitter(str(uri), schema), LanceCommitter(str(uri), schema)]
    results: list[list[int]] = [[], []]
    errors: list[BaseException] = []

    def run(worker: int) -> None:
        try:
            # both commit the shared chunk (each from its own write: a duplicated task), then their own half
            own = write_fragments(str(uri), shared_table, schema)
            results[worker].append(committers[worker].commit([shared_id], own))
            for chunk_id, fragment_json in written[worker::2]:
                results[worker].append(committers[worker].commit([chunk_id], fragment_json))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(worker,)) for worker in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted([results[0][0], results[1][0]]) == [0, 2]  # the shared chunk landed exactly once
    dataset = lance.dataset(str(uri))
    assert dataset.count_rows() == 8 * 2 + 2
    assert len(set(dataset.to_table(columns=["sample_id"]).column("sample_id").to_pylist())) == 18
    assert LanceCommitter(str(uri), schema).committed_chunks() == {chunk_id for chunk_id, _ in chunks} | {shared_id}
    assert (tmp_path / "pairs.lance.commit.lock").exists()


def test_compaction_keeps_rows_and_reduces_fragments(tmp_path: Path, schema: pa.Schema) -> None:
    uri = tmp_path / "pairs.lance"
    committer = LanceCommitter(str(uri), schema)
    for index in range(6):
        chunk_id, table = chunk_table(schema, "retro", index, 3 * index, 3)
        committer.commit([chunk_id], write_fragments(str(uri), table, schema))
    before = lance.dataset(str(uri)).to_table(blob_handling="all_binary").sort_by("sample_index")
    assert len(lance.dataset(str(uri)).get_fragments()) == 6
    report = committer.compact(target_rows_per_fragment=100, keep_versions_days=0)
    assert report["rows"] == 18 and report["fragments_before"] == 6 and report["fragments_after"] == 1
    dataset = lance.dataset(str(uri))
    assert dataset.to_table(blob_handling="all_binary").sort_by("sample_index").equals(before)
    assert data_file_names(uri) == referenced_data_files(dataset)  # replaced files are gone
    assert committer.committed_chunks() == {f"pairs/retro/pairs/{index:06d}" for index in range(6)}
    chunk_id, table = chunk_table(schema, "retro", 6, 18, 3)
    assert committer.commit([chunk_id], write_fragments(str(uri), table, schema)) == 3


def test_existing_dataset_with_incompatible_schema_is_a_user_error(tmp_path: Path, schema: pa.Schema) -> None:
    uri = tmp_path / "pairs.lance"
    chunk_id, table = chunk_table(schema, "devil", 0, 0, 2)
    LanceCommitter(str(uri), schema).commit([chunk_id], write_fragments(str(uri), table, schema))
    LanceCommitter(str(uri), schema)  # the same schema reopens fine
    other_shape = pairs_like_schema((4, 8, 16, 16))
    with pytest.raises(UserError):
        LanceCommitter(str(uri), other_shape)
    other_columns = schema.remove(schema.get_field_index("seed"))
    with pytest.raises(UserError):
        LanceCommitter(str(uri), other_columns)
    with pytest.raises(ValueError, match="chunk_id"):
        LanceCommitter(str(tmp_path / "x.lance"), pa.schema([pa.field("a", pa.int64())]))


def test_old_versions_inside_the_window_stay_readable(tmp_path: Path, schema: pa.Schema) -> None:
    """A reader pinned to an old version keeps it through compaction and orphan cleanup (the old
    behaviour deleted every old version on each run)."""
    uri = tmp_path / "pairs.lance"
    committer = LanceCommitter(str(uri), schema)
    for index in range(3):
        chunk_id, table = chunk_table(schema, "retro", index, 2 * index, 2)
        committer.commit([chunk_id], write_fragments(str(uri), table, schema))
    pinned = lance.dataset(str(uri)).version
    expected = lance.dataset(str(uri)).to_table(blob_handling="all_binary").sort_by("sample_index")
    committer.compact(target_rows_per_fragment=100)
    _, orphan = chunk_table(schema, "retro", 9, 90, 2)
    orphan_file = fragments_from_json(write_fragments(str(uri), orphan, schema))[0].files[0].path
    assert committer.cleanup_orphans() == 1  # the orphan goes, the pinned version's files stay
    assert not (uri / "data" / orphan_file).exists() and not (uri / "data" / Path(orphan_file).stem).exists()
    old = lance.dataset(str(uri), version=pinned)
    assert old.to_table(blob_handling="all_binary").sort_by("sample_index").equals(expected)
    committer.cleanup_orphans(keep_versions_days=0)  # a window of 0 days keeps only the latest
    assert [v["version"] for v in lance.dataset(str(uri)).versions()] == [lance.dataset(str(uri)).version]
    assert data_file_names(uri) == referenced_data_files(lance.dataset(str(uri)))


def test_damaged_datasets_are_one_line_errors_without_library_paths(tmp_path: Path, schema: pa.Schema) -> None:
    uri = tmp_path / "pairs.lance"
    committer = LanceCommitter(str(uri), schema)
    for index in range(2):
        chunk_id, table = chunk_table(schema, "ink", index, 2 * index, 2)
        committer.commit([chunk_id], write_fragments(str(uri), table, schema))
    data_file = sorted((uri / "data").glob("*.lance"))[0]
    data_file.write_bytes(data_file.read_bytes()[:100])  # truncated
    with pytest.raises(DatasetDamagedError) as error:
        LanceCommitter(str(uri), schema).committed_chunks()
    message = str(error.value)
    assert "\n" not in message and ".rs:" not in message and "factory verify" in message
    for manifest in (uri / "_versions").glob("*.manifest"):
        manifest.write_bytes(b"garbage" * 10)
    with pytest.raises(DatasetDamagedError) as error:
        open_dataset(uri)
    assert "\n" not in str(error.value) and ".rs:" not in str(error.value)


def test_clean_error_drops_rust_source_paths() -> None:
    raw = ("External error: LanceError(IO): Generic LocalFileSystem error: failed to fill whole buffer, "
           "/rustc/48a229ce/library/core/src/ops/function.rs:250:5")
    assert clean_error(raw) == "Generic LocalFileSystem error: failed to fill whole buffer"
    assert clean_error("Not found: a/b.blob, /home/runner/work/lance/rust/lance-io/src/local.rs:273:40") == \
        "Not found: a/b.blob"


def test_metadata_update_on_an_empty_dataset_keeps_it(tmp_path: Path, schema: pa.Schema) -> None:
    """An existing dataset with no rows yet (a driver killed right after creating it) takes the
    fingerprint without being re-created (it used to raise "Dataset already exists")."""
    uri = tmp_path / "multiview.lance"
    committer = LanceCommitter(str(uri), schema)
    committer.update_metadata("avatar4d.fingerprint", "{}")
    LanceCommitter(str(uri), schema).update_metadata("avatar4d.fingerprint", '{"a":1}')
    assert lance.dataset(str(uri)).metadata["avatar4d.fingerprint"] == '{"a":1}'
    chunk_id, table = chunk_table(schema, "ink", 0, 0, 2)
    assert committer.commit([chunk_id], write_fragments(str(uri), table, schema)) == 2
