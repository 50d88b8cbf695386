"""Dataset schemas, byte codecs and readers shared by the data factory (writer) and the trainers.

Importing this package needs torch + numpy only; pyarrow and lance are imported inside the schema
functions and when a reader iterates. ``LanceShardReader`` reads ``pairs.lance`` /
``multiview.lance``, ``EncodedShardReader`` reads ``encoded.lance``.
"""

from avatar4d.data.codec import (
    CodecError,
    decode_png,
    decode_pngs,
    decode_tensor,
    decode_tensors,
    encode_png,
    encode_tensor,
    encode_tensors,
)
from avatar4d.data.encoded_reader import EncodedShardReader
from avatar4d.data.reader import LanceShardReader
from avatar4d.data.schema import (
    MULTIVIEW,
    MULTIVIEW_SETS,
    PAIRS,
    SCHEMA_VERSION,
    TABLES,
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

__all__ = [
    "CodecError", "decode_png", "decode_pngs", "decode_tensor", "decode_tensors", "encode_png", "encode_tensor",
    "encode_tensors", "EncodedShardReader", "LanceShardReader",
    "MULTIVIEW", "MULTIVIEW_SETS", "PAIRS", "SCHEMA_VERSION", "TABLES", "SchemaMismatchError", "TensorSpec",
    "check_compatible", "dataset_uri", "face_params_dims", "multiview_schema", "pairs_schema", "schema_table",
    "tensor_spec",
]
