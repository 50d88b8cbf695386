"""Sampling a trained DiT for given image conditions: the task's sample grids and held-out checks.

:func:`sample_latents` is the one place that turns CLIP/DINO tokens into DiT-layout latents
(diffusers solver, classifier-free guidance against the model's null condition);
:class:`HeldOutSampler` feeds it the tokens of a held-out ``encoded.lance`` (portraits the model
never saw) and decodes the samples into parametric triplanes with the VAE.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from avatar4d.diffusion import DiffusionConfig, SamplingConfig, sample
from avatar4d.models.dit import ImageConditionedDiT
from avatar4d.models.vae import TriplaneVAE, from_dit_tokens, unscale_latent

NULL_CONDITION_FILE = "encoded_null_condition.safetensors"


def null_clip_tokens(null_clip: str, data: str | Path | None) -> Tensor | None:
    """The stored CLIP tokens of an all-zero image (``<data>/encoded_null_condition.safetensors``), the
    null condition of a model whose ``null_clip`` mode is ``"zeros"``; None for a learned null
    embedding or no file."""
    path = None if data is None else Path(data) / NULL_CONDITION_FILE
    if null_clip != "zeros" or path is None or not path.is_file():
        return None
    from safetensors.torch import load_file

    tokens = load_file(str(path))["clip_tokens"].float()
    return tokens if tokens.ndim == 3 else tokens[None]  # [1, Tc, Dc]


@torch.no_grad()
def sample_latents(model: ImageConditionedDiT, clip: Tensor, dino: Tensor, shape: tuple[int, ...], *,
                   sampling: SamplingConfig, diffusion: DiffusionConfig, null_clip: Tensor | None = None,
                   generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """Latents [B, C, H, W] (DiT layout) for CLIP tokens [B, Tc, Dc] and DINO tokens [B, Td, Dd]."""
    batch = clip.shape[0]
    uncond_clip = (null_clip.to(device).expand(batch, -1, -1) if null_clip is not None
                   else model.null_clip_input(batch, clip.shape[1], device=device))
    return sample(lambda x, t, **kw: model(x, t, **kw), shape, scheduler=sampling.scheduler, steps=sampling.steps,
                  guidance_scale=sampling.guidance_scale, generator=generator,
                  cond={"clip_tokens": clip, "dino_tokens": dino},
                  uncond={"clip_tokens": uncond_clip, "dino_tokens": dino}, device=device, diffusion=diffusion)


class HeldOutSampler:
    """Triplanes sampled from the portraits of a held-out ``encoded.lance`` and decoded by ``vae``."""

    def __init__(self, data: str | Path, vae: TriplaneVAE, *, null_condition: str | Path | None = None,
                 sampling: SamplingConfig | None = None, diffusion: DiffusionConfig | None = None,
                 seed: int = 0, batch_size: int = 16) -> None:
        from avatar4d.data.encoded_reader import EncodedShardReader
        from avatar4d.data.encoded_schema import encoded_uri

        self.vae = vae
        self.sampling = sampling or SamplingConfig()
        self.diffusion = diffusion or DiffusionConfig()
        self.seed = seed
        self.batch_size = batch_size
        self.null_condition = null_condition if null_condition is not None else data
        reader = EncodedShardReader(encoded_uri(str(data)), columns=["sample_id", "clip_tokens", "dino_tokens"],
                                    batch_size=256, shuffle=False)
        self.tokens: dict[str, tuple[Tensor, Tensor]] = {}
        for part in reader:
            for index, sample_id in enumerate(part["sample_id"]):
                self.tokens[sample_id] = (part["clip_tokens"][index].float(), part["dino_tokens"][index].float())

    @torch.no_grad()
    def triplanes(self, model: ImageConditionedDiT, sample_ids: list[str]) -> Tensor:
        """Decoded samples [N, 4, C, R, R] for the portraits ``sample_ids`` (the same noise for every model)."""
        missing = [s for s in sample_ids if s not in self.tokens]
        if missing:
            raise KeyError(f"no encoded tokens for {missing[:3]}")
        null = null_clip_tokens(model.config.null_clip, self.null_condition)
        config = self.vae.config
        latent_shape = (config.embed_dim, config.num_planes * config.latent_resolution, config.latent_resolution)
        generator = torch.Generator().manual_seed(self.seed)
        out = []
        for first in range(0, len(sample_ids), self.batch_size):
            ids = sample_ids[first:first + self.batch_size]
            clip = torch.stack([self.tokens[s][0] for s in ids])
            dino = torch.stack([self.tokens[s][1] for s in ids])
            latents = sample_latents(model, clip, dino, (len(ids), *latent_shape), sampling=self.sampling,
                                     diffusion=self.diffusion, null_clip=null, generator=generator)
            z = unscale_latent(from_dit_tokens(latents, config.num_planes), config.latent_scale_factor)
            out.append(self.vae.decode_triplane(z))
        return torch.cat(out)
