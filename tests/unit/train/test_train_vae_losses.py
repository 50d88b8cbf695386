"""The VAE loss pieces: LPIPS without downloads, generators found by their weights, renders of
identical triplanes giving zero loss and of different ones a positive, differentiable loss."""

from pathlib import Path

import pytest
import torch

from avatar4d.errors import UserError
from avatar4d.models.vae import DiagonalGaussian
from train.vae.losses import VAELoss, build_lpips
from train.vae.recipes import VAELossConfig
from train.vae.renderers import DomainRenderers, GeneratorIndex, GeneratorNotFoundError


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    from factory.domains import load_domains
    from factory.generators import ensure_domain_generator

    root = tmp_path_factory.mktemp("generators")
    return ensure_domain_generator(load_domains().get("pixar"), root / "tiny", "tiny")


def test_random_trunk_lpips_downloads_nothing_and_keeps_the_wheels_calibration(monkeypatch):
    import lpips

    def no_network(*args, **kwargs):
        raise AssertionError("LPIPS tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    module = build_lpips("alex", None, random_backbone=True)
    shipped = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth", map_location="cpu")
    assert torch.equal(module.lin0.model[1].weight, shipped["lin0.model.1.weight"])
    assert not any(p.requires_grad for p in module.parameters())
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(module(image, image), torch.zeros(2, 1, 1, 1))
    with pytest.raises(UserError, match="--lpips-backbone"):
        build_lpips("alex", None)


def test_lpips_trunk_loads_from_a_local_torchvision_file(tmp_path):
    import torchvision

    weights = torchvision.models.alexnet().state_dict()
    torch.save(weights, tmp_path / "alexnet.pth")
    module = build_lpips("alex", str(tmp_path / "alexnet.pth"))
    assert torch.equal(module.net.slice1[0].weight, weights["features.0.weight"])
    assert torch.equal(getattr(module.net.slice5, "10").bias, weights["features.10.bias"])
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a torchvision alex state dict"):
        build_lpips("alex", str(tmp_path / "other.pth"))


def test_generators_are_found_by_their_weights(generator_dir, tmp_path):
    from avatar4d.checkpoint.io import read_checkpoint_info

    sha = read_checkpoint_info(generator_dir).weights_sha256
    index = GeneratorIndex([generator_dir.parent.parent, tmp_path / "absent"])
    assert index.find(sha, "pixar") == generator_dir
    with pytest.raises(GeneratorNotFoundError, match="no generator checkpoint with weights 000000000000… "
                                                     "\\(domain zombie\\)"):
        index.find("0" * 64, "zombie")


@pytest.fixture(scope="module")
def setups(generator_dir):
    """(loss, sha, renderers) composing expressions with 1 view, and rendering static planes with 2 views."""
    from avatar4d.checkpoint.io import read_checkpoint_info

    sha = read_checkpoint_info(generator_dir).weights_sha256
    made = {}
    for name, overrides in (("composed", {}), ("static", {"compose_expression": False, "views_per_sample": 2})):
        config = VAELossConfig(render_resolution=16, lpips_net="alex", lpips_random_backbone=True, **overrides)
        renderers = DomainRenderers(GeneratorIndex([generator_dir.parent]), torch.device("cpu"),
                                    compose_expression=config.compose_expression)
        made[name] = (VAELoss(config, renderers, torch.device("cpu")), sha, renderers)
    return made


def _posterior(mean: torch.Tensor, logvar: torch.Tensor | None = None) -> DiagonalGaussian:
    logvar = torch.zeros_like(mean) if logvar is None else logvar
    return DiagonalGaussian(torch.cat([mean, logvar], dim=1))


def test_identical_triplanes_cost_only_their_kl_and_latent_tv(setups):
    loss, sha, renderers = setups["composed"]
    planes = torch.randn(2, 4, 8, 64, 64) * 0.5
    params = torch.zeros(2, renderers.identity_dim + renderers.expression_dim + 3)
    # latent mean: sample 0 all zeros, sample 1 value = plane index (|Δ| along planes 1, along h 0)
    mean = torch.zeros(2, 2, 4, 3, 3)
    mean[1] = torch.arange(4.0)[None, :, None, None]
    posterior = _posterior(mean)  # unit variance: KL = ½ Σ μ² per sample
    total, terms = loss(planes, planes, posterior, planes, planes, [sha, sha], ["pixar", "pixar"], params,
                        torch.Generator().manual_seed(0))
    assert terms["triplane_l1"] == 0.0 and terms["depth_l1"] == 0.0 and terms["lpips"] == pytest.approx(0.0, abs=1e-6)
    kl = 0.5 * (2 * 9 * (0 + 1 + 4 + 9)) / 2  # sample 1: Σ μ² = 2 channels · 9 pixels · (0+1+4+9); mean over B
    tv = 0.5  # mean |Δ| along the plane axis: 0 for sample 0, 1 for sample 1; along h: 0
    assert terms["kl"] == pytest.approx(kl) and terms["latent_tv"] == pytest.approx(tv)
    assert total.item() == pytest.approx(1e-5 * kl + 2e-3 * tv, rel=1e-4)  # the paper's weights


def test_l1_terms_are_summed_per_sample_and_averaged_over_the_batch(setups):
    """The official reduction (sum over C·F·R², mean over B), checked against a hand computation."""
    loss, sha, _ = setups["static"]
    target = torch.zeros(2, 4, 8, 64, 64)
    reconstruction = target.clone()
    reconstruction[0, 0, 0, :2, :2] = 0.5   # 4 values off by 0.5 in sample 0
    reconstruction[1, 3] = -0.25            # a whole plane (8·64·64 values) off by 0.25 in sample 1
    posterior = _posterior(torch.zeros(2, 2, 4, 3, 3))
    config = loss.config.replace(depth_l1=0.0, lpips=0.0)
    plain = VAELoss(config, None, torch.device("cpu"))
    _, terms = plain(target, reconstruction, posterior, target, reconstruction, [sha, sha], ["pixar", "pixar"],
                     None, torch.Generator().manual_seed(0))
    assert terms["triplane_l1"] == pytest.approx((4 * 0.5 + 8 * 64 * 64 * 0.25) / 2)
    mean_config = VAELoss(config.replace(reduction="mean"), None, torch.device("cpu"))
    _, terms = mean_config(target, reconstruction, posterior, target, reconstruction, [sha, sha],
                           ["pixar", "pixar"], None, torch.Generator().manual_seed(0))
    assert terms["triplane_l1"] == pytest.approx((4 * 0.5 + 8 * 64 * 64 * 0.25) / target.numel())


def test_reconstruction_errors_show_in_every_term_and_carry_gradients(setups):
    loss, sha, _ = setups["static"]
    target = torch.randn(2, 4, 8, 64, 64)
    reconstruction = (target + torch.randn_like(target)).requires_grad_(True)
    total, terms = loss(target, reconstruction, _posterior(torch.zeros(2, 2, 4, 3, 3)), target, reconstruction,
                        [sha, sha], ["pixar", "pixar"], None, torch.Generator().manual_seed(0))
    error = (reconstruction - target).detach().abs()
    assert terms["triplane_l1"] == pytest.approx(float(error.sum() / 2), rel=1e-5)
    assert terms["depth_l1"] > 0 and terms["lpips"] > 0
    total.backward()
    assert reconstruction.grad is not None and reconstruction.grad[:, 1:].abs().sum() > 0


def test_composition_uses_the_expression_mesh_on_the_frontal_plane_only(setups):
    _, sha, renderers = setups["composed"]
    renderer = renderers.get(sha, "pixar")
    stacked = torch.randn(1, 4, 8, 64, 64)
    params = torch.zeros(1, renderers.identity_dim + renderers.expression_dim + 3)
    composed = renderer.planes(stacked, renderers.vertices(params))
    static = renderer.planes(stacked, None)
    assert composed.shape == static.shape == (1, 3, 8, 64, 64)
    assert torch.equal(composed[:, 1:], stacked[:, 2:]) and torch.equal(static, stacked[:, 1:])
    assert not torch.equal(composed[:, 0], stacked[:, 1])
