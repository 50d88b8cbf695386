"""Held-out scoring and sampling: the truth scores perfectly, damage scores worse, samples have the triplane shape."""

from __future__ import annotations

import pytest
import torch

WORLD_DOMAINS = ("pixar", "greek_statue")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from train.fixtures import make_encoded, make_pairs

    folder = tmp_path_factory.mktemp("heldout")
    make_pairs(folder, domains=WORLD_DOMAINS, per_domain=2, run_seed=3, kind="world")
    make_encoded(folder)
    return folder


def test_scorer_ranks_truth_above_damage_and_the_mean(data):
    from train.heldout import HeldOutRows, HeldOutScorer, mean_triplane

    rows = HeldOutRows.load(data)
    assert len(rows.sample_ids) == 4 and set(rows.domains) == set(WORLD_DOMAINS)
    scorer = HeldOutScorer(rows, [data / "generators"], resolution=16)
    truth = scorer.score(rows.triplanes)
    assert truth.psnr > 60 and truth.depth_error < 1e-4
    noisy = rows.triplanes + 0.3 * torch.randn(rows.triplanes.shape, generator=torch.Generator().manual_seed(0))
    damaged = scorer.score(noisy)
    mean = scorer.score(mean_triplane(data)[None].expand_as(rows.triplanes))
    assert damaged.psnr < truth.psnr and mean.psnr < truth.psnr and damaged.depth_error > 0
    with pytest.raises(ValueError, match="held-out rows"):
        scorer.render(rows.triplanes[:1])


def test_sampler_decodes_one_triplane_per_portrait_with_the_same_noise_for_every_model(data):
    from avatar4d.models.dit import DIT_PRESETS, ImageConditionedDiT
    from avatar4d.models.vae import load_vae
    from train.dit.sampling import HeldOutSampler
    from train.heldout import HeldOutRows

    vae, _ = load_vae(data / "vae-tiny")
    sampler = HeldOutSampler(data, vae.eval(), batch_size=3)
    torch.manual_seed(0)
    model = ImageConditionedDiT(DIT_PRESETS.get("tiny")).eval()
    ids = HeldOutRows.load(data).sample_ids
    first, second = sampler.triplanes(model, ids), sampler.triplanes(model, ids)
    assert first.shape == (4, 4, 8, 64, 64) and torch.isfinite(first).all()
    assert torch.equal(first, second), "the same seeded noise every call"
    with pytest.raises(KeyError, match="no encoded tokens"):
        sampler.triplanes(model, ["nobody/00000000"])
