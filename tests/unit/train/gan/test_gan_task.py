"""The GAN task's phases on a tiny fixed dataset, in-process (plain modules stand in for the engines:
the task calls them like modules), with Adam stepping as the engine would."""

from __future__ import annotations

import pytest
import torch

from train.config import apply_overrides

pytestmark = pytest.mark.slow  # trains G and D for a few dozen steps


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from train.gan.fixtures import make_world_stylized
    from train.gan.recipes import tiny
    from train.gan.task import GANTask

    data = tmp_path_factory.mktemp("gan") / "data"
    make_world_stylized(data, domains=("pixar",), per_domain=8)
    config = apply_overrides(tiny(), {"data": str(data), "domain": "pixar", "train.num_workers": 1,
                                      "train.micro_batch_size": 4, "ada.enabled": False,
                                      "loss.blur_init_sigma": 0.0})
    datasets = GANTask.check_data(config)
    config = GANTask.resolve_config(config, datasets)
    return GANTask(config, datasets, rank=0, world_size=1, device=torch.device("cpu"))


def test_discriminator_logits_separate_and_the_generator_loss_responds(task):
    torch.manual_seed(0)
    model = task.build_model()
    parts = task.optimized_parts(model)
    assert set(parts) == {"G", "D"} and task.phases(1) == ("G", "D")
    optimizers = {name: torch.optim.Adam(part.parameters(), lr=2e-3, betas=(0.0, 0.99)) for name, part in parts.items()}
    batches = iter(task.batches(0))
    gen = torch.Generator().manual_seed(0)

    def run(phase: str, step: int, train: bool = True) -> dict[str, float]:
        out = task.phase_step(phase, parts, next(batches), gen, step)
        if train:
            optimizers[phase].zero_grad(set_to_none=True)
            out.loss.backward()
            optimizers[phase].step()
        return out.metrics

    first = run("D", 1, train=False)
    for step in range(1, 31):  # D only: it must learn to tell the world's images from G's
        last = run("D", step)
    gap_before, gap_after = first["D_real"] - first["D_fake"], last["D_real"] - last["D_fake"]
    assert gap_after > gap_before + 1.0, (gap_before, gap_after)
    g_before = run("G", 1, train=False)["loss_G"]  # a sharper D: the generator's loss is high
    for step in range(2, 22):  # G only, against the frozen D
        run("G", step)
    g_after = sum(run("G", 99, train=False)["loss_G"] for _ in range(2)) / 2
    assert g_after < g_before - 0.2, (g_before, g_after)


def test_ada_p_rises_when_the_discriminator_overfits_a_few_images(task):
    from train.gan.recipes import ADAConfig

    torch.manual_seed(0)
    task.config = task.config.replace(ada=ADAConfig(enabled=True, interval=2, speed_images=400, xflip=True))
    from train.gan.augment import AugmentPipe

    task.augment, task.ada = AugmentPipe(), None
    model = task.build_model()
    parts = task.optimized_parts(model)
    optimizer = torch.optim.Adam(parts["D"].parameters(), lr=3e-3, betas=(0.0, 0.99))
    batches = iter(task.batches(0))
    gen = torch.Generator().manual_seed(1)
    history = []
    for step in range(1, 41):  # 8 images, 40 D steps: D memorises them and D(real) > 0 everywhere
        out = task.phase_step("D", parts, next(batches), gen, step)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        history.append(out.metrics["ada_p"])
    assert history[0] == 0.0 and history[-1] > 0.1, history[::5]
    assert all(b >= a - 1e-6 for a, b in zip(history[20:], history[21:]))  # only rising once D overfits
