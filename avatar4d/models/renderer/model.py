"""The motion-aware cross-domain renderer (AvatarArtist's ``TriPlaneReconstructorNeutralize``).

Call::

    out = renderer(source_image,          # [B, 3, H, W] in [-1, 1], any H = W (resized to 2·R)
                   parametric_triplane,   # [B, 4, C, R, R] de-normalised (plane 0 UV texture, 1-3 static)
                   motion,                # [B, D] driving motion embedding (MotionEncoder or PD-FGC)
                   target_mesh,           # [B, V, 3] the target expression's mesh vertices (the head model's
                                          #   topology), or its rasterization (uv_grid [B, r, r, 2], face_mask
                                          #   [B, 1, r, r]) from ``renderer.rasterize(vertices)``
                   camera,                # avatar4d Camera (B or 1) or 25-d labels [B, 25]
                   source_motion=None,    # [B, D] the source portrait's motion (neutralisation); None: zeros
                   neural_resolution=None, motion_scale=1.0, generator=None)
    out["image"]      # [B, 3, S, S] super-resolved, in [-1, 1]
    out["image_raw"]  # [B, 3, N, N] neural rendering;  out["depth"], out["opacity"]: [B, 1, N, N]
    out["features"]   # [B, C, N, N] composited rendering features;  out["planes"]: [B, 3, C, R, R]

Data flow (paper sizes: R = 256, C = 32, S = 512, N = 128):

1. The target mesh is rasterized orthographically over the face box of the frontal plane; the UV
   texture (plane 0) is resampled there and blended with the static frontal plane (+ mouth alpha):
   the rasterized texture [B, C + 1, R, R]. ``triplnae_encoder`` turns it into the face backbone's
   conditioning pyramid, ``face_backbone`` (StyleGAN2, driven by its own average w) refines the face,
   which is pasted into static plane 0 with the hole-filled mask: the target-expression parametric
   triplane [B, 3, C, R, R] (Next3D++'s conditioning, as the release's ``get_triplane``).
2. ``encoder_global`` / ``encoder_detail`` read the source image (+ coordinates) at 2R;
   ``encoder_global_latent_tri`` (3-D convs over (plane, H, W)) reads the parametric triplane.
3. ``encoder_canonical`` (ViT with the parametric features in its tokens; source motion then driving
   motion by cross-attention) and ``generator_triplane`` give the refined planes [B, 3C, R, R], fused
   with the parametric triplane in its last convolutions (``residual_fusion``, tiny: their output is added
   to the plainly composed parametric triplane through a zero-initialised last convolution).
4. Volume rendering (``decoder`` OSG MLP, 48 + 48 samples) and ``superresolution`` (StyleGAN-modulated,
   w = the face backbone's average w).

Parameter names and shapes are the release's for ``paper`` (see :mod:`avatar4d.models.renderer.convert`).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.checkpoint.pretrained import PretrainedMixin
from avatar4d.geometry.camera import Camera
from avatar4d.geometry.morphable import MorphableModel, default_head_model
from avatar4d.models.next3d.generator import MeshConditioner
from avatar4d.models.renderer.canonical import CanonicalEncoder, TriplaneDecoder
from avatar4d.models.renderer.config import RendererConfig
from avatar4d.models.renderer.encoders import DetailEncoder, GlobalEncoder, PlaneFeatureEncoder
from avatar4d.models.stylegan2 import StyleGAN2Backbone, alpha_blend_hooks
from avatar4d.models.superresolution import SuperresolutionHybrid8XDC
from avatar4d.models.vae.config import TriplaneVAEConfig
from avatar4d.models.vae.encoder import TriplaneEncoder
from avatar4d.rendering.decoder import OSGDecoder
from avatar4d.rendering.parametric import FaceBox, ParametricTriplane, blend_into_frontal_plane, mouth_alphas, resize
from avatar4d.rendering.renderer import TriplaneRenderer

logger = logging.getLogger(__name__)

OUTPUT_KEYS = ("image", "image_raw", "depth", "opacity", "features", "planes")


def as_camera(camera: Camera | Tensor) -> Camera:
    """A :class:`Camera` from a Camera or 25-d labels [B, 25]."""
    if isinstance(camera, Camera):
        return camera
    if not isinstance(camera, Tensor) or camera.ndim != 2 or camera.shape[1] != 25:
        raise ValueError(f"camera must be an avatar4d Camera or 25-d labels [B, 25], got "
                         f"{tuple(camera.shape) if isinstance(camera, Tensor) else type(camera).__name__}")
    return Camera.from_label(camera)


class MotionAwareRenderer(PretrainedMixin, nn.Module, component="motion_aware_renderer"):
    """Source portrait + parametric triplane + motion → driven, any-view images (see the module docstring)."""

    def __init__(self, config: RendererConfig, head: MorphableModel | None = None) -> None:
        super().__init__()
        cfg = self.config = config
        c, r = cfg.plane_channels, cfg.plane_resolution
        self.encoder_global = GlobalEncoder(cfg.resnet_widths, cfg.resnet_depths, cfg.aspp_channels, cfg.aspp_rates)
        self.encoder_detail = DetailEncoder(cfg.detail_channels)
        self.encoder_global_latent_tri = TriplaneEncoder(TriplaneVAEConfig(
            in_channels=c, num_planes=3, resolution=r, base_channels=cfg.tri_base_channels,
            num_downsamples=cfg.tri_downsamples, z_channels=cfg.tri_channels // 2, norm_groups=cfg.tri_norm_groups))
        self.encoder_canonical = CanonicalEncoder(cfg)
        self.generator_triplane = TriplaneDecoder(cfg)
        self.superresolution = SuperresolutionHybrid8XDC(cfg.superresolution)
        self.decoder = OSGDecoder(c, cfg.osg_hidden, c, decoder_lr_mul=cfg.decoder_lr_mul)
        fb = cfg.face_backbone
        self.face_backbone = StyleGAN2Backbone(fb)
        self.triplnae_encoder = PlaneFeatureEncoder(c, r, fb.pyramid_start, fb.channel_base, fb.channel_max)
        self.renderer = TriplaneRenderer(cfg.rendering)
        if cfg.residual_fusion:  # super-resolution starts as its bilinear skip path (torgb adds zero)
            with torch.no_grad():
                for name, parameter in self.superresolution.named_parameters():
                    if ".torgb." in f".{name}" and not name.split(".torgb.")[-1].startswith("affine"):
                        parameter.zero_()
        self.face_box = FaceBox(*cfg.face_box, resolution=256).scaled(r)
        self.mesh_conditioner = MeshConditioner(head or default_head_model(), self.face_box, cfg.rendering.box_warp,
                                                cfg.rasterizer_backend)

    @property
    def motion_dim(self) -> int:
        return self.config.motion_dim

    def average_ws(self, batch: int) -> Tensor:
        """The face backbone's average w repeated for every layer: [B, num_ws, w_dim]."""
        w_avg = self.face_backbone.mapping.w_avg  # [w_dim]
        return w_avg[None, None].expand(batch, self.face_backbone.num_ws, -1)

    def rasterize(self, vertices: Tensor) -> tuple[Tensor, Tensor]:
        """A mesh [B, V, 3] rasterized over the face box: (uv_grid [B, r, r, 2], face_mask [B, 1, r, r]).
        It depends on the mesh only, so callers that render one mesh many times can keep it."""
        return self.mesh_conditioner(vertices)

    def parametric_planes(self, parametric_triplane: Tensor, target_mesh: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """The parametric triplane [B, 4, C, R, R] placed through the target mesh (vertices or their
        :meth:`rasterize` output) → [B, 3, C, R, R]."""
        cfg = self.config
        b, c, r = parametric_triplane.shape[0], cfg.plane_channels, cfg.plane_resolution
        if parametric_triplane.shape[1:] != (4, c, r, r):
            raise ValueError(f"parametric_triplane must be [B, 4, {c}, {r}, {r}], "
                             f"got {tuple(parametric_triplane.shape)}")
        texture, static = parametric_triplane[:, 0], parametric_triplane[:, 1:]
        uv_grid, face_mask = (target_mesh if isinstance(target_mesh, tuple)
                              else self.rasterize(target_mesh))  # [B, r_f, r_f, 2], [B, 1, r_f, r_f]
        dtype = torch.promote_types(parametric_triplane.dtype, torch.float32)
        full_alpha, cond_alpha = mouth_alphas(face_mask, cfg.mouth_hole_top_rows)  # official: keeps the upper mouth
        sampled = resize(F.grid_sample(texture.to(dtype), uv_grid.to(dtype), mode="bilinear", padding_mode="zeros",
                                       align_corners=False), (r, r))  # [B, C, R, R]
        alpha = resize(face_mask, (r, r))
        static_crop = resize(self.face_box.crop(static[:, 0]).to(dtype), (r, r))
        rasterized = torch.cat([sampled * alpha + static_crop * (1 - alpha), resize(cond_alpha, (r, r))], 1)
        pyramid = self.triplnae_encoder(rasterized)  # coarsest first
        levels = [torch.cat([level, resize(cond_alpha, level.shape[-2:])], 1) for level in pyramid] + [rasterized]
        hooks = alpha_blend_hooks(levels, cfg.face_backbone.pyramid_start, r)
        face = self.face_backbone.synthesis(self.average_ws(b).to(dtype), block_hooks=hooks,
                                            noise_mode="const")  # [B, C, R, R]
        return blend_into_frontal_plane(static.to(dtype), face, full_alpha, self.face_box)  # [B, 3, C, R, R]

    def refine(self, source_image: Tensor, planes: Tensor, motion: Tensor, source_motion: Tensor | None,
               motion_scale: float = 1.0, base: Tensor | None = None) -> Tensor:
        """Source image + target-expression parametric planes [B, 3, C, R, R] + motions → refined planes.
        ``base`` [B, 3, C, R, R]: with ``residual_fusion`` the planes the decoder's output is added to
        (:meth:`composed_planes`; None: ``planes``)."""
        cfg = self.config
        b, c, r = planes.shape[0], cfg.plane_channels, cfg.plane_resolution
        if source_image.ndim != 4 or source_image.shape[1] != 3 or source_image.shape[0] != b:
            raise ValueError(f"source_image must be [{b}, 3, H, W], got {tuple(source_image.shape)}")
        if motion.shape != (b, cfg.motion_dim):
            raise ValueError(f"motion must be [{b}, {cfg.motion_dim}], got {tuple(motion.shape)}")
        source_motion = torch.zeros_like(motion) if source_motion is None else source_motion
        if source_motion.shape != motion.shape:
            raise ValueError(f"source_motion must be [{b}, {cfg.motion_dim}], got {tuple(source_motion.shape)}")
        image = resize(source_image.to(planes.dtype), (cfg.encoder_resolution, cfg.encoder_resolution))  # [B,3,2R,2R]
        features_global = self.encoder_global(image)  # [B, A, R/4, R/4]
        features_detail = self.encoder_detail(image)  # [B, D, R, R]
        tri = self.encoder_global_latent_tri(planes.transpose(1, 2))  # [B, T, 3, R/4, R/4]
        tri = tri.reshape(b, -1, *tri.shape[-2:])  # [B, T·3, R/4, R/4] ("b c f h w -> b (c f) h w")
        canonical = self.encoder_canonical(features_global, tri, motion.to(planes.dtype),
                                           source_motion.to(planes.dtype), motion_scale)  # [B, K, R, R]
        refined = self.generator_triplane(canonical, features_detail, planes.reshape(b, 3 * c, r, r))
        refined = refined.view(b, 3, c, r, r)  # [B, 3, C, R, R]
        if cfg.residual_fusion:
            refined = refined + (planes if base is None else base.to(refined.dtype))
        return refined

    def composed_planes(self, parametric_triplane: Tensor, raster: tuple[Tensor, Tensor]) -> Tensor:
        """The un-refined rendering's planes: the parametric triplane [B, 4, C, R, R] composed through the
        target mesh's rasterization without the face backbone, as the world renders it → [B, 3, C, R, R]."""
        uv_grid, face_mask = raster
        triplane = ParametricTriplane.from_stacked(parametric_triplane.float())
        return triplane.compose(uv_grid, face_mask, self.face_box)

    def forward(self, source_image: Tensor, parametric_triplane: Tensor, motion: Tensor,
                target_mesh: Tensor | tuple[Tensor, Tensor], camera: Camera | Tensor, *,
                source_motion: Tensor | None = None, neural_resolution: int | None = None,
                motion_scale: float = 1.0, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """See the module docstring for shapes; returns image, image_raw, depth, opacity, features, planes."""
        raster = target_mesh if isinstance(target_mesh, tuple) else self.rasterize(target_mesh)
        planes = self.parametric_planes(parametric_triplane, raster)  # [B, 3, C, R, R]
        base = self.composed_planes(parametric_triplane, raster) if self.config.residual_fusion else None
        refined = self.refine(source_image, planes, motion, source_motion, motion_scale, base=base)
        return self.render(refined, camera, neural_resolution=neural_resolution, generator=generator)

    def render(self, planes: Tensor, camera: Camera | Tensor, *, neural_resolution: int | None = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Volume-render planes [B, 3, C, R, R] and super-resolve (the un-refined baseline uses this too)."""
        resolution = neural_resolution or self.config.neural_resolution
        rendered = self.renderer(planes, self.decoder, as_camera(camera), resolution, generator=generator)
        ws = self.average_ws(planes.shape[0]).to(rendered.features.dtype)
        image = self.superresolution(rendered.rgb, rendered.features, ws)  # [B, 3, S, S]
        return {"image": image, "image_raw": rendered.rgb, "depth": rendered.depth, "opacity": rendered.opacity,
                "features": rendered.features, "planes": planes}
