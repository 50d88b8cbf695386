"""One small sampling loop over diffusers' schedulers, with classifier-free guidance.

The solvers are diffusers' (``set_timesteps``/``step``): ``DPMSolverMultistepScheduler`` in
DPM-Solver++ mode (the paper's 19 steps), ``DDIMScheduler`` (η = 0) and ``DDPMScheduler`` with
IDDPM's ``learned_range`` variance. Each is configured from the training :class:`DiffusionConfig`
(linear betas, 1000 steps, ε- or v-prediction as it says, no clipping of x̂_0: latents are not bounded).
diffusers is imported inside the functions so ``avatar4d`` imports with torch alone.

Timestep spacing (``SamplingConfig.timesteps``): DPM-Solver++ with ``"linspace"`` (the paper's
19-step setting here) uses diffusers' ``linspace`` spacing (999 … down to the last step, final σ = 0);
``"time_uniform"`` is the official AvatarArtist sampler (LuChengTHU's DPM-Solver++ 2M,
``skip_type="time_uniform"``, t from 1 to ``t_end = 1e-3``, i.e. model times 999 … 0 evenly spaced,
no denoising to σ = 0, first-order last step), built from diffusers' own options:
``timestep_spacing="linspace"`` (diffusers rounds the times to integers: ≤ 0.5 off the official
fractional 949.05, 899.1, …), ``final_sigmas_type="sigma_min"`` (end at the σ of t = 0, i.e. t_end)
and ``euler_at_final=True``; ``"logsnr_uniform"`` is DPM-Solver's ``logSNR`` skip type
(``use_lu_lambdas=True``). Named settings: :data:`SAMPLING_PRESETS` ``paper`` (19 steps) and
``release`` (20 steps, ``time_uniform``). DDPM uses ``linspace`` too (999 … 0, IDDPM's respacing, no noise added at the
last step); DDIM uses ``leading`` (t = k·⌊T/n⌋), the only spacing whose steps agree with
``DDIMScheduler.step``'s fixed ``t - ⌊T/n⌋`` previous timestep for every n.

Guidance (DiT's ``forward_with_cfg``): conditional and unconditional inputs go through the network
as one batch of 2B; ``ε = ε_u + s·(ε_c - ε_u)``; the variance values are the conditional ones. At
``s = 1`` only the conditional pass runs, so the result equals unguided sampling exactly.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from avatar4d.config import Config, ConfigError, PresetRegistry
from avatar4d.diffusion.objective import ModelFn
from avatar4d.diffusion.schedule import DiffusionConfig

if TYPE_CHECKING:  # pragma: no cover - the sampler takes any DiT; the process stays apart from the networks
    from avatar4d.models.dit import ImageConditionedDiT

logger = logging.getLogger(__name__)

SCHEDULERS = ("dpmsolver++", "ddim", "ddpm")
TIMESTEP_SCHEDULES = ("linspace", "time_uniform", "logsnr_uniform")
"""DPM-Solver++ time grids (see the module docstring); DDIM and DDPM take ``linspace`` only."""

_DPM_TIMESTEP_OPTIONS: dict[str, dict[str, Any]] = {
    "linspace": dict(timestep_spacing="linspace"),
    "time_uniform": dict(timestep_spacing="linspace", final_sigmas_type="sigma_min", euler_at_final=True),
    "logsnr_uniform": dict(timestep_spacing="linspace", use_lu_lambdas=True, final_sigmas_type="sigma_min",
                           euler_at_final=True),
}


@dataclasses.dataclass
class SamplingConfig(Config):
    """Inference defaults of the paper: DPM-Solver++ with 19 steps and guidance 4.5 (``SAMPLING_PRESETS``
    also holds ``release``: the official 20-step ``time_uniform`` schedule)."""

    scheduler: str = "dpmsolver++"
    steps: int = 19
    guidance_scale: float = 4.5
    timesteps: str = "linspace"

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {self.scheduler!r}; choose from {list(SCHEDULERS)}")
        if self.timesteps not in TIMESTEP_SCHEDULES:
            raise ConfigError(f"unknown timesteps {self.timesteps!r}; choose from {list(TIMESTEP_SCHEDULES)}")
        if self.timesteps != "linspace" and self.scheduler != "dpmsolver++":
            raise ConfigError(f"timesteps {self.timesteps!r} is a DPM-Solver++ schedule; "
                              f"{self.scheduler} takes 'linspace'")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")


SAMPLING_PRESETS: PresetRegistry[SamplingConfig] = PresetRegistry("sampling")


@SAMPLING_PRESETS.register("paper")
def _paper_sampling() -> SamplingConfig:
    """The paper's text: DPM-Solver++, 19 steps, guidance 4.5."""
    return SamplingConfig()


@SAMPLING_PRESETS.register("release")
def _release_sampling() -> SamplingConfig:
    """The official inference code: DPM-Solver++ 2M, 20 steps, ``time_uniform`` down to t = 1e-3, guidance 4.5."""
    return SamplingConfig(steps=20, timesteps="time_uniform")


def make_scheduler(name: str, diffusion: DiffusionConfig | None = None, *, learned_variance: bool = True,
                   timesteps: str = "linspace") -> Any:
    """A diffusers scheduler named ``name`` matching the training schedule of ``diffusion``.

    ``learned_variance`` only matters for ``"ddpm"``: ``learned_range`` (the network's variance
    channels are used) or IDDPM's ``fixed_small`` (β̃_t) for an ε-only network.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose from {list(SCHEDULERS)}")
    diffusion = diffusion or DiffusionConfig()
    beta_start, beta_end = diffusion.scaled_beta_range
    common: dict[str, Any] = dict(
        num_train_timesteps=diffusion.num_timesteps,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule="linear",
        prediction_type=diffusion.prediction_type,
    )
    import diffusers  # lazy: the core package must import without diffusers

    if timesteps not in TIMESTEP_SCHEDULES or (timesteps != "linspace" and name != "dpmsolver++"):
        raise ValueError(f"timesteps {timesteps!r} does not apply to {name}; choose from {list(TIMESTEP_SCHEDULES)} "
                         "(DPM-Solver++ only, others take 'linspace')")
    if name == "dpmsolver++":
        return diffusers.DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=2, **_DPM_TIMESTEP_OPTIONS[timesteps]
        )
    if name == "ddim":
        return diffusers.DDIMScheduler(
            **common, clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"
        )
    variance_type = "learned_range" if learned_variance else "fixed_small"
    return diffusers.DDPMScheduler(
        **common, variance_type=variance_type, clip_sample=False, timestep_spacing="linspace"
    )


def guided_output(
    out_cond: torch.Tensor, out_uncond: torch.Tensor, guidance_scale: float, channels: int
) -> torch.Tensor:
    """Classifier-free guidance on the first ``channels`` (ε): ``ε_u + s·(ε_c - ε_u)``; the rest is ``out_cond``'s."""
    eps_cond, rest = out_cond[:, :channels], out_cond[:, channels:]
    eps_uncond = out_uncond[:, :channels]
    return torch.cat([eps_uncond + guidance_scale * (eps_cond - eps_uncond), rest], dim=1)


def _batched_conditions(cond: Mapping[str, Any], uncond: Mapping[str, Any], batch: int) -> dict[str, Any]:
    """Stack ``cond`` over ``uncond`` along the batch (uncond rows of batch 1 are expanded)."""
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}")
    stacked: dict[str, Any] = {}
    for key, value in cond.items():
        null = uncond[key]
        if not isinstance(value, torch.Tensor):
            if value != null:
                raise ValueError(f"non-tensor condition {key!r} differs between cond and uncond")
            stacked[key] = value
            continue
        if value.shape[0] != batch or null.shape[0] not in (1, batch) or null.shape[1:] != value.shape[1:]:
            raise ValueError(
                f"condition {key!r}: cond {list(value.shape)} / uncond {list(null.shape)} do not fit batch {batch}"
            )
        stacked[key] = torch.cat([value, null.to(value).expand_as(value)], dim=0)
    return stacked


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    shape: tuple[int, ...] | torch.Size,
    *,
    scheduler: str = "dpmsolver++",
    steps: int = 19,
    guidance_scale: float = 4.5,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    uncond: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    diffusion: DiffusionConfig | None = None,
    noise: torch.Tensor | None = None,
    timesteps: str = "linspace",
) -> torch.Tensor:
    """Draw ``x_0`` of ``shape`` [B, C, ...] by running ``model_fn`` through a diffusers scheduler.

    ``model_fn(x_t, t [B] long, **cond)`` returns ε̂ ``[B, C, ...]`` or ε̂ ++ variance values
    ``[B, 2C, ...]``. ``guidance_scale != 1`` needs ``uncond`` (same keys as ``cond``; tensors of
    batch B or 1). ``generator`` draws the initial noise (and DDPM's noise); its device is used
    for drawing. ``noise`` [B, C, ...] (unit Gaussian) replaces the initial draw, so a caller that
    batches requests can give every request its own seeded noise. Returns a float32 tensor on ``device``.
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose from {list(SCHEDULERS)}")
    diffusion = diffusion or DiffusionConfig()
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be [B, C, ...] with positive sizes, got {list(shape)}")
    if not 1 <= steps <= diffusion.num_timesteps:
        raise ValueError(f"steps must be in [1, {diffusion.num_timesteps}], got {steps}")
    guided = guidance_scale != 1.0
    if guided and uncond is None:
        raise ValueError(f"guidance_scale={guidance_scale} needs uncond (or use guidance_scale=1)")
    batch, channels = shape[0], shape[1]
    device = torch.device(device) if device is not None else torch.device("cpu")
    cond = dict(cond or {})
    model_kwargs = _batched_conditions(cond, uncond, batch) if guided else cond  # type: ignore[arg-type]

    solver = make_scheduler(scheduler, diffusion, timesteps=timesteps)
    solver.set_timesteps(steps, device=device)
    draw_device = generator.device if generator is not None else device
    if noise is not None and tuple(noise.shape) != shape:
        raise ValueError(f"noise {list(noise.shape)} does not match shape {list(shape)}")
    x = (torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32) if noise is None
         else noise.float()).to(device)
    x = x * solver.init_noise_sigma  # [B, C, ...]
    logger.debug("sampling %s with %s, %d steps, guidance %.3g", list(shape), scheduler, steps, guidance_scale)

    passes = 2 if guided else 1
    for index, timestep in enumerate(solver.timesteps):
        x_in = solver.scale_model_input(x, timestep)  # [B, C, ...]
        t_in = timestep.reshape(1).to(device=device, dtype=torch.long).repeat(passes * batch)  # [passes*B]
        x_in = torch.cat([x_in] * passes, dim=0) if guided else x_in  # [passes*B, C, ...]
        out = model_fn(x_in, t_in, **model_kwargs).float()  # [passes*B, C or 2C, ...]
        if out.shape[0] != passes * batch or out.shape[1] not in (channels, 2 * channels) or out.shape[2:] != shape[2:]:
            raise ValueError(f"model output {list(out.shape)} does not fit input {list(x_in.shape)} (C or 2C channels)")
        if guided:
            out = guided_output(out[:batch], out[batch:], guidance_scale, channels)  # [B, C or 2C, ...]
        learned_variance = out.shape[1] == 2 * channels
        if scheduler == "ddpm":
            if index == 0 and not learned_variance:
                solver = make_scheduler("ddpm", diffusion, learned_variance=False)
                solver.set_timesteps(steps, device=device)
            model_output = out  # ε ++ v for learned_range
        else:
            model_output = out[:, :channels]  # ε only
        x = solver.step(model_output, timestep, x, generator=generator).prev_sample
    return x


NULL_CONDITION_FILE = "encoded_null_condition.safetensors"


def null_clip_tokens(null_clip: str, data: str | Path | None) -> torch.Tensor | None:
    """The stored CLIP tokens of an all-zero image (``<data>/encoded_null_condition.safetensors``), the
    null condition of a model whose ``null_clip`` mode is ``"zero_image"`` (the release's); None for a
    ``"learned"`` or ``"zeros"`` model, which carry their own. A ``"zero_image"`` model without the file
    is a one-line :class:`~avatar4d.errors.UserError`: no fallback to some other null condition."""
    if null_clip != "zero_image":
        return None
    from avatar4d.storage import join, read_bytes

    path = None if data is None else join(data, NULL_CONDITION_FILE)  # a local folder or s3://
    raw = None if path is None else read_bytes(path)
    if raw is None:
        from avatar4d.errors import UserError

        raise UserError(f"{path or NULL_CONDITION_FILE} not found: the DiT's null condition (null_clip='zero_image', "
                        "as released) is the CLIP embedding of an all-zero image, which `avatar4d factory encode` "
                        "writes there; re-run the encode, or set model.null_clip to 'learned' or 'zeros'")
    from safetensors.torch import load

    tokens = load(raw)["clip_tokens"].float()
    return tokens if tokens.ndim == 3 else tokens[None]  # [1, Tc, Dc]


@torch.no_grad()
def sample_latents(model: ImageConditionedDiT, clip: torch.Tensor, dino: torch.Tensor, shape: tuple[int, ...], *,
                   sampling: SamplingConfig, diffusion: DiffusionConfig, null_clip: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """Latents [B, C, H, W] (DiT layout) for CLIP tokens [B, Tc, Dc] and DINO tokens [B, Td, Dd]
    (``noise``: the initial noise [B, C, H, W], else drawn from ``generator``)."""
    batch = clip.shape[0]
    guided = sampling.guidance_scale != 1
    if guided and null_clip is None and getattr(model.config, "null_clip", None) == "zero_image":
        from avatar4d.errors import UserError

        raise UserError("this DiT's unconditional input is the CLIP embedding of an all-zero image (as released): "
                        f"pass null_clip= (the image encoders' null_condition(), or {NULL_CONDITION_FILE})")
    uncond_clip = None if not guided else (null_clip.to(device).expand(batch, -1, -1) if null_clip is not None
                                           else model.null_clip_input(batch, clip.shape[1], device=device))
    return sample(lambda x, t, **kw: model(x, t, **kw), shape, scheduler=sampling.scheduler, steps=sampling.steps,
                  guidance_scale=sampling.guidance_scale, generator=generator,
                  cond={"clip_tokens": clip, "dino_tokens": dino},
                  uncond=None if uncond_clip is None else {"clip_tokens": uncond_clip, "dino_tokens": dino},
                  device=device, diffusion=diffusion,
                  noise=noise, timesteps=sampling.timesteps)
