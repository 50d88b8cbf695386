"""v-prediction (``DiffusionConfig(prediction_type="v_prediction")``): the target, the objective and the
sampler agree with the ε parameterisation they are converted from.

For Gaussian data the exact ε* is known (see test_diffusion_sampling.py); the exact v* follows from
``v = √ᾱ ε − √(1−ᾱ) x_0`` and ``x_0 = (x_t − √(1−ᾱ) ε)/√ᾱ``, i.e. ``v* = (ε* − √(1−ᾱ) x_t)/√ᾱ``.
"""

import pytest
import torch

from avatar4d.config import ConfigError
from avatar4d.diffusion import DiffusionConfig, GaussianSchedule, IDDPMObjective, sample
from tests.unit.diffusion.test_diffusion_sampling import UNIT_SCALE, N

SCHEDULE = GaussianSchedule.linear()
V_PREDICTION = DiffusionConfig(prediction_type="v_prediction")


def v_star(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a2 = SCHEDULE.alphas_cumprod[t].to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
    return (UNIT_SCALE.eps_star(x_t, t) - (1 - a2).sqrt() * x_t) / a2.sqrt()


def test_velocity_and_its_inverse():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, 4, 3, 3, generator=g)
    t = torch.tensor([0, 1, 100, 500, 900, 999])
    x_t = SCHEDULE.q_sample(x0, t, noise)
    v = SCHEDULE.velocity(x0, t, noise)
    torch.testing.assert_close(SCHEDULE.eps_from_velocity(x_t, t, v), noise, atol=2e-5, rtol=1e-5)
    a, s = SCHEDULE.sqrt_alphas_cumprod[t].float(), SCHEDULE.sqrt_one_minus_alphas_cumprod[t].float()
    torch.testing.assert_close(v[2], a[2] * noise[2] - s[2] * x0[2])
    # at t = T-1 v is almost −x_0: the target stays informative where ε barely depends on x_0
    assert torch.nn.functional.cosine_similarity(v[5].flatten(), -x0[5].flatten(), dim=0) > 0.99


def test_v_objective_has_zero_mse_and_the_same_bound_for_the_exact_velocity():
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 2, 5, 5, generator=g), torch.randn(4, 2, 5, 5, generator=g)
    t = torch.tensor([0, 3, 400, 999])
    variance_values = torch.rand(4, 2, 5, 5, generator=g) * 2 - 1
    x_t = SCHEDULE.q_sample(x0, t, noise)
    exact_v = SCHEDULE.velocity(x0, t, noise)

    def v_net(x, tt):
        return torch.cat([exact_v, variance_values], dim=1)

    def eps_net(x, tt):
        return torch.cat([noise, variance_values], dim=1)

    v_loss = IDDPMObjective(V_PREDICTION)(v_net, x0, t=t, noise=noise)
    eps_loss = IDDPMObjective(DiffusionConfig())(eps_net, x0, t=t, noise=noise)
    assert v_loss.mse.abs().max() < 1e-10
    torch.testing.assert_close(v_loss.vb, eps_loss.vb, atol=1e-4, rtol=1e-4)
    # a wrong velocity costs its squared error
    off = IDDPMObjective(V_PREDICTION)(lambda x, tt: torch.cat([exact_v + 0.5, variance_values], 1), x0, t=t,
                                       noise=noise)
    torch.testing.assert_close(off.mse, torch.full((4,), 0.25))
    assert x_t.shape == x0.shape


def test_dpm_solver_pp_with_v_prediction_reproduces_gaussian_data():
    g = torch.Generator().manual_seed(0)
    x = sample(v_star, (N, 4, 1, 1), scheduler="dpmsolver++", steps=19, guidance_scale=1.0, generator=g,
               diffusion=V_PREDICTION)
    mean_error, std_ratio = UNIT_SCALE.errors(x)
    assert mean_error.max().item() < 0.05
    assert (std_ratio - 1).abs().max().item() < 0.03


@pytest.mark.parametrize("scheduler", ["dpmsolver++", "ddim", "ddpm"])
def test_every_solver_gives_the_same_samples_from_the_exact_velocity_as_from_the_exact_noise(scheduler):
    def run(model_fn, diffusion):
        return sample(model_fn, (2_000, 4, 1, 1), scheduler=scheduler, steps=25, guidance_scale=1.0,
                      generator=torch.Generator().manual_seed(3), diffusion=diffusion)

    from_v, from_eps = run(v_star, V_PREDICTION), run(UNIT_SCALE.eps_star, DiffusionConfig())
    assert (from_v - from_eps).abs().max().item() < 1e-3


def test_unknown_prediction_type_is_a_config_error():
    with pytest.raises(ConfigError, match="prediction_type"):
        DiffusionConfig(prediction_type="sample")
