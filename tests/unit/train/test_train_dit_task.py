"""The DiT task on a real encoded dataset (factory encode stage, tiny encoders): the model fitted to
the data, the IDDPM loss of a micro-batch, sample grids from a (plain, single-process) model."""

import pytest
import torch

from avatar4d.data.schema import SchemaMismatchError
from train.config import apply_overrides
from train.dit.recipes import paper, tiny
from train.dit.task import DiTTask, dit_input_shape


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from train.fixtures import make_encoded, make_pairs

    folder = tmp_path_factory.mktemp("dit") / "data"
    make_pairs(folder, domains=("pixar",), per_domain=4)
    make_encoded(folder)
    return folder


@pytest.fixture(scope="module")
def task(data):
    config = apply_overrides(tiny(), {"data": str(data), "train.micro_batch_size": 2,
                                      "vae_checkpoint": str(data / "vae-tiny"), "sampling.steps": 3})
    datasets = DiTTask.check_data(config)
    config = DiTTask.resolve_config(config, datasets)
    return DiTTask(config, datasets, rank=0, world_size=1, device=torch.device("cpu"))


def test_latent_layouts_map_to_dit_inputs():
    assert dit_input_shape((8, 4, 32, 32)) == (8, 128, 32)
    assert dit_input_shape((8, 64, 16)) == (8, 64, 16)
    with pytest.raises(SchemaMismatchError):
        dit_input_shape((8, 4))


def test_tiny_fits_the_data_and_paper_refuses_it(task, data):
    model = task.config.model
    assert (model.input_size, model.in_channels) == ((64, 16), 8)
    assert (model.clip_tokens, model.clip_channels, model.dino_tokens, model.dino_channels) == (5, 32, 5, 24)
    with pytest.raises(SchemaMismatchError, match="does not fit the recipe's DiT: input_size"):
        DiTTask.check_data(apply_overrides(paper(), {"data": str(data)}))


def test_a_micro_batch_gives_a_finite_differentiable_iddpm_loss(task):
    torch.manual_seed(0)
    model = task.build_model()
    batch = next(iter(task.batches(0)))
    latent, clip, dino = task.tensors(batch, torch.float32)
    channels, height, width = task.config.model.in_channels, *task.config.model.input_size  # the tiny VAE's latents
    assert latent.shape == (2, channels, height, width) and clip.shape == (2, 5, 32) and dino.shape == (2, 5, 24)
    out = task.step(model, batch, torch.Generator().manual_seed(1))
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    assert out.metrics["loss"] == pytest.approx(out.metrics["mse"] + out.metrics["vb"] * 1.0, rel=1e-5)
    assert out.metrics["mse"] == pytest.approx(1.0, abs=0.6)  # adaLN-zero init predicts ε = 0
    out.loss.backward()
    assert model.y_embedder.null_tokens.grad is not None or out.metrics["dropped_fraction"] == 0.0


def test_sample_grids_show_true_and_sampled_latents_and_renders(task):
    torch.manual_seed(0)
    images, metrics = task.sample_images(task.build_model().eval(), step=1)
    assert images["latents"].dtype.name == "uint8" and images["latents"].shape[2] == 3
    rows, cols = 2, 4  # labelled, and every cell at least 128 px (they were 32×8 and 32×32 px, unlabelled)
    for key in ("latents", "renders"):
        height, width = images[key].shape[:2]
        assert height > rows * 128 and width > cols * 128, (key, images[key].shape)
        assert (images[key][:, :40] < 100).any(), "row labels on the left"
    assert metrics["preview_sample_mse"] >= 0


def test_a_release_style_null_condition_missing_stops_the_run_before_it_starts(data, tmp_path):
    """Issue 9 item 12: no fallback to zeros when encoded_null_condition.safetensors is absent."""
    import shutil

    from avatar4d.errors import UserError

    config = apply_overrides(tiny(), {"data": str(data), "train.micro_batch_size": 2,
                                      "model.null_clip": "zero_image"})
    assert DiTTask.check_data(config)  # the encode stage stored the null condition
    copy = tmp_path / "data"
    shutil.copytree(data / "encoded.lance", copy / "encoded.lance")
    with pytest.raises(UserError, match="encoded_null_condition.safetensors not found"):
        DiTTask.check_data(config.replace(data=str(copy)))
