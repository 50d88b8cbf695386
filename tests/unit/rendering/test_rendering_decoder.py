"""OSG decoder: released parameter names, plane averaging, output activations."""

import math

import pytest
import torch

from avatar4d.rendering.decoder import OSGDecoder


def test_parameter_names_and_shapes_match_the_release():
    decoder = OSGDecoder()  # 32 -> 64 -> 33, as in EG3D / Next3D / Next3D++
    shapes = {name: tuple(p.shape) for name, p in decoder.state_dict().items()}
    assert shapes == {"net.0.weight": (64, 32), "net.0.bias": (64,), "net.2.weight": (33, 64), "net.2.bias": (33,)}
    assert sum(p.numel() for p in decoder.parameters()) == 64 * 32 + 64 + 33 * 64 + 33


def test_outputs_shapes_ranges_and_plane_average():
    torch.manual_seed(0)
    decoder = OSGDecoder(8, 16, 6, decoder_lr_mul=0.5)
    samples = torch.randn(2, 3, 10, 8) * 3
    out = decoder(samples, torch.randn(2, 10, 3))
    assert out["sigma"].shape == (2, 10, 1) and out["rgb"].shape == (2, 10, 6)
    assert out["rgb"].min() >= -0.001 and out["rgb"].max() <= 1.001
    # only the mean over planes matters
    mean_only = samples.mean(1, keepdim=True).expand(2, 3, 10, 8)
    torch.testing.assert_close(decoder(mean_only, None)["rgb"], out["rgb"])
    torch.testing.assert_close(decoder(samples.flip(1))["sigma"], out["sigma"])


def test_effective_weights_and_feature_activation():
    decoder = OSGDecoder(4, 4, 2, decoder_lr_mul=1.0)
    first, last = decoder.net[0], decoder.net[2]
    with torch.no_grad():
        first.weight.zero_()
        first.bias.zero_()
        last.weight.zero_()
        last.bias.copy_(torch.tensor([2.5, 0.0, 1.0]))  # sigma, feature 0, feature 1
    out = decoder(torch.randn(1, 3, 5, 4))
    torch.testing.assert_close(out["sigma"], torch.full((1, 5, 1), 2.5))
    expected = torch.tensor([0.5, 1 / (1 + math.exp(-1.0))]) * 1.002 - 0.001
    torch.testing.assert_close(out["rgb"][0, 0], expected)
    # equalised learning rate: the stored weight is scaled by lr_mul / sqrt(fan_in) at run time
    with torch.no_grad():
        last.bias.zero_()
        first.weight[0, 0] = 2.0  # effective 2 / sqrt(4) = 1
        last.weight[0, 0] = 2.0  # effective 1
    x = torch.zeros(1, 3, 1, 4)
    x[..., 0] = 3.0
    sigma = decoder(x)["sigma"].item()  # = 1 * softplus(1 * 3); the other hidden units are not read
    assert sigma == pytest.approx(math.log1p(math.exp(3.0)), rel=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError):
        OSGDecoder(0)
    with pytest.raises(ValueError):
        OSGDecoder(decoder_lr_mul=0.0)
    with pytest.raises(ValueError, match="plane samples"):
        OSGDecoder(8)(torch.zeros(1, 3, 5, 7))
