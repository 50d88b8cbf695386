import pytest
import torch

from avatar4d.models.stylegan2 import MappingNetwork


def _mapping(seed: int = 0, **kwargs) -> MappingNetwork:
    torch.manual_seed(seed)
    net = MappingNetwork(z_dim=16, c_dim=25, w_dim=8, num_ws=6, **kwargs)
    with torch.no_grad():
        net.w_avg.copy_(torch.randn(8))
    return net


def test_paper_mapping_names_shapes_and_count():
    with torch.device("meta"):
        net = MappingNetwork(512, 25, 512, 14, num_layers=2)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes == {"w_avg": (512,), "embed.weight": (512, 25), "embed.bias": (512,), "fc0.weight": (512, 1024),
                      "fc0.bias": (512,), "fc1.weight": (512, 512), "fc1.bias": (512,)}
    assert sum(p.numel() for p in net.parameters()) == 800_768


def test_equalised_lr_storage_and_output_shape():
    net = MappingNetwork(512, 25, 512, 14)
    # stored weights are N(0, 1/lr_mul^2); the run-time gain lr_mul/sqrt(in) brings them to 1/sqrt(in)
    assert net.fc0.weight.std().item() == pytest.approx(100.0, rel=0.02)
    assert (net.fc0.weight * net.fc0.weight_gain).std().item() == pytest.approx(1024 ** -0.5, rel=0.02)
    ws = net(torch.randn(3, 512), torch.randn(3, 25))
    assert ws.shape == (3, 14, 512)
    torch.testing.assert_close(ws[:, 0], ws[:, 13])  # broadcast: every w is the same


def test_inputs_are_normalised_to_unit_second_moment():
    net = _mapping()
    z, c = torch.randn(4, 16), torch.randn(4, 25)
    torch.testing.assert_close(net(3.0 * z, c), net(z, c), atol=1e-5, rtol=1e-5)


def test_truncation_psi_and_cutoff():
    net = _mapping()
    z, c = torch.randn(4, 16), torch.randn(4, 25)
    ws = net(z, c)
    torch.testing.assert_close(net(z, c, truncation_psi=1.0, truncation_cutoff=2), ws)
    at_avg = net(z, c, truncation_psi=0.0)
    torch.testing.assert_close(at_avg, net.w_avg.expand_as(at_avg))
    half = net(z, c, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(half[:, :2], net.w_avg + 0.5 * (ws[:, :2] - net.w_avg))
    torch.testing.assert_close(half[:, 2:], ws[:, 2:])
    with pytest.raises(ValueError):
        net(z, c, truncation_psi=0.5, truncation_cutoff=-1)


def test_deterministic_for_a_fixed_seed():
    a, b = _mapping(seed=3), _mapping(seed=3)
    torch.manual_seed(7)
    z, c = torch.randn(2, 16), torch.randn(2, 25)
    torch.testing.assert_close(a(z, c), b(z, c), rtol=0, atol=0)
    assert not torch.allclose(_mapping(seed=4)(z, c), a(z, c))


def test_w_avg_tracks_the_mean_only_when_asked():
    net = _mapping(w_avg_beta=0.9)
    z, c = torch.randn(5, 16), torch.randn(5, 25)
    before = net.w_avg.clone()
    ws = net(z, c)
    torch.testing.assert_close(net.w_avg, before)
    net(z, c, update_emas=True)
    torch.testing.assert_close(net.w_avg, 0.9 * before + 0.1 * ws[:, 0].mean(dim=0))


def test_label_only_mapping_for_the_discriminator():
    net = MappingNetwork(0, 25, 32, None, num_layers=8, w_avg_beta=None)
    assert "w_avg" not in net.state_dict() and hasattr(net, "fc7")
    assert net(None, torch.randn(3, 25)).shape == (3, 32)
    with pytest.raises(ValueError):
        net(None, torch.randn(3, 25), truncation_psi=0.5)


def test_bad_inputs_raise_value_error():
    net = _mapping()
    with pytest.raises(ValueError):
        net(torch.randn(2, 15), torch.randn(2, 25))
    with pytest.raises(ValueError):
        net(torch.randn(2, 16), None)
    with pytest.raises(ValueError):
        MappingNetwork(0, 0, 8, 2)
