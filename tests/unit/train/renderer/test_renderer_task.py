"""The renderer task on real world multiview rows (no Ray): switches at the configured image counts,
every loss term logged, a step changes exactly the parts that are on."""

from __future__ import annotations

import pytest
import torch

from train.config import apply_overrides
from train.renderer.recipes import tiny
from train.renderer.task import RendererTask, degrade, psnr
from train.task import task_classes

FREEZE = 8  # images: steps with 0 and 4 images seen are frozen, the third (8 seen) is not


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from train.renderer.data import make_multiview

    root = tmp_path_factory.mktemp("multiview")
    make_multiview(root, domains=("pixar",), identities=2, expressions=2, cameras=2)
    config = apply_overrides(tiny(), {"data": str(root), "train.num_workers": 1, "loss.freeze_images": FREEZE,
                                      "loss.high_resolution_images": FREEZE})
    datasets = RendererTask.check_data(config)
    config = RendererTask.resolve_config(config, datasets)
    return RendererTask(config, datasets, rank=0, world_size=1, device=torch.device("cpu"))


def test_the_renderer_task_is_registered():
    task_class, config_class = task_classes("renderer")
    assert task_class is RendererTask and config_class().task == "renderer"


def test_decoder_sr_and_adversarial_switch_on_at_the_configured_image_count(task):
    torch.manual_seed(0)
    model = task.build_model()
    decoder_before = {k: v.clone() for k, v in model.renderer.decoder.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    stream, generator = iter(task.batches(0)), torch.Generator().manual_seed(0)
    logged, grads, decoders = [], [], []
    for _ in range(3):
        out = task.step(model, next(stream), generator)
        optimizer.zero_grad()
        out.loss.backward()
        grads.append((model.renderer.decoder.net[0].weight.requires_grad, model.discriminator.b4.out.weight.grad))
        optimizer.step()
        logged.append(out.metrics)
        decoders.append({k: v.clone() for k, v in model.renderer.decoder.state_dict().items()})
    assert [m["images_seen"] for m in logged] == [0, 4, 8]
    assert [m["renderer_tail_trained"] for m in logged] == [0, 0, 1]
    assert [m["neural_resolution"] for m in logged] == [16, 16, 32]
    for frozen in logged[:2]:
        assert not {"adv_g", "adv_d", "r1", "density"} & set(frozen)
    all_terms = {"l1", "lpips", "features", "triplane", "depth", "opacity", "adv_g", "adv_d", "r1", "density"}
    assert all_terms <= set(logged[2])
    assert grads[0][0] is False and grads[0][1] is None and grads[2][0] is True and grads[2][1] is not None
    assert model.renderer.superresolution.block0.conv1.weight.requires_grad
    # the frozen steps leave the decoder (initialised from the world generator) as it was; the third moves it
    assert all(torch.equal(decoder_before[k], decoders[1][k]) for k in decoder_before)
    assert any(not torch.equal(decoder_before[k], decoders[2][k]) for k in decoder_before)


def test_the_decoder_starts_from_the_domain_generator(task):
    from avatar4d.generators import load_generator_checkpoint

    model = task.build_model()
    world = load_generator_checkpoint(task.config.init_generator)[0]
    for name, value in world.decoder.state_dict().items():
        assert torch.equal(model.renderer.decoder.state_dict()[name], value), name


def test_degrade_blurs_and_psnr_measures():
    planes = torch.randn(2, 4, 3, 16, 16)
    assert torch.equal(degrade(planes, 1), planes)
    blurred = degrade(planes, 4)
    assert blurred.shape == planes.shape and blurred.std() < planes.std() / 2
    image = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.all(psnr(image, image) > 90) and torch.all(psnr(image, -image) < 10)
