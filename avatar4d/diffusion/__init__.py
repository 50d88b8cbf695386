"""Diffusion process, kept apart from the networks (DESIGN.md "DiT").

- :mod:`.schedule`: IDDPM's linear 1000-step Gaussian process (:class:`GaussianSchedule`) and
  the :class:`DiffusionConfig` shared by training and sampling;
- :mod:`.objective`: the IDDPM hybrid loss (ε-MSE + variational bound for the learned variance);
- :mod:`.condition_dropout`: the p = 0.1 condition dropout for classifier-free guidance;
- :mod:`.sampling`: one loop over diffusers' schedulers (DPM-Solver++, DDIM, DDPM) with
  classifier-free guidance; diffusers is imported only when a scheduler is built.
"""

from avatar4d.diffusion.condition_dropout import condition_drop_mask, drop_condition
from avatar4d.diffusion.objective import (
    DiffusionLoss,
    IDDPMObjective,
    ModelFn,
    discretized_gaussian_nll,
    gaussian_nll,
    normal_kl,
    vb_terms_bpd,
)
from avatar4d.diffusion.sampling import SCHEDULERS, SamplingConfig, guided_output, make_scheduler, sample
from avatar4d.diffusion.schedule import DiffusionConfig, GaussianSchedule

__all__ = [
    "SCHEDULERS",
    "DiffusionConfig",
    "DiffusionLoss",
    "GaussianSchedule",
    "IDDPMObjective",
    "ModelFn",
    "SamplingConfig",
    "condition_drop_mask",
    "discretized_gaussian_nll",
    "drop_condition",
    "gaussian_nll",
    "guided_output",
    "make_scheduler",
    "normal_kl",
    "sample",
    "vb_terms_bpd",
]
