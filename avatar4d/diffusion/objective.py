"""The IDDPM training objective: ε-MSE plus the variational bound that trains the learned variance.

Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models", ``L_hybrid =
L_simple + λ L_vlb``. As in improved-diffusion's ``GaussianDiffusion.training_losses`` (and DiT /
PixArt, which AvatarArtist builds on):

- the network sees ``x_t`` and ``t`` and returns ``[B, 2C, ...]``: ε̂ followed by the variance
  values v (``learned_range``, see :meth:`GaussianSchedule.learned_range_log_variance`);
- ``mse = mean((ε - ε̂)²)`` per sample (``mean((v - v̂)²)`` with ``prediction_type="v_prediction"``,
  whose ε̂ for the bound is ``√ᾱ_t v̂ + √(1 − ᾱ_t) x_t``);
- ``vb`` is the per-timestep bound ``L_t`` in bits per dimension computed with the *frozen* mean
  (ε̂ detached, IDDPM's ``frozen_out``) so it only trains the variance: the KL between the true
  posterior ``q(x_{t-1} | x_t, x_0)`` and ``p(x_{t-1} | x_t)`` for ``t > 0``, the decoder NLL
  ``-log p(x_0 | x_1)`` at ``t = 0``;
- ``loss = mse + w · vb`` with ``w = T / 1000`` (IDDPM's ``RESCALED_MSE``, which DiT and PixArt
  use; ``w = 1`` for T = 1000), i.e. λ = 0.001 on ``L_vlb = T · E_t[L_t]``.

The ``t = 0`` decoder term. IDDPM's discretised Gaussian likelihood assumes 8-bit images in
[-1, 1]; triplane latents are continuous and not bounded to [-1, 1], so by default
(``decoder_nll="gaussian"``) we use the continuous Gaussian negative log-density
``-log N(x_0; μ_θ, σ²_θ)`` in bits per dimension (a density, so it can be negative; its gradient
still drives σ²_θ(x_1, 1) towards the squared error of the frozen mean). ``"discretized"``
reproduces IDDPM's 256-bin likelihood (with the exact normal CDF instead of its tanh
approximation) for parity with checkpoints trained by the DiT/PixArt code. The term is drawn for
1 / T of the samples, so the choice barely changes training.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from avatar4d.diffusion.schedule import DECODER_NLLS, DiffusionConfig, GaussianSchedule

logger = logging.getLogger(__name__)

ModelFn = Callable[..., torch.Tensor]
"""``model_fn(x_t [B,C,...], t [B] long, **cond) -> [B, 2C, ...]`` (ε̂ ++ v) or ``[B, C, ...]`` (ε̂)."""

_LOG2 = math.log(2.0)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: ``[B, ...] -> [B]``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` in nats (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """Elementwise continuous ``-log N(x; mean, e^log_variance)`` in nats."""
    return 0.5 * (math.log(2.0 * math.pi) + log_variance + (x - mean) ** 2 * torch.exp(-log_variance))


def discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """Elementwise ``-log P(x)`` in nats of a Gaussian discretised to 256 bins over [-1, 1] (IDDPM).

    The bins are ``x ± 1/255``; the edge bins extend to ±∞ (``x < -0.999`` and ``x > 0.999``).
    Probabilities are clamped at 1e-12 as in IDDPM; the normal CDF is exact (``torch.special.ndtr``).
    """
    inv_std = torch.exp(-0.5 * log_variance)
    centered = x - mean
    cdf_plus = torch.special.ndtr(inv_std * (centered + 1.0 / 255.0))
    cdf_min = torch.special.ndtr(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
    return -log_probs


def vb_terms_bpd(
    schedule: GaussianSchedule,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor,
    decoder_nll: str = "gaussian",
) -> torch.Tensor:
    """Per-sample bound term ``L_t`` in bits per dimension, ``[B]``.

    ``KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))`` where ``t > 0`` and the decoder NLL of ``x0``
    where ``t == 0``; ``p``'s mean comes from ``eps`` and its log-variance from ``v``
    (``learned_range``). Gradients flow through whatever is not detached: the objective passes
    ``eps.detach()``.
    """
    if decoder_nll not in DECODER_NLLS:
        raise ValueError(f"decoder_nll must be one of {list(DECODER_NLLS)}, got {decoder_nll!r}")
    true_mean, _, true_log_variance = schedule.q_posterior(x0, x_t, t)
    model_mean, model_log_variance, _ = schedule.p_mean_log_variance(eps, v, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)) / _LOG2
    nll_fn = gaussian_nll if decoder_nll == "gaussian" else discretized_gaussian_nll
    nll = mean_flat(nll_fn(x0, model_mean, model_log_variance)) / _LOG2
    return torch.where(t == 0, nll, kl)


@dataclasses.dataclass
class DiffusionLoss:
    """Per-sample loss terms, each ``[B]``: ``loss = mse + vb_weight * vb`` (``vb`` None without a learned variance)."""

    loss: torch.Tensor
    mse: torch.Tensor
    vb: torch.Tensor | None
    t: torch.Tensor
    vb_weight: float


def split_model_output(out: torch.Tensor, channels: int, learn_sigma: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[B, 2C, ...] -> (ε̂, v)`` when the variance is learned, ``[B, C, ...] -> (ε̂, None)`` otherwise."""
    expected = 2 * channels if learn_sigma else channels
    if out.ndim < 2 or out.shape[1] != expected:
        what = "ε and variance values" if learn_sigma else "ε"
        raise ValueError(f"model output must have {expected} channels ({what}), got shape {list(out.shape)}")
    if not learn_sigma:
        return out, None
    eps, v = out.split(channels, dim=1)
    return eps, v


class IDDPMObjective:
    """``L_simple + L_vb`` of IDDPM for any network callable; holds the :class:`GaussianSchedule`."""

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        self.config = config or DiffusionConfig()
        self.schedule = GaussianSchedule.from_config(self.config)
        self.vb_weight = self.config.num_timesteps / 1000.0 if self.config.rescale_vb else 1.0

    def sample_timesteps(
        self, batch: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Uniform training timesteps ``[batch]`` (long) in ``[0, T)``."""
        draw_device = generator.device if generator is not None else device
        t = torch.randint(0, self.config.num_timesteps, (batch,), generator=generator, device=draw_device)
        return t.to(device) if device is not None else t

    def __call__(
        self,
        model_fn: ModelFn,
        x0: torch.Tensor,
        *,
        model_kwargs: Mapping[str, Any] | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DiffusionLoss:
        """Noise ``x0`` [B, C, ...] to a random (or given) ``t``, run ``model_fn`` and return the loss terms.

        ``x_t`` is passed to the network in ``x0``'s dtype; the loss is computed in float32.
        ``generator`` draws ``t`` and ``noise`` when they are not given.
        """
        if x0.ndim < 2:
            raise ValueError(f"x0 must be [B, C, ...], got shape {list(x0.shape)}")
        batch = x0.shape[0]
        if t is None:
            t = self.sample_timesteps(batch, generator=generator, device=x0.device)
        self.schedule.check_timesteps(t, batch)
        if noise is None:
            draw_device = generator.device if generator is not None else x0.device
            noise = torch.randn(x0.shape, generator=generator, device=draw_device).to(x0.device)
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {list(noise.shape)} differs from x0 shape {list(x0.shape)}")
        x0_f, noise_f = x0.float(), noise.to(device=x0.device, dtype=torch.float32)
        x_t = self.schedule.q_sample(x0_f, t, noise_f)  # [B, C, ...]
        out = model_fn(x_t.to(x0.dtype), t, **dict(model_kwargs or {}))  # [B, 2C, ...]
        prediction, v = split_model_output(out.float(), x0.shape[1], self.config.learn_sigma)
        if self.config.prediction_type == "v_prediction":
            mse = mean_flat((self.schedule.velocity(x0_f, t, noise_f) - prediction) ** 2)  # [B]
            eps = self.schedule.eps_from_velocity(x_t, t, prediction)  # the bound's mean is the same either way
        else:
            mse = mean_flat((noise_f - prediction) ** 2)  # [B]
            eps = prediction
        if v is None:
            return DiffusionLoss(loss=mse, mse=mse, vb=None, t=t, vb_weight=self.vb_weight)
        vb = vb_terms_bpd(self.schedule, x0_f, x_t, t, eps.detach(), v, self.config.decoder_nll)  # [B]
        return DiffusionLoss(loss=mse + self.vb_weight * vb, mse=mse, vb=vb, t=t, vb_weight=self.vb_weight)
