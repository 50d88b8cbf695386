"""Arrow encoding of multiview rows (one row per identity, its views in a list<struct> column)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from factory.stages.common import vector_array

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

VIEW_SCALARS = ("expression_index", "camera_index")
VIEW_BUFFERS = ("image", "depth", "opacity", "features")


def _views_array(view_type: pa.StructType, views: list[list[dict[str, Any]]]) -> pa.Array:
    """views[row][view] dicts (camera / face_params tensors, indices, encoded bytes) → list<struct>."""
    import numpy as np
    import pyarrow as pa

    flat = [view for row in views for view in row]
    children = []
    for field in view_type:
        if field.name in ("camera", "face_params"):
            values = torch.stack([v[field.name] for v in flat]) if flat else torch.empty(0, field.type.list_size)
            children.append(vector_array(values, field.type))
        elif field.name in VIEW_SCALARS:
            children.append(pa.array([int(v[field.name]) for v in flat], field.type))
        else:
            children.append(pa.array([v[field.name] for v in flat], field.type))
    struct = pa.StructArray.from_arrays(children, fields=list(view_type))
    offsets = pa.array(np.cumsum([0] + [len(row) for row in views]), pa.int32())
    return pa.ListArray.from_arrays(offsets, struct)


def multiview_record_batch(schema: pa.Schema, *, domain: str, set_name: str, chunk_id: str, indices: list[int],
                           seeds: list[int], w: Tensor, triplanes: list[bytes], views: list[list[dict[str, Any]]],
                           generator_sha256: str, factory_version: str, generator_kind: str = "gan") -> pa.RecordBatch:
    """Rows of the multiview ``schema``; ``views[i]`` lists identity i's views in (expression, camera) order."""
    import pyarrow as pa

    n = len(indices)
    if not (len(seeds) == len(triplanes) == len(views) == n == w.shape[0]):
        raise ValueError("indices, seeds, w, triplanes and views must have one entry per identity")
    views_type = schema.field("views").type
    columns = {
        "identity_id": pa.array([f"{domain}/{set_name}/{i:06d}" for i in indices], pa.string()),
        "chunk_id": pa.array([chunk_id] * n, pa.string()),
        "domain": pa.array([domain] * n, pa.string()),
        "set": pa.array([set_name] * n, pa.string()),
        "identity_index": pa.array(indices, pa.int64()),
        "seed": pa.array(seeds, pa.int64()),
        "w": vector_array(w, schema.field("w").type),
        "triplane": pa.array(triplanes, pa.large_binary()),
        "views": _views_array(views_type.value_type, views).cast(views_type),
        "generator_sha256": pa.array([generator_sha256] * n, pa.string()),
        "generator_kind": pa.array([generator_kind] * n, pa.string()),
        "factory_version": pa.array([factory_version] * n, pa.string()),
    }
    return pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)
