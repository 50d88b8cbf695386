"""Triplane VAE posterior (KL, sampling, clamping) and latent layouts (stacked / VAE / DiT, scale)."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from avatar4d.models.vae import (
    LATENT_SCALE_FACTOR,
    DiagonalGaussian,
    from_dit_tokens,
    scale_latent,
    stacked_to_vae_layout,
    to_dit_tokens,
    unscale_latent,
    vae_layout_to_stacked,
)


def _moments(seed: int = 0, shape=(2, 4, 2, 3, 3)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mean = 0.7 * torch.randn(shape, generator=g)
    logvar = 0.6 * torch.randn(shape, generator=g) - 0.3
    return torch.cat([mean, logvar], dim=1)


def test_kl_to_standard_normal_equals_torch_distributions():
    posterior = DiagonalGaussian(_moments())
    expected = kl_divergence(Normal(posterior.mean, posterior.std), Normal(0.0, 1.0)).sum(dim=(1, 2, 3, 4))
    assert posterior.kl().shape == (2,)
    torch.testing.assert_close(posterior.kl(), expected)


def test_kl_closed_form_matches_a_monte_carlo_estimate():
    posterior = DiagonalGaussian(_moments(1))
    g = torch.Generator().manual_seed(7)
    n = 20000
    samples = posterior.mean + posterior.std * torch.randn((n, *posterior.shape), generator=g)  # [N, B, ...]
    log_q = Normal(posterior.mean, posterior.std).log_prob(samples).sum(dim=(2, 3, 4, 5))
    log_p = Normal(0.0, 1.0).log_prob(samples).sum(dim=(2, 3, 4, 5))
    estimate = (log_q - log_p).mean(dim=0)  # [B]
    standard_error = (log_q - log_p).std(dim=0) / math.sqrt(n)
    closed = posterior.kl()
    assert bool(((estimate - closed).abs() < 4 * standard_error).all()), (estimate, closed, standard_error)
    assert bool((closed > 1.0).all())  # a non-trivial divergence was tested


def test_kl_between_two_posteriors_and_nll():
    p, q = DiagonalGaussian(_moments(2)), DiagonalGaussian(_moments(3))
    expected = kl_divergence(Normal(p.mean, p.std), Normal(q.mean, q.std)).sum(dim=(1, 2, 3, 4))
    torch.testing.assert_close(p.kl(q), expected)
    torch.testing.assert_close(p.kl(p), torch.zeros(2), atol=1e-5, rtol=0)
    x = torch.randn(p.shape)
    torch.testing.assert_close(p.nll(x), -Normal(p.mean, p.std).log_prob(x).sum(dim=(1, 2, 3, 4)))


def test_logvar_is_clamped_and_sampling_is_reparameterised():
    moments = torch.zeros(1, 2, 1, 1, 2)
    moments[0, 1, 0, 0] = torch.tensor([50.0, -80.0])
    posterior = DiagonalGaussian(moments)
    assert posterior.logvar.flatten().tolist() == [20.0, -30.0]
    moments = _moments(4).requires_grad_(True)
    posterior = DiagonalGaussian(moments)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    z = posterior.sample(g1)
    noise = torch.randn(posterior.shape, generator=g2)
    torch.testing.assert_close(z, posterior.mean + posterior.std * noise)
    z.sum().backward()
    assert moments.grad is not None and moments.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="2\\*C"):
        DiagonalGaussian(torch.zeros(1, 3, 2, 2))


def test_stacked_and_vae_layouts_are_inverse_transposes():
    planes = torch.randn(2, 4, 32, 6, 5)  # [B, F, C, R, R]
    x = stacked_to_vae_layout(planes)
    assert x.shape == (2, 32, 4, 6, 5)
    assert torch.equal(x[1, 7, 3], planes[1, 3, 7])  # channel 7 of plane 3
    assert torch.equal(vae_layout_to_stacked(x), planes)
    with pytest.raises(ValueError, match="5 dimensions"):
        stacked_to_vae_layout(torch.zeros(4, 32, 6, 5))


def test_dit_layout_stacks_planes_along_height():
    z = torch.randn(1, 8, 4, 32, 32)  # the paper latent
    tokens = to_dit_tokens(z)
    assert tokens.shape == (1, 8, 128, 32)  # → 64 × 16 = 1,024 patch-2 tokens
    for plane in range(4):  # "b c (f h) w": plane f occupies rows f*h … (f+1)*h − 1
        assert torch.equal(tokens[:, :, plane * 32:(plane + 1) * 32], z[:, :, plane])
    assert torch.equal(from_dit_tokens(tokens), z)
    with pytest.raises(ValueError, match="multiple of num_planes"):
        from_dit_tokens(torch.zeros(1, 8, 30, 32))


def test_latent_scale_round_trip():
    z = torch.randn(2, 8, 4, 4, 4)
    assert LATENT_SCALE_FACTOR == 0.3994218
    torch.testing.assert_close(scale_latent(z), z * 0.3994218)
    torch.testing.assert_close(unscale_latent(scale_latent(z)), z)
    torch.testing.assert_close(unscale_latent(z, 2.0), z / 2.0)
