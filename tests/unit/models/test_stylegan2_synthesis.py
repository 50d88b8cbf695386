import math

import pytest
import torch
import torch.nn.functional as F

from avatar4d.config import ConfigError
from avatar4d.models.stylegan2 import (
    BACKBONE_PRESETS,
    StyleGAN2Backbone,
    StyleGAN2BackboneConfig,
    SynthesisLayer,
    ToRGBLayer,
    alpha_blend_hooks,
)
from tests.support.manifests import load_manifest

# num_params_by_top_level_module of the released Next3D++ generator (manifest)
PAPER_COUNTS = {"texture_backbone": 28_819_437, "face_backbone": 28_819_437, "backbone": 29_008_301}


def _manifest() -> dict:
    return load_manifest("gan-release/invertavatar_next3dpp.json")


def _paper_backbone(img_channels: int) -> StyleGAN2Backbone:
    with torch.device("meta"):
        return StyleGAN2Backbone(BACKBONE_PRESETS.get("paper", img_channels=img_channels))


@pytest.mark.parametrize("prefix,img_channels", [("texture_backbone", 32), ("face_backbone", 32), ("backbone", 96)])
def test_paper_backbone_parameter_count_and_buffers(prefix, img_channels):
    net = _paper_backbone(img_channels)
    assert sum(p.numel() for p in net.parameters()) == PAPER_COUNTS[prefix]
    assert net.num_ws == 14
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["mapping.w_avg"] == (512,)
    assert shapes["synthesis.b4.const"] == (512, 4, 4)
    assert shapes["synthesis.b256.conv1.noise_const"] == (256, 256)
    assert shapes["synthesis.b128.conv0.weight"] == (256, 512, 3, 3)
    assert shapes["synthesis.b256.torgb.weight"] == (img_channels, 128, 1, 1)
    assert shapes["synthesis.b32.resample_filter"] == (4, 4)
    assert len(shapes) == 134  # (444 - 38 SR - 4 decoder) / 3 backbones


@pytest.mark.parametrize("prefix,img_channels", [("texture_backbone", 32), ("face_backbone", 32), ("backbone", 96)])
def test_paper_backbone_state_dict_equals_release_manifest(prefix, img_channels):
    manifest = _manifest()
    expected = [(k[len(prefix) + 1:], s) for k, s in manifest["tensors"] if k.startswith(prefix + ".")]
    ours = [(k, list(v.shape)) for k, v in _paper_backbone(img_channels).state_dict().items()]
    assert ours == expected  # same keys, shapes and order
    assert manifest["num_params_by_top_level_module"][prefix] == PAPER_COUNTS[prefix]
    buffers = {k[len(prefix) + 1:]: s for k, s, _ in manifest["buffers"] if k.startswith(prefix + ".")}
    state = _paper_backbone(img_channels).state_dict()
    assert {k: list(state[k].shape) for k in buffers} == buffers


def _tiny(img_channels: int = 96, seed: int = 0) -> StyleGAN2Backbone:
    torch.manual_seed(seed)
    return StyleGAN2Backbone(BACKBONE_PRESETS.get("tiny", img_channels=img_channels))


def test_initialisation_follows_equalised_lr():
    torch.manual_seed(0)
    layer = SynthesisLayer(64, 64, w_dim=32, resolution=8)
    assert layer.weight.std().item() == pytest.approx(1.0, abs=0.03)  # stored unscaled
    assert torch.all(layer.affine.bias == 1) and layer.noise_strength.item() == 0
    assert torch.all(layer.bias == 0)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    torch.testing.assert_close(layer.resample_filter, torch.outer(taps, taps) / 64)
    net = _tiny()
    assert net.synthesis.b4.const.shape == (16, 4, 4)
    assert [net.synthesis.channels[r] for r in (4, 8, 16, 32, 64)] == [16, 16, 16, 8, 4]


def test_torgb_matches_explicit_formula():
    torch.manual_seed(0)
    layer = ToRGBLayer(6, 4, w_dim=5)
    with torch.no_grad():
        layer.bias.normal_()
    x, w = torch.randn(2, 6, 3, 3), torch.randn(2, 5)
    styles = (w @ (layer.affine.weight / math.sqrt(5)).T + layer.affine.bias) / math.sqrt(6)
    expected = torch.einsum("oi,bi,bihw->bohw", layer.weight[:, :, 0, 0], styles, x) + layer.bias[None, :, None, None]
    torch.testing.assert_close(layer(x, w), expected, atol=1e-5, rtol=1e-5)


def test_synthesis_layer_matches_explicit_formula():
    torch.manual_seed(0)
    layer = SynthesisLayer(3, 4, w_dim=5, resolution=6)
    with torch.no_grad():
        layer.bias.normal_()
        layer.noise_strength.fill_(0.5)
    x, w = torch.randn(2, 3, 6, 6), torch.randn(2, 5)
    styles = w @ (layer.affine.weight / math.sqrt(5)).T + layer.affine.bias  # [B, in]
    wmod = layer.weight[None] * styles[:, None, :, None, None]
    wmod = wmod / (wmod.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).sqrt()
    conv = torch.cat([F.conv2d(x[b:b + 1], wmod[b], padding=1) for b in range(2)])
    pre = conv + 0.5 * layer.noise_const + layer.bias[None, :, None, None]
    expected = F.leaky_relu(pre, 0.2) * math.sqrt(2)
    torch.testing.assert_close(layer(x, w, noise_mode="const"), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        layer(x, w, noise_mode="bogus")


def test_tiny_forward_backward_pyramid_and_gradients():
    net = _tiny()
    z, c = torch.randn(2, 64), torch.randn(2, 25)
    img = net(z, c, noise_mode="const")
    assert img.shape == (2, 96, 64, 64)
    ws = net.mapping(z, c)
    pyramid = net.synthesis(ws, return_pyramid=True, noise_mode="const")
    assert [tuple(t.shape) for t in pyramid] == [(2, 96, 8, 8), (2, 16, 8, 8), (2, 16, 16, 16), (2, 8, 32, 32),
                                                 (2, 4, 64, 64), (2, 96, 64, 64)]
    torch.testing.assert_close(pyramid[-1], img)
    assert len(net.synthesis(ws, return_pyramid=True, pyramid_start=32)) == 4
    loss = sum(t.square().mean() for t in pyramid)
    loss.backward()
    for param in (net.synthesis.b4.const, net.synthesis.b8.conv0.affine.weight, net.synthesis.b64.torgb.affine.weight,
                  net.mapping.fc0.weight, net.mapping.embed.weight):
        assert param.grad is not None and param.grad.abs().sum().item() > 0


def test_fused_and_unfused_modconv_agree_and_noise_modes():
    net = _tiny()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
    ws = net.mapping(torch.randn(2, 64), torch.randn(2, 25))
    fused = net.synthesis(ws, noise_mode="const", fused_modconv=True)
    torch.testing.assert_close(net.synthesis(ws, noise_mode="const", fused_modconv=False), fused, atol=1e-4,
                               rtol=1e-4)
    torch.testing.assert_close(net.synthesis(ws, noise_mode="const"), fused)
    assert not torch.allclose(net.synthesis(ws, noise_mode="none"), fused)
    assert not torch.allclose(net.synthesis(ws, noise_mode="random"), net.synthesis(ws, noise_mode="random"))


def test_block_hooks_change_the_output():
    net = _tiny(img_channels=32)
    ws = net.mapping(torch.randn(2, 64), torch.randn(2, 25))
    base = net.synthesis(ws, noise_mode="const")
    identity = net.synthesis(ws, noise_mode="const", block_hooks={16: lambda x, img: (x, img)})
    torch.testing.assert_close(identity, base)
    replaced = net.synthesis(ws, noise_mode="const", block_hooks={8: lambda x, img: (x, torch.zeros_like(img))})
    assert not torch.allclose(replaced, base)
    seen = {}

    def record(x, img):
        seen["x"], seen["img"] = x, img
        return x, img

    net.synthesis(ws, noise_mode="const", block_hooks={32: record})
    assert seen["x"].shape == (2, 8, 32, 32) and seen["img"].shape == (2, 32, 32, 32)


def test_alpha_blend_hooks_follow_next3dpp_face_backbone():
    net = _tiny(img_channels=32)
    ws = net.mapping(torch.randn(2, 64), torch.randn(2, 25))
    pyramid = net.synthesis(ws, return_pyramid=True, noise_mode="const")
    base = pyramid[-1]

    def levels(alpha: float):
        return [torch.cat([torch.randn_like(t), torch.full_like(t[:, :1], alpha)], dim=1) for t in pyramid]

    hooks = alpha_blend_hooks(levels(0.0), start_resolution=8, img_resolution=64)
    assert sorted(hooks) == [8, 16, 32]  # the last block is never blended
    torch.testing.assert_close(net.synthesis(ws, noise_mode="const", block_hooks=hooks), base)
    blended = net.synthesis(ws, noise_mode="const", block_hooks=alpha_blend_hooks(levels(1.0), 8, 64))
    assert not torch.allclose(blended, base)
    with pytest.raises(ValueError):
        alpha_blend_hooks(levels(1.0)[:3], 8, 64)
    bad = levels(1.0)
    bad[1] = bad[1][:, 1:]
    with pytest.raises(ValueError):
        net.synthesis(ws, block_hooks=alpha_blend_hooks(bad, 8, 64))


def test_bad_arguments_raise_value_error():
    net = _tiny()
    ws = torch.randn(2, net.num_ws, 64)
    assert net.num_ws == 10
    with pytest.raises(ValueError):
        net.synthesis(ws[:, :-1])
    with pytest.raises(ValueError):
        net.synthesis(ws, block_hooks={12: lambda x, img: (x, img)})
    with pytest.raises(ValueError):
        net.synthesis(ws, return_pyramid=True, pyramid_start=128)
    with pytest.raises(ValueError):
        StyleGAN2BackboneConfig(img_resolution=100)
    with pytest.raises(ConfigError):
        BACKBONE_PRESETS.get("huge")


def test_config_round_trip_and_presets():
    cfg = BACKBONE_PRESETS.get("tiny", img_channels=32)
    assert StyleGAN2BackboneConfig.from_json(cfg.to_json()) == cfg
    assert set(BACKBONE_PRESETS.names()) >= {"tiny", "paper"}
    assert BACKBONE_PRESETS.get("paper").img_channels == 96
