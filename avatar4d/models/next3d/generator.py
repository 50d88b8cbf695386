"""The Next3D++ 4D GAN generator (InvertAvatar ``triplane_v20``), single-device PyTorch.

Data flow for one batch (R = plane resolution, s = pyramid start; paper: R = 256, s = 32):

1. ``backbone.mapping(z, c)`` → ws [B, num_ws, w_dim]; the same ws drive all three backbones.
2. ``texture_backbone`` (UV-space neural texture, C channels) and ``backbone`` (static triplane,
   3·C channels) each return a feature pyramid ``[img@s, x@s, x@2s, …, x@R, img@R]``.
3. The expression's UV-coordinate image (:class:`~avatar4d.geometry.uv_image.UVCoordinateImage`:
   UV coordinates + alpha over the face box at R²) is given, or made from the mesh by the head
   model's builder (:class:`MeshConditioner`; the official construction for FaceVerse v3).
4. For every pyramid level the texture is resampled at those UVs, blended by the face mask with
   the face-box crop of the static level, and given the mouth alpha as an extra channel.
5. ``face_backbone`` runs with those levels injected (skip image at s, features at s…R/2) and
   outputs the face-region features [B, C, R, R].
6. They are pasted into the face box of static plane 0 with the hole-filled mask → the
   expression-specific triplane [B, 3, C, R, R]; volume rendering at the neural resolution, then
   super-resolution.

The returned :class:`ParametricTriplane` (texture = the texture backbone's final image, static =
the static planes) is the identity's expression-independent representation that the data
factory stores.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.checkpoint.pretrained import PretrainedMixin
from avatar4d.geometry.camera import Camera
from avatar4d.geometry.morphable import MorphableModel, default_head_model
from avatar4d.geometry.raster import OrthographicView
from avatar4d.geometry.uv_image import UVCoordinateImage
from avatar4d.models.next3d.config import GeneratorConfig
from avatar4d.models.stylegan2 import StyleGAN2Backbone, alpha_blend_hooks
from avatar4d.models.superresolution import SuperresolutionHybrid8XDC
from avatar4d.rendering.decoder import OSGDecoder
from avatar4d.rendering.parametric import FaceBox, ParametricTriplane, blend_into_frontal_plane, mouth_alphas, resize
from avatar4d.rendering.renderer import TriplaneRenderer

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class GeneratorOutput:
    image: Tensor  # [B, 3, S, S] super-resolved, in [-1, 1]
    image_raw: Tensor  # [B, 3, N, N] neural rendering
    depth: Tensor  # [B, 1, N, N]
    opacity: Tensor  # [B, 1, N, N]
    features: Tensor  # [B, C, N, N] composited rendering features
    planes: Tensor  # [B, 3, C, R, R] the expression-specific triplane that was rendered
    triplane: ParametricTriplane  # expression-independent parametric triplane
    ws: Tensor  # [B, num_ws, w_dim]


def render_planes_output(model: nn.Module, planes: Tensor, triplane: ParametricTriplane, ws: Tensor, camera: Camera,
                         resolution: int, generator: torch.Generator | None = None) -> GeneratorOutput:
    """The tail every 4D generator shares: volume-render expression-specific ``planes`` [B, 3, C, R, R]
    with ``model``'s renderer and decoder, then its super-resolution (or fixed upsampler)."""
    rendered = model.renderer(planes, model.decoder, camera, resolution, generator=generator)
    image = model.superresolution(rendered.rgb, rendered.features, ws)  # [B, 3, S, S]
    return GeneratorOutput(image=image, image_raw=rendered.rgb, depth=rendered.depth, opacity=rendered.opacity,
                           features=rendered.features, planes=planes, triplane=triplane, ws=ws)


class MeshConditioner(nn.Module):
    """The head model's UV-coordinate image over the face box of the frontal plane (Next3D's
    ``uvcoords_image``), made by the builder the head model provides
    (:meth:`~avatar4d.geometry.morphable.MorphableModel.uv_image_builder`): the UV atlas with coverage
    for the procedural head, the official construction for FaceVerse v3 with its files.

    The builder holds the topology as non-persistent buffers, so the generator's state dict is the
    release's. Output rows follow the plane's rows (row 0 = the chin side, world y minimum).
    """

    def __init__(self, head: MorphableModel, face_box: FaceBox, box_warp: float, backend: str) -> None:
        super().__init__()
        self.num_vertices = head.num_vertices
        self.face_box = face_box
        x0, x1, y0, y1 = face_box.world_bounds(box_warp)
        half = (x1 - x0) / 2
        view = OrthographicView(center=((x0 + x1) / 2, (y0 + y1) / 2, 0.0), extent=(-half, half),
                                depth_range=(-box_warp, box_warp))
        self.builder = head.uv_image_builder(view, face_box.resolution, backend)

    def uv_image(self, vertices: Tensor) -> UVCoordinateImage:
        """vertices [B, V, 3] → :class:`UVCoordinateImage` (grid [B, R, R, 2], alpha [B, 1, R, R])."""
        return self.builder(vertices)

    def forward(self, vertices: Tensor) -> tuple[Tensor, Tensor]:
        """vertices [B, V, 3] → (uv grid [B, R, R, 2] in [-1, 1], face mask [B, 1, R, R])."""
        image = self.uv_image(vertices)
        return image.grid, image.alpha


class Next3DGenerator(PretrainedMixin, nn.Module, component="next3d_generator"):
    """Next3D++ generator; parameter names and shapes match the released ``G_ema`` for ``paper``."""

    kind = "gan"

    def __init__(self, config: GeneratorConfig, head: MorphableModel | None = None) -> None:
        super().__init__()
        self.config = config
        texture_cfg = config.texture_backbone()
        self.texture_backbone = StyleGAN2Backbone(texture_cfg)
        self.face_backbone = StyleGAN2Backbone(texture_cfg)
        self.backbone = StyleGAN2Backbone(config.backbone)
        self.superresolution = SuperresolutionHybrid8XDC(config.superresolution)
        self.decoder = OSGDecoder(config.plane_channels, config.decoder_hidden, config.plane_channels,
                                  decoder_lr_mul=config.decoder_lr_mul)
        self.renderer = TriplaneRenderer(config.rendering)
        self.face_box = FaceBox(*config.face_box, resolution=256).scaled(config.plane_resolution)
        self.mesh_conditioner = MeshConditioner(head or default_head_model(), self.face_box,
                                                config.rendering.box_warp, config.rasterizer_backend)
        self.num_ws = self.backbone.num_ws

    @property
    def z_dim(self) -> int:
        return self.config.backbone.z_dim

    @property
    def w_dim(self) -> int:
        return self.config.backbone.w_dim

    def identity_for_latent(self, z: Tensor, truncation_psi: float = 1.0) -> Tensor | None:
        """None: a GAN's latent does not fix the mesh's identity (the procedural world's does)."""
        return None

    # --- mapping --------------------------------------------------------------------------
    def mapping(self, z: Tensor, camera: Camera, *, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> Tensor:
        """z [B, z_dim], conditioning camera → ws [B, num_ws, w_dim]."""
        label = camera.to_label().to(z.dtype) * self.config.c_scale  # [B, 25]
        return self.backbone.mapping(z, label, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                                     update_emas=update_emas)

    # --- synthesis ------------------------------------------------------------------------
    def parametric_triplane(self, ws: Tensor, noise_mode: str = "const") -> tuple[ParametricTriplane, list, list]:
        """ws → (parametric triplane, texture pyramid, static pyramid with plane-0 images)."""
        c = self.config.plane_channels
        texture_pyramid = self.texture_backbone.synthesis(ws, return_pyramid=True, noise_mode=noise_mode)
        static_pyramid = self.backbone.synthesis(ws, return_pyramid=True, noise_mode=noise_mode)
        b = ws.shape[0]
        static = static_pyramid[-1].view(b, 3, c, *static_pyramid[-1].shape[-2:])  # [B, 3, C, R, R]
        first = static_pyramid[0]
        static_pyramid = [first.view(b, 3, c, *first.shape[-2:])[:, 0], *static_pyramid[1:-1], static[:, 0]]
        return ParametricTriplane(texture=texture_pyramid[-1], static=static), texture_pyramid, static_pyramid

    def uv_image(self, condition: Tensor | UVCoordinateImage) -> UVCoordinateImage:
        """The conditioning input: a :class:`UVCoordinateImage` as given (e.g. the official data's
        ``.npy`` through ``UVCoordinateImage.from_official``), or the head model's for vertices [B, V, 3]."""
        if isinstance(condition, UVCoordinateImage):
            res = self.face_box.resolution
            if condition.resolution != res:
                raise ValueError(f"the UV-coordinate image is {condition.resolution}², this generator takes {res}²")
            return condition
        return self.mesh_conditioner.uv_image(condition)

    def synthesis(self, ws: Tensor, camera: Camera, vertices: Tensor | UVCoordinateImage, *,
                  noise_mode: str = "const", neural_resolution: int | None = None,
                  generator: torch.Generator | None = None) -> GeneratorOutput:
        """ws [B, num_ws, w_dim], rendering camera, mesh vertices [B, V, 3] or a UV-coordinate image →
        images and triplanes."""
        triplane, texture_pyramid, static_pyramid = self.parametric_triplane(ws, noise_mode)
        condition = self.uv_image(vertices)
        uv_grid, face_mask = condition.grid, condition.alpha  # [B, R, R, 2], [B, 1, R, R]
        # The conditioning levels are prepared in (at least) float32 even under bf16 autocast: UVs
        # need the precision, and antialiased resizing has no bf16 CPU kernel.
        level_dtype = torch.promote_types(ws.dtype, torch.float32)
        uv_grid = uv_grid.to(level_dtype)
        full_alpha, cond_alpha = mouth_alphas(face_mask, self.config.mouth_hole_top_rows,
                                              self.config.hole_fill_seed)  # [B, 1, R, R] each

        levels = []
        for texture_level, static_level in zip(texture_pyramid, static_pyramid):
            res = texture_level.shape[-1]
            sampled = F.grid_sample(texture_level.to(level_dtype), uv_grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=False)  # [B, C_l, R, R]
            sampled = resize(sampled.to(level_dtype), (res, res))  # [B, C_l, r, r]
            alpha = resize(face_mask, (res, res))
            static_crop = resize(self.face_box.crop(static_level).to(level_dtype), (res, res))
            levels.append(torch.cat([sampled * alpha + static_crop * (1 - alpha), resize(cond_alpha, (res, res))], 1))
        hooks = alpha_blend_hooks(levels, self.config.backbone.pyramid_start, self.config.plane_resolution)
        face = self.face_backbone.synthesis(ws, block_hooks=hooks, noise_mode=noise_mode)  # [B, C, R, R]
        planes = blend_into_frontal_plane(triplane.static, face, full_alpha, self.face_box)  # [B, 3, C, R, R]

        resolution = neural_resolution or self.config.neural_resolution
        return render_planes_output(self, planes, triplane, ws, camera, resolution, generator)

    def forward(self, z: Tensor, camera: Camera, vertices: Tensor | UVCoordinateImage, *,
                conditioning_camera: Camera | None = None,
                truncation_psi: float = 1.0, truncation_cutoff: int | None = None, noise_mode: str = "const",
                update_emas: bool = False, neural_resolution: int | None = None,
                generator: torch.Generator | None = None) -> GeneratorOutput:
        """z [B, z_dim], rendering camera, expression mesh vertices [B, V, 3] (or their UV-coordinate
        image) → :class:`GeneratorOutput`.

        ``conditioning_camera`` (default: the rendering camera) conditions the mapping network, as
        EG3D's generator pose conditioning does.
        """
        conditioning = camera if conditioning_camera is None else conditioning_camera
        ws = self.mapping(z, conditioning, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, camera, vertices, noise_mode=noise_mode, neural_resolution=neural_resolution,
                              generator=generator)
