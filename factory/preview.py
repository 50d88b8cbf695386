"""``factory preview``: a labelled contact sheet of a factory folder (PNG).

Top block, one row per pair (``per_domain`` per domain), labelled with the domain, the sample
index and the camera (yaw/pitch in degrees): the image and the first three channels of each of the
four planes of its parametric triplane (each normalised to its own range). Bottom block, per
domain, the first dynamic multiview identity: one row of its views' images and one of their depth
maps (normalised per view, so that the geometry shows even where a tiny random GAN renders flat
colours), each column labelled with its expression and camera index. Cells are at least
:data:`PREVIEW_CELL` pixels.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avatar4d.data.schema import MULTIVIEW, PAIRS, dataset_uri
from avatar4d.errors import UserError
from avatar4d.geometry.camera import DEFAULT_ORBIT_CENTER

logger = logging.getLogger(__name__)

PREVIEW_CELL = 160  # minimum pixels per image / plane in the contact sheet
MAX_VIEWS = 8


def plane_channels_rgb(triplane: torch.Tensor) -> torch.Tensor:
    """Parametric triplane [4, C, R, R] → [4, 3, R, R] in [0, 1]: the first three channels of each
    plane, min-max normalised per plane (fewer than 3 channels are repeated)."""
    planes = triplane.float()
    rgb = planes[:, :3] if planes.shape[1] >= 3 else planes[:, :1].expand(-1, 3, -1, -1)
    low = rgb.amin(dim=(1, 2, 3), keepdim=True)
    high = rgb.amax(dim=(1, 2, 3), keepdim=True)
    return (rgb - low) / (high - low).clamp(min=1e-8)


def camera_angles(label: list[float]) -> tuple[float, float]:
    """(yaw, pitch) in degrees of a 25-d camera label: the camera's position relative to the orbit's
    centre (EG3D's cameras orbit the world origin while they look at the pivot)."""
    position = np.asarray(label[:16], dtype=np.float64).reshape(4, 4)[:3, 3] - np.asarray(DEFAULT_ORBIT_CENTER)
    radius = float(np.linalg.norm(position)) or 1.0
    return math.degrees(math.atan2(position[0], position[2])), math.degrees(math.asin(position[1] / radius))


def _cell(image: torch.Tensor, size: int) -> torch.Tensor:
    """[C, H, W] in [0, 1] (C = 1 or 3) → [3, size, size]."""
    image = image.float()
    image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
    return F.interpolate(image[None], size=(size, size), mode="nearest")[0]


def _normalised(depth: torch.Tensor, opacity: torch.Tensor | None) -> torch.Tensor:
    """A depth map [1, N, N] → [1, N, N] in [0, 1], near = bright, background (no opacity) black."""
    depth = depth.float()
    mask = (opacity.float() > 0.5) if opacity is not None else torch.ones_like(depth, dtype=torch.bool)
    if not mask.any():
        return torch.zeros_like(depth)
    low, high = depth[mask].min(), depth[mask].max()
    return torch.where(mask, 1 - (depth - low) / (high - low).clamp(min=1e-8), torch.zeros_like(depth))


def _read(uri: str, domain: str, limit: int, columns: list[str]) -> tuple[dict[str, list[Any]], Any] | None:
    from factory.sink import open_dataset

    dataset = open_dataset(uri)
    if dataset is None:
        return None
    escaped = domain.replace("'", "''")
    table = dataset.to_table(columns=columns, filter=f"domain = '{escaped}'", limit=limit,
                             blob_handling="all_binary")
    return (table.to_pydict(), dataset.schema) if table.num_rows else None


def _pairs_block(out: str | Path, domains: list[str], per_domain: int) -> np.ndarray | None:
    from avatar4d.data.codec import decode_png, decode_tensor
    from avatar4d.data.schema import tensor_spec
    from avatar4d.viz import labelled_grid

    cells, labels = [], []
    for domain in domains:
        found = _read(dataset_uri(str(out), PAIRS), domain, per_domain,
                      ["sample_index", "camera", "image", "triplane"])
        if found is None:
            continue
        rows, schema = found
        spec = tensor_spec(schema, "triplane")
        for index, image, triplane, camera in zip(rows["sample_index"], rows["image"], rows["triplane"],
                                                  rows["camera"]):
            yaw, pitch = camera_angles(camera)
            labels.append(f"{domain} #{index} yaw {yaw:+.0f} pitch {pitch:+.0f}")
            size = max(PREVIEW_CELL, decode_png(image).shape[-1])
            cells.append(_cell(decode_png(image).float() / 255, size))
            cells += [_cell(plane, size) for plane in plane_channels_rgb(decode_tensor(triplane, spec))]
    if not cells:
        return None
    columns = ["image", "plane 0 (UV)", "plane 1", "plane 2", "plane 3"]
    return labelled_grid(torch.stack(cells), nrow=5, row_labels=labels, col_labels=columns,
                         min_cell=PREVIEW_CELL, title="pairs: image and parametric triplane (first 3 channels)")


def _multiview_block(out: str | Path, domains: list[str]) -> np.ndarray | None:
    from avatar4d.data.codec import decode_png, decode_tensor
    from avatar4d.data.schema import tensor_spec
    from avatar4d.viz import labelled_grid

    cells, labels, columns = [], [], []
    for domain in domains:
        found = _read(dataset_uri(str(out), MULTIVIEW), domain, 1, ["identity_index", "set", "views"])
        if found is None:
            continue
        rows, schema = found
        spec = tensor_spec(schema, "depth")
        views = rows["views"][0][:MAX_VIEWS]
        columns = [f"expr {v['expression_index']} cam {v['camera_index']}" for v in views]
        images = [decode_png(view["image"]).float() / 255 for view in views]
        depths = [_normalised(decode_tensor(v["depth"], spec), decode_tensor(v["opacity"], spec)) for v in views]
        size = max(PREVIEW_CELL, images[0].shape[-1])
        blank = [torch.ones(3, size, size)] * (MAX_VIEWS - len(views))
        cells += [_cell(image, size) for image in images] + blank + [_cell(d, size) for d in depths] + blank
        identity = f"{domain} id {rows['identity_index'][0]} ({rows['set'][0]})"
        labels += [f"{identity} image", f"{identity} depth"]
    if not cells:
        return None
    return labelled_grid(torch.stack(cells), nrow=MAX_VIEWS, row_labels=labels, col_labels=columns,
                         min_cell=PREVIEW_CELL, title="multiview: views of one identity (image, depth)")


def _stack(blocks: list[np.ndarray]) -> np.ndarray:
    width = max(block.shape[1] for block in blocks)
    padded = [np.pad(b, ((0, 8), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks]
    return np.concatenate(padded, axis=0)


def preview(out: str | Path, out_png: str | Path, *, per_domain: int = 4, domains: list[str] | None = None) -> Path:
    """Write the contact sheet of ``out`` to ``out_png``; one-line errors for unknown domains and
    unwritable paths."""
    from PIL import Image

    from avatar4d import storage
    from factory.inspect import status

    out = out if storage.is_remote(out) else Path(out)  # a local folder or s3://bucket/prefix
    known = status(out)["tables"]
    present = sorted({key.split("/")[0] for table, info in known.items() if table in (PAIRS, MULTIVIEW)
                      for key in info["rows_by_domain"]})
    missing = sorted(set(domains or ()) - set(present))
    if missing:
        raise UserError(f"{out} holds no rows of domain(s) {', '.join(missing)}; it has {', '.join(present)}")
    names = domains or present
    blocks = [b for b in (_pairs_block(out, names, per_domain), _multiview_block(out, names)) if b is not None]
    if not blocks:
        raise UserError(f"{out} holds no rows for domains {names}")
    sheet = _stack(blocks)
    path = Path(out_png)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(path)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    logger.info("wrote a %dx%d contact sheet of %d domains to %s", sheet.shape[1], sheet.shape[0], len(names), path)
    return path
