import pytest
import torch

from avatar4d.models.discriminator import (
    DISCRIMINATOR_PRESETS,
    DualDiscriminator,
    DualDiscriminatorConfig,
    MinibatchStdLayer,
)
from avatar4d.models.stylegan2.ops import gaussian_blur


def _tiny(seed: int = 0, **overrides) -> DualDiscriminator:
    torch.manual_seed(seed)
    return DualDiscriminator(DISCRIMINATOR_PRESETS.get("tiny", **overrides))


def _inputs(batch: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, 64, 64, generator=g), torch.randn(batch, 3, 16, 16, generator=g),
            torch.randn(batch, 25, generator=g))


def test_paper_names_follow_eg3d_dual_discriminator():
    with torch.device("meta"):
        net = DualDiscriminator(DISCRIMINATOR_PRESETS.get("paper"))
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["b512.fromrgb.weight"] == (64, 6, 1, 1)
    assert shapes["b512.conv1.weight"] == (128, 64, 3, 3)
    assert shapes["b512.skip.weight"] == (128, 64, 1, 1) and "b512.skip.bias" not in shapes
    assert shapes["b8.conv1.weight"] == (512, 512, 3, 3)
    assert shapes["mapping.embed.weight"] == (512, 25) and shapes["mapping.fc7.weight"] == (512, 512)
    assert shapes["b4.conv.weight"] == (512, 513, 3, 3)
    assert shapes["b4.fc.weight"] == (512, 512 * 16) and shapes["b4.out.weight"] == (512, 512)
    assert "b256.fromrgb.weight" not in shapes and "b4.fromrgb.weight" not in shapes
    assert sum(p.numel() for p in net.parameters()) == 31_359_744


def test_output_shape_and_gradients_reach_both_images():
    net = _tiny()
    image, raw, c = _inputs()
    image.requires_grad_(True)
    raw.requires_grad_(True)
    logits = net(image, raw, c)
    assert logits.shape == (4, 1)
    logits.sum().backward()
    assert image.grad.abs().sum().item() > 0 and raw.grad.abs().sum().item() > 0
    assert net.mapping.embed.weight.grad.abs().sum().item() > 0
    assert net.b64.fromrgb.weight.grad.abs().sum().item() > 0


def test_blur_sigma_changes_logits_and_zero_does_not_blur():
    net = _tiny()
    image, raw, c = _inputs()
    logits = net(image, raw, c)
    torch.testing.assert_close(net(image, raw, c, blur_sigma=0.0), logits)
    blurred = net(image, raw, c, blur_sigma=2.0)
    assert not torch.allclose(blurred, logits)
    # both inputs are blurred, each at its own resolution
    torch.testing.assert_close(blurred, net(gaussian_blur(image, 2.0), gaussian_blur(raw, 2.0), c))
    assert not torch.allclose(blurred, net(gaussian_blur(image, 2.0), raw, c))
    with pytest.raises(ValueError):
        net(image, raw, c, blur_sigma=-1.0)


def test_camera_conditioning_and_unconditional_variant():
    net = _tiny()
    image, raw, c = _inputs()
    assert not torch.allclose(net(image, raw, c), net(image, raw, c + 1.0))
    uncond = _tiny(c_dim=0)
    assert not hasattr(uncond, "mapping")
    assert uncond(image, raw, None).shape == (4, 1)


def test_label_noise_only_in_training_mode():
    net = _tiny(c_noise=1.0)
    image, raw, c = _inputs()
    net.eval()
    torch.testing.assert_close(net(image, raw, c), net(image, raw, c))
    net.train()
    assert not torch.allclose(net(image, raw, c), net(image, raw, c))


def test_minibatch_std_layer():
    layer = MinibatchStdLayer(group_size=2)
    same = torch.ones(4, 3, 2, 2)
    out = layer(same)
    assert out.shape == (4, 4, 2, 2)
    torch.testing.assert_close(out[:, 3], torch.full((4, 2, 2), 1e-4))  # sqrt(0 + 1e-8)
    x = torch.randn(4, 3, 2, 2)
    std = x.reshape(2, 2, 3, 2, 2).std(dim=0, unbiased=False).mean(dim=[1, 2, 3])  # groups {0,2} and {1,3}
    torch.testing.assert_close(layer(x)[:, 3, 0, 0], std.repeat(2), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        layer(torch.randn(3, 3, 2, 2))


def test_bad_inputs_and_config():
    net = _tiny()
    image, raw, c = _inputs()
    with pytest.raises(ValueError):
        net(image[:, :, :32, :32], raw, c)
    with pytest.raises(ValueError):
        net(image, raw[:2], c)
    with pytest.raises(ValueError):
        net(image, raw, c[:, :16])
    with pytest.raises(ValueError):
        DualDiscriminatorConfig(img_resolution=48)
    cfg = DISCRIMINATOR_PRESETS.get("tiny")
    assert DualDiscriminatorConfig.from_json(cfg.to_json()) == cfg
