"""Where driving clips come from.

- :func:`world_clips`: the ``dynamic`` sets of a factory ``multiview.lance`` (the procedural
  world's or a GAN's identities, several expressions × cameras each). Every view carries the
  coefficients and camera that made it, so they are the driving signal and the images the ground
  truth. Make the evaluation set with another run seed than the training data (other identities).
- :func:`video_clips`: a folder of videos (real data): each video is centre-cropped, resized and
  tracked (:mod:`avatar4d.tracking`, one identity per video, smoothed in time); frames without a
  face are dropped from the clip and reported.

Lance is imported only when a dataset is read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avatar4d.data.schema import MULTIVIEW, dataset_uri
from avatar4d.errors import UserError
from avatar4d.evaluation.clips import DrivingClip
from avatar4d.geometry.camera import Camera
from avatar4d.geometry.morphable import FaceParams

logger = logging.getLogger(__name__)


def world_clips(data: str | Path, *, max_identities: int | None = None, max_views: int | None = None,
                domains: list[str] | None = None) -> list[DrivingClip]:
    """One clip per dynamic multiview identity of ``<data>/multiview.lance`` (views ordered by
    expression, then camera; the first is the source portrait)."""
    import lance

    from avatar4d.data.codec import decode_png
    from avatar4d.data.schema import face_params_dims, schema_table

    uri = dataset_uri(str(data), MULTIVIEW)
    if not Path(uri).is_dir():
        raise UserError(f"no multiview set at {uri}: make one with `avatar4d factory run --multiview-identities N` "
                        "(another --seed than the training data)")
    dataset = lance.dataset(uri)
    if schema_table(dataset.schema) != MULTIVIEW:
        raise UserError(f"{uri} is not a multiview dataset")
    dims = face_params_dims(dataset.schema)
    if dims.get("identity") is None:
        raise UserError(f"{uri} does not record its head model's coefficient sizes")
    table = dataset.to_table(columns=["identity_id", "domain", "set", "identity_index", "views"],
                             filter="set = 'dynamic'")
    rows = sorted(table.to_pylist(), key=lambda row: (row["domain"], row["identity_index"]))
    if domains:
        rows = [row for row in rows if row["domain"] in domains]
    if max_identities is not None:
        rows = _spread(rows, max_identities)
    clips = []
    for row in rows:
        views = sorted(row["views"], key=lambda v: (v["expression_index"], v["camera_index"]))[:max_views]
        if len(views) < 2:
            continue
        frames = torch.stack([decode_png(v["image"]) for v in views]).float() / 255  # [T, 3, H, W]
        vectors = torch.tensor([v["face_params"] for v in views], dtype=torch.float32)
        params = FaceParams.from_vector(vectors, dims["identity"], dims["expression"])
        camera = Camera.from_label(torch.tensor([v["camera"] for v in views], dtype=torch.float32))
        clips.append(DrivingClip(name=f"{row['domain']}/{row['identity_index']}", domain=row["domain"],
                                 frames=frames, params=params, camera=camera))
    if not clips:
        raise UserError(f"{uri} holds no dynamic multiview identity with 2 or more views"
                        + (f" in domains {domains}" if domains else ""))
    return clips


def _spread(rows: list[dict], count: int) -> list[dict]:
    """``count`` rows taken round-robin over the domains (every domain represented)."""
    by_domain: dict[str, list[dict]] = {}
    for row in rows:
        by_domain.setdefault(row["domain"], []).append(row)
    picked: list[dict] = []
    while len(picked) < count and any(by_domain.values()):
        for domain in sorted(by_domain):
            if by_domain[domain] and len(picked) < count:
                picked.append(by_domain[domain].pop(0))
    return picked


def video_clips(folder: str | Path, *, resolution: int, max_frames: int = 64, tracker=None,
                domain: str = "real") -> list[DrivingClip]:
    """One clip per video in ``folder`` (sorted by name), tracked with ``tracker`` (default: the
    shipped regressor + the procedural head)."""
    from avatar4d.tracking.media import VIDEO_SUFFIXES, read_media
    from avatar4d.tracking.tracker import centre_square

    root = Path(folder)
    videos = sorted(p for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if root.is_dir() else []
    if not videos:
        raise UserError(f"no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) in {root}")
    if tracker is None:
        from avatar4d.geometry.morphable import default_head_model
        from avatar4d.tracking import RegressorDetector, Tracker

        tracker = Tracker(default_head_model(), RegressorDetector())
    clips = []
    for path in videos:
        media = read_media(path, max_frames=max_frames)
        square, _ = centre_square(media.frames)
        frames = torch.from_numpy(np.ascontiguousarray(square)).permute(0, 3, 1, 2).float() / 255
        frames = F.interpolate(frames, size=(resolution, resolution), mode="bilinear", align_corners=False,
                               antialias=True).clamp(0, 1)  # [T, 3, R, R]
        result = tracker.track(frames, video=True)
        keep = [i for i in range(frames.shape[0]) if i not in set(result.missing_frames)]
        if result.missing_frames:
            logger.warning("%s: no face in %d of %d frames; they are left out", path.name,
                           len(result.missing_frames), frames.shape[0])
        if len(keep) < 2:
            logger.warning("%s: fewer than 2 frames with a face; skipped", path.name)
            continue
        fit = result.fit
        params = FaceParams(fit.params.identity[keep].detach(), fit.params.expression[keep].detach(),
                            fit.params.jaw[keep].detach())
        clips.append(DrivingClip(name=path.stem, domain=domain, frames=frames[keep], params=params,
                                 camera=fit.camera[keep]))
    if not clips:
        raise UserError(f"no video in {root} has 2 or more frames with a face")
    return clips
