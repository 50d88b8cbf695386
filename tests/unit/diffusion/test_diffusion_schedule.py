"""The IDDPM linear schedule: values, posterior, learned-range variance, agreement with diffusers."""

import math

import numpy as np
import pytest
import torch

from avatar4d.config import ConfigError
from avatar4d.diffusion import DiffusionConfig, GaussianSchedule


def reference_arrays(num_timesteps: int) -> dict[str, np.ndarray]:
    """Written from the DDPM/IDDPM papers, independently of the module under test."""
    scale = 1000.0 / num_timesteps
    betas = np.linspace(scale * 1e-4, scale * 2e-2, num_timesteps, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
    posterior_variance = (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod) * betas
    return dict(betas=betas, alphas_cumprod=alphas_cumprod, posterior_variance=posterior_variance)


def test_linear_schedule_values_for_1000_steps():
    schedule = GaussianSchedule.linear()
    assert schedule.num_timesteps == 1000
    assert schedule.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert schedule.betas[-1].item() == pytest.approx(2e-2, rel=1e-12)
    assert schedule.betas[1].item() - schedule.betas[0].item() == pytest.approx((2e-2 - 1e-4) / 999, rel=1e-9)
    ref = reference_arrays(1000)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), ref["alphas_cumprod"], rtol=1e-12)
    np.testing.assert_allclose(schedule.posterior_variance.numpy(), ref["posterior_variance"], rtol=1e-12)
    # ᾱ strictly decreasing from ≈ 1 to ≈ 4e-5
    assert bool((schedule.alphas_cumprod[1:] < schedule.alphas_cumprod[:-1]).all())
    assert schedule.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4)
    assert 1e-5 < schedule.alphas_cumprod[-1].item() < 1e-4


def test_fewer_steps_rescale_betas_by_1000_over_T():
    schedule = GaussianSchedule.linear(num_timesteps=250)
    assert schedule.betas[0].item() == pytest.approx(1e-4 * 4, rel=1e-12)
    assert schedule.betas[-1].item() == pytest.approx(2e-2 * 4, rel=1e-12)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), reference_arrays(250)["alphas_cumprod"], rtol=1e-12)


def test_posterior_variance_log_clipping_and_mean_coefficients():
    schedule = GaussianSchedule.linear()
    ref = reference_arrays(1000)
    assert schedule.posterior_variance[0].item() == 0.0  # β̃_0 = 0: x_0 is known given x_0
    logs = schedule.posterior_log_variance_clipped.numpy()
    assert logs[0] == pytest.approx(math.log(ref["posterior_variance"][1]), rel=1e-12)
    np.testing.assert_allclose(logs[1:], np.log(ref["posterior_variance"][1:]), rtol=1e-12)
    # μ̃_t(x_0, x_t) is E[x_{t-1} | x_t, x_0]; check it on a point: coefficients of eq. (7) of DDPM
    ac, acp, b = ref["alphas_cumprod"], np.concatenate([[1.0], ref["alphas_cumprod"][:-1]]), ref["betas"]
    for t in (1, 10, 500, 999):
        x0, xt = torch.full((1, 1), 0.7, dtype=torch.float64), torch.full((1, 1), -0.3, dtype=torch.float64)
        mean, var, _ = schedule.q_posterior(x0, xt, torch.tensor([t]))
        expected = (math.sqrt(acp[t]) * b[t] * 0.7 + math.sqrt(1 - b[t]) * (1 - acp[t]) * -0.3) / (1 - ac[t])
        assert mean.item() == pytest.approx(expected, rel=1e-12)
        assert var.item() == pytest.approx(ref["posterior_variance"][t], rel=1e-12)


def test_q_sample_and_x0_prediction_invert_each_other():
    schedule = GaussianSchedule.linear()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 100, 500, 999])
    x_t = schedule.q_sample(x0, t, noise)
    ac = reference_arrays(1000)["alphas_cumprod"]
    for i, step in enumerate(t.tolist()):
        torch.testing.assert_close(x_t[i], math.sqrt(ac[step]) * x0[i] + math.sqrt(1 - ac[step]) * noise[i])
    torch.testing.assert_close(schedule.predict_x0_from_eps(x_t, t, noise), x0, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("t", [1, 2, 10, 250, 999])
def test_learned_range_interpolates_between_beta_and_posterior_variance(t):
    schedule = GaussianSchedule.linear()
    ref = reference_arrays(1000)
    beta, beta_tilde = ref["betas"][t], ref["posterior_variance"][t]
    v = torch.tensor([1.0, -1.0, 0.0, 0.5], dtype=torch.float64).reshape(4, 1)
    log_var = schedule.learned_range_log_variance(v, torch.full((4,), t)).flatten().numpy()
    assert math.exp(log_var[0]) == pytest.approx(beta, rel=1e-12)  # v = 1 → β_t
    assert math.exp(log_var[1]) == pytest.approx(beta_tilde, rel=1e-12)  # v = -1 → β̃_t
    assert math.exp(log_var[2]) == pytest.approx(math.sqrt(beta * beta_tilde), rel=1e-12)  # geometric mean
    assert math.exp(log_var[3]) == pytest.approx(beta**0.75 * beta_tilde**0.25, rel=1e-12)
    assert beta_tilde < math.exp(log_var[2]) < beta


def test_learned_range_at_t0_uses_the_clipped_posterior_variance():
    schedule = GaussianSchedule.linear()
    log_var = schedule.learned_range_log_variance(torch.tensor([[-1.0]], dtype=torch.float64), torch.tensor([0]))
    assert math.exp(log_var.item()) == pytest.approx(reference_arrays(1000)["posterior_variance"][1], rel=1e-12)


def test_alphas_cumprod_match_diffusers_linear_ddpm_scheduler():
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=2e-2, beta_schedule="linear"
    )
    ours = GaussianSchedule.linear().alphas_cumprod
    max_diff = (reference.alphas_cumprod.double() - ours).abs().max().item()
    assert max_diff < 1e-6  # measured 2.5e-7 (diffusers works in float32)


def test_config_validation_and_round_trip():
    config = DiffusionConfig(num_timesteps=500, decoder_nll="discretized")
    assert DiffusionConfig.from_json(config.to_json()) == config
    assert config.scaled_beta_range == pytest.approx((2e-4, 4e-2))
    with pytest.raises(ConfigError, match="decoder_nll"):
        DiffusionConfig(decoder_nll="laplace")
    with pytest.raises(ConfigError, match="num_timesteps"):
        DiffusionConfig(num_timesteps=0)
    with pytest.raises(ConfigError, match="condition_drop_prob"):
        DiffusionConfig(condition_drop_prob=1.5)


def test_bad_timesteps_raise():
    schedule = GaussianSchedule.linear()
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        schedule.check_timesteps(torch.tensor([0, 1000]), 2)
    with pytest.raises(ValueError, match="integers"):
        schedule.check_timesteps(torch.tensor([0.5, 1.0]), 2)
    with pytest.raises(ValueError, match="shape"):
        schedule.check_timesteps(torch.tensor([1, 2, 3]), 2)
