"""The fine-tune's losses and augmentation, checked by their definitions (CPU, no Ray)."""

from __future__ import annotations

import pytest
import torch

from avatar4d.models.discriminator import DISCRIMINATOR_PRESETS, DualDiscriminator
from train.gan.augment import AdaptiveProbability, AugmentPipe
from train.gan.losses import (
    blur_sigma,
    density_regularizer,
    discriminator_loss,
    generator_loss,
    r1_from_logits,
    statistics_distance,
)


@pytest.fixture(scope="module")
def discriminator() -> DualDiscriminator:
    torch.manual_seed(0)
    config = DISCRIMINATOR_PRESETS.get("tiny", conv_clamp=None)
    return DualDiscriminator(config).double().eval()


def test_r1_penalty_matches_a_finite_difference_of_the_discriminator(discriminator):
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 64, 64, generator=gen, dtype=torch.float64) * 2 - 1
    raw = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1
    camera = torch.randn(2, 25, generator=gen, dtype=torch.float64)
    x, r = image.clone().requires_grad_(True), raw.clone().requires_grad_(True)
    penalty = r1_from_logits(discriminator(x, r, camera), x, r)  # [2]
    grad_x, grad_r = torch.autograd.grad(discriminator(x, r, camera).sum(), [x, r])
    eps = 3e-3  # the epilogue computes in float32 (as EG3D's): its rounding bounds how small a step can be
    for b in range(2):
        norm = (grad_x[b].square().sum() + grad_r[b].square().sum()).sqrt()
        ux, ur = torch.zeros_like(image), torch.zeros_like(raw)
        ux[b], ur[b] = grad_x[b] / norm, grad_r[b] / norm  # unit step along sample b's gradient
        with torch.no_grad():
            # the sum over the batch: minibatch-std couples the samples, as in the penalty's gradient
            plus = discriminator(image + eps * ux, raw + eps * ur, camera).sum()
            minus = discriminator(image - eps * ux, raw - eps * ur, camera).sum()
        slope = (plus - minus) / (2 * eps)  # = ‖∇D‖ along the gradient direction
        assert float(penalty[b].detach()) == pytest.approx(float(slope) ** 2, rel=5e-3)


def test_logistic_losses_follow_their_definitions():
    real, fake = torch.tensor([[2.0], [0.0]]), torch.tensor([[-1.0], [3.0]])
    softplus = torch.nn.functional.softplus
    assert float(generator_loss(fake)) == pytest.approx(float(softplus(-fake).mean()))
    assert float(discriminator_loss(real, fake)) == pytest.approx(float(softplus(fake).mean() + softplus(-real).mean()))
    assert float(generator_loss(torch.full((4, 1), 5.0))) < float(generator_loss(torch.full((4, 1), -5.0)))


def test_density_regulariser_is_zero_for_a_uniform_field_and_positive_for_a_rough_one():
    from avatar4d.rendering.decoder import OSGDecoder

    torch.manual_seed(0)
    decoder = OSGDecoder(8, 16, 8)
    flat = torch.ones(1, 3, 8, 32, 32) * 0.3
    rough = torch.randn(1, 3, 8, 32, 32) * 3
    kwargs = dict(convention="eg3d", box_warp=1.0, points=256, p_dist=0.02, generator=torch.Generator().manual_seed(0))
    # points near the box edge read zero padding: keep them inside by a margin through box_warp
    assert float(density_regularizer(flat, decoder, **{**kwargs, "box_warp": 1.0})) < 0.05 * float(
        density_regularizer(rough, decoder, **kwargs))


def test_blur_fades_linearly_to_zero():
    assert blur_sigma(0, 10.0, 1000) == 10.0
    assert blur_sigma(500, 10.0, 1000) == pytest.approx(5.0)
    assert blur_sigma(1000, 10.0, 1000) == 0.0 and blur_sigma(5000, 10.0, 1000) == 0.0
    assert blur_sigma(10, 0.0, 1000) == 0.0


def test_augmentations_flip_translate_and_recolour_per_sample():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(16, 6, 32, 32, generator=gen) * 2 - 1
    assert torch.equal(AugmentPipe()(images, 0.0, gen), images)
    flipped = AugmentPipe(translate=False, color=False)(images, 1.0, gen)
    assert torch.equal(flipped, images.flip(-1))
    shifted = AugmentPipe(xflip=False, color=False)(images, 1.0, torch.Generator().manual_seed(3))
    moved = [not torch.equal(shifted[i], images[i]) for i in range(16)]
    assert sum(moved) >= 12  # integer shifts (a few may draw 0 px)
    centre = shifted[:, :, 8:24, 8:24]  # an integer shift moves pixels: values found in the source
    assert all(torch.isin(centre[i], images[i]).float().mean() > 0.99 for i in range(16))
    half = AugmentPipe(xflip=False, translate=False)(images, 0.5, torch.Generator().manual_seed(4))
    changed = sum(not torch.equal(half[i], images[i]) for i in range(16))
    assert changed >= 10  # brightness, contrast and saturation each fire per sample with p = 0.5
    stacked = AugmentPipe()(images, 1.0, gen)  # both stacked images get the same transform
    assert stacked.shape == images.shape


def test_ada_p_rises_when_the_discriminator_overfits_and_falls_otherwise():
    p = torch.zeros(1)
    ada = AdaptiveProbability(p, target=0.6, interval=4, speed_images=1000)
    for step in range(1, 9):
        ada.accumulate(torch.full((8, 1), 2.0))  # D is sure every real image is real: overfitting
        ada.maybe_adjust(step, images_per_step=8)
    assert float(p) == pytest.approx(2 * 8 * 4 / 1000)
    for step in range(9, 13):
        ada.accumulate(torch.tensor([[1.0], [-1.0]] * 4))  # r_t = 0 < target
        ada.maybe_adjust(step, images_per_step=8)
    assert float(p) == pytest.approx(8 * 4 / 1000)


def test_image_statistics_tell_domains_apart():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(8, 3, 16, 16, generator=gen) * 0.2 - 0.8
    b = torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1
    assert statistics_distance(a, a) == 0.0
    assert statistics_distance(a, b) > 0.5
