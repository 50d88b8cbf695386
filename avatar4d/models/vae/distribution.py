"""The VAE posterior: a diagonal Gaussian over the latent, built from stacked (mean, log-variance)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class DiagonalGaussian:
    """N(mean, exp(logvar)) per latent element; ``moments`` [B, 2·C, ...] holds mean then logvar on dim 1.

    The log-variance is clamped to [logvar_min, logvar_max] (the release: [−30, 20]) before use.
    """

    def __init__(self, moments: Tensor, *, logvar_min: float = -30.0, logvar_max: float = 20.0) -> None:
        if moments.ndim < 2 or moments.shape[1] % 2:
            raise ValueError(f"moments must be [B, 2*C, ...] with mean and logvar stacked on dim 1, "
                             f"got {tuple(moments.shape)}")
        self.moments = moments
        mean, logvar = moments.chunk(2, dim=1)
        self.mean = mean
        self.logvar = logvar.clamp(logvar_min, logvar_max)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    @property
    def shape(self) -> torch.Size:
        """Shape of one latent sample, e.g. [B, 8, 4, 32, 32]."""
        return self.mean.shape

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised draw mean + std · ε (differentiable in mean and logvar)."""
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussian | None = None) -> Tensor:
        """KL(self ‖ other) summed over every non-batch dimension → [B] float32; ``other`` defaults to N(0, I).

        (The release sums over dims 1-3 only, leaving the W axis of its 5-D latents; the sum
        over the batch is the same.)
        """
        dims = tuple(range(1, self.mean.ndim))
        mean, logvar = self.mean.float(), self.logvar.float()  # fp32 sums, also under bf16 autocast
        if other is None:
            terms = mean.square() + logvar.exp() - 1.0 - logvar
        else:
            if other.shape != self.shape:
                raise ValueError(f"KL between posteriors of shapes {tuple(self.shape)} and {tuple(other.shape)}")
            other_mean, other_logvar = other.mean.float(), other.logvar.float()
            terms = ((mean - other_mean).square() + logvar.exp()) / other_logvar.exp() - 1.0 - logvar + other_logvar
        return 0.5 * terms.sum(dim=dims)

    def nll(self, sample: Tensor) -> Tensor:
        """−log N(sample; mean, var) summed over every non-batch dimension → [B]."""
        dims = tuple(range(1, self.mean.ndim))
        terms = math.log(2.0 * math.pi) + self.logvar + (sample - self.mean).square() / self.var
        return 0.5 * terms.sum(dim=dims)
