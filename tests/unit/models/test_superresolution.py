
import pytest
import torch

from avatar4d.models.superresolution import SUPERRESOLUTION_PRESETS, SuperResolutionConfig, SuperresolutionHybrid8XDC
from tests.support.manifests import load_manifest


def _paper() -> SuperresolutionHybrid8XDC:
    with torch.device("meta"):
        return SuperresolutionHybrid8XDC(SUPERRESOLUTION_PRESETS.get("paper"))


def _tiny(seed: int = 0, **overrides) -> SuperresolutionHybrid8XDC:
    torch.manual_seed(seed)
    return SuperresolutionHybrid8XDC(SUPERRESOLUTION_PRESETS.get("tiny", **overrides))


def test_paper_sizes_and_parameter_count():
    net = _paper()
    assert net.config.output_resolution == 512
    assert sum(p.numel() for p in net.parameters()) == 1_649_578
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert len(shapes) == 38
    assert shapes["block0.conv0.weight"] == (256, 32, 3, 3)
    assert shapes["block0.conv0.affine.weight"] == (32, 512)
    assert shapes["block1.conv1.noise_const"] == (512, 512)
    assert shapes["block1.torgb.weight"] == (3, 128, 1, 1)


def test_paper_state_dict_equals_release_manifest():
    manifest = load_manifest("gan-release/invertavatar_next3dpp.json")
    prefix = "superresolution."
    expected = [(k[len(prefix):], s) for k, s in manifest["tensors"] if k.startswith(prefix)]
    assert [(k, list(v.shape)) for k, v in _paper().state_dict().items()] == expected
    assert manifest["num_params_by_top_level_module"]["superresolution"] == 1_649_578


def test_tiny_output_shape_resizing_and_gradients():
    net = _tiny()
    feats = torch.randn(2, 32, 16, 16, requires_grad=True)
    ws = torch.randn(2, 10, 64)
    out = net(feats[:, :3], feats, ws)
    assert out.shape == (2, 3, 64, 64)
    out.square().mean().backward()
    assert feats.grad is not None and feats.grad.abs().sum().item() > 0
    assert net.block0.conv0.affine.weight.grad.abs().sum().item() > 0
    big = torch.randn(2, 32, 32, 32)  # a larger neural rendering is resized to input_resolution first
    assert net(big[:, :3], big, ws).shape == (2, 3, 64, 64)


def test_only_the_last_w_is_used_and_noise_mode_none_is_deterministic():
    net = _tiny()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
    feats, ws = torch.randn(2, 32, 16, 16), torch.randn(2, 10, 64)
    out = net(feats[:, :3], feats, ws)
    torch.testing.assert_close(net(feats[:, :3], feats, ws), out)  # noise_mode "none" by default
    changed_early = ws.clone()
    changed_early[:, :-1] = torch.randn(2, 9, 64)
    torch.testing.assert_close(net(feats[:, :3], feats, changed_early), out)
    changed_last = ws.clone()
    changed_last[:, -1] = torch.randn(2, 64)
    assert not torch.allclose(net(feats[:, :3], feats, changed_last), out)
    assert not torch.allclose(net(feats[:, :3], feats, ws, noise_mode="random"), out)


def test_skip_path_carries_the_raw_rgb():
    net = _tiny()
    feats, ws = torch.randn(1, 32, 16, 16), torch.randn(1, 4, 64)
    base = net(feats[:, :3], feats, ws)
    shifted = net(feats[:, :3] + 1.0, feats, ws)  # a constant added to rgb is FIR-upsampled into the output
    diff = (shifted - base)[..., 8:-8, 8:-8]
    torch.testing.assert_close(diff, torch.ones_like(diff), atol=1e-4, rtol=1e-4)


def test_config_validation_and_bad_inputs():
    assert SuperResolutionConfig(input_resolution=32, block_channels=(16,)).output_resolution == 64
    with pytest.raises(ValueError):
        SuperResolutionConfig(block_channels=())
    with pytest.raises(ValueError):
        SuperResolutionConfig(noise_mode="loud")
    net = _tiny()
    with pytest.raises(ValueError):
        net(torch.randn(1, 3, 16, 16), torch.randn(1, 31, 16, 16), torch.randn(1, 4, 64))
    with pytest.raises(ValueError):
        net(torch.randn(1, 3, 16, 16), torch.randn(1, 32, 16, 16), torch.randn(1, 4, 63))
    cfg = SUPERRESOLUTION_PRESETS.get("tiny")
    assert SuperResolutionConfig.from_json(cfg.to_json()) == cfg
