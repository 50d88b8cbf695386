"""The VAE loss: L1 triplane + L1 depth + LPIPS on renders + latent total variation + KL.

Per micro-batch (the paper's and official code's weights 1, 1, 1, 2e-3, 1e-5). Reductions follow the
official ``contperceptual.py`` (``reduction="sum"``, the default): the L1 terms are summed over each
sample's values and averaged over the batch, as the LDM losses the release trains with do, which puts
them ~C·F·R² times above a per-element mean against LPIPS and KL; ``reduction="mean"`` (per-element
means, our earlier loss) stays selectable.

- ``triplane_l1``: |x̂ − x| over the normalised stacked triplane (what the network sees), sum / B;
- every sample gets ``views_per_sample`` random cameras in the paper's ranges; input and
  reconstruction (denormalised) are rendered by the row's own generator (decoder, renderer, mesh;
  see :mod:`train.vae.renderers`) at ``render_resolution``; ``depth_l1`` is |d̂ − d| of the depth
  maps, summed over each map and averaged over the renders; ``lpips`` the LPIPS distance of the raw
  RGB renders (upsampled to at least ``lpips_min_resolution``), averaged; the input renders carry no
  gradient;
- ``latent_tv``: total variation of the posterior mean [B, E, F, h, w]: mean |Δ| along the plane axis
  plus mean |Δ| along h: the official TV formula written for [B, C, H, W] images (differences along
  dims 2 and 3) applied to the 5-D latent, so it never looks along w;
- ``kl``: KL(q(z|x) ‖ N(0, I)) summed over the latent and averaged over the batch (the LDM
  convention the release follows).

LPIPS comes from the ``lpips`` package: its linear calibration layers ship in the wheel; the trunk
is loaded from a local torchvision weights file, or randomly initialised (``pnet_rand=True``: torchvision
builds the trunk without downloading anything).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.geometry.camera import Camera, PoseSampler
from avatar4d.metrics.perceptual import build_lpips
from avatar4d.models.vae import DiagonalGaussian
from train.vae.recipes import VAELossConfig
from train.vae.renderers import DomainRenderers

logger = logging.getLogger(__name__)


def latent_total_variation(mean: Tensor) -> Tensor:
    """Mean |Δ| along the plane axis + mean |Δ| along h of a latent [B, E, F, h, w] (see the module docstring)."""
    along_planes = (mean[:, :, 1:] - mean[:, :, :-1]).abs()       # [B, E, F-1, h, w]
    along_h = (mean[:, :, :, 1:] - mean[:, :, :, :-1]).abs()       # [B, E, F, h-1, w]
    return along_planes.mean() + along_h.mean()


class VAELoss(nn.Module):
    """Computes the loss terms of one micro-batch (see the module docstring)."""

    def __init__(self, config: VAELossConfig, renderers: DomainRenderers | None, device: torch.device) -> None:
        super().__init__()
        self.config = config
        self.renderers = renderers
        self.poses = PoseSampler(config.cameras)
        self.lpips = (build_lpips(config.lpips_net, config.lpips_backbone,
                                  random_backbone=config.lpips_random_backbone).to(device)
                      if config.lpips > 0 else None)

    def lpips_distance(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-image LPIPS [N] of RGB images in [-1, 1] [N, 3, H, W]."""
        assert self.lpips is not None
        side = max(a.shape[-1], self.config.lpips_min_resolution)
        if side != a.shape[-1]:
            a = F.interpolate(a, size=(side, side), mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=(side, side), mode="bilinear", align_corners=False)
        return self.lpips(a.float(), b.float()).reshape(-1)

    def cameras(self, count: int, generator: torch.Generator, device: torch.device) -> Camera:
        return self.poses.sample(count, generator).camera.to(device)

    def rendered_terms(self, target: Tensor, reconstruction: Tensor, shas: list[str], domains: list[str],
                       face_params: Tensor | None, generator: torch.Generator) -> dict[str, Tensor]:
        """Depth-L1 and LPIPS of renders of ``target`` vs ``reconstruction`` (stacked, data units)."""
        cfg, renderers = self.config, self.renderers
        assert renderers is not None
        batch, views = target.shape[0], cfg.views_per_sample
        cameras = self.cameras(batch * views, generator, target.device)  # sample i, view v at i * views + v
        vertices = renderers.vertices(face_params) if face_params is not None else None
        depth_sum = target.new_zeros(())
        lpips_sum = target.new_zeros(())
        for sha, rows in renderers.groups(shas).items():
            renderer = renderers.get(sha, domains[rows[0]])
            index = torch.tensor(rows, device=target.device)
            mesh = None if vertices is None else vertices[index]
            with torch.no_grad():
                planes_in = renderer.planes(target[index].float(), mesh)  # [b, 3, C, R, R]
            planes_out = renderer.planes(reconstruction[index].float(), mesh)
            view_index = (index[:, None] * views + torch.arange(views, device=target.device)).reshape(-1)
            camera = Camera(cameras.cam2world[view_index], cameras.intrinsics[view_index])
            planes_in = planes_in.repeat_interleave(views, dim=0)  # [b·v, 3, C, R, R]
            planes_out = planes_out.repeat_interleave(views, dim=0)
            with torch.no_grad():
                seen = renderer.render(planes_in, camera, cfg.render_resolution)
            made = renderer.render(planes_out, camera, cfg.render_resolution)
            if cfg.depth_l1 > 0:
                per_render = (made.depth - seen.depth).abs().flatten(1)  # [b·v, H·W]
                depth_sum = depth_sum + (per_render.sum(1) if cfg.reduction == "sum" else per_render.mean(1)).sum()
            if cfg.lpips > 0:
                lpips_sum = lpips_sum + self.lpips_distance(made.rgb, seen.rgb).sum()
        count = batch * views
        return {"depth_l1": depth_sum / count, "lpips": lpips_sum / count}

    def forward(self, target_normalized: Tensor, reconstruction_normalized: Tensor, posterior: DiagonalGaussian,
                target: Tensor, reconstruction: Tensor, shas: list[str], domains: list[str],
                face_params: Tensor | None, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Total loss (with grad) and its terms. Stacked triplanes [B, 4, C, R, R]; ``posterior`` over
        latents [B, E, F, h, w]."""
        cfg = self.config
        error = (reconstruction_normalized.float() - target_normalized.float()).abs().flatten(1)  # [B, F·C·R·R]
        terms = {"triplane_l1": error.sum(1).mean() if cfg.reduction == "sum" else error.mean(),
                 "latent_tv": latent_total_variation(posterior.mean.float()),
                 "kl": posterior.kl().float().mean()}
        if cfg.renders:
            terms.update(self.rendered_terms(target, reconstruction, shas, domains, face_params, generator))
        weights = {"triplane_l1": cfg.triplane_l1, "kl": cfg.kl, "depth_l1": cfg.depth_l1, "lpips": cfg.lpips,
                   "latent_tv": cfg.latent_tv}
        loss = sum(weights[name] * value for name, value in terms.items())
        metrics = {name: float(value.detach()) for name, value in terms.items()}
        metrics["loss"] = float(loss.detach())
        return loss, metrics
