"""The IDDPM objective: ε-MSE, the variational bound against closed forms written here, stop-gradient."""

import math

import numpy as np
import pytest
import torch

from avatar4d.diffusion import DiffusionConfig, GaussianSchedule, IDDPMObjective, normal_kl, vb_terms_bpd

B, C, H, W = 6, 3, 4, 4


def schedule_arrays() -> dict[str, np.ndarray]:
    """The linear 1000-step schedule written from the papers (float64)."""
    betas = np.linspace(1e-4, 2e-2, 1000)
    ac = np.cumprod(1.0 - betas)
    acp = np.concatenate([[1.0], ac[:-1]])
    return dict(betas=betas, ac=ac, acp=acp, post_var=betas * (1 - acp) / (1 - ac))


def closed_form_kl(m1: np.ndarray, var1: np.ndarray, m2: np.ndarray, var2: np.ndarray) -> np.ndarray:
    """KL(N(m1, var1) || N(m2, var2)) in nats, elementwise, from the definition."""
    return 0.5 * np.log(var2 / var1) + (var1 + (m1 - m2) ** 2) / (2.0 * var2) - 0.5


def reference_vb_kl(x0, x_t, eps, v, t) -> np.ndarray:
    """Per-element KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) in bits, with p from (ε̂, v) as IDDPM defines it."""
    s = schedule_arrays()
    out = np.empty(x0.shape)
    for i, step in enumerate(t):
        beta, ac, acp, post_var = s["betas"][step], s["ac"][step], s["acp"][step], s["post_var"][step]
        coef_x0 = math.sqrt(acp) * beta / (1 - ac)
        coef_xt = math.sqrt(1 - beta) * (1 - acp) / (1 - ac)
        true_mean = coef_x0 * x0[i] + coef_xt * x_t[i]
        x0_hat = (x_t[i] - math.sqrt(1 - ac) * eps[i]) / math.sqrt(ac)
        model_mean = coef_x0 * x0_hat + coef_xt * x_t[i]
        frac = (v[i] + 1) / 2
        model_var = np.exp(frac * math.log(beta) + (1 - frac) * math.log(post_var))
        out[i] = closed_form_kl(true_mean, np.full_like(true_mean, post_var), model_mean, model_var) / math.log(2)
    return out


def random_inputs(seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    noise = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    eps_hat = noise + 0.3 * torch.randn(B, C, H, W, generator=g, dtype=dtype)
    v = torch.rand(B, C, H, W, generator=g, dtype=dtype) * 2 - 1
    return x0, noise, eps_hat, v


def test_normal_kl_matches_closed_form_elementwise():
    g = torch.Generator().manual_seed(1)
    m1, m2 = torch.randn(100, generator=g, dtype=torch.float64), torch.randn(100, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(100, generator=g, dtype=torch.float64), torch.randn(100, generator=g, dtype=torch.float64)
    ours = normal_kl(m1, lv1, m2, lv2).numpy()
    ref = closed_form_kl(m1.numpy(), np.exp(lv1.numpy()), m2.numpy(), np.exp(lv2.numpy()))
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14)
    assert (ours >= 0).all()


def test_vb_term_equals_closed_form_kl_for_t_above_zero():
    schedule = GaussianSchedule.linear()
    x0, noise, eps_hat, v = random_inputs(2)
    t = torch.tensor([1, 2, 17, 300, 700, 999])
    x_t = schedule.q_sample(x0, t, noise)
    ours = vb_terms_bpd(schedule, x0, x_t, t, eps_hat, v).numpy()
    ref_elementwise = reference_vb_kl(x0.numpy(), x_t.numpy(), eps_hat.numpy(), v.numpy(), t.tolist())
    np.testing.assert_allclose(ours, ref_elementwise.reshape(B, -1).mean(axis=1), rtol=1e-9)
    # the elementwise KL of the module agrees per element too
    true_mean, _, true_log_var = schedule.q_posterior(x0, x_t, t)
    model_mean, model_log_var, _ = schedule.p_mean_log_variance(eps_hat, v, x_t, t)
    per_element = normal_kl(true_mean, true_log_var, model_mean, model_log_var).numpy() / math.log(2)
    np.testing.assert_allclose(per_element, ref_elementwise, rtol=1e-8, atol=1e-12)


def test_vb_term_is_zero_for_the_exact_noise_and_posterior_variance():
    schedule = GaussianSchedule.linear()
    x0, noise, _, _ = random_inputs(3)
    t = torch.tensor([1, 5, 50, 400, 800, 999])
    x_t = schedule.q_sample(x0, t, noise)
    vb = vb_terms_bpd(schedule, x0, x_t, t, noise, -torch.ones_like(x0))
    assert vb.abs().max().item() < 1e-8


def test_decoder_terms_at_t0_match_torch_distributions():
    schedule = GaussianSchedule.linear()
    x0, noise, eps_hat, v = random_inputs(4)
    x0 = x0.clamp(-1.2, 1.2)
    t = torch.zeros(B, dtype=torch.long)
    x_t = schedule.q_sample(x0, t, noise)
    mean, log_var, _ = schedule.p_mean_log_variance(eps_hat, v, x_t, t)
    normal = torch.distributions.Normal(mean, (0.5 * log_var).exp())

    gaussian = vb_terms_bpd(schedule, x0, x_t, t, eps_hat, v, decoder_nll="gaussian")
    expected = -normal.log_prob(x0).reshape(B, -1).mean(1) / math.log(2)
    torch.testing.assert_close(gaussian, expected, rtol=1e-10, atol=1e-10)

    discretized = vb_terms_bpd(schedule, x0, x_t, t, eps_hat, v, decoder_nll="discretized")
    upper = torch.where(x0 > 0.999, torch.ones_like(x0), normal.cdf(x0 + 1 / 255))
    lower = torch.where(x0 < -0.999, torch.zeros_like(x0), normal.cdf(x0 - 1 / 255))
    expected = -torch.log((upper - lower).clamp(min=1e-12)).reshape(B, -1).mean(1) / math.log(2)
    torch.testing.assert_close(discretized, expected, rtol=1e-6, atol=1e-6)


def test_objective_mse_vb_and_total_loss():
    objective = IDDPMObjective()
    x0, noise, eps_hat, v = random_inputs(5, dtype=torch.float32)
    t = torch.tensor([0, 1, 10, 100, 500, 999])
    seen = {}

    def model_fn(x_t, timesteps, *, scale):
        seen["x_t"], seen["t"], seen["scale"] = x_t, timesteps, scale
        return torch.cat([eps_hat, v], dim=1)

    terms = objective(model_fn, x0, t=t, noise=noise, model_kwargs={"scale": 2.0})
    assert seen["scale"] == 2.0 and torch.equal(seen["t"], t)
    torch.testing.assert_close(seen["x_t"], objective.schedule.q_sample(x0, t, noise))
    torch.testing.assert_close(terms.mse, ((noise - eps_hat) ** 2).mean(dim=(1, 2, 3)))
    assert terms.vb_weight == 1.0
    expected_vb = vb_terms_bpd(objective.schedule, x0, seen["x_t"], t, eps_hat, v)
    torch.testing.assert_close(terms.vb, expected_vb)
    ref = reference_vb_kl(
        x0[1:].double().numpy(),
        seen["x_t"][1:].double().numpy(),
        eps_hat[1:].double().numpy(),
        v[1:].double().numpy(),
        t[1:].tolist(),
    )
    np.testing.assert_allclose(terms.vb[1:].numpy(), ref.reshape(B - 1, -1).mean(1), rtol=2e-4)
    torch.testing.assert_close(terms.loss, terms.mse + terms.vb)
    assert terms.loss.shape == (B,)


def test_vb_weight_follows_num_timesteps_over_1000():
    assert IDDPMObjective(DiffusionConfig(num_timesteps=250)).vb_weight == 0.25
    assert IDDPMObjective(DiffusionConfig(num_timesteps=250, rescale_vb=False)).vb_weight == 1.0


def test_vb_gradient_reaches_only_the_variance_output():
    objective = IDDPMObjective()
    x0, noise, eps_hat, v = random_inputs(6, dtype=torch.float32)
    t = torch.tensor([0, 3, 30, 300, 600, 999])
    output = torch.cat([eps_hat, v], dim=1).requires_grad_(True)
    terms = objective(lambda x_t, timesteps: output * 1.0, x0, t=t, noise=noise)

    (vb_grad,) = torch.autograd.grad(terms.vb.sum(), output, retain_graph=True)
    assert vb_grad[:, :C].abs().max().item() == 0.0  # stop-gradient on the mean
    assert (vb_grad[:, C:].abs().reshape(B, -1).sum(1) > 0).all()  # every sample trains its variance
    (mse_grad,) = torch.autograd.grad(terms.mse.sum(), output, retain_graph=True)
    assert mse_grad[:, C:].abs().max().item() == 0.0
    torch.testing.assert_close(mse_grad[:, :C], 2 * (eps_hat - noise) / (C * H * W))
    (total_grad,) = torch.autograd.grad(terms.loss.sum(), output)
    torch.testing.assert_close(total_grad, mse_grad + vb_grad)


def test_objective_draws_timesteps_and_noise_reproducibly():
    objective = IDDPMObjective()
    x0 = torch.randn(64, C, H, W)
    model_fn = lambda x_t, t: torch.zeros(64, 2 * C, H, W)  # noqa: E731
    a = objective(model_fn, x0, generator=torch.Generator().manual_seed(7))
    b = objective(model_fn, x0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.t, b.t) and torch.equal(a.loss, b.loss)
    assert a.t.dtype == torch.long and 0 <= a.t.min() and a.t.max() < 1000
    # with ε̂ = 0 the MSE is the mean square of the drawn noise ≈ 1
    assert a.mse.mean().item() == pytest.approx(1.0, abs=0.1)


def test_epsilon_only_networks_and_shape_errors():
    objective = IDDPMObjective(DiffusionConfig(learn_sigma=False))
    x0 = torch.randn(B, C, H, W)
    terms = objective(lambda x_t, t: torch.zeros_like(x_t), x0, generator=torch.Generator().manual_seed(0))
    assert terms.vb is None and torch.equal(terms.loss, terms.mse)
    with pytest.raises(ValueError, match="6 channels"):
        IDDPMObjective()(lambda x_t, t: torch.zeros_like(x_t), x0)
    with pytest.raises(ValueError, match="noise shape"):
        IDDPMObjective()(lambda x_t, t: x_t, x0, noise=torch.zeros(B, C, H, 2 * W))
    with pytest.raises(ValueError, match="decoder_nll"):
        vb_terms_bpd(objective.schedule, x0, x0, torch.zeros(B, dtype=torch.long), x0, x0, decoder_nll="bad")
