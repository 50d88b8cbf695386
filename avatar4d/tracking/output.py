"""Files of a tracking run: ``tracking.json`` (per-frame cameras, coefficients, landmarks) and
overlays a person checks at a glance (detected landmarks green, the fitted model's red):
``overlay.png`` (a labelled contact sheet of up to 16 frames) and, for videos, ``overlay.mp4``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar4d.tracking.tracker import TrackResult

SHEET_FRAMES = 16


def _rounded(values: Tensor, digits: int = 5) -> Any:
    return [_rounded(v, digits) for v in values] if values.ndim else (
        None if not math.isfinite(float(values)) else round(float(values), digits))


def frame_records(result: TrackResult, head_name: str, size: int) -> list[dict[str, Any]]:
    """One JSON-ready record per frame; pixel landmarks are in the (square) tracked frame of ``size`` px."""
    fit, det = result.fit, result.detections
    label = fit.camera.to_label()  # [N, 25]
    records = []
    for i in range(det.present.shape[0]):
        record: dict[str, Any] = {"frame": i, "face": bool(det.present[i]), "face_score": _rounded(det.score[i], 4)}
        if det.present[i]:
            record.update({
                "camera": {"yaw": _rounded(fit.pose.yaw[i]), "pitch": _rounded(fit.pose.pitch[i]),
                           "roll": _rounded(fit.pose.roll[i]), "translation": _rounded(fit.pose.translation[i]),
                           "label25": _rounded(label[i], 6)},
                "coefficients": {"head": head_name, "identity": _rounded(fit.params.identity[i]),
                                 "expression": _rounded(fit.params.expression[i]), "jaw": _rounded(fit.params.jaw[i])},
                "landmarks_detected_px": _rounded(det.landmarks[i] * size, 2),
                "landmarks_fitted_px": _rounded(fit.landmarks[i] * size, 2),
                "fit_error_px512": _rounded(fit.error_px[i], 3),
            })
        records.append(record)
    return records


def write_json(path: Path, result: TrackResult, *, source: Path, head_name: str, size: int,
               crop: tuple[int, int, int], fps: float | None, detector: str, undecodable: list[int]) -> Path:
    document = {
        "source": str(source), "kind": "video" if result.video else "image", "fps": fps, "head": head_name,
        "detector": detector, "frames": int(result.detections.present.shape[0]),
        "crop_top_left_side": list(crop), "frame_size_px": size,
        "missing_frames": result.missing_frames, "undecodable_packets": undecodable,
        "conventions": "camera: EG3D/OpenCV cam2world (label25 = 16 cam2world + 9 normalised intrinsics); "
                       "yaw/pitch/roll as avatar4d.geometry.camera.orbit_camera, translation in the camera frame; "
                       "landmarks: 68 iBUG points, pixels of the cropped square frame (x right, y down)",
        "per_frame": frame_records(result, head_name, size),
    }
    path.write_text(json.dumps(document, indent=1))
    return path


def draw_overlays(frames: np.ndarray, result: TrackResult, min_size: int = 256) -> np.ndarray:
    """Frames [N, S', S', 3] uint8 (enlarged to ``min_size`` if smaller) with detected (green) and fitted (red)
    landmarks; frames without a face get a red cross."""
    from PIL import Image, ImageDraw

    size = max(min_size, frames.shape[1])
    radius = max(1.5, size / 200)
    out = []
    for i, frame in enumerate(frames):
        image = Image.fromarray(frame).resize((size, size), Image.BILINEAR)
        draw = ImageDraw.Draw(image)
        if not result.detections.present[i]:
            width = max(1, size // 64)
            draw.line([(0, 0), (size - 1, size - 1)], fill=(255, 0, 0), width=width)
            draw.line([(0, size - 1), (size - 1, 0)], fill=(255, 0, 0), width=width)
        else:
            pairs = ((result.detections.landmarks[i], (0, 255, 0)), (result.fit.landmarks[i], (255, 0, 0)))
            for points, colour in pairs:
                for x, y in (points * size).tolist():
                    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
        out.append(np.asarray(image))
    return np.stack(out)


def write_sheet(path: Path, overlays: np.ndarray, result: TrackResult, title: str) -> Path:
    """A labelled contact sheet of up to 16 evenly spaced overlay frames (frame number, fitted yaw/pitch)."""
    from PIL import Image, ImageDraw

    from avatar4d.viz import labelled_grid

    count = overlays.shape[0]
    picks = np.unique(np.linspace(0, count - 1, min(count, SHEET_FRAMES)).round().astype(int))
    cell = overlays.shape[1]
    cells = []
    for i in picks:
        image = Image.fromarray(overlays[i])
        if result.detections.present[i]:
            yaw, pitch = (math.degrees(float(v[i])) for v in (result.fit.pose.yaw, result.fit.pose.pitch))
            text = f"#{i} yaw {yaw:+.0f} pitch {pitch:+.0f} err {float(result.fit.error_px[i]):.1f}px"
        else:
            text = f"#{i} NO FACE"
        draw = ImageDraw.Draw(image)
        draw.rectangle([0, 0, cell, 13], fill=(0, 0, 0))
        draw.text((3, 1), text, fill=(255, 255, 255))
        cells.append(np.asarray(image))
    images = torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2).float() / 255
    columns = min(4, len(picks))
    sheet = labelled_grid(images, nrow=columns, title=title, min_cell=cell)
    Image.fromarray(sheet).save(path)
    return path
