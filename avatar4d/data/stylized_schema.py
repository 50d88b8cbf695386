"""Arrow schema of the stylize stage's output, ``<out>/stylized.lance`` (one row per source portrait
and domain), and of the source portraits it reads.

Source portraits (any Lance dataset with these columns; the factory's ``pairs.lance`` of the
``realistic`` domain is one, and so is a dataset made from ``avatar4d track`` results):

- ``sample_id`` (string): a stable id of the portrait;
- ``image`` (binary): PNG, square, RGB;
- ``camera`` (25 float32): the EG3D label of the portrait's camera (16 cam2world + 9 normalised
  intrinsics, ``tracking.json``'s ``camera.label25``);
- ``face_params`` (float32 vector): identity ++ expression ++ 3 jaw values of the head model
  (``tracking.json``'s ``coefficients``), the split recorded under the schema metadata key
  ``avatar4d.face_params_dims``.

A stylized row keeps the source's mesh (``face_params``) and camera unchanged, as the paper reuses
the source photo's 3DMM mesh and camera for its stylized image. pyarrow is imported inside the
functions, so ``avatar4d`` imports without it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from avatar4d.data.schema import (
    CAMERA_LABEL_DIM,
    META_FACE_PARAMS_DIMS,
    META_SCHEMA_VERSION,
    META_TABLE,
    SCHEMA_VERSION,
    SchemaMismatchError,
    _face_dims_json,
    schema_metadata,
)

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

STYLIZED = "stylized"
SOURCE_COLUMNS = ("sample_id", "image", "camera", "face_params")
META_STYLIZER_SHA256 = "avatar4d.stylizer_sha256"
META_STYLIZE_CONFIG = "avatar4d.stylize_config"
META_IMAGE = "avatar4d.image"


def stylized_uri(out: str) -> str:
    """``<out>/stylized.lance``."""
    return f"{str(out).rstrip('/')}/{STYLIZED}.lance"


def stylized_schema(*, face_params_dim: int, identity_dim: int | None, image_resolution: int,
                    extra_metadata: dict[str, str] | None = None) -> pa.Schema:
    """One stylized portrait per row: the source's id, camera and face parameters, the stylized PNG,
    the domain and the settings that made it (prompt, SDEdit strength, ControlNet scale, seed)."""
    import pyarrow as pa

    fields = [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("camera", pa.list_(pa.float32(), CAMERA_LABEL_DIM), nullable=False),
        pa.field("face_params", pa.list_(pa.float32(), face_params_dim), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("strength", pa.float32(), nullable=False),
        pa.field("controlnet_scale", pa.float32(), nullable=False),
        pa.field("stylizer_sha256", pa.string(), nullable=False),
    ]
    meta = {META_SCHEMA_VERSION: str(SCHEMA_VERSION), META_TABLE: STYLIZED,
            META_FACE_PARAMS_DIMS: _face_dims_json(face_params_dim, identity_dim),
            META_IMAGE: json.dumps({"format": "png", "resolution": image_resolution, "channels": 3})}
    meta.update(extra_metadata or {})
    return pa.schema(fields, metadata={k.encode(): v.encode() for k, v in meta.items()})


def check_source_schema(schema: pa.Schema, where: str) -> dict[str, int | None]:
    """The face-parameter split of a source-portrait dataset (one-line errors when columns are missing)."""
    missing = [name for name in SOURCE_COLUMNS if name not in schema.names]
    if missing:
        raise SchemaMismatchError(f"{where} is not a source-portrait dataset: it lacks the columns {missing} "
                                  f"(needs {list(SOURCE_COLUMNS)})")
    raw = schema_metadata(schema).get(META_FACE_PARAMS_DIMS)
    if raw is None:
        raise SchemaMismatchError(f"{where} does not record how face_params splits (schema metadata "
                                  f"{META_FACE_PARAMS_DIMS})")
    return json.loads(raw)
