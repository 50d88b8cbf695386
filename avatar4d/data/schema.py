"""Arrow schemas of the factory's Lance datasets (``<out>/pairs.lance``, ``<out>/multiview.lance``).

pyarrow is imported inside the functions, so ``avatar4d`` imports without it. Tensors are stored
as raw little-endian bytes (:mod:`avatar4d.data.codec`); their shape and dtype live in the schema
metadata as JSON :class:`TensorSpec` s, so a reader never guesses a shape.

Triplanes (16 MiB each at paper size, fp16) use Lance's blob encoding by default (field metadata
``lance-encoding:blob``): pylance 14 writes them to a sidecar ``.blob`` file per fragment, so
scans of the small columns never touch them. Consequences measured with pylance 14.0.2:
``write_fragments(..., return_transaction=True)`` + ``LanceDataset.commit(uri, transaction)``
works (committing ``LanceOperation.Overwrite(schema, fragments)`` is refused: "field IDs do not
match"); ``dataset.schema`` reports the column as the extension type ``lance.blob.v2`` without
the field metadata (:func:`check_compatible` treats both as the same column); ``to_table`` returns
blob descriptors unless the scanner is asked for ``blob_handling="all_binary"`` (or
``take_blobs``). ``blob_triplane=False`` stores plain ``large_binary`` instead; the choice is
recorded under the metadata key ``avatar4d.triplane_encoding``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from avatar4d.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

SCHEMA_VERSION = 1
PAIRS = "pairs"
MULTIVIEW = "multiview"
TABLES = (PAIRS, MULTIVIEW)
MULTIVIEW_SETS = ("dynamic", "static")
CAMERA_LABEL_DIM = 25  # Camera.to_label(): 16 cam2world + 9 normalised intrinsics
JAW_DIM = 3

META_SCHEMA_VERSION = "avatar4d.schema_version"
META_CAMERA_CONVENTION = "avatar4d.camera_convention"
CAMERA_CONVENTION = "eg3d-lookat-origin"
"""How the stored images and 25-d labels were made: cameras 2.7 from the world origin looking at the
pivot (EG3D's ``LookAtPoseSampler``; :mod:`avatar4d.geometry.camera`). Datasets written before this
field (cameras 2.7 from the pivot) have none and are refused by :func:`check_camera_convention`."""
META_TABLE = "avatar4d.table"
META_TRIPLANE = "avatar4d.triplane"
META_TRIPLANE_ENCODING = "avatar4d.triplane_encoding"
META_FACE_PARAMS_DIMS = "avatar4d.face_params_dims"
META_DEPTH = "avatar4d.depth"
META_FEATURES = "avatar4d.features"
BLOB_FIELD_METADATA = {"lance-encoding:blob": "true"}
_SPEC_KEYS = {"triplane": META_TRIPLANE, "depth": META_DEPTH, "opacity": META_DEPTH, "features": META_FEATURES}

#: bytes per element of the dtypes a tensor column may hold
DTYPE_SIZES = {"float16": 2, "bfloat16": 2, "float32": 4}


class SchemaMismatchError(UserError):
    """An existing dataset's schema does not fit what this run would write."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a tensor stored as raw little-endian bytes in a binary column."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.dtype not in DTYPE_SIZES:
            raise ValueError(f"unsupported tensor dtype {self.dtype!r}; choose from {sorted(DTYPE_SIZES)}")
        if not self.shape or any(s <= 0 for s in self.shape):
            raise ValueError(f"tensor shape must be non-empty and positive, got {self.shape}")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES[self.dtype]

    def to_json(self) -> str:
        return json.dumps({"shape": list(self.shape), "dtype": self.dtype}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TensorSpec:
        data = json.loads(text)
        return cls(shape=tuple(data["shape"]), dtype=data["dtype"])


def dataset_uri(out: str, table: str) -> str:
    """``<out>/<table>.lance``; ``out`` may be a local folder or an object-store URI."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; choose from {list(TABLES)}")
    return f"{str(out).rstrip('/')}/{table}.lance"


def face_params_vector_dim(identity_dim: int, expression_dim: int) -> int:
    """Length of ``FaceParams.to_vector()``: identity ++ expression ++ jaw."""
    return identity_dim + expression_dim + JAW_DIM


def _face_dims_json(face_params_dim: int, identity_dim: int | None) -> str:
    if face_params_dim <= JAW_DIM:
        raise ValueError(f"face_params_dim must exceed the {JAW_DIM} jaw values, got {face_params_dim}")
    if identity_dim is None:
        dims: dict[str, int | None] = {"identity": None, "expression": None}
    else:
        expression_dim = face_params_dim - JAW_DIM - identity_dim
        if identity_dim < 0 or expression_dim < 0:
            raise ValueError(f"identity_dim {identity_dim} does not fit face_params_dim {face_params_dim}")
        dims = {"identity": identity_dim, "expression": expression_dim}
    return json.dumps({**dims, "jaw": JAW_DIM, "total": face_params_dim}, sort_keys=True)


def _metadata(table: str, triplane: TensorSpec, face_params_dim: int, identity_dim: int | None,
              blob_triplane: bool, specs: Mapping[str, TensorSpec],
              extra: Mapping[str, str] | None) -> dict[bytes, bytes]:
    meta = {
        META_SCHEMA_VERSION: str(SCHEMA_VERSION),
        META_TABLE: table,
        META_CAMERA_CONVENTION: CAMERA_CONVENTION,
        META_TRIPLANE: triplane.to_json(),
        META_TRIPLANE_ENCODING: "blob" if blob_triplane else "binary",
        META_FACE_PARAMS_DIMS: _face_dims_json(face_params_dim, identity_dim),
        **{key: spec.to_json() for key, spec in specs.items()},
    }
    for key, value in (extra or {}).items():
        if key in meta:
            raise ValueError(f"extra_metadata may not override {key!r}")
        meta[str(key)] = str(value)
    return {k.encode(): v.encode() for k, v in meta.items()}


def _common_fields(w_dim: int, blob_triplane: bool) -> tuple[list[pa.Field], pa.Field]:
    import pyarrow as pa

    if w_dim <= 0:
        raise ValueError(f"w_dim must be positive, got {w_dim}")
    head = [pa.field("chunk_id", pa.string(), nullable=False), pa.field("domain", pa.string(), nullable=False)]
    triplane = pa.field("triplane", pa.large_binary(), nullable=False,
                        metadata=BLOB_FIELD_METADATA if blob_triplane else None)
    return head, triplane


def _vector(size: int) -> pa.DataType:
    import pyarrow as pa

    return pa.list_(pa.float32(), size)


def _tail() -> list[pa.Field]:
    import pyarrow as pa

    return [pa.field("generator_sha256", pa.string(), nullable=False),
            pa.field("generator_kind", pa.string(), nullable=False),  # "gan" or "world" (avatar4d.generators)
            pa.field("factory_version", pa.string(), nullable=False)]


def pairs_schema(*, w_dim: int, face_params_dim: int, triplane: TensorSpec,
                 extra_metadata: dict[str, str] | None = None, identity_dim: int | None = None,
                 blob_triplane: bool = True) -> pa.Schema:
    """Schema of the image–parametric-triplane pairs table (one row per sample).

    ``identity_dim`` (optional) records how ``face_params`` splits into identity / expression / jaw.
    """
    import pyarrow as pa

    head, triplane_field = _common_fields(w_dim, blob_triplane)
    fields = [
        pa.field("sample_id", pa.string(), nullable=False), *head,
        pa.field("sample_index", pa.int64(), nullable=False), pa.field("seed", pa.int64(), nullable=False),
        pa.field("w", _vector(w_dim), nullable=False),
        pa.field("camera", _vector(CAMERA_LABEL_DIM), nullable=False),
        pa.field("face_params", _vector(face_params_dim), nullable=False),
        pa.field("image", pa.binary(), nullable=False), triplane_field, *_tail(),
    ]
    meta = _metadata(PAIRS, triplane, face_params_dim, identity_dim, blob_triplane, {}, extra_metadata)
    return pa.schema(fields, metadata=meta)


def view_struct_type(face_params_dim: int) -> pa.DataType:
    """One rendered view of a multiview row: camera, expression, image and rendering buffers."""
    import pyarrow as pa

    return pa.struct([
        pa.field("camera", _vector(CAMERA_LABEL_DIM), nullable=False),
        pa.field("face_params", _vector(face_params_dim), nullable=False),
        pa.field("expression_index", pa.int32(), nullable=False),
        pa.field("camera_index", pa.int32(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("depth", pa.binary(), nullable=False),
        pa.field("opacity", pa.binary(), nullable=False),
        pa.field("features", pa.binary(), nullable=False),
    ])


def multiview_schema(*, w_dim: int, face_params_dim: int, triplane: TensorSpec, depth: TensorSpec,
                     features: TensorSpec, extra_metadata: dict[str, str] | None = None,
                     identity_dim: int | None = None, blob_triplane: bool = True) -> pa.Schema:
    """Schema of the multiview table: one row per identity and set, its views in a list column.

    ``depth`` is the spec of both the depth and the opacity buffers ([1, N, N]).
    """
    import pyarrow as pa

    if len(depth.shape) != 3 or depth.shape[0] != 1:
        raise ValueError(f"depth spec must be [1, N, N], got {list(depth.shape)}")
    if len(features.shape) != 3 or features.shape[1:] != depth.shape[1:]:
        raise ValueError(f"features spec must be [C, N, N] with depth's N, got {list(features.shape)}")
    head, triplane_field = _common_fields(w_dim, blob_triplane)
    fields = [
        pa.field("identity_id", pa.string(), nullable=False), *head,
        pa.field("set", pa.string(), nullable=False),
        pa.field("identity_index", pa.int64(), nullable=False), pa.field("seed", pa.int64(), nullable=False),
        pa.field("w", _vector(w_dim), nullable=False), triplane_field,
        pa.field("views", pa.list_(view_struct_type(face_params_dim)), nullable=False), *_tail(),
    ]
    meta = _metadata(MULTIVIEW, triplane, face_params_dim, identity_dim, blob_triplane,
                     {META_DEPTH: depth, META_FEATURES: features}, extra_metadata)
    return pa.schema(fields, metadata=meta)


def schema_metadata(schema: pa.Schema) -> dict[str, str]:
    """The schema's metadata as a str → str dict (empty when it has none)."""
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def tensor_spec(schema: pa.Schema, name: str) -> TensorSpec:
    """The :class:`TensorSpec` of tensor column ``name`` ("triplane", "depth", "opacity", "features")."""
    if name not in _SPEC_KEYS:
        raise ValueError(f"no tensor spec for {name!r}; known: {sorted(_SPEC_KEYS)}")
    raw = schema_metadata(schema).get(_SPEC_KEYS[name])
    if raw is None:
        raise SchemaMismatchError(f"schema metadata has no {_SPEC_KEYS[name]} (not an avatar4d {name} table?)")
    return TensorSpec.from_json(raw)


def face_params_dims(schema: pa.Schema) -> dict[str, int | None]:
    """``{"identity": Ni, "expression": Ne, "jaw": 3, "total": D}`` (Ni/Ne None when not recorded)."""
    raw = schema_metadata(schema).get(META_FACE_PARAMS_DIMS)
    if raw is None:
        raise SchemaMismatchError(f"schema metadata has no {META_FACE_PARAMS_DIMS}")
    return json.loads(raw)


def schema_table(schema: pa.Schema) -> str:
    """The table name ("pairs" / "multiview") recorded in the schema metadata."""
    table = schema_metadata(schema).get(META_TABLE)
    if table is None:
        raise SchemaMismatchError("not an avatar4d dataset (no avatar4d.table in the schema metadata)")
    return table


def _normalized(data_type: pa.DataType) -> pa.DataType:
    """The type with nullability and field metadata dropped, Lance's blob extension as large_binary."""
    import pyarrow as pa

    if isinstance(data_type, pa.BaseExtensionType):
        if getattr(data_type, "extension_name", "").startswith("lance.blob"):
            return pa.large_binary()
        return _normalized(data_type.storage_type)
    if pa.types.is_fixed_size_list(data_type):
        return pa.list_(_normalized(data_type.value_type), data_type.list_size)
    if pa.types.is_large_list(data_type):
        return pa.large_list(_normalized(data_type.value_type))
    if pa.types.is_list(data_type):
        return pa.list_(_normalized(data_type.value_type))
    if pa.types.is_struct(data_type):
        return pa.struct([pa.field(f.name, _normalized(f.type)) for f in data_type])
    return data_type


def _describe(value: Any) -> str:
    return "missing" if value is None else str(value)


def check_camera_convention(existing: pa.Schema, where: str = "the existing dataset") -> None:
    """Raise :class:`SchemaMismatchError` when ``existing`` was written with other cameras than
    :data:`CAMERA_CONVENTION` (no field: before the cameras moved to EG3D's origin-centred orbit)."""
    stored = schema_metadata(existing).get(META_CAMERA_CONVENTION)
    if stored == CAMERA_CONVENTION:
        return
    made = ("was written before the camera change (its cameras orbit 2.7 from the pivot; this factory's sit 2.7 "
            "from the world origin, as EG3D's do)" if stored is None else f"was written with cameras {stored!r}")
    raise SchemaMismatchError(f"{where} {made}: its images and camera labels cannot be mixed with this run's; "
                              "write to another --out, or move the old dataset away to regenerate it")


def check_compatible(existing: pa.Schema, expected: pa.Schema) -> None:
    """Raise :class:`SchemaMismatchError` (one line) unless data written with ``expected`` can be
    appended to a dataset whose schema is ``existing``.

    Compared: schema version, table, column names and types (ignoring nullability, field metadata
    and Lance's blob extension type), tensor specs and the face-parameter split. Other metadata
    (stage configs, ``extra_metadata``) may differ.
    """
    old, new = schema_metadata(existing), schema_metadata(expected)
    for key, what in ((META_SCHEMA_VERSION, "schema version"), (META_TABLE, "table")):
        if old.get(key) != new.get(key):
            raise SchemaMismatchError(f"existing dataset has {what} {_describe(old.get(key))}, "
                                      f"this run writes {_describe(new.get(key))}")
    if META_CAMERA_CONVENTION in new:
        check_camera_convention(existing)
    old_names, new_names = existing.names, expected.names
    missing = [n for n in new_names if n not in old_names]
    extra = [n for n in old_names if n not in new_names]
    if missing or extra:
        raise SchemaMismatchError(f"existing dataset's columns differ: missing {missing}, unexpected {extra}")
    for name in new_names:
        old_type, new_type = _normalized(existing.field(name).type), _normalized(expected.field(name).type)
        if not old_type.equals(new_type):
            raise SchemaMismatchError(f"column {name!r} is {old_type} in the existing dataset, "
                                      f"this run writes {new_type}")
    for key in (META_TRIPLANE, META_DEPTH, META_FEATURES):
        if key not in new and key not in old:
            continue
        old_spec = TensorSpec.from_json(old[key]) if key in old else None
        new_spec = TensorSpec.from_json(new[key]) if key in new else None
        if old_spec != new_spec:
            raise SchemaMismatchError(f"{key} differs: existing {_spec_text(old_spec)}, "
                                      f"this run {_spec_text(new_spec)}")
    old_dims, new_dims = old.get(META_FACE_PARAMS_DIMS), new.get(META_FACE_PARAMS_DIMS)
    if old_dims and new_dims:
        a, b = json.loads(old_dims), json.loads(new_dims)
        if a.get("identity") is not None and b.get("identity") is not None and a != b:
            raise SchemaMismatchError(f"face_params split differs: existing {a}, this run {b}")


def _spec_text(spec: TensorSpec | None) -> str:
    return "missing" if spec is None else f"{list(spec.shape)} {spec.dtype}"
