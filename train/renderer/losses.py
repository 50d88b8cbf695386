"""The renderer's loss (AvatarArtist §3.3) and its schedule.

L = L_re + L_f + 0.1·L_tri + L_depth + L_opa + 0.01·L_adv, where L_re = LPIPS + L1 on the final and the
raw image, L_f = L1 on the composited rendering features, L_tri = L1 between the refined planes and
the clean parametric triplane placed through the target mesh, L_depth / L_opa = L1 on the neural
depth / opacity, all against the target view of the multiview set. The adversarial part (EG3D's
dual discriminator on final + raw image, camera-conditioned) starts after ``freeze_images``:

- generator term softplus(−D(fake)) through a *detached copy* of D's weights (``functional_call``),
- discriminator term softplus(D(fake.detach())) + softplus(−D(real)) + γ/2·R1 on real images,
- density regulariser on the refined planes (L1 of σ at random points and nearby points),

so one backward pass and one optimiser (the shared engine's) train both sides with the right gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from avatar4d.metrics.perceptual import build_lpips
from train.gan.losses import density_regularizer
from train.renderer.recipes import RendererLossConfig

__all__ = ["RendererLoss", "build_lpips", "density_regularizer", "phase"]


def phase(images_seen: int, config: RendererLossConfig) -> dict[str, bool | int]:
    """What is on after ``images_seen`` images: adversarial term and decoder/SR training, and the neural resolution."""
    late = images_seen >= config.freeze_images
    high = images_seen >= config.high_resolution_images
    return {"adversarial": late and config.adversarial > 0, "train_renderer_tail": late,
            "resolution": config.high_resolution if high else config.low_resolution}


class RendererLoss(nn.Module):
    def __init__(self, config: RendererLossConfig) -> None:
        super().__init__()
        self.config = config
        self.lpips = (build_lpips(config.lpips_net, config.lpips_backbone, random_backbone=config.lpips_random_backbone)
                      if config.lpips > 0 else None)

    def perceptual(self, a: Tensor, b: Tensor) -> Tensor:
        if self.lpips is None:
            return a.new_zeros(())
        size = max(a.shape[-1], self.config.lpips_min_resolution)
        if a.shape[-1] != size:
            a, b = (F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) for x in (a, b))
        return self.lpips(a, b).mean()

    def reconstruction(self, out: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
        """Unweighted terms against the target view; ``target`` has image, image_raw, features, depth,
        opacity, planes at the output's resolutions."""
        cfg = self.config
        terms = {
            "l1": F.l1_loss(out["image"], target["image"]) + F.l1_loss(out["image_raw"], target["image_raw"]),
            "features": F.l1_loss(out["features"], target["features"]),
            "triplane": F.l1_loss(out["planes"], target["planes"]),
            "depth": F.l1_loss(out["depth"], target["depth"]),
            "opacity": F.l1_loss(out["opacity"], target["opacity"]),
        }
        if cfg.lpips > 0:
            terms["lpips"] = (self.perceptual(out["image"], target["image"])
                              + self.perceptual(out["image_raw"], target["image_raw"]))
        return terms

    def adversarial(self, discriminator: nn.Module, out: dict[str, Tensor], real: Tensor, real_raw: Tensor,
                    camera: Tensor) -> dict[str, Tensor]:
        """Generator term (D's weights detached), discriminator term and R1 (γ/2 ‖∇D(real)‖²)."""
        frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
        frozen.update({name: b for name, b in discriminator.named_buffers()})
        fake_logits_g = functional_call(discriminator, frozen, (out["image"], out["image_raw"], camera))
        fake_logits_d = discriminator(out["image"].detach(), out["image_raw"].detach(), camera)
        real = real.detach().requires_grad_(True)
        real_raw = real_raw.detach().requires_grad_(True)
        real_logits = discriminator(real, real_raw, camera)
        grads = torch.autograd.grad(real_logits.sum(), [real, real_raw], create_graph=True)
        r1 = sum(g.square().sum(dim=(1, 2, 3)) for g in grads).mean()
        return {"adv_g": F.softplus(-fake_logits_g).mean(),
                "adv_d": F.softplus(fake_logits_d).mean() + F.softplus(-real_logits).mean(),
                "r1": r1, "real_logits": real_logits.detach().mean(), "fake_logits": fake_logits_d.detach().mean()}

    def total(self, terms: dict[str, Tensor]) -> Tensor:
        cfg = self.config
        weights = {"l1": cfg.l1, "lpips": cfg.lpips, "features": cfg.features, "triplane": cfg.triplane,
                   "depth": cfg.depth, "opacity": cfg.opacity, "adv_g": cfg.adversarial, "adv_d": cfg.adversarial,
                   "r1": cfg.adversarial * cfg.r1_gamma / 2, "density": cfg.density_reg}
        return sum(weights[name] * value for name, value in terms.items() if name in weights)
