"""Driver-side dataset checks (one-line errors) and each rank's endless, disjoint micro-batches."""

import pytest
import torch

from avatar4d.data.codec import encode_tensor
from avatar4d.data.schema import SchemaMismatchError, TensorSpec
from train.data import DatasetError, RankStream, check_size, decode_tensor_column, inspect_dataset


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    from train.fixtures import make_pairs

    data = tmp_path_factory.mktemp("data")
    return make_pairs(data, domains=("pixar", "realistic"), per_domain=3)


def test_inspect_reports_rows_version_and_specs(pairs):
    info = inspect_dataset(pairs, ["triplane", "domain"], what="pairs dataset", hint="make one")
    assert info.num_rows == 6 and info.version >= 1 and "generator_sha256" in info.columns
    assert info.tensor_spec("triplane") == TensorSpec((4, 8, 64, 64), "float16")


def test_missing_dataset_and_columns_are_one_line_errors(pairs, tmp_path):
    with pytest.raises(DatasetError, match="pairs dataset not found: .* \\(make one\\)"):
        inspect_dataset(str(tmp_path / "nope.lance"), [], what="pairs dataset", hint="make one")
    with pytest.raises(SchemaMismatchError, match="lacks the columns \\['latent'\\]"):
        inspect_dataset(pairs, ["latent"], what="encoded dataset", hint="encode it")
    info = inspect_dataset(pairs, [], what="pairs dataset", hint="")
    with pytest.raises(DatasetError, match="has 6 rows; 4 workers × micro-batch 2 need at least 8"):
        check_size(info, 4, 2, what="pairs dataset")


def test_ranks_read_disjoint_shares_and_streams_continue_across_epochs(pairs):
    info = inspect_dataset(pairs, [], what="pairs dataset", hint="")
    seen = []
    for rank in range(2):
        stream = RankStream(info, ["sample_id"], rank=rank, world_size=2, batch_size=1, seed=3)
        batches = iter(stream)
        epoch0 = [next(batches)["sample_id"][0] for _ in range(3)]
        assert stream.epoch == 0
        epoch1 = [next(batches)["sample_id"][0] for _ in range(3)]
        assert stream.epoch == 1 and len(set(epoch0)) == 3
        seen.append((set(epoch0), epoch0, epoch1))
    assert not seen[0][0] & seen[1][0]  # disjoint shares
    assert seen[0][1] != seen[0][2] or seen[1][1] != seen[1][2]  # reshuffled per epoch
    resumed = iter(RankStream(info, ["sample_id"], rank=0, world_size=2, batch_size=1, seed=3, start_epoch=1))
    assert [next(resumed)["sample_id"][0] for _ in range(3)] == seen[0][2]


def test_tensor_columns_decode_from_bytes_or_flat_lists():
    spec = TensorSpec((2, 3), "float16")
    values = torch.arange(12, dtype=torch.float32).reshape(2, 2, 3)
    decoded = decode_tensor_column([encode_tensor(v, spec) for v in values], spec, "clip_tokens")
    assert decoded.dtype == torch.float16 and torch.equal(decoded.float(), values)
    assert torch.equal(decode_tensor_column(values.reshape(2, 6), spec, "x"), values)
    with pytest.raises(SchemaMismatchError, match="do not fit"):
        decode_tensor_column(values.reshape(3, 4), spec, "x")
