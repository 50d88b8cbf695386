"""Parametric triplanes (Next3D): a static triplane plus a UV-space neural texture.

A parametric triplane holds 4 planes of C channels at R×R per identity, independent of the
expression: plane 0 is the neural texture in the morphable model's UV space (the dynamic part),
planes 1–3 are the static triplane (96 backbone channels viewed as 3 × 32). To render an
expression, the expression's mesh is rasterized orthographically onto the frontal plane so that
every pixel of the face box knows the UV coordinate of the surface it sees; the texture is
resampled there and alpha-blended over the static frontal plane (:meth:`ParametricTriplane.compose`).

The face box is where the official Next3D++ code pastes the face: rows 57:185, columns 64:192 of
a 256² plane (scaled to other resolutions). Rows of a plane follow grid_sample's y axis, so with
plane 0 sampled at (x, y) row 0 is world y = −box_warp/2 (the chin side).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

FACE_BOX_256 = (57, 185, 64, 192)  # row0, row1, col0, col1 on a 256² plane (official Next3D++)


@dataclasses.dataclass(frozen=True)
class FaceBox:
    """A window of the frontal plane in pixels (``rows`` and ``cols`` half-open) at ``resolution``."""

    row0: int
    row1: int
    col0: int
    col1: int
    resolution: int

    @classmethod
    def official(cls, resolution: int = 256) -> FaceBox:
        scale = resolution / 256
        r0, r1, c0, c1 = (round(v * scale) for v in FACE_BOX_256)
        return cls(r0, r1, c0, c1, resolution)

    def scaled(self, resolution: int) -> FaceBox:
        scale = resolution / self.resolution
        return FaceBox(round(self.row0 * scale), round(self.row1 * scale), round(self.col0 * scale),
                       round(self.col1 * scale), resolution)

    @property
    def size(self) -> tuple[int, int]:
        return self.row1 - self.row0, self.col1 - self.col0

    def world_bounds(self, box_warp: float = 1.0) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) in world units of the window's outer pixel edges, for a
        frontal plane sampled at (x, y) with ``align_corners=False``."""
        half = box_warp / 2
        to_world = lambda pixel: (pixel / self.resolution * 2 - 1) * half  # noqa: E731
        return to_world(self.col0), to_world(self.col1), to_world(self.row0), to_world(self.row1)

    def crop(self, plane: Tensor) -> Tensor:
        """[..., R, R] → [..., rows, cols] (the plane must be at this box's resolution)."""
        if plane.shape[-1] != self.resolution:
            return self.scaled(plane.shape[-1]).crop(plane)
        return plane[..., self.row0:self.row1, self.col0:self.col1]

    def paste(self, window: Tensor, resolution: int | None = None) -> Tensor:
        """Resize ``window`` [B, C, h, w] to the box and place it on a zero plane [B, C, R, R]."""
        box = self if resolution is None else self.scaled(resolution)
        out = window.new_zeros(*window.shape[:-2], box.resolution, box.resolution)
        out[..., box.row0:box.row1, box.col0:box.col1] = resize(window, box.size)
        return out


def resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bilinear resize of [B, C, H, W] (what the official code uses everywhere)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


HOLE_FILL_SEEDS = ("corner", "border")


def fill_holes(mask: Tensor, max_iterations: int | None = None, seed: str = "corner") -> tuple[Tensor, Tensor]:
    """Fill the holes of a face mask [B, 1, H, W] (values in [0, 1]).

    Background is what a flood fill through pixels below 1 reaches (4-connected); every other pixel
    below 1 is a hole (the mouth cavity of a mesh with an open mouth). Returns ``(filled, holes)``
    with ``filled = clamp(mask + holes, 0, 1)``; ``holes`` is 1 − mask inside holes.

    ``seed="corner"`` (default): the official ``fill_mouth`` (InvertAvatar
    ``training_avatar_texture/volumetric_rendering/renderer.py``: ``cv2.floodFill`` from pixel
    (0, 0), fixed range [v₀, v₀ + 254/255] of the corner value v₀), which the released GANs were
    trained with, so a background region that touches the border but not the corner counts as a
    hole. ``seed="border"``: seed from every border pixel below 1 (our earlier behaviour; the same for
    face renders whose background is connected). Written with torch instead of OpenCV (not a
    dependency here), batched and on the tensor's device.
    """
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be [B, 1, H, W], got {tuple(mask.shape)}")
    if seed not in HOLE_FILL_SEEDS:
        raise ValueError(f"seed must be one of {list(HOLE_FILL_SEEDS)}, got {seed!r}")
    open_pixels = mask < 1.0  # [B,1,H,W] bool
    reached = torch.zeros_like(open_pixels)
    if seed == "corner":
        corner = mask[..., :1, :1]  # [B, 1, 1, 1]: cv2's fixed range starts at the seed's value
        open_pixels = open_pixels & (mask >= corner)
        reached[..., 0, 0] = open_pixels[..., 0, 0]
    else:
        reached[..., 0, :] = open_pixels[..., 0, :]
        reached[..., -1, :] = open_pixels[..., -1, :]
        reached[..., :, 0] |= open_pixels[..., :, 0]
        reached[..., :, -1] |= open_pixels[..., :, -1]
    limit = max_iterations or mask.shape[-1] * mask.shape[-2]
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], device=mask.device)[None, None]
    for step in range(limit):
        grown = (F.conv2d(reached.float(), cross, padding=1) > 0) & open_pixels
        # check for convergence every few steps; the flood front moves one pixel per step
        if step % 8 == 7 and torch.equal(grown, reached):
            break
        reached = grown
    holes = torch.where((mask < 1.0) & ~reached, 1.0 - mask, torch.zeros_like(mask))
    return (mask + holes).clamp(0, 1), holes


def mouth_alphas(face_mask: Tensor, top_rows_256: int, seed: str = "corner") -> tuple[Tensor, Tensor]:
    """Face mask [B, 1, R, R] of the face-box render → (full alpha, conditioning alpha), both [B, 1, R, R].

    The official ``rasterize`` (InvertAvatar ``training_avatar_texture/triplane_v20.py:322-326``):
    ``full_alpha, mouth = fill_mouth(alpha)``; ``upper_mouth_mask[:, :, :87] = 0``; conditioning alpha
    = clamp(alpha + upper_mouth_mask, 0, 1). The render's rows run chin → forehead (row 0 = the chin
    side), so zeroing the *first* ``top_rows_256`` rows (scaled from 256 to R) drops the hole rows on
    the chin side and keeps the upper mouth cavity.
    """
    full_alpha, holes = fill_holes(face_mask, seed=seed)
    top = round(top_rows_256 * face_mask.shape[-2] / 256)
    mouth = holes.clone()
    if top > 0:
        mouth[..., :top, :] = 0
    return full_alpha, (face_mask + mouth).clamp(0, 1)


@dataclasses.dataclass
class ParametricTriplane:
    """``texture`` [B, C, R, R] (UV space) and ``static`` [B, 3, C, R, R] (planes 1–3)."""

    texture: Tensor
    static: Tensor

    def __post_init__(self) -> None:
        if self.static.ndim != 5 or self.static.shape[1] != 3:
            raise ValueError(f"static planes must be [B, 3, C, R, R], got {tuple(self.static.shape)}")
        if self.texture.shape != self.static[:, 0].shape:
            raise ValueError(f"texture {tuple(self.texture.shape)} must match one static plane "
                             f"{tuple(self.static[:, 0].shape)}")

    @property
    def batch_size(self) -> int:
        return self.static.shape[0]

    @property
    def channels(self) -> int:
        return self.static.shape[2]

    @property
    def resolution(self) -> int:
        return self.static.shape[-1]

    def stacked(self) -> Tensor:
        """The stored form [B, 4, C, R, R]: plane 0 is the texture, planes 1–3 the static triplane."""
        return torch.cat([self.texture[:, None], self.static], dim=1)

    @classmethod
    def from_stacked(cls, planes: Tensor) -> ParametricTriplane:
        if planes.ndim == 4:
            planes = planes[None]
        if planes.ndim != 5 or planes.shape[1] != 4:
            raise ValueError(f"a stacked parametric triplane is [B, 4, C, R, R], got {tuple(planes.shape)}")
        return cls(texture=planes[:, 0], static=planes[:, 1:])

    def to(self, *args, **kwargs) -> ParametricTriplane:
        return ParametricTriplane(self.texture.to(*args, **kwargs), self.static.to(*args, **kwargs))

    def compose(self, uv_grid: Tensor, face_mask: Tensor, face_box: FaceBox | None = None) -> Tensor:
        """Expression-specific renderable triplane [B, 3, C, R, R].

        ``uv_grid`` [B, h, w, 2] (grid_sample coordinates in [−1, 1]) and ``face_mask`` [B, 1, h, w]
        come from rasterizing the expression's mesh orthographically over ``face_box`` (see
        :func:`avatar4d.geometry.raster.render_uv_to_plane`). The texture is sampled there, the
        mask's holes (an open mouth) are filled, and the result is alpha-blended over static plane 0
        inside the face box; planes 1 and 2 are unchanged. Holes are found from the whole border (not the
        official corner seed): this composition has no face backbone, so it is ours, not the release's,
        and the procedural head may span the box from top to bottom, which would cut the background in two.
        """
        box = (face_box or FaceBox.official()).scaled(self.resolution)
        sampled = F.grid_sample(self.texture, uv_grid.to(self.texture.dtype), mode="bilinear",
                                padding_mode="zeros", align_corners=False)  # [B, C, h, w]
        alpha, _ = fill_holes(face_mask.to(self.texture.dtype), seed="border")
        return blend_into_frontal_plane(self.static, sampled, alpha, box)


def blend_into_frontal_plane(static: Tensor, window: Tensor, alpha: Tensor, box: FaceBox) -> Tensor:
    """Paste ``window`` [B, C, h, w] with ``alpha`` [B, 1, h, w] into the face box of static plane 0:
    ``plane0 = window·α + plane0·(1 − α)`` after both are resized to the box (antialiased bilinear)
    and placed on the plane; outside the box α = 0. Returns [B, 3, C, R, R]."""
    box = box.scaled(static.shape[-1])
    window_full = box.paste(window)  # [B, C, R, R]
    alpha_full = box.paste(alpha)  # [B, 1, R, R]
    frontal = window_full * alpha_full + static[:, 0] * (1 - alpha_full)
    return torch.cat([frontal[:, None], static[:, 1:]], dim=1)
