"""FID: identical sets, the closed form of two Gaussians, agreement with pytorch-fid, merged shards,
and the Inception weights read from a local file."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from avatar4d.errors import UserError
from avatar4d.metrics.config import FidConfig
from avatar4d.metrics.fid import FrechetDistance


def _whitened(count: int, dim: int, seed: int) -> torch.Tensor:
    """Samples whose empirical mean is exactly 0 and unbiased covariance exactly I."""
    x = torch.randn(count, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    covariance = x.T @ x / (count - 1)
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    return x @ vectors @ torch.diag(eigenvalues.rsqrt()) @ vectors.T


def _fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    metric = FrechetDistance.for_features(real.shape[1])
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return metric.compute()


def test_identical_feature_sets_are_at_distance_zero():
    features = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    assert _fid(features, features) == pytest.approx(0.0, abs=1e-6)


def test_two_gaussians_give_the_closed_form():
    # N(μ1, diag(a²)) vs N(μ2, diag(b²)): |μ1 − μ2|² + Σ (a − b)²
    dim = 8
    base_a, base_b = _whitened(500, dim, 1), _whitened(400, dim, 2)
    a, b = torch.linspace(0.5, 2.0, dim, dtype=torch.float64), torch.linspace(1.5, 0.3, dim, dtype=torch.float64)
    mu1, mu2 = torch.full((dim,), 0.3, dtype=torch.float64), torch.linspace(-1, 1, dim, dtype=torch.float64)
    expected = float((mu1 - mu2).square().sum() + (a - b).square().sum())
    assert _fid(base_a * a + mu1, base_b * b + mu2) == pytest.approx(expected, rel=1e-6)


def test_equals_pytorch_fid_on_the_same_features():
    from pytorch_fid.fid_score import calculate_frechet_distance

    generator = torch.Generator().manual_seed(3)
    real = torch.randn(300, 12, generator=generator, dtype=torch.float64)
    fake = torch.randn(250, 12, generator=generator, dtype=torch.float64) @ torch.randn(12, 12, generator=generator,
                                                                                        dtype=torch.float64) * 0.5 + 0.2
    reference = calculate_frechet_distance(real.mean(0).numpy(), np.cov(real.numpy(), rowvar=False),
                                           fake.mean(0).numpy(), np.cov(fake.numpy(), rowvar=False))
    assert _fid(real, fake) == pytest.approx(float(reference), rel=1e-5)


def test_moments_of_shards_merge_into_the_whole_sets_fid():
    images = torch.rand(12, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    whole = FrechetDistance.from_config(FidConfig())
    whole.update(images, real=True)
    whole.update(images.flip(-1) * 0.8, real=False)
    shards = [FrechetDistance.from_config(FidConfig()) for _ in range(3)]
    for index, shard in enumerate(shards):
        part = images[index * 4:(index + 1) * 4]
        shard.update(part, real=True)
        shard.update(part.flip(-1) * 0.8, real=False)
    merged = FrechetDistance.from_config(FidConfig())
    for shard in shards:
        merged.merge(pickle.loads(pickle.dumps(shard.state())))  # as a Ray worker would send it
    assert merged.compute() == pytest.approx(whole.compute(), rel=1e-9)
    assert whole.compute() > 0


def test_too_few_images_is_a_clear_error():
    metric = FrechetDistance.from_config(FidConfig())
    metric.update(torch.rand(1, 3, 16, 16), real=True)
    with pytest.raises(ValueError, match="at least 2"):
        metric.compute()


def test_inception_weights_come_from_a_local_file(tmp_path):
    """torch-fidelity's FID Inception-v3 built from a local file (random weights with its names and
    shapes here; nothing downloads), giving 2048-d features; damaged files are one-line errors."""
    state = _inception_file(tmp_path)
    metric = FrechetDistance(inception_weights=state)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    metric.update(images, real=True)
    metric.update(images, real=False)
    assert metric.metric.real_features_sum.shape == (2048,)
    assert metric.compute() == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(UserError, match="not found"):
        FrechetDistance(inception_weights=tmp_path / "missing.pth")
    code = tmp_path / "code.pth"
    code.write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(UserError, match="not a FID Inception-v3 weights file"):
        FrechetDistance(inception_weights=code)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def _inception_file(tmp_path) -> str:
    """A file with torch-fidelity's Inception names and shapes (random values, seeded)."""
    import torch_fidelity.feature_extractor_inceptionv3 as module

    class RandomInception(module.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random initialisation
            return None

    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = RandomInception("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, path)
    return str(path)
