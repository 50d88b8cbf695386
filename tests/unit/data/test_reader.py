"""LanceShardReader on real Lance datasets written through the factory sink (tmp_path, small rows)."""

from __future__ import annotations

from pathlib import Path

import lance
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from avatar4d.data.codec import decode_png, encode_png, encode_tensor
from avatar4d.data.reader import LanceShardReader, RowRange, share_bounds, split_ranges
from avatar4d.data.schema import TensorSpec, multiview_schema, pairs_schema
from factory.sink import LanceCommitter, write_fragments

TRIPLANE = TensorSpec((4, 2, 8, 8), "float16")
W_DIM, FACE_DIM, IMAGE = 8, 7, 8


def triplane_of(index: int, spec: TensorSpec = TRIPLANE) -> torch.Tensor:
    return torch.randn(spec.shape, generator=torch.Generator().manual_seed(index)).to(torch.float16)


def image_of(index: int) -> torch.Tensor:
    return torch.rand(3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(10_000 + index)) * 2 - 1


def pairs_table(schema: pa.Schema, chunk_id: str, start: int, size: int) -> pa.Table:
    rows = range(start, start + size)
    return pa.table({
        "sample_id": [f"pixar/{i:08d}" for i in rows], "chunk_id": [chunk_id] * size, "domain": ["pixar"] * size,
        "sample_index": list(rows), "seed": [7 * i for i in rows],
        "w": [[float(i)] * W_DIM for i in rows], "camera": [[i + 0.5] * 25 for i in rows],
        "face_params": [[-float(i)] * FACE_DIM for i in rows], "image": [encode_png(image_of(i)) for i in rows],
        "triplane": [encode_tensor(triplane_of(i), TRIPLANE) for i in rows],
        "generator_sha256": ["0" * 64] * size, "generator_kind": ["world"] * size, "factory_version": ["test"] * size,
    }, schema=schema)


def small_pairs_schema(blob_triplane: bool = True) -> pa.Schema:
    return pairs_schema(w_dim=W_DIM, face_params_dim=FACE_DIM, triplane=TRIPLANE, blob_triplane=blob_triplane,
                        extra_metadata={"avatar4d.image": '{"format": "png"}'})  # metadata that is no tensor spec


def write_pairs(uri: Path, chunk_sizes: list[int], *, blob_triplane: bool = True) -> int:
    """One committed fragment per chunk; returns the row count."""
    schema = small_pairs_schema(blob_triplane)
    committer = LanceCommitter(str(uri), schema)
    start = 0
    for index, size in enumerate(chunk_sizes):
        chunk_id = f"pairs/pixar/pairs/{index:06d}"
        committer.commit([chunk_id], write_fragments(str(uri), pairs_table(schema, chunk_id, start, size), schema))
        start += size
    return start


def indices_of(reader: LanceShardReader | DataLoader) -> list[int]:
    return [int(i) for batch in reader for i in batch["sample_index"]]


def test_shares_split_rows_into_contiguous_near_equal_parts() -> None:
    ranges = [RowRange(0, 0, 5), RowRange(1, 0, 3), RowRange(2, 0, 7), RowRange(3, 0, 1)]
    shares = [split_ranges(ranges, part, 4) for part in range(4)]
    covered = [(r.fragment_id, r.offset + k) for share in shares for r in share for k in range(r.count)]
    assert covered == [(f.fragment_id, k) for f in ranges for k in range(f.count)]  # every row once, in order
    assert [sum(r.count for r in share) for share in shares] == [4, 4, 4, 4]
    assert split_ranges(ranges, 1, 4) == [RowRange(0, 4, 1), RowRange(1, 0, 3)]
    assert [share_bounds(10, part, 4) for part in range(4)] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert [share_bounds(10, part, 4, drop_remainder=True) for part in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    with pytest.raises(ValueError):
        share_bounds(10, 4, 4)
    with pytest.raises(ValueError, match="rank"):
        LanceShardReader("x.lance", rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        LanceShardReader("x.lance", batch_size=0)


@pytest.mark.parametrize("chunk_sizes", [[5, 3, 7, 1, 6], [11, 11]], ids=["5-fragments", "2-fragments"])
def test_ranks_together_yield_every_row_exactly_once(tmp_path: Path, chunk_sizes: list[int]) -> None:
    total = write_pairs(tmp_path / "pairs.lance", chunk_sizes)
    per_rank = [indices_of(LanceShardReader(str(tmp_path / "pairs.lance"), columns=["sample_index"], rank=rank,
                                            world_size=4, batch_size=4)) for rank in range(4)]
    assert sorted(i for share in per_rank for i in share) == list(range(total))
    assert max(map(len, per_rank)) - min(map(len, per_rank)) <= 1
    pinned = lance.dataset(str(tmp_path / "pairs.lance")).version
    write_more = small_pairs_schema()
    LanceCommitter(str(tmp_path / "pairs.lance"), write_more).commit(["late"], write_fragments(
        str(tmp_path / "pairs.lance"), pairs_table(write_more, "late", total, 3), write_more))
    late = [indices_of(LanceShardReader(str(tmp_path / "pairs.lance"), columns=["sample_index"], rank=rank,
                                        world_size=4, version=pinned)) for rank in range(4)]
    assert late == per_rank  # a pinned version ignores rows appended after it
    total += 3
    equal = [indices_of(LanceShardReader(str(tmp_path / "pairs.lance"), columns=["sample_index"], rank=rank,
                                         world_size=4, drop_remainder=True)) for rank in range(4)]
    assert [len(share) for share in equal] == [total // 4] * 4


@pytest.mark.parametrize("blob_triplane", [True, False], ids=["blob", "large_binary"])
def test_batches_decode_to_tensors_of_the_recorded_shapes(tmp_path: Path, blob_triplane: bool) -> None:
    write_pairs(tmp_path / "pairs.lance", [3, 4], blob_triplane=blob_triplane)
    batches = list(LanceShardReader(str(tmp_path / "pairs.lance"), batch_size=5))
    assert [len(batch["sample_id"]) for batch in batches] == [5, 2]  # regrouped across the fragment boundary
    first = batches[0]
    assert first["image"].dtype == torch.uint8 and first["image"].shape == (5, 3, IMAGE, IMAGE)
    assert first["triplane"].dtype == torch.float16 and first["triplane"].shape == (5, *TRIPLANE.shape)
    assert first["w"].shape == (5, W_DIM) and first["w"].dtype == torch.float32
    assert first["camera"].shape == (5, 25) and first["face_params"].shape == (5, FACE_DIM)
    assert first["sample_index"].dtype == torch.int64 and first["sample_id"][0] == "pixar/00000000"
    for row, index in enumerate(first["sample_index"].tolist()):
        assert torch.equal(first["triplane"][row], triplane_of(index))
        assert torch.equal(first["image"][row], decode_png(encode_png(image_of(index))))
        assert first["w"][row, 0].item() == index and first["face_params"][row, 0].item() == -index
    raw = next(iter(LanceShardReader(str(tmp_path / "pairs.lance"), columns=["triplane", "image"], decode=False)))
    assert isinstance(raw["triplane"][0], bytes) and len(raw["triplane"][0]) == TRIPLANE.nbytes


def test_shuffled_reading_covers_every_row_once_and_depends_on_the_epoch(tmp_path: Path) -> None:
    total = write_pairs(tmp_path / "pairs.lance", [6, 6, 6])

    def order(rank: int, epoch: int, **kwargs) -> list[int]:
        reader = LanceShardReader(str(tmp_path / "pairs.lance"), columns=["sample_index", "triplane"], rank=rank,
                                  world_size=2, batch_size=4, shuffle=True, seed=3, **kwargs)
        reader.set_epoch(epoch)
        return indices_of(reader)

    epoch0 = [order(rank, 0) for rank in range(2)]
    assert sorted(epoch0[0] + epoch0[1]) == list(range(total))
    assert epoch0 == [order(rank, 0) for rank in range(2)]  # reproducible
    assert epoch0 != [order(rank, 1) for rank in range(2)]  # reshuffled per epoch
    assert len(order(0, 0, drop_last=True)) == 8  # 9 rows for rank 0 → two full batches of 4
    batch = next(iter(LanceShardReader(str(tmp_path / "pairs.lance"), columns=["sample_index", "triplane"],
                                       batch_size=3, shuffle=True)))
    for row, index in enumerate(batch["sample_index"].tolist()):
        assert torch.equal(batch["triplane"][row], triplane_of(index))


def test_dataloader_with_two_spawn_workers_yields_every_row_once(tmp_path: Path) -> None:
    total = write_pairs(tmp_path / "pairs.lance", [4, 5, 4])
    reader = LanceShardReader(str(tmp_path / "pairs.lance"), columns=["sample_index", "triplane"], batch_size=3)
    loader = DataLoader(reader, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    batches = list(loader)
    assert sorted(int(i) for batch in batches for i in batch["sample_index"]) == list(range(total))
    assert all(batch["triplane"].shape[1:] == TRIPLANE.shape for batch in batches)


def test_multiview_views_decode_with_row_splits(tmp_path: Path) -> None:
    depth, features = TensorSpec((1, 4, 4), "float16"), TensorSpec((3, 4, 4), "float32")
    schema = multiview_schema(w_dim=W_DIM, face_params_dim=FACE_DIM, triplane=TRIPLANE, depth=depth,
                              features=features)
    view_counts = [4, 2]  # a dynamic (2 expressions × 2 cameras) and a static (2 cameras) identity

    def view(i: int) -> dict:
        return {"camera": [float(i)] * 25, "face_params": [0.0] * FACE_DIM, "expression_index": i % 2,
                "camera_index": i, "image": encode_png(image_of(i)),
                "depth": encode_tensor(torch.full(depth.shape, float(i)), depth),
                "opacity": encode_tensor(torch.full(depth.shape, 0.5), depth),
                "features": encode_tensor(torch.full(features.shape, -float(i)), features)}

    table = pa.table({
        "identity_id": ["lego/dynamic/000000", "lego/static/000000"], "chunk_id": ["mv/0", "mv/1"],
        "domain": ["lego"] * 2, "set": ["dynamic", "static"], "identity_index": [0, 0], "seed": [1, 2],
        "w": [[0.0] * W_DIM] * 2, "triplane": [encode_tensor(triplane_of(i), TRIPLANE) for i in range(2)],
        "views": [[view(i) for i in range(count)] for count in view_counts],
        "generator_sha256": ["0" * 64] * 2, "generator_kind": ["world"] * 2, "factory_version": ["test"] * 2,
    }, schema=schema)
    uri = tmp_path / "multiview.lance"
    committer = LanceCommitter(str(uri), schema)
    committer.commit(["mv/0"], write_fragments(str(uri), table.slice(0, 1), schema))
    committer.commit(["mv/1"], write_fragments(str(uri), table.slice(1, 1), schema))
    batch = next(iter(LanceShardReader(str(uri), batch_size=2)))
    views = batch["views"]
    assert views["row_splits"].tolist() == [0, 4, 6]
    assert views["image"].shape == (6, 3, IMAGE, IMAGE) and views["camera"].shape == (6, 25)
    assert views["depth"].shape == (6, *depth.shape) and views["opacity"].dtype == torch.float16
    assert views["features"].shape == (6, *features.shape) and views["features"].dtype == torch.float32
    assert views["depth"][5].flatten()[0].item() == 1.0 and views["features"][3].flatten()[0].item() == -3.0
    assert views["camera_index"].tolist() == [0, 1, 2, 3, 0, 1]
    assert batch["set"] == ["dynamic", "static"] and batch["triplane"].shape == (2, *TRIPLANE.shape)


def test_wrong_tensor_length_and_unknown_columns_are_errors(tmp_path: Path) -> None:
    schema = pairs_schema(w_dim=W_DIM, face_params_dim=FACE_DIM, triplane=TRIPLANE, blob_triplane=False)
    table = pairs_table(schema, "c/0", 0, 2)
    table = table.set_column(schema.get_field_index("triplane"), schema.field("triplane"),
                             pa.array([b"\x00" * 10] * 2, pa.large_binary()))
    uri = tmp_path / "pairs.lance"
    LanceCommitter(str(uri), schema).commit(["c/0"], write_fragments(str(uri), table, schema))
    with pytest.raises(ValueError, match="10 bytes"):
        next(iter(LanceShardReader(str(uri), columns=["triplane"])))
    with pytest.raises(ValueError, match="unknown columns"):
        next(iter(LanceShardReader(str(uri), columns=["nope"])))
