"""Dataset schemas and byte codecs shared by the data factory (writer) and the trainers (readers).

Importing this package needs torch + numpy only; pyarrow is imported inside the schema functions.
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
    "encode_tensors",
    "MULTIVIEW", "MULTIVIEW_SETS", "PAIRS", "SCHEMA_VERSION", "TABLES", "SchemaMismatchError", "TensorSpec",
    "check_compatible", "dataset_uri", "face_params_dims", "multiview_schema", "pairs_schema", "schema_table",
    "tensor_spec",
]
