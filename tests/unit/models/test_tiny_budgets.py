"""Tiny presets that are tiny: every tiny model's training step stays within a FLOP budget, and the
tiny models still fit together.

Counted, not timed (the machine is shared, FLOP counts are deterministic): ``FlopCounterMode`` over one
training step (forward + backward) at micro-batch 4, the steps ``benchmarks/tiny_steps.py`` times:

- ``vae``: the VAE task's step of the tiny recipe on tiny factory pairs (triplane L1, KL, and the
  rendered depth-L1 and LPIPS through each row's own generator);
- ``dit``: the DiT task's IDDPM step on the encoded rows (CLIP/DINO tokens of the tiny encoders);
- ``gan-generator`` / ``gan-discriminator``: the two phases of a fine-tune iteration of the tiny
  Next3D++ GAN and its dual discriminator.

The budgets (``benchmarks.tiny_steps.FLOP_BUDGETS``) come from the measured run in
``benchmarks/results/tiny_steps.md``: the FLOPs at which each step would still run at 5 steps/s on one
CPU thread of this machine if its time grew in proportion to its FLOPs.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.tiny_steps import FLOP_BUDGETS, MICRO_BATCH, MODELS, TinyWorkloads


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as the budgets assume (and the shared 2-core machine prefers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workloads(tmp_path_factory) -> TinyWorkloads:
    return TinyWorkloads(tmp_path_factory.mktemp("tiny-steps"))


@pytest.mark.parametrize("model", MODELS)
def test_one_training_step_fits_its_flop_budget(workloads, model):
    flops = workloads.step_flops(model)
    budget = FLOP_BUDGETS[model]
    assert 0 < flops <= budget, (f"tiny {model}: {flops / 1e9:.3f} GFLOP per training step at micro-batch "
                                 f"{MICRO_BATCH}, budget {budget / 1e9:.2f} (≥ 5 steps/s on one CPU thread); "
                                 "see benchmarks/tiny_steps.py")


def test_the_tiny_models_fit_together():
    """GAN planes → VAE input; VAE latent → DiT input (planes stacked along H); encoder tokens → DiT."""
    from avatar4d.models.dit import DIT_PRESETS
    from avatar4d.models.next3d import GENERATOR_PRESETS
    from avatar4d.models.vae import VAE_PRESETS
    from factory.stages.encoders import ENCODER_PRESETS
    from train.dit.recipes import tiny as dit_recipe
    from train.vae.recipes import tiny as vae_recipe

    gan, vae, dit, encoders = (GENERATOR_PRESETS.get("tiny"), VAE_PRESETS.get("tiny"), DIT_PRESETS.get("tiny"),
                               ENCODER_PRESETS.get("tiny"))
    # the data contract: stored parametric triplanes 4 × 8 × 64², 64² images
    assert (gan.plane_channels, gan.plane_resolution, gan.image_resolution) == (8, 64, 64)
    assert vae.triplane_shape() == (gan.plane_channels, 4, gan.plane_resolution, gan.plane_resolution)
    channels, planes, height, width = vae.latent_shape()
    assert (channels, height, width) == (8, 16, 16)  # enough latent to learn on: 16× fewer values than the planes
    assert (dit.in_channels, dit.input_size) == (channels, (planes * height, width))
    assert (dit.clip_tokens, dit.clip_channels) == encoders.clip.token_shape
    assert (dit.dino_tokens, dit.dino_channels) == encoders.dino.token_shape
    assert vae_recipe().model == vae.replace(normalize_triplanes=True)
    assert dit_recipe().model == dit
