"""Release parity of the VAE's data statistics (issue 9, items 9 and 10).

Item 10: the triplane normalisation is per plane by default (the release's ``final_mean``/``final_std``
hold 1 or 4 values), per (plane, channel) on request, and comes from a seeded sample of the whole
dataset, not its first rows. Item 9: a VAE trained here stores 1 / std of its own latents as its
``latent_scale_factor`` (not the release's 0.3994218), and the factory's encode stage multiplies by it.
"""

import pytest
import torch

from avatar4d.models.vae import LATENT_SCALE_FACTOR, load_vae
from avatar4d.models.vae.statistics import estimate_latent_scale, triplane_statistics
from train.config import apply_overrides
from train.vae.recipes import tiny
from train.vae.task import VAETask


def test_per_plane_statistics_pool_channels_as_the_release_does():
    # plane p, channel c holds the constant 10 p + c: per plane, mean 10 p + 3.5 over channels 0..7
    values = 10 * torch.arange(4.0)[:, None] + torch.arange(8.0)[None, :]  # [F, C]
    planes = values[None, :, :, None, None].expand(3, 4, 8, 2, 2)
    mean, std = triplane_statistics(planes, "plane")
    assert mean.shape == std.shape == (4, 1)
    assert torch.allclose(mean[:, 0], 10 * torch.arange(4.0) + 3.5)
    hand_std = torch.arange(8.0).repeat_interleave(12).std()  # each channel value appears 3·2·2 times
    assert torch.allclose(std[:, 0], hand_std.expand(4))
    mean_c, std_c = triplane_statistics(planes, "plane_channel")
    assert mean_c.shape == (4, 8) and torch.allclose(mean_c, values)
    assert torch.allclose(std_c, torch.full((4, 8), 1e-4))  # constant channels: floored std
    with pytest.raises(ValueError, match="per one of"):
        triplane_statistics(planes, "channel")


def test_latent_scale_is_one_over_the_std():
    z = torch.randn(4, 8, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 2.5
    assert estimate_latent_scale(z) == pytest.approx(1 / float(z.double().std()))
    with pytest.raises(ValueError, match="standard deviation"):
        estimate_latent_scale(torch.zeros(2, 3))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from train.fixtures import make_pairs

    folder = tmp_path_factory.mktemp("vae-stats") / "data"
    make_pairs(folder, domains=("pixar",), per_domain=6, kind="world")
    config = apply_overrides(tiny(), {"data": str(folder), "loss.lpips": 0.0, "loss.depth_l1": 0.0,
                                      "loss.statistics_rows": 4, "train.num_workers": 1})
    datasets = VAETask.check_data(config)
    return VAETask(config, datasets, rank=0, world_size=1, device=torch.device("cpu"))


def test_prepare_sets_per_plane_statistics_from_a_seeded_sample(task):
    model = task.build_model()
    task.prepare(model)
    planes = task.sampled_triplanes(4, task.config.train.seed)
    mean, std = triplane_statistics(planes, "plane")
    assert torch.allclose(model.triplane_mean, mean.expand(4, 8))  # one value per plane, broadcast over C
    assert torch.allclose(model.triplane_std, std.expand(4, 8))
    assert bool((model.triplane_mean == model.triplane_mean[:, :1]).all())
    first = task._first_rows(4)["triplane"].float()  # the old choice: the dataset's first rows
    assert not torch.equal(planes, first) and planes.shape == first.shape
    assert torch.equal(planes, task.sampled_triplanes(4, task.config.train.seed))  # seeded


def test_the_saved_vae_carries_its_own_latent_scale_and_encode_uses_it(task, tmp_path):
    from avatar4d.data.schema import dataset_uri
    from factory.stages.encode import EncodeStage

    model = task.build_model()
    task.prepare(model)
    task.save_model(model, tmp_path / "final", step=7, metadata={})
    loaded, info = load_vae(tmp_path / "final")
    planes = task.sampled_triplanes(4, task.config.train.seed + 1)
    with torch.no_grad():
        expected = 1 / float(loaded.encode_triplane(planes).double().std())
    assert loaded.config.latent_scale_factor == pytest.approx(expected, rel=1e-5)
    assert abs(loaded.config.latent_scale_factor - LATENT_SCALE_FACTOR) > 0.05
    assert "estimated" in info.metadata["latent_scale"]

    import lance

    schema = lance.dataset(dataset_uri(task.config.data, "pairs")).schema
    stage = EncodeStage(tmp_path / "final", schema)
    assert stage.latent_scale == pytest.approx(expected, rel=1e-5)
    encoded = stage.encode(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), planes[:2])
    assert torch.allclose(encoded.latent, loaded.encode_triplane(planes[:2]) * expected, atol=1e-5)
