"""Face-landmark conditioning images for the landmark ControlNet, drawn from projected mesh landmarks.

The official face ControlNet (ControlNet's ``mediapipe_face`` annotator, as AvatarArtist uses)
sees MediaPipe face-mesh contours on black: face oval, brows, eyes and lips as polylines, each
region in its own colour (RGB below, the annotator's ``DrawingSpec`` colours; iris circles are
not drawn here, the 68-point layout has no irises). Our heads carry the 68 iBUG landmarks
(:mod:`avatar4d.geometry.morphable.landmarks`), so the same regions are drawn from them: the jaw
contour stands in for the face oval, the nose is left out as the annotator leaves it out. The
subject's right eye and brow (iBUG 36-41, 17-21; image left) take MediaPipe's "right" colours.

Lines are ``thickness`` px wide (the annotator: 2 px at 512²; scaled with the image) and every
landmark is also marked by a dot of its region's colour, so a landmark's pixel holds its colour
exactly. Pure torch (no OpenCV/MediaPipe at run time): lines are rasterised by dense sampling
along each segment, which is exact enough for conditioning images and runs batched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: region → (iBUG indices in drawing order, closed polyline, RGB colour)
REGIONS: dict[str, tuple[tuple[int, ...], bool, tuple[int, int, int]]] = {
    "face_oval": (tuple(range(0, 17)), False, (10, 200, 10)),
    "right_brow": (tuple(range(17, 22)), False, (10, 220, 180)),
    "left_brow": (tuple(range(22, 27)), False, (180, 220, 10)),
    "right_eye": (tuple(range(36, 42)), True, (10, 200, 180)),
    "left_eye": (tuple(range(42, 48)), True, (180, 200, 10)),
    "outer_lips": (tuple(range(48, 60)), True, (10, 180, 10)),
    "inner_lips": (tuple(range(60, 68)), True, (10, 180, 10)),
}
NUM_LANDMARKS = 68


def drawn_landmarks() -> list[int]:
    """The iBUG landmarks the image shows (all but the nose, 27-35)."""
    return sorted(i for indices, _, _ in REGIONS.values() for i in indices)


def landmark_colors() -> Tensor:
    """[68, 3] uint8 colour of each landmark's region (0 for the undrawn nose)."""
    colors = torch.zeros(NUM_LANDMARKS, 3, dtype=torch.uint8)
    for indices, _, color in REGIONS.values():
        colors[list(indices)] = torch.tensor(color, dtype=torch.uint8)
    return colors


def default_thickness(resolution: int) -> int:
    """The annotator's 2 px at 512², scaled (at least 1 px)."""
    return max(1, round(2 * resolution / 512))


def _segments(points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """points [B, 68, 2] → segment starts, ends [B, S, 2] and colours [S, 3] of every region."""
    starts, ends, colors = [], [], []
    for indices, closed, color in REGIONS.values():
        order = list(indices) + ([indices[0]] if closed else [])
        starts.append(points[:, order[:-1]])
        ends.append(points[:, order[1:]])
        colors.append(torch.tensor(color, dtype=torch.uint8).expand(len(order) - 1, 3))
    return torch.cat(starts, 1), torch.cat(ends, 1), torch.cat(colors)


def _stamp(image: Tensor, centers: Tensor, colors: Tensor, radius: float) -> None:
    """Paint discs of ``radius`` px at ``centers`` [B, N, 2] (x, y px) with ``colors`` [N, 3], in order."""
    b, _, h, w = image.shape
    reach = math.ceil(radius)
    offsets = torch.stack(torch.meshgrid(torch.arange(-reach, reach + 1), torch.arange(-reach, reach + 1),
                                         indexing="xy"), -1).reshape(-1, 2)  # [K, 2] (dx, dy)
    offsets = offsets[(offsets.float().square().sum(-1) <= radius ** 2 + 1e-6)]
    pixels = centers.round().long()[:, :, None, :] + offsets[None, None]  # [B, N, K, 2]
    inside = (pixels[..., 0] >= 0) & (pixels[..., 0] < w) & (pixels[..., 1] >= 0) & (pixels[..., 1] < h)
    batch = torch.arange(b)[:, None, None].expand_as(inside)
    color = colors[None, :, None, :].expand(b, -1, pixels.shape[2], 3)  # [B, N, K, 3]
    flat = image.permute(0, 2, 3, 1)  # [B, H, W, 3] view
    # later entries overwrite earlier ones: advanced-index assignment keeps the last write per pixel
    flat[batch[inside], pixels[..., 1][inside], pixels[..., 0][inside]] = color[inside]


def draw_landmark_image(points: Tensor, resolution: int, *, thickness: int | None = None,
                        visible: Tensor | None = None) -> Tensor:
    """Landmark points [B, 68, 2] in normalised image coordinates (x right, y down, [0, 1] across the
    image) → conditioning images uint8 [B, 3, R, R] (black background, coloured contours and dots).

    ``visible`` [B, 68] bool (optional): landmarks marked False are treated as missing (their
    segments and dots are skipped, e.g. for faces turned away)."""
    if points.ndim != 3 or points.shape[1:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"points must be [B, {NUM_LANDMARKS}, 2], got {tuple(points.shape)}")
    b = points.shape[0]
    thickness = default_thickness(resolution) if thickness is None else thickness
    radius = max(0.5, thickness / 2)
    px = points.detach().float().cpu() * resolution - 0.5  # pixel centres at integers
    image = torch.zeros(b, 3, resolution, resolution, dtype=torch.uint8)
    keep = torch.ones(b, NUM_LANDMARKS, dtype=torch.bool) if visible is None else visible.cpu().bool()
    starts, ends, colors = _segments(px)
    start_ok, end_ok, _ = _segments(keep[..., None].float())  # [B, S, 1] each
    seg_ok = (start_ok[..., 0] > 0) & (end_ok[..., 0] > 0)  # [B, S] both ends visible
    length = (ends - starts).norm(dim=-1).amax().item() if starts.numel() else 0.0
    steps = max(2, math.ceil(length * 2) + 1)  # samples every half pixel along the longest segment
    t = torch.linspace(0, 1, steps)[None, None, :, None]
    samples = starts[:, :, None] + (ends - starts)[:, :, None] * t  # [B, S, T, 2]
    samples = torch.where(seg_ok[:, :, None, None], samples, torch.full_like(samples, -1e6))
    line_colors = colors[:, None].expand(-1, steps, 3).reshape(-1, 3)
    _stamp(image, samples.reshape(b, -1, 2), line_colors, radius)
    dots = torch.where(keep[..., None], px, torch.full_like(px, -1e6))
    order = drawn_landmarks()
    _stamp(image, dots[:, order], landmark_colors()[order], radius)
    return image
