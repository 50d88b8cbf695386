"""Dataset schemas: columns, types, metadata, tensor specs and compatibility checks."""

import json

import pyarrow as pa
import pytest

from avatar4d.data.schema import (
    BLOB_FIELD_METADATA,
    MULTIVIEW,
    PAIRS,
    SCHEMA_VERSION,
    SchemaMismatchError,
    TensorSpec,
    check_compatible,
    dataset_uri,
    face_params_dims,
    multiview_schema,
    pairs_schema,
    schema_table,
    tensor_spec,
)
from avatar4d.errors import UserError

TRIPLANE = TensorSpec((4, 8, 64, 64), "float16")
DEPTH = TensorSpec((1, 16, 16), "float32")
FEATURES = TensorSpec((8, 16, 16), "float16")


def _pairs(**overrides):
    kwargs = dict(w_dim=64, face_params_dim=25, triplane=TRIPLANE, identity_dim=12)
    return pairs_schema(**{**kwargs, **overrides})


def _multiview(**overrides):
    kwargs = dict(w_dim=64, face_params_dim=25, triplane=TRIPLANE, depth=DEPTH, features=FEATURES, identity_dim=12)
    return multiview_schema(**{**kwargs, **overrides})


def test_tensor_spec_sizes_json_and_validation():
    assert TensorSpec((4, 32, 256, 256), "float16").nbytes == 16 * 2**20  # the paper's 16 MiB triplane
    assert TensorSpec([1, 2, 3], "float32").shape == (1, 2, 3) and TensorSpec((5,), "bfloat16").nbytes == 10
    assert TensorSpec.from_json(TRIPLANE.to_json()) == TRIPLANE
    with pytest.raises(ValueError, match="unsupported tensor dtype"):
        TensorSpec((1,), "int8")
    with pytest.raises(ValueError, match="positive"):
        TensorSpec((0, 3), "float16")


def test_pairs_schema_columns_types_and_metadata():
    schema = _pairs(extra_metadata={"avatar4d.note": "x"})
    assert schema.names == ["sample_id", "chunk_id", "domain", "sample_index", "seed", "w", "camera", "face_params",
                            "image", "triplane", "generator_sha256", "generator_kind", "factory_version"]
    assert schema.field("w").type == pa.list_(pa.float32(), 64)
    assert schema.field("camera").type == pa.list_(pa.float32(), 25)
    assert schema.field("face_params").type == pa.list_(pa.float32(), 25)
    assert schema.field("sample_index").type == pa.int64() and schema.field("seed").type == pa.int64()
    assert schema.field("image").type == pa.binary() and schema.field("triplane").type == pa.large_binary()
    assert schema.field("triplane").metadata == {k.encode(): v.encode() for k, v in BLOB_FIELD_METADATA.items()}
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["avatar4d.schema_version"] == str(SCHEMA_VERSION) and meta["avatar4d.table"] == PAIRS
    assert meta["avatar4d.triplane_encoding"] == "blob" and meta["avatar4d.note"] == "x"
    assert json.loads(meta["avatar4d.triplane"]) == {"shape": [4, 8, 64, 64], "dtype": "float16"}
    assert face_params_dims(schema) == {"identity": 12, "expression": 10, "jaw": 3, "total": 25}
    assert tensor_spec(schema, "triplane") == TRIPLANE and schema_table(schema) == PAIRS
    plain = _pairs(blob_triplane=False)
    assert plain.field("triplane").metadata is None and b"binary" in plain.metadata[b"avatar4d.triplane_encoding"]


def test_multiview_schema_views_and_specs():
    schema = _multiview()
    assert schema.names == ["identity_id", "chunk_id", "domain", "set", "identity_index", "seed", "w", "triplane",
                            "views", "generator_sha256", "generator_kind", "factory_version"]
    view = schema.field("views").type.value_type
    assert [f.name for f in view] == ["camera", "face_params", "expression_index", "camera_index", "image", "depth",
                                      "opacity", "features"]
    assert view.field("expression_index").type == pa.int32() and view.field("features").type == pa.binary()
    assert tensor_spec(schema, "depth") == DEPTH == tensor_spec(schema, "opacity")
    assert tensor_spec(schema, "features") == FEATURES and schema_table(schema) == MULTIVIEW
    with pytest.raises(ValueError, match="depth spec"):
        _multiview(depth=TensorSpec((2, 16, 16), "float32"))
    with pytest.raises(ValueError, match="features spec"):
        _multiview(features=TensorSpec((8, 32, 32), "float16"))


def test_schema_argument_errors():
    with pytest.raises(ValueError, match="w_dim"):
        _pairs(w_dim=0)
    with pytest.raises(ValueError, match="identity_dim 30 does not fit"):
        _pairs(identity_dim=30)
    with pytest.raises(ValueError, match="may not override"):
        _pairs(extra_metadata={"avatar4d.table": "other"})
    with pytest.raises(ValueError, match="no tensor spec"):
        tensor_spec(_pairs(), "image")
    with pytest.raises(SchemaMismatchError, match="avatar4d.depth"):
        tensor_spec(_pairs(), "depth")
    assert dataset_uri("/data/run/", PAIRS) == "/data/run/pairs.lance"
    with pytest.raises(ValueError, match="unknown table"):
        dataset_uri("/data", "images")


def test_check_compatible_accepts_same_and_other_extra_metadata():
    check_compatible(_pairs(extra_metadata={"a": "1"}), _pairs(extra_metadata={"a": "2"}))
    check_compatible(_multiview(), _multiview())
    # a Lance round trip reports the blob column as an extension type and drops nullability: still compatible
    relaxed = pa.schema([pa.field(f.name, f.type) for f in _pairs()], metadata=_pairs().metadata)
    check_compatible(relaxed, _pairs())


@pytest.mark.parametrize("existing, message", [
    (lambda: _pairs(triplane=TensorSpec((4, 8, 64, 64), "bfloat16")), r"avatar4d.triplane differs: existing \[4, 8"),
    (lambda: _pairs(triplane=TensorSpec((4, 32, 256, 256), "float16")), "avatar4d.triplane differs"),
    (lambda: _pairs(w_dim=512), "column 'w' is fixed_size_list"),
    (lambda: _multiview(), "table multiview, this run writes pairs"),
    (lambda: pa.schema(list(_pairs())), "schema version missing"),
    (lambda: pa.schema(list(_pairs())[:-1], metadata=_pairs().metadata), r"missing \['factory_version'\]"),
    (lambda: _pairs(identity_dim=10), "face_params split differs"),
])
def test_check_compatible_names_the_difference(existing, message):
    with pytest.raises(SchemaMismatchError, match=message) as info:
        check_compatible(existing(), _pairs())
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


def test_check_compatible_rejects_other_schema_version():
    old = _pairs()
    meta = dict(old.metadata)
    meta[b"avatar4d.schema_version"] = b"0"
    with pytest.raises(SchemaMismatchError, match="schema version 0, this run writes 1"):
        check_compatible(old.with_metadata(meta), _pairs())


def test_lance_round_trip_keeps_the_schema_compatible(tmp_path):
    lance = pytest.importorskip("lance")
    schema = _pairs()
    row = {"sample_id": "d/00000000", "chunk_id": "c", "domain": "d", "sample_index": 0, "seed": 1, "w": [0.0] * 64,
           "camera": [0.0] * 25, "face_params": [0.0] * 25, "image": b"png", "triplane": b"\0" * TRIPLANE.nbytes,
           "generator_sha256": "h", "generator_kind": "gan", "factory_version": "v"}
    table = pa.Table.from_pylist([row], schema=schema)
    transaction = lance.fragment.write_fragments(table, str(tmp_path / "p.lance"), schema=schema,
                                                 return_transaction=True)
    dataset = lance.LanceDataset.commit(str(tmp_path / "p.lance"), transaction)
    check_compatible(dataset.schema, schema)
    assert tensor_spec(dataset.schema, "triplane") == TRIPLANE
    back = dataset.scanner(blob_handling="all_binary").to_table()
    assert back.column("triplane")[0].as_py() == row["triplane"]
